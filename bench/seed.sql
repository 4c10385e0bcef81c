-- bench/seed.sql — synthetic, generated data for the query benchmarks. Run it with `python -m bench.seed`
-- (bench/seed.py), which passes the parameters below as psycopg2 named parameters (so a literal percent sign
-- is written twice). Everything lands in one fleet, %(fleet)s, so a seeded database can still be used for
-- other work; re-running with the same fleet adds nothing for vehicles that already exist.
--
--   %(fleet)s           fleet id                          %(prefix)s          vehicle id prefix
--   %(vehicles)s        vehicles (with latest state)      %(missions)s        missions (each with 6 events)
--   %(days)s            missions' creation span (days)    %(history_points)s  1 Hz telemetry points of vehicle 1
--   %(background_vehicles)s / %(background_step_s)s       other vehicles' telemetry over the same 24 h, every N s
--
-- Mission shape: created over the last %(days)s days, evenly; final states 80 %% completed, 10 %% failed,
-- 5 %% cancelled, 5 %% timed_out; events created → dispatched → accepted → in_progress → in_progress → final
-- (cancelled missions pass through cancel_requested instead of the second progress).

SELECT fleet_maintenance();   -- telemetry partitions of yesterday, today and ahead

INSERT INTO fleets (id, name) VALUES (%(fleet)s, 'seeded benchmark fleet') ON CONFLICT DO NOTHING;

INSERT INTO vehicles (id, fleet_id, name, model, status, registered_at)
SELECT %(prefix)s || lpad(i::text, 5, '0'), %(fleet)s, 'seeded vehicle ' || i, 'model-' || (i %% 4), 'active',
       now() - interval '200 days'
  FROM generate_series(1, %(vehicles)s) AS i
ON CONFLICT DO NOTHING;

-- latest position, health and presence (vehicle_state rows are created by the vehicles trigger)
UPDATE vehicle_state s
   SET telemetry_ts = now() - random() * interval '60 seconds', telemetry_seq = 1000,
       telemetry_received_at = now(), lat = 48.1 + random() * 0.1, lon = 11.5 + random() * 0.1,
       heading_deg = random() * 360, speed_mps = random() * 5, battery_pct = 20 + random() * 80,
       odometer_m = random() * 1e6, status_ts = now(), status_seq = 10, status_received_at = now(), mode = 'AUTO',
       charging = false, estop = false, errors = '[]'::jsonb, health = 'OK', sw_version = '1.0.0',
       online = random() < 0.9, connection_state = 'ONLINE', connected_at = now() - interval '1 hour',
       last_seen_at = now(), updated_at = now()
  FROM vehicles v
 WHERE v.id = s.vehicle_id AND v.fleet_id = %(fleet)s;

CREATE TEMP TABLE seed_missions ON COMMIT DROP AS
SELECT gen_random_uuid() AS id, i,
       %(prefix)s || lpad((1 + (i * 7919) %% %(vehicles)s)::text, 5, '0') AS vehicle_id,
       now() - make_interval(secs => %(days)s * 86400.0 * (%(missions)s - i) / %(missions)s) AS created_at,
       CASE WHEN i %% 20 < 16 THEN 'completed' WHEN i %% 20 < 18 THEN 'failed'
            WHEN i %% 20 = 18 THEN 'cancelled' ELSE 'timed_out' END AS final,
       60 + (i %% 540) AS run_s
  FROM generate_series(1, %(missions)s) AS i;

INSERT INTO missions (id, vehicle_id, fleet_id, name, waypoints, priority, state, timeout_s, failure_reason,
                      created_by, created_at, updated_at, dispatched_at, accepted_at, started_at, finished_at,
                      last_event_at, dispatch_attempts, progress_percent)
