"""Plausible vehicle motion: follow a route of waypoints with bounded acceleration, turn rate and battery drain.

Pure computation, no I/O: ``Motion.step(dt)`` advances one vehicle by ``dt`` simulated seconds. Distances use a
local flat-earth approximation around the current point, which is accurate to well under a metre for the few
hundred metres one step covers.
"""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field

EARTH_RADIUS_M = 6_371_000.0
MAX_SUBSTEPS = 10


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine) in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial bearing from point 1 to point 2, degrees clockwise from north in [0, 360)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    x = math.sin(dl) * math.cos(p2)
    y = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(x, y)) % 360.0


def offset(lat: float, lon: float, heading: float, meters: float) -> tuple[float, float]:
    """The point ``meters`` away from (lat, lon) along ``heading`` degrees."""
    rad = math.radians(heading)
    dlat = meters * math.cos(rad) / EARTH_RADIUS_M
    dlon = meters * math.sin(rad) / (EARTH_RADIUS_M * max(math.cos(math.radians(lat)), 1e-6))
    return lat + math.degrees(dlat), lon + math.degrees(dlon)


def _turn_towards(current: float, target: float, max_delta: float) -> float:
    diff = (target - current + 540.0) % 360.0 - 180.0
    if abs(diff) <= max_delta:
        return target % 360.0
    return (current + math.copysign(max_delta, diff)) % 360.0


@dataclass(frozen=True)
class Waypoint:
    lat: float
    lon: float
    name: str | None = None
    speed_mps: float | None = None   # a per-leg speed limit from the mission

    @classmethod
    def from_dict(cls, raw: dict) -> Waypoint:
        lat, lon = float(raw["lat"]), float(raw["lon"])
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise ValueError(f"waypoint out of range: {lat}, {lon}")
        speed = raw.get("speed_mps")
        return cls(lat, lon, raw.get("name"), float(speed) if speed is not None else None)


@dataclass
class Profile:
    """The vehicle's physical limits and energy model."""
    cruise_mps: float = 5.0
    accel_mps2: float = 1.0
    decel_mps2: float = 2.0
    turn_rate_dps: float = 45.0
    arrive_radius_m: float = 2.0
    drain_pct_per_km: float = 1.5       # driving
    idle_drain_pct_per_h: float = 0.5   # electronics while standing
    charge_pct_per_min: float = 2.0


