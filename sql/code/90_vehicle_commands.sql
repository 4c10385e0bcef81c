-- 90_vehicle_commands.sql — the command outbox of the vehicle HTTP fallback (table: sql/090_vehicle_commands.sql;
-- docs/PROTOCOL.md → HTTP fallback): recording a command, and acknowledging it by the confirmation the protocol
-- already asks of a vehicle.
--
-- A code file (fleetcore/migrations.py): applied after the migrations and again whenever a code file changes,
-- so every statement here can run any number of times.

-- Record one command (the envelope as it is about to be published) and wake the vehicle's long-polls
-- (NOTIFY fleet_vehicle_command, payload: the vehicle id; delivered at commit). Returns whether the vehicle is
-- fetching its commands over HTTP (a poll within p_http_active_s), i.e. whether the outbox delivers it.
-- Rows older than a day are pruned here, per vehicle, so the table stays small without a job of its own: a
-- pending command is only handed out for COMMAND_TTL (2 h, the broker's session expiry for queued QoS 1
-- commands; api/vehicle_commands.py), and the safety commands are re-sent with new msg_ids until confirmed.
CREATE OR REPLACE FUNCTION public.vehicle_command_record(p_vehicle text, p_command jsonb, p_http_active_s double precision)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM public.vehicle_commands WHERE vehicle_id = p_vehicle AND created_at < now() - interval '1 day';
    -- A re-send (a new msg_id, the same type and data: a config.update again when the vehicle comes online, a safety
    -- command sent until confirmed) of a command still pending here is the same command: the outbox holds it once,
    -- where it was first queued, so a vehicle on HTTP neither gets it twice nor sees it jump behind later commands.
    -- (2 hours: how long a pending command is handed out, COMMAND_TTL_S in api/vehicle_commands.py.)
    IF NOT EXISTS (SELECT 1 FROM public.vehicle_commands c
                    WHERE c.vehicle_id = p_vehicle AND c.acked_at IS NULL AND c.type = p_command ->> 'type'
                      AND c.command -> 'data' = p_command -> 'data' AND c.created_at > now() - interval '2 hours') THEN
        INSERT INTO public.vehicle_commands (vehicle_id, msg_id, type, command, mission_id)
        VALUES (p_vehicle, p_command ->> 'msg_id', p_command ->> 'type', p_command,
                CASE WHEN p_command ->> 'type' LIKE 'mission.%' THEN (p_command -> 'data' ->> 'mission_id')::uuid END)
        ON CONFLICT (vehicle_id, msg_id) DO NOTHING;
    END IF;
    PERFORM pg_notify('fleet_vehicle_command', p_vehicle);
    RETURN EXISTS (SELECT 1 FROM public.vehicle_http_polls
                    WHERE vehicle_id = p_vehicle AND polled_at > now() - make_interval(secs => p_http_active_s));
END $$;

-- The channel of the message being ingested: the api's HTTP fallback marks its transaction (set_config
-- 'fleet.ingest_channel' = 'http', api/queries/vehicle_gateway.py); the broker's inserts leave it unset.
-- A message parked and re-applied later by the worker (ingest.retry_parked) counts as 'mqtt': the worker's
-- transaction cannot know; only acked_via is affected, never whether the command is acknowledged.
CREATE OR REPLACE FUNCTION public.vehicle_command_channel() RETURNS text
LANGUAGE sql STABLE AS $$ SELECT COALESCE(NULLIF(current_setting('fleet.ingest_channel', true), ''), 'mqtt') $$;

-- A vehicle's mission event acknowledges the mission commands it answers (docs/PROTOCOL.md, Commands): any event
-- answers a dispatch; cancelled/completed/failed/rejected a cancel; paused (or an end) a pause; resumed (or an
-- end) a resume. Only commands sent before the event, so a newer command of the same mission stays pending.
CREATE OR REPLACE FUNCTION public.vehicle_commands_confirm_mission() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE public.vehicle_commands c SET acked_at = now(), acked_via = public.vehicle_command_channel()
     WHERE c.vehicle_id = NEW.actor_id AND c.acked_at IS NULL AND c.mission_id = NEW.mission_id
       AND c.created_at <= NEW.server_time
       AND CASE c.type
               WHEN 'mission.dispatch' THEN true
               WHEN 'mission.cancel' THEN NEW.event IN ('cancelled', 'completed', 'failed', 'rejected')
               WHEN 'mission.pause' THEN NEW.event IN ('paused', 'cancelled', 'completed', 'failed')
               WHEN 'mission.resume' THEN NEW.event IN ('resumed', 'cancelled', 'completed', 'failed')
               ELSE false END;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER vehicle_commands_confirm_mission AFTER INSERT ON public.mission_events
    FOR EACH ROW WHEN (NEW.actor_type = 'vehicle') EXECUTE FUNCTION public.vehicle_commands_confirm_mission();

-- A status report acknowledges what it confirms: `estop: true` an emergency.stop, `estop: false` a release (the
-- same rule as api/emergency_commands.py), a reported config_version at least a config.update's version.
CREATE OR REPLACE FUNCTION public.vehicle_commands_confirm_status() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE public.vehicle_commands c SET acked_at = now(), acked_via = public.vehicle_command_channel()
     WHERE c.vehicle_id = NEW.vehicle_id AND c.acked_at IS NULL AND c.created_at <= NEW.received_at
       AND c.type = CASE WHEN NEW.estop THEN 'emergency.stop' ELSE 'emergency.release' END;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER vehicle_commands_confirm_status AFTER INSERT ON public.vehicle_status
    FOR EACH ROW EXECUTE FUNCTION public.vehicle_commands_confirm_status();

CREATE OR REPLACE FUNCTION public.vehicle_commands_confirm_config() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE public.vehicle_commands c SET acked_at = now(), acked_via = public.vehicle_command_channel()
     WHERE c.vehicle_id = NEW.id AND c.acked_at IS NULL AND c.type = 'config.update'
       AND (c.command -> 'data' ->> 'version')::integer <= NEW.reported_config_version;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER vehicle_commands_confirm_config AFTER UPDATE OF reported_config_version ON public.vehicles
    FOR EACH ROW WHEN (NEW.reported_config_version IS DISTINCT FROM OLD.reported_config_version)
    EXECUTE FUNCTION public.vehicle_commands_confirm_config();