SELECT id, vehicle_id, %(fleet)s, 'seeded mission ' || i,
       jsonb_build_array(jsonb_build_object('lat', 48.1, 'lon', 11.5), jsonb_build_object('lat', 48.2, 'lon', 11.6)),
       i %% 3, final, 3600,
       CASE final WHEN 'failed' THEN 'obstacle' WHEN 'cancelled' THEN 'operator cancelled'
                  WHEN 'timed_out' THEN 'no event within timeout' END,
       'admin', created_at, created_at + make_interval(secs => run_s), created_at + interval '2 seconds',
       created_at + interval '3 seconds', created_at + interval '5 seconds', created_at + make_interval(secs => run_s),
       created_at + make_interval(secs => run_s), 1, CASE WHEN final = 'completed' THEN 100 ELSE 40 END
  FROM seed_missions;

INSERT INTO mission_events (mission_id, event, from_state, to_state, actor_type, actor_id, server_time, device_time,
                            msg_id, detail)
SELECT m.id, e.event, e.from_state, e.to_state, e.actor_type, e.actor_id, m.created_at + e.offset_s,
       CASE WHEN e.actor_type = 'vehicle' THEN m.created_at + e.offset_s END,
       CASE WHEN e.actor_type = 'vehicle' THEN 'seed-' || m.i || '-' || e.step END, '{}'::jsonb
  FROM seed_missions m
 CROSS JOIN LATERAL (VALUES
       (1, 'created',  NULL,          'queued',     'operator', 'admin',      interval '0'),
       (2, 'dispatch', 'queued',      'dispatched', 'system',   'dispatcher', interval '2 seconds'),
       (3, 'accepted', 'dispatched',  'accepted',   'vehicle',  m.vehicle_id, interval '3 seconds'),
       (4, 'progress', 'accepted',    'in_progress', 'vehicle', m.vehicle_id, interval '5 seconds'),
       (5, CASE WHEN m.final = 'cancelled' THEN 'cancel' ELSE 'progress' END, 'in_progress',
           CASE WHEN m.final = 'cancelled' THEN 'cancel_requested' ELSE 'in_progress' END,
           CASE WHEN m.final = 'cancelled' THEN 'operator' ELSE 'vehicle' END,
           CASE WHEN m.final = 'cancelled' THEN 'admin' ELSE m.vehicle_id END, make_interval(secs => m.run_s / 2)),
       (6, CASE m.final WHEN 'timed_out' THEN 'timeout' ELSE m.final END,
           CASE WHEN m.final = 'cancelled' THEN 'cancel_requested' ELSE 'in_progress' END, m.final,
           CASE WHEN m.final = 'timed_out' THEN 'system' ELSE 'vehicle' END,
           CASE WHEN m.final = 'timed_out' THEN 'dispatcher' ELSE m.vehicle_id END, make_interval(secs => m.run_s))
       ) AS e(step, event, from_state, to_state, actor_type, actor_id, offset_s);

-- 24 h of 1 Hz telemetry for vehicle 1 (the history benchmark), plus sparser telemetry of other vehicles
INSERT INTO telemetry (vehicle_id, ts, received_at, seq, msg_id, lat, lon, heading_deg, speed_mps, battery_pct,
                       odometer_m)
SELECT %(prefix)s || '00001', t, t + interval '40 milliseconds', n, 'seed-' || n, 48.1 + n * 1e-6, 11.5,
       (n %% 360)::real, 3.0, 90 - n / 2000.0, n * 3.0
  FROM (SELECT now() - make_interval(secs => n) AS t, n FROM generate_series(1, %(history_points)s) AS n) AS p;

INSERT INTO telemetry (vehicle_id, ts, received_at, seq, msg_id, lat, lon, heading_deg, speed_mps, battery_pct,
                       odometer_m)
SELECT %(prefix)s || lpad((1 + v)::text, 5, '0'), t, t, n, 'seed-' || n, 48.1 + v * 1e-4, 11.5, 90, 2.5, 70,
       n * 10.0
  FROM generate_series(1, %(background_vehicles)s) AS v,
       LATERAL (SELECT now() - make_interval(secs => n * %(background_step_s)s) AS t, n
                  FROM generate_series(1, 86400 / %(background_step_s)s) AS n) AS p;

-- bench/seed.py then runs VACUUM (ANALYZE) on the tables above (outside this transaction), as autovacuum
-- would have by the time an operator asks.