@dataclass
class Motion:
    """One vehicle's kinematic and energy state; ``route`` is what it is currently driving."""
    lat: float
    lon: float
    heading_deg: float = 0.0
    speed_mps: float = 0.0
    battery_pct: float = 100.0
    odometer_m: float = 0.0
    charging: bool = False
    profile: Profile = field(default_factory=Profile)
    route: list[Waypoint] = field(default_factory=list)
    leg: int = 0                 # index into ``route`` of the waypoint being driven to
    halted: bool = False         # emergency stop: brake to 0 and stay

    # -- route --------------------------------------------------------------------------------------------
    def follow(self, route: list[Waypoint]) -> None:
        self.route = list(route)
        self.leg = 0

    def clear_route(self) -> None:
        self.route = []
        self.leg = 0

    @property
    def arrived(self) -> bool:
        return self.leg >= len(self.route)

    def remaining_m(self) -> float:
        """Distance still to drive along the route (to the current target, then leg by leg)."""
        if self.arrived:
            return 0.0
        target = self.route[self.leg]
        total = distance_m(self.lat, self.lon, target.lat, target.lon)
        for a, b in itertools.pairwise(self.route[self.leg:]):
            total += distance_m(a.lat, a.lon, b.lat, b.lon)
        return total

    def eta_s(self) -> float:
        """Simulated seconds to the end of the route at cruise speed (0 when there)."""
        return self.remaining_m() / max(self._leg_speed_limit(), 0.1)

    def _leg_speed_limit(self) -> float:
        if self.arrived:
            return self.profile.cruise_mps
        limit = self.route[self.leg].speed_mps
        return min(self.profile.cruise_mps, limit) if limit else self.profile.cruise_mps

    # -- physics ------------------------------------------------------------------------------------------
    def step(self, dt: float) -> None:
        """Advance ``dt`` simulated seconds: steer and accelerate toward the target, move, use energy.

        Long steps (a high time scale) are split into at most ``MAX_SUBSTEPS`` pieces of about a second each.
        """
        if dt <= 0:
            return
        pieces = min(MAX_SUBSTEPS, max(1, math.ceil(dt)))
        for _ in range(pieces):
            self._step(dt / pieces)

    def _step(self, dt: float) -> None:
        if self.charging:
            self.speed_mps = 0.0
            self.battery_pct = min(100.0, self.battery_pct + self.profile.charge_pct_per_min * dt / 60.0)
            return
        target_speed = 0.0
        if not self.halted and not self.arrived and self.battery_pct > 0:
            target = self.route[self.leg]
            dist = distance_m(self.lat, self.lon, target.lat, target.lon)
            want = bearing_deg(self.lat, self.lon, target.lat, target.lon)
            self.heading_deg = _turn_towards(self.heading_deg, want, self.profile.turn_rate_dps * dt)
            error = abs((want - self.heading_deg + 540.0) % 360.0 - 180.0)
            # Slow down for the final waypoint so the vehicle can stop there: v² = 2·a·d.
            is_last = self.leg == len(self.route) - 1
            stop_speed = math.sqrt(2 * self.profile.decel_mps2 * dist) if is_last else float("inf")
            target_speed = min(self._leg_speed_limit(), max(stop_speed, 0.5))
            if error > 60.0:  # turn on the spot rather than orbit a waypoint inside the turning circle
                target_speed = min(target_speed, 1.0)
        if target_speed > self.speed_mps:
            self.speed_mps = min(target_speed, self.speed_mps + self.profile.accel_mps2 * dt)
        else:
            self.speed_mps = max(target_speed, self.speed_mps - self.profile.decel_mps2 * dt)
        travelled = self.speed_mps * dt
        self._advance(travelled)
        self.odometer_m += travelled
        drain = travelled / 1000.0 * self.profile.drain_pct_per_km + self.profile.idle_drain_pct_per_h * dt / 3600
        self.battery_pct = max(0.0, self.battery_pct - drain)

    def _advance(self, meters: float) -> None:
        # Move along the heading, snapping to waypoints that are reached within this step.
        while meters > 0 and not self.arrived:
            target = self.route[self.leg]
            dist = distance_m(self.lat, self.lon, target.lat, target.lon)
            if dist <= max(meters, self.profile.arrive_radius_m):
                self.lat, self.lon = target.lat, target.lon
                meters -= dist
                self.leg += 1
                if self.arrived:
                    self.speed_mps = 0.0
                    return
                nxt = self.route[self.leg]
                self.heading_deg = _turn_towards(self.heading_deg, bearing_deg(self.lat, self.lon, nxt.lat, nxt.lon),
                                                 self.profile.turn_rate_dps)
                continue
            self.lat, self.lon = offset(self.lat, self.lon, self.heading_deg, meters)
            return
        if self.arrived and meters > 0:
            self.speed_mps = 0.0


def patrol_route(rng: random.Random, lat: float, lon: float, radius_m: float = 300.0,
                 points: int = 4) -> list[Waypoint]:
    """A random closed loop around (lat, lon): what an idle vehicle drives when it has no mission."""
    route = []
    for i in range(points):
        heading = (360.0 / points) * i + rng.uniform(-20, 20)
        route.append(Waypoint(*offset(lat, lon, heading, rng.uniform(0.4, 1.0) * radius_m)))
    route.append(route[0])
    return route


def scatter(rng: random.Random, lat: float, lon: float, radius_m: float) -> tuple[float, float]:
    """A random start position within ``radius_m`` of (lat, lon)."""
    return offset(lat, lon, rng.uniform(0, 360), radius_m * math.sqrt(rng.random()))
