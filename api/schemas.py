"""Marshmallow schemas: what every endpoint accepts and returns. The OpenAPI document is generated from them."""
from __future__ import annotations

import math
from datetime import UTC, datetime

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates,
    validates_schema,
)

from api import passwords
from api.vehicle_commands import MAX_WAIT_S
from fleetcore import missions as mission_states
from fleetcore import topics
from fleetcore.topics import VEHICLE_ID_PATTERN


class FullMatch(validate.Regexp):
    """``validate.Regexp`` on the whole value. Regexp uses ``match``, where ``$`` also matches before a trailing
    newline ("veh-1\n"), which the database's checks refuse (a 500 instead of a 422). The patterns keep their
    anchors for the OpenAPI document, whose ``pattern`` is searched, not matched."""

    def __call__(self, value):  # str in, str out, as the schemas use it
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


VEHICLE_ID = FullMatch(rf"^{VEHICLE_ID_PATTERN}$", error="1–64 letters, digits or '-', not starting with '-'")
FLEET_ID = FullMatch(r"^[a-z0-9][a-z0-9-]{0,63}$", error="1–64 lower-case letters, digits or '-'")
USERNAME = FullMatch(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$", error="1–64 letters, digits or _ . @ -")
ROLES = ("admin", "operator", "viewer")


def reject_unstorable(value, path: str = "") -> None:
    """What PostgreSQL cannot store is a validation error, not a 500: text with NUL characters or lone UTF-16
    surrogates (valid JSON escapes, invalid UTF-8), and NaN or Infinity (which Python's JSON parser accepts)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValidationError(f"{path or 'value'} must not contain NUL characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(f"{path or 'value'} must be valid Unicode (no lone surrogates)") from None
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(f"{path or 'value'} must be a finite number (NaN and Infinity are not JSON)")
    elif isinstance(value, dict):
        for key, item in value.items():
            reject_unstorable(key, path)
            reject_unstorable(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for item in value:
            reject_unstorable(item, path)


class StrictSchema(Schema):
    """Input: unknown fields are an error (a typo must not be silently ignored), and so is text the database
    cannot store."""

    class Meta:
        unknown = RAISE

    @validates_schema
    def _storable(self, data: dict, **_kwargs) -> None:
        reject_unstorable(data)

    @post_load
    def _utc(self, data: dict, **_kwargs) -> dict:
        """Times are compared in UTC; a time without an offset is UTC. (PostgreSQL refuses offsets beyond ±15:59,
        which ISO 8601 allows up to ±23:59.)"""
        for key, value in data.items():
            if isinstance(value, datetime):
                try:
                    data[key] = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
                except (OverflowError, ValueError):
                    raise ValidationError("out of range", field_name=key) from None
        return data


class ErrorSchema(Schema):
    """The body of every error response (fleetcore/errors.py)."""
    code = fields.String(required=True, metadata={"description": "machine-readable error code",
                                                  "example": "validation_error"})
    message = fields.String(required=True, metadata={"description": "what went wrong, for people"})
    details = fields.Dict(metadata={"description": "extra information, e.g. errors per field"})


# --------------------------------------------------------------------------------------------------------------
# Lists
# --------------------------------------------------------------------------------------------------------------
class PageQuerySchema(StrictSchema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000))
    per_page = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class PageInfoSchema(Schema):
    page = fields.Integer()
    per_page = fields.Integer()
    total = fields.Integer()
    pages = fields.Integer()


def list_of(item_schema: type[Schema], name: str) -> type[Schema]:
    """A page of items: ``{"items": [...], "page": {...}}``."""
    return Schema.from_dict({"items": fields.List(fields.Nested(item_schema)),
                             "page": fields.Nested(PageInfoSchema)}, name=name)


# --------------------------------------------------------------------------------------------------------------
# Auth and users
# --------------------------------------------------------------------------------------------------------------
class LoginSchema(StrictSchema):
    username = fields.String(required=True, validate=validate.Length(min=1, max=64))
    password = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=256))


class OAuthTokenRequestSchema(Schema):
    """The form of an OAuth2 password grant (RFC 6749 §4.3.2). Unknown parameters are ignored, as §3.2 requires."""

    class Meta:
        unknown = EXCLUDE

    grant_type = fields.String(required=True, validate=validate.Equal("password"),
                               metadata={"description": "`password`; or `refresh_token` with `refresh_token` "
                                                        "(RFC 6749 §6) instead of username and password"})
    username = fields.String(required=True, validate=validate.Length(min=1, max=64))
    password = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=256))
    scope = fields.String(validate=validate.Equal(""),
                          metadata={"description": "no scopes: a token carries the user's role and fleets"})
    client_id = fields.String(metadata={"description": "ignored: the clients are public (RFC 6749 §2.1)"})
    client_secret = fields.String(load_only=True, metadata={"description": "ignored, as client_id"})


class OAuthRefreshRequestSchema(Schema):
    """The form of an OAuth2 refresh grant (RFC 6749 §6)."""

    class Meta:
        unknown = EXCLUDE

    grant_type = fields.String(required=True, validate=validate.Equal("refresh_token"))
    refresh_token = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=200))
    scope = fields.String(validate=validate.Equal(""))


class OAuthErrorSchema(ErrorSchema):
    """An OAuth2 token endpoint error (RFC 6749 §5.2), also in our usual shape."""
    error = fields.String(required=True, metadata={"example": "invalid_grant"})
    error_description = fields.String(metadata={"description": "what went wrong, for people"})


class RefreshSchema(StrictSchema):
    refresh_token = fields.String(required=True, validate=validate.Length(min=1, max=200))


class TokenSchema(Schema):
    access_token = fields.String(metadata={"description": "JWT; send as Authorization: Bearer <token>"})
    token_type = fields.String(metadata={"example": "Bearer"})
    expires_in = fields.Integer(metadata={"description": "seconds until the access token expires"})
    refresh_token = fields.String(metadata={"description": "single use; exchange at /auth/refresh"})


class VehicleTokenRequestSchema(StrictSchema):
    vehicle_id = fields.String(required=True, validate=VEHICLE_ID)
    secret = fields.String(required=True, validate=validate.Length(min=1, max=200),
                           metadata={"description": "the device secret from register.accepted"})


class VehicleTokenSchema(Schema):
    access_token = fields.String(metadata={"description": "JWT (audience fleet-vehicle); send as Authorization: "
                                                          "Bearer <token> on the /api/v1/vehicle routes"})
    token_type = fields.String(metadata={"example": "Bearer"})
    expires_in = fields.Integer(metadata={"description": "seconds until the token expires"})


class DeadLetterSchema(Schema):
    reason = fields.String(metadata={"description": "the rejected_messages reason (docs/PROTOCOL.md, Errors and "
                                                    "dead letters)", "example": "missing_field"})
    detail = fields.String(allow_none=True, metadata={"example": "data.lat"})


class IngestResultSchema(Schema):
    rejected = fields.List(fields.Nested(DeadLetterSchema), metadata={
        "description": "what the ingest dead-lettered (for a batch: per bad item); empty when everything was stored "
                       "or was a duplicate"})
    parked = fields.Boolean(metadata={"description": "the database could not apply it at once (a lock, a message "
                                                     "of this vehicle still waiting): it is kept and applied later, "
                                                     "in order; do not send it again"})


class VehicleDesiredConfigSchema(Schema):
    vehicle_id = fields.String()
    version = fields.Integer(metadata={"description": "the desired configuration's version (config.update version)"})
    config = fields.Dict(metadata={"description": "the desired configuration"})
    reported_version = fields.Integer(allow_none=True, metadata={"description": "the version your last status "
                                                                                "reported"})


class CommandsQuerySchema(StrictSchema):
    wait = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_WAIT_S), metadata={
        "description": "seconds to wait for a command when none is pending (long-poll); 0 answers at once"})


class CommandAckSchema(Schema):
    msg_id = fields.String()
    type = fields.String(metadata={"example": "mission.dispatch"})
    acked_at = fields.DateTime(metadata={"description": "when it was first acknowledged"})
    acked_via = fields.String(metadata={"description": "`http`, or `mqtt` when a confirmation that came over MQTT "
                                                      "acknowledged it first", "example": "http"})
    acked_now = fields.Boolean(metadata={"description": "false: it had been acknowledged before; nothing changed"})


class MeSchema(Schema):
    id = fields.Integer()
    username = fields.String()
    role = fields.String()
    fleets = fields.List(fields.String(), metadata={"description": "fleets you can see (admins see all)"})


class UserSchema(Schema):
    id = fields.Integer()
    username = fields.String()
    role = fields.String()
    active = fields.Boolean()
    fleets = fields.List(fields.String())
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


def new_password(password: str) -> None:
    problem = passwords.problem(password)
    if problem:
        raise ValidationError(problem)


class UserCreateSchema(StrictSchema):
    username = fields.String(required=True, validate=USERNAME)
    password = fields.String(required=True, load_only=True, validate=new_password)
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    fleets = fields.List(fields.String(validate=FLEET_ID), load_default=list)


class UserUpdateSchema(StrictSchema):
    password = fields.String(load_only=True, validate=new_password)
    role = fields.String(validate=validate.OneOf(ROLES))
    active = fields.Boolean()
    fleets = fields.List(fields.String(validate=FLEET_ID))


class FleetSchema(Schema):
    id = fields.String()
    name = fields.String()
    created_at = fields.DateTime()
    vehicle_count = fields.Integer()
    dispatch_min_battery_pct = fields.Float(metadata={
        "description": "no mission is dispatched to a vehicle of this fleet whose battery is below this"})


class FleetCreateSchema(StrictSchema):
    id = fields.String(required=True, validate=FLEET_ID)
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))


class FleetUpdateSchema(StrictSchema):
    name = fields.String(validate=validate.Length(min=1, max=200))
    dispatch_min_battery_pct = fields.Float(validate=validate.Range(min=0, max=100), metadata={
        "description": "dispatch gating: the least battery a vehicle needs to be sent a mission"})

    @validates_schema
    def _something(self, data: dict, **_kwargs) -> None:
        if not data:
            raise ValidationError("give name and/or dispatch_min_battery_pct", "name")


# --------------------------------------------------------------------------------------------------------------
# Vehicles
# --------------------------------------------------------------------------------------------------------------
class Vda5050IdentitySchema(StrictSchema):
    manufacturer = fields.String(required=True, validate=validate.Regexp(f"^{topics.VDA_IDENTITY_LEVEL}$"))
    serial_number = fields.String(required=True, validate=validate.Regexp(f"^{topics.VDA_IDENTITY_LEVEL}$"))
    map_id = fields.String(load_default="map", validate=validate.Length(min=1, max=100))
    origin_lat = fields.Float(required=True, validate=validate.Range(min=-89, max=89),
                              metadata={"description": "latitude of the map's origin (x = y = 0)"})
    origin_lon = fields.Float(required=True, validate=validate.Range(min=-180, max=180))


class VehicleCreateSchema(StrictSchema):
    id = fields.String(required=True, validate=VEHICLE_ID, metadata={"description": "also its MQTT client id"})
    fleet_id = fields.String(required=True, validate=FLEET_ID)
    name = fields.String(validate=validate.Length(max=200), allow_none=True)
    model = fields.String(validate=validate.Length(max=200), allow_none=True)
    metadata = fields.Dict(keys=fields.String(), load_default=dict)
    vda5050 = fields.Nested(Vda5050IdentitySchema, metadata={
        "description": "a VDA 5050 2.0 vehicle: its topics are uagv/v2/{manufacturer}/{serial_number}/… "
                       "(docs/VDA5050.md); its MQTT client id and username are still its id"})


class VehicleUpdateSchema(StrictSchema):
    name = fields.String(validate=validate.Length(max=200), allow_none=True)
    model = fields.String(validate=validate.Length(max=200), allow_none=True)
    metadata = fields.Dict(keys=fields.String())


class PresenceSchema(Schema):
    online = fields.Boolean()
    connection_state = fields.String(allow_none=True)
    connected_at = fields.DateTime(allow_none=True)
    disconnected_at = fields.DateTime(allow_none=True)
    disconnect_reason = fields.String(allow_none=True)
    last_seen_at = fields.DateTime(allow_none=True)


class LatestTelemetrySchema(Schema):
    ts = fields.DateTime(allow_none=True, metadata={"description": "device time"})
    received_at = fields.DateTime(allow_none=True, metadata={"description": "broker receive time"})
    lat = fields.Float(allow_none=True)
    lon = fields.Float(allow_none=True)
    heading_deg = fields.Float(allow_none=True)
    speed_mps = fields.Float(allow_none=True)
    battery_pct = fields.Float(allow_none=True)
    odometer_m = fields.Float(allow_none=True)


class HealthSchema(Schema):
    ts = fields.DateTime(allow_none=True)
    mode = fields.String(allow_none=True)
    health = fields.String(allow_none=True, metadata={"description": "OK, WARNING or FATAL (worst error)"})
    charging = fields.Boolean(allow_none=True)
    estop = fields.Boolean(allow_none=True)
    errors = fields.List(fields.Dict(), allow_none=True)
    sw_version = fields.String(allow_none=True)


class VehicleConfigSchema(Schema):
    desired = fields.Dict()
    desired_version = fields.Integer()
    reported = fields.Dict(allow_none=True)
    reported_version = fields.Integer(allow_none=True)


class VehicleCertificateSchema(Schema):
    serial_number = fields.String(metadata={"description": "hex"})
    issued_at = fields.DateTime()
    not_before = fields.DateTime()
    not_after = fields.DateTime(metadata={"description": "renew before this: a new enrollment token and a new CSR"})


class VehicleSchema(Schema):
    id = fields.String()
    fleet_id = fields.String()
    name = fields.String(allow_none=True)
    model = fields.String(allow_none=True)
    status = fields.String(metadata={"description": "pending (not registered yet), active, revoked, decommissioned"})
    metadata = fields.Dict()
    created_at = fields.DateTime()
    registered_at = fields.DateTime(allow_none=True)
    revoked_at = fields.DateTime(allow_none=True)
    decommissioned_at = fields.DateTime(allow_none=True)
    protocol = fields.String(metadata={"description": "fleet/v1 (ours) or vda5050"})
    vda5050 = fields.Nested(Vda5050IdentitySchema, allow_none=True)
    certificate = fields.Nested(VehicleCertificateSchema, allow_none=True, metadata={
        "description": "its current client certificate when it registered with a CSR (certificate identity, "
                       "docs/PROTOCOL.md); null for a vehicle with a device secret"})
    presence = fields.Nested(PresenceSchema)
    telemetry = fields.Nested(LatestTelemetrySchema)
    health = fields.Nested(HealthSchema)
    config = fields.Nested(VehicleConfigSchema)
    distance_m = fields.Float(metadata={"description": "only with near=lat,lon"})


class CapabilitySheetSchema(Schema):
    version = fields.Integer()
    document = fields.Dict(metadata={"description": "the sheet as the vehicle sent it"})
    task_types = fields.List(fields.String(), allow_none=True, metadata={"description": "null: not stated"})
    max_payload_kg = fields.Float(allow_none=True)
    max_speed_mps = fields.Float(allow_none=True)
    battery_capacity_wh = fields.Float(allow_none=True)
    source = fields.String(metadata={"description": "how it was reported, e.g. registration"})
    reported_at = fields.DateTime()


class VehicleCapabilitiesSchema(Schema):
    vehicle_id = fields.String()
    current = fields.Nested(CapabilitySheetSchema, allow_none=True)
    history = fields.List(fields.Nested(CapabilitySheetSchema), metadata={"description": "newest first"})


class EnrollmentRequestSchema(StrictSchema):
    readmit = fields.Boolean(load_default=False, metadata={
        "description": "true to re-admit a revoked vehicle (without it, a revoked vehicle gets 409 vehicle_revoked)"})


class EnrollmentSchema(Schema):
    token = fields.String(metadata={"description": "one-time enrollment token; shown only here"})
    expires_at = fields.DateTime()


class VehicleCreatedSchema(Schema):
    vehicle = fields.Nested(VehicleSchema)
    enrollment = fields.Nested(EnrollmentSchema)


class VehicleSessionResultSchema(Schema):
    vehicle = fields.Nested(VehicleSchema)
    session = fields.String(metadata={"description": "the live MQTT session: `kicked` or `not_connected`"})


class ConfigUpdateResultSchema(Schema):
    config = fields.Nested(VehicleConfigSchema)
    command = fields.Nested(lambda: CommandResultSchema(),
                            metadata={"description": "the config.update command; `delivered` false: offline"})


VEHICLE_SORTS = tuple(f"{order}{key}" for key in ("id", "created_at", "last_seen", "battery", "odometer", "distance")
                      for order in ("", "-"))


class VehicleListQuerySchema(PageQuerySchema):
    fleet_id = fields.String(validate=FLEET_ID)
    status = fields.String(validate=validate.OneOf(("pending", "active", "revoked", "decommissioned")))
    online = fields.Boolean()
    mode = fields.String(validate=validate.OneOf(("AUTO", "MANUAL", "SERVICE", "ESTOP")))
    near = fields.String(metadata={"description": "lat,lon — adds `distance_m` from the latest position to each "
                                                  "vehicle, and orders by it unless `sort` says otherwise"})
    sort = fields.String(validate=validate.OneOf(VEHICLE_SORTS), metadata={
        "description": "`id` (the default), `created_at`, `last_seen`, `battery`, `odometer` (`odometer_m`, the "
                       "distance driven) or `distance` (from `near`, its default there); `-` before a name: "
                       "descending. Vehicles without a value come last either way."})

    @validates("near")
    def _near(self, value: str, **_kwargs) -> None:
        parse_lat_lon(value)

    @validates_schema
    def _distance_needs_a_point(self, data: dict, **_kwargs) -> None:
        if data.get("sort", "").lstrip("-") == "distance" and not data.get("near"):
            raise ValidationError("sort=distance needs near=<lat>,<lon>", field_name="sort")


def parse_lat_lon(value: str) -> tuple[float, float]:
    try:
        lat_text, lon_text = value.split(",")
        lat, lon = float(lat_text), float(lon_text)
    except ValueError:
        raise ValidationError("use near=<lat>,<lon>, e.g. near=48.1,11.5") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValidationError("lat must be within ±90 and lon within ±180")
    return lat, lon


class DesiredConfigSchema(StrictSchema):
    config = fields.Dict(keys=fields.String(), required=True,
                         metadata={"description": "the desired configuration, sent as config.update"})


class ReasonSchema(StrictSchema):
    reason = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))


class EmergencyStopRequestSchema(StrictSchema):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=500))


class EmergencyStopSchema(Schema):
    id = fields.Integer()
    scope = fields.String(metadata={"enum": ["vehicle", "fleet", "all"]})
    vehicle_id = fields.String(allow_none=True)
    fleet_id = fields.String(allow_none=True)
    reason = fields.String()
    set_by = fields.String(metadata={"description": "who set it"})
    set_at = fields.DateTime()
    released_by = fields.String(allow_none=True)
    released_at = fields.DateTime(allow_none=True, metadata={"description": "null while the stop applies"})
    release_reason = fields.String(allow_none=True)
    vehicles = fields.Integer(metadata={"description": "vehicles whose command comes from this stop"})
    acknowledged = fields.Integer(metadata={"description": "… of which confirmed it with a status report"})


class EmergencyCommandStateSchema(Schema):
    vehicle_id = fields.String()
    command = fields.String(metadata={"enum": ["stop", "release"]})
    since = fields.DateTime(metadata={"description": "when this command became the one the vehicle should have"})
    sends = fields.Integer()
    last_sent_at = fields.DateTime(allow_none=True)
    last_delivered = fields.Boolean(allow_none=True, metadata={"description": "false: no session was subscribed"})
    acknowledged_at = fields.DateTime(allow_none=True, metadata={
        "description": "when a status report confirmed it (estop true for a stop, false for a release)"})
    online = fields.Boolean()


class EmergencyStopDetailSchema(EmergencyStopSchema):
    commands = fields.List(fields.Nested(EmergencyCommandStateSchema))


class EmergencyActionSchema(Schema):
    stop = fields.Nested(EmergencyStopSchema)
    changed = fields.Boolean(metadata={"description": "false: this target was already stopped"})
    command = fields.String(metadata={"enum": ["emergency.stop", "emergency.release"]})
    vehicles = fields.Integer(metadata={"description": "vehicles that carry this command now"})
    delivered = fields.Boolean(metadata={"description": "at least one vehicle received it now"})
    delivered_to = fields.List(fields.String(), metadata={"description": "vehicles that received it now"})
    still_stopped_by = fields.List(fields.Nested(EmergencyStopSchema), metadata={
        "description": "release of one vehicle: the fleet or all-fleets stops that still hold it"})


class EmergencyStopListQuerySchema(PageQuerySchema):
    active = fields.Boolean(load_default=True, metadata={"description": "false: released stops too"})


class CommandResultSchema(Schema):
    command = fields.String()
    msg_id = fields.String()
    delivered = fields.Boolean(metadata={"description": "false: the vehicle is offline; the broker dropped it"})
    vehicles = fields.Integer(allow_none=True)


# --------------------------------------------------------------------------------------------------------------
# Telemetry
# --------------------------------------------------------------------------------------------------------------
class TelemetryPointSchema(Schema):
    ts = fields.DateTime()
    received_at = fields.DateTime()
    seq = fields.Integer(allow_none=True)
    lat = fields.Float()
    lon = fields.Float()
    heading_deg = fields.Float(allow_none=True)
    speed_mps = fields.Float(allow_none=True)
    battery_pct = fields.Float(allow_none=True)
    odometer_m = fields.Float(allow_none=True)
    extra = fields.Dict(allow_none=True)
    clock_skewed = fields.Boolean()


class TelemetryBucketSchema(Schema):
    bucket = fields.DateTime(metadata={"description": "start of the interval"})
    samples = fields.Integer()
    lat = fields.Float(allow_none=True)
    lon = fields.Float(allow_none=True)
    speed_mps = fields.Float(allow_none=True)
    battery_pct = fields.Float(allow_none=True)
    heading_deg = fields.Float(allow_none=True)
    odometer_m = fields.Float(allow_none=True, metadata={"description": "the last value in the interval"})


class TelemetryHistoryQuerySchema(StrictSchema):
    from_ = fields.DateTime(data_key="from", metadata={"description": "default: `to` minus one hour"})
    to = fields.DateTime(metadata={"description": "default: now"})
    interval = fields.String(metadata={"description": "average per bucket, e.g. 10s, 1m, 1h"},
                             validate=FullMatch(r"^[1-9]\d{0,5}(s|m|h)$",
                                                error="use e.g. 10s, 1m or 1h (1 to 999999 units)"))
    limit = fields.Integer(load_default=1000, validate=validate.Range(min=1, max=10000))
    cursor = fields.String(metadata={"description": "next_cursor from the previous page"})


class TelemetryHistorySchema(Schema):
    vehicle_id = fields.String()
    interval = fields.String(allow_none=True)
    items = fields.List(fields.Dict())
    next_cursor = fields.String(allow_none=True)


class StatusPointSchema(Schema):
    ts = fields.DateTime()
    received_at = fields.DateTime()
    seq = fields.Integer(allow_none=True)
    mode = fields.String()
    health = fields.String()
    battery_pct = fields.Float(allow_none=True)
    charging = fields.Boolean(allow_none=True)
    estop = fields.Boolean()
    errors = fields.List(fields.Dict())
    sw_version = fields.String(allow_none=True)
    clock_skewed = fields.Boolean()


class StatusHistorySchema(Schema):
    vehicle_id = fields.String()
    items = fields.List(fields.Nested(StatusPointSchema))
    next_cursor = fields.String(allow_none=True)


class LatestQuerySchema(StrictSchema):
    fleet_id = fields.String(validate=FLEET_ID)


class FleetLatestSchema(Schema):
    vehicle_id = fields.String()
    fleet_id = fields.String()
    online = fields.Boolean()
    last_seen_at = fields.DateTime(allow_none=True)
    telemetry = fields.Nested(LatestTelemetrySchema)
    health = fields.Nested(HealthSchema)


class FleetLatestListSchema(Schema):
    items = fields.List(fields.Nested(FleetLatestSchema))
    count = fields.Integer()


# --------------------------------------------------------------------------------------------------------------
# Missions
# --------------------------------------------------------------------------------------------------------------
class WaypointSchema(StrictSchema):
    lat = fields.Float(required=True, validate=validate.Range(min=-90, max=90))
    lon = fields.Float(required=True, validate=validate.Range(min=-180, max=180))
    alt_m = fields.Float(validate=validate.Range(min=-500, max=10000))
    speed_mps = fields.Float(validate=validate.Range(min=0, max=100))
    name = fields.String(validate=validate.Length(max=100))


class TaskSchema(StrictSchema):
    type = fields.String(required=True, validate=validate.Length(min=1, max=64))
    params = fields.Dict(keys=fields.String(), load_default=dict)


class MissionCreateSchema(StrictSchema):
    vehicle_id = fields.String(required=True, validate=VEHICLE_ID)
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    waypoints = fields.List(fields.Nested(WaypointSchema), load_default=list, validate=validate.Length(max=1000))
    tasks = fields.List(fields.Nested(TaskSchema), load_default=list, validate=validate.Length(max=200))
    priority = fields.Integer(load_default=0, validate=validate.Range(min=-100, max=100),
                              metadata={"description": "higher first; ties by age"})
    timeout_s = fields.Integer(validate=validate.Range(min=1, max=7 * 86400),
                               metadata={"description": "timed_out when no event arrives for this long"})
    ttl_s = fields.Integer(validate=validate.Range(min=1, max=30 * 86400),
                           metadata={"description": "expired when not dispatched within this time"})
    payload_kg = fields.Float(validate=validate.Range(min=0, max=100_000), metadata={
        "description": "what the vehicle will carry; refused (422) above its capability sheet's max_payload_kg"})
    max_attempts = fields.Integer(load_default=1, validate=validate.Range(min=1, max=20), metadata={
        "description": "attempts in all: an outcome listed in `retry_on` re-queues the mission until this many"})
    retry_on = fields.List(fields.String(validate=validate.OneOf(mission_states.RETRYABLE)),
                           load_default=lambda: list(mission_states.RETRYABLE), metadata={
                               "description": "outcomes that are retried (a cancel never is)"})

    @validates_schema
    def _something_to_do(self, data: dict, **_kwargs) -> None:
        if not data.get("waypoints") and not data.get("tasks"):
            raise ValidationError("give at least one waypoint or task", "waypoints")


class MissionUpdateSchema(StrictSchema):
    priority = fields.Integer(required=True, validate=validate.Range(min=-100, max=100),
                              metadata={"description": "higher first; only while queued"})


class ProgressSchema(Schema):
    percent = fields.Float(allow_none=True)
    step = fields.String(allow_none=True)
    eta_s = fields.Integer(allow_none=True)


class MissionEventSchema(Schema):
    id = fields.Integer()
    event = fields.String()
    from_state = fields.String(allow_none=True)
    to_state = fields.String()
    actor_type = fields.String()
    actor_id = fields.String(allow_none=True)
    server_time = fields.DateTime()
    device_time = fields.DateTime(allow_none=True)
    detail = fields.Dict()
    attempt = fields.Integer(metadata={"description": "the attempt this event belongs to"})


class MissionSchema(Schema):
    id = fields.UUID()
    vehicle_id = fields.String()
    fleet_id = fields.String()
    name = fields.String()
    state = fields.String(metadata={"enum": list(mission_states.STATES)})
    priority = fields.Integer()
    waypoints = fields.List(fields.Dict())
    tasks = fields.List(fields.Dict())
    timeout_s = fields.Integer(allow_none=True)
    ttl_s = fields.Integer(allow_none=True)
    expires_at = fields.DateTime(allow_none=True)
    progress = fields.Nested(ProgressSchema)
    failure_reason = fields.String(allow_none=True)
    created_by = fields.String(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    dispatched_at = fields.DateTime(allow_none=True)
    accepted_at = fields.DateTime(allow_none=True)
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    dispatch_attempts = fields.Integer(metadata={"description": "times the dispatch command was published"})
    attempt = fields.Integer(metadata={"description": "the current attempt (retry policy)"})
    max_attempts = fields.Integer()
    retry_on = fields.List(fields.String())
    payload_kg = fields.Float(allow_none=True)
    blocked_reason = fields.String(allow_none=True, metadata={
        "description": "queued and held back: emergency_stop, vehicle_estop, mode_manual, mode_service, "
                       "health_fatal, battery_low, vehicle_pending, vehicle_revoked, vehicle_decommissioned"})
    pending_command = fields.String(allow_none=True, metadata={
        "description": "cancel, pause or resume sent to the vehicle and not confirmed yet (re-sent until it is)"})
    pending_command_since = fields.DateTime(allow_none=True)
    command_sends = fields.Integer()


class MissionDetailSchema(MissionSchema):
    timeline = fields.List(fields.Nested(MissionEventSchema))


class MissionListQuerySchema(PageQuerySchema):
    vehicle_id = fields.String(validate=VEHICLE_ID)
    fleet_id = fields.String(validate=FLEET_ID)
    state = fields.String(validate=validate.OneOf(mission_states.STATES))
    from_ = fields.DateTime(data_key="from")
    to = fields.DateTime()


# --------------------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------------------
class ReportQuerySchema(StrictSchema):
    from_ = fields.DateTime(data_key="from", metadata={"description": "missions created at or after"})
    to = fields.DateTime(metadata={"description": "missions created before"})
    vehicle_id = fields.String(validate=VEHICLE_ID)
    fleet_id = fields.String(validate=FLEET_ID)
    state = fields.String(validate=validate.OneOf(mission_states.STATES))
    limit = fields.Integer(load_default=1000, validate=validate.Range(min=1, max=10000),
                           metadata={"description": "missions per page (the summary always covers all)"})
    cursor = fields.String(metadata={"description": "next_cursor of the previous page"})


class ReportVehicleSchema(Schema):
    id = fields.String()
    fleet_id = fields.String()
    name = fields.String(allow_none=True)
    model = fields.String(allow_none=True)
    status = fields.String()


class DurationsSchema(Schema):
    queue_wait_s = fields.Float(allow_none=True, metadata={"description": "created → dispatched"})
    time_to_accept_s = fields.Float(allow_none=True, metadata={"description": "dispatched → accepted"})
    execution_s = fields.Float(allow_none=True, metadata={"description": "accepted → finished"})
    total_s = fields.Float(allow_none=True, metadata={"description": "created → finished"})


class ReportMissionSchema(Schema):
    id = fields.UUID()
    name = fields.String()
    state = fields.String(metadata={"enum": list(mission_states.STATES)})
    priority = fields.Integer()
    vehicle = fields.Nested(ReportVehicleSchema)
    created_by = fields.String(allow_none=True)
    state_timestamps = fields.Dict(keys=fields.String(), values=fields.String(),
                                   metadata={"description": "first time (ISO 8601, server clock) the mission entered "
                                                            "each state"})
    device_timestamps = fields.Dict(keys=fields.String(), values=fields.String(), metadata={
        "description": "the same by the vehicle's clock (`ts`), for the states a vehicle event reached"})
    attempt = fields.Integer()
    max_attempts = fields.Integer()
    attempts = fields.List(fields.Nested(lambda: ReportAttemptSchema()), metadata={
        "description": "every attempt: dispatched, accepted (server and device time), outcome and its reason"})
    durations = fields.Nested(DurationsSchema)
    failure_reason = fields.String(allow_none=True)
    progress = fields.Nested(ProgressSchema)


class ReportAttemptSchema(Schema):
    attempt = fields.Integer()
    dispatched_at = fields.String(allow_none=True)
    accepted_at = fields.String(allow_none=True)
    accepted_device_time = fields.String(allow_none=True)
    outcome = fields.String(allow_none=True, metadata={"description": "the terminal state this attempt reached; "
                                                                      "null while it runs"})
    finished_at = fields.String(allow_none=True)
    finished_device_time = fields.String(allow_none=True)
    reason = fields.String(allow_none=True)


class ReportSummarySchema(Schema):
    total = fields.Integer()
    by_state = fields.Dict(keys=fields.String(), values=fields.Integer())
    by_vehicle = fields.List(fields.Dict(), metadata={"description": "[{vehicle_id, total, by_state}]"})
    failure_reasons = fields.List(fields.Dict(), metadata={"description": "[{state, failure_reason, n}]"})


class MissionReportSchema(Schema):
    generated_at = fields.DateTime()
    filters = fields.Dict()
    summary = fields.Nested(ReportSummarySchema)
    missions = fields.List(fields.Nested(ReportMissionSchema))
    next_cursor = fields.String(allow_none=True)


# --------------------------------------------------------------------------------------------------------------
# Alarms and their webhooks
# --------------------------------------------------------------------------------------------------------------
ALARM_KINDS = ("vehicle_offline", "battery_low", "health", "estop_active", "mission_failed", "mission_timed_out",
               "mission_stalled", "dead_letter_spike")
SEVERITIES = ("info", "warning", "critical")


class AlarmSchema(Schema):
    id = fields.Integer()
    kind = fields.String(metadata={"description": ", ".join(ALARM_KINDS)})
    subject = fields.String(metadata={"description": "what it is about: the vehicle id, or the mission id"})
    fleet_id = fields.String()
    vehicle_id = fields.String(allow_none=True)
    mission_id = fields.String(allow_none=True)
    severity = fields.String(metadata={"description": "info, warning or critical"})
    state = fields.String(metadata={"description": "active → acknowledged → cleared"})
    in_condition = fields.Boolean(metadata={"description": "whether its condition still holds; an alarm is cleared "
                                                           "once it is over and acknowledged"})
    count = fields.Integer(metadata={"description": "how often it was raised before it was cleared"})
    message = fields.String()
    details = fields.Dict()
    first_raised_at = fields.String()
    last_raised_at = fields.String()
    condition_ended_at = fields.String(allow_none=True)
    acknowledged_at = fields.String(allow_none=True)
    acknowledged_by = fields.String(allow_none=True)
    cleared_at = fields.String(allow_none=True)
    cleared_by = fields.String(allow_none=True, metadata={"description": "an operator, or `system`"})
    updated_at = fields.String()


class AlarmEventSchema(Schema):
    id = fields.Integer()
    event = fields.String(metadata={"description": "raised, repeated, escalated, condition_ended, acknowledged, "
                                                   "cleared"})
    at = fields.DateTime()
    actor = fields.String()
    detail = fields.Dict()


class AlarmDetailSchema(AlarmSchema):
    history = fields.List(fields.Nested(AlarmEventSchema))


class AlarmListQuerySchema(PageQuerySchema):
    state = fields.String(validate=validate.OneOf(("active", "acknowledged", "cleared", "open")),
                          metadata={"description": "`open`: active or acknowledged"})
    severity = fields.String(validate=validate.OneOf(SEVERITIES))
    kind = fields.String(validate=validate.OneOf(ALARM_KINDS))
    fleet_id = fields.String(validate=FLEET_ID)
    vehicle_id = fields.String(validate=VEHICLE_ID)
    mission_id = fields.UUID()
    since = fields.DateTime(metadata={"description": "last raised at or after"})


class AcknowledgeSchema(StrictSchema):
    comment = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))


class AlarmSettingsSchema(StrictSchema):
    offline_after_s = fields.Float(validate=validate.Range(min=1, max=30 * 86400),
                                   metadata={"description": "offline longer than this raises vehicle_offline"})
    battery_low_pct = fields.Float(validate=validate.Range(min=0, max=100))
    battery_clear_pct = fields.Float(validate=validate.Range(min=0, max=100),
                                     metadata={"description": "battery_low is over above this (≥ battery_low_pct)"})
    mission_stalled_after_s = fields.Float(validate=validate.Range(min=1, max=30 * 86400))
    dead_letter_window_s = fields.Float(validate=validate.Range(min=1, max=86400))
    dead_letter_threshold = fields.Integer(validate=validate.Range(min=1, max=1_000_000))


class WebhookCreateSchema(StrictSchema):
    url = fields.Url(required=True, schemes={"http", "https"}, require_tld=False,
                     validate=validate.Length(max=2000))
    fleet_id = fields.String(load_default=None, allow_none=True, validate=FLEET_ID,
                             metadata={"description": "only this fleet's alarms; null: every fleet"})
    min_severity = fields.String(load_default="info", validate=validate.OneOf(SEVERITIES))


class WebhookSchema(Schema):
    id = fields.Integer()
    url = fields.String()
    fleet_id = fields.String(allow_none=True)
    min_severity = fields.String()
    active = fields.Boolean()
    created_at = fields.DateTime()
    created_by = fields.String()
    pending = fields.Integer(metadata={"description": "deliveries waiting for their next attempt"})


class WebhookCreatedSchema(WebhookSchema):
    secret = fields.String(metadata={"description": "signs every delivery (X-Fleet-Signature); shown only here"})


class WebhookListSchema(Schema):
    items = fields.List(fields.Nested(WebhookSchema))


class DeliveryQuerySchema(PageQuerySchema):
    state = fields.String(validate=validate.OneOf(("pending", "delivered", "failed")))


class DeliverySchema(Schema):
    id = fields.Integer()
    alarm_event_id = fields.Integer()
    alarm_id = fields.Integer()
    event = fields.String()
    state = fields.String(metadata={"description": "pending (retrying), delivered, or failed (gave up)"})
    attempts = fields.Integer()
    next_attempt_at = fields.DateTime()
    last_attempt_at = fields.DateTime(allow_none=True)
    last_status = fields.Integer(allow_none=True, metadata={"description": "the receiver's HTTP status"})
    last_error = fields.String(allow_none=True)
    delivered_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()


# --------------------------------------------------------------------------------------------------------------
# Audit log
# --------------------------------------------------------------------------------------------------------------
class AuditQuerySchema(StrictSchema):
    actor = fields.String(validate=validate.Length(min=1, max=200), metadata={"description": "who (actor_id)"})
    action = fields.String(validate=validate.Length(min=1, max=100), metadata={"example": "emergency.stop"})
    target_type = fields.String(validate=validate.Length(min=1, max=50), metadata={"example": "vehicle"})
    target_id = fields.String(validate=validate.Length(min=1, max=200))
    from_ = fields.DateTime(data_key="from", metadata={"description": "at or after"})
    to = fields.DateTime(metadata={"description": "before"})
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = fields.String(metadata={"description": "next_cursor of the previous page"})


class AuditEntrySchema(Schema):
    id = fields.Integer()
    at = fields.DateTime()
    actor_type = fields.String(metadata={"enum": ["operator", "vehicle", "system"]})
    actor_id = fields.String(allow_none=True)
    action = fields.String()
    target_type = fields.String(allow_none=True)
    target_id = fields.String(allow_none=True)
    detail = fields.Dict()


class AuditPageSchema(Schema):
    items = fields.List(fields.Nested(AuditEntrySchema))
    next_cursor = fields.String(allow_none=True)
