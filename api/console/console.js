/* The operator console: one page over the operator API (/api/v1) and its event stream (/api/v1/events).
 *
 * It logs in like any client (tokens in sessionStorage, refreshed before they expire), reads the stream with
 * fetch() so the token travels in a header (EventSource cannot send one), keeps what the stream says in `state`,
 * and redraws the map and the lists from it. On a dropped stream it reconnects with Last-Event-ID and is sent what
 * it missed; an event can arrive twice, so everything is kept by id (and vehicles and alarms by their newest time).
 * Nothing here is loaded from outside the api: Leaflet is vendored, fonts are the system's.
 */
"use strict";
(() => {
  const API = "/api/v1";
  const STALE_MS = 15000;            // a vehicle with no news for this long is drawn grey
  const TRAIL_MINUTES = 10;          // the selected vehicle's trail
  const TRAIL_MAX_POINTS = 2000;
  const ACTIVE = new Set(["dispatched", "accepted", "in_progress", "cancel_requested"]);
  const TERMINAL = new Set(["completed", "failed", "rejected", "cancelled", "timed_out", "expired"]);
  const SEVERITY_RANK = { info: 0, warning: 1, critical: 2 };

  const $ = (id) => document.getElementById(id);
  const state = {
    user: null, columns: [], vehicles: new Map(), missions: new Map(), missionEvents: new Map(),
    alarms: new Map(), stops: new Map(), fleets: [], selected: null, lastEventId: null, fitted: false, draft: null, tab: "vehicles",
    live: "connecting", transitions: [], liveTransitionIds: new Set(),
  };
  const view = { map: null, markers: new Map(), trail: null, route: null, routeMarkers: [], draftLayer: null };
  let streamAbort = null;
  let refreshTimer = null;
  let renderQueued = false;
  let stopsLoading = null;

  // -- small helpers ------------------------------------------------------------------------------------------
  function esc(text) {
    return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
      "'": "&#39;" }[c]));
  }
  function ago(ms) {   // coarse on purpose: a list row is redrawn only when its text changes
    if (!ms) return "never";
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 10) return "just now";
    if (s < 60) return `${s - (s % 10)} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return new Date(ms).toLocaleString();
  }
  function clock(seconds) {
    const s = Math.max(0, Math.round(seconds));
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  }
  function time(iso) { return iso ? new Date(iso).toLocaleTimeString() : "—"; }
  function fmt(value, digits = 1, unit = "") {
    return value === null || value === undefined ? "—" : `${Number(value).toFixed(digits)}${unit}`;
  }
  function randomKey() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }
  // Redraw a list in place: rows are kept by key and rewritten only when their content changed, so a row under
  // the operator's pointer is not replaced while they click it.
  function patchList(list, items) {
    const existing = new Map([...list.children].map((li) => [li.dataset.key, li]));
    let previous = null;
    for (const item of items) {
      let li = existing.get(item.key);
      existing.delete(item.key);
      if (!li) { li = document.createElement("li"); li.dataset.key = item.key; }
      if (li.renderedHtml !== item.html) { li.innerHTML = item.html; li.renderedHtml = item.html; }
      if (li.className !== item.className) li.className = item.className;
      for (const [name, value] of Object.entries(item.data)) {
        if (li.dataset[name] !== String(value)) li.dataset[name] = value;
      }
      const next = previous ? previous.nextSibling : list.firstChild;
      if (next !== li) list.insertBefore(li, next);
      previous = li;
    }
    for (const li of existing.values()) li.remove();
  }

  function toast(text, kind = "") {
    const node = document.createElement("div");
    node.className = `toast ${kind}`;
    node.textContent = text;
    const shelf = $("toasts");
    shelf.appendChild(node);
    while (shelf.children.length > 4) shelf.firstChild.remove();
    setTimeout(() => node.remove(), 6000);
  }

  // -- the API ------------------------------------------------------------------------------------------------
  const tokens = {
    load() { try { return JSON.parse(sessionStorage.getItem("fleet.tokens")) || null; } catch { return null; } },
    save(body) {
      const saved = { access: body.access_token, refresh: body.refresh_token,
                      expiresAt: Date.now() + body.expires_in * 1000 };
      sessionStorage.setItem("fleet.tokens", JSON.stringify(saved));
      scheduleRefresh(saved);
      return saved;
    },
    clear() { sessionStorage.removeItem("fleet.tokens"); },
  };

  function scheduleRefresh(saved) {
    clearTimeout(refreshTimer);
    const due = Math.max(5000, saved.expiresAt - Date.now() - 60000);
    refreshTimer = setTimeout(() => refresh().catch(() => showLogin("your session has ended")), due);
  }

  async function refresh() {
    const saved = tokens.load();
    if (!saved) throw new Error("not logged in");
    const response = await fetch(`${API}/auth/refresh`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refresh_token: saved.refresh }) });
    if (!response.ok) { tokens.clear(); throw new Error("session ended"); }
    return tokens.save(await response.json());
  }

  async function api(path, { method = "GET", body, headers = {}, retry = true } = {}) {
    let saved = tokens.load();
    if (!saved) throw new Error("not logged in");
    if (saved.expiresAt - Date.now() < 15000) saved = await refresh();
    const init = { method, headers: { Authorization: `Bearer ${saved.access}`, ...headers } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(API + path, init);
    if (response.status === 401 && retry) {
      await refresh().catch(() => showLogin("your session has ended"));
      return api(path, { method, body, headers, retry: false });
    }
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) throw new Error(data && data.message ? data.message : `HTTP ${response.status}`);
    return data;
  }

  // -- login --------------------------------------------------------------------------------------------------
  function showLogin(message = "") {
    if (streamAbort) streamAbort.abort();
    clearTimeout(refreshTimer);
    $("app").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message;
    $("login-username").focus();
  }

  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("login-error").textContent = "";
    const response = await fetch(`${API}/auth/login`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username: $("login-username").value, password: $("login-password").value }) });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) { $("login-error").textContent = body.message || `login failed (${response.status})`; return; }
    tokens.save(body);
    $("login-password").value = "";
    start();
  });

  $("logout").addEventListener("click", async () => {
    await api("/auth/logout", { method: "POST", body: {} }).catch(() => {});
    tokens.clear();
    showLogin("logged out");
  });

  async function start() {
    state.user = await api("/auth/me");
    $("login").hidden = true;
    $("app").hidden = false;
    $("whoami").textContent = `${state.user.username} (${state.user.role})`;
    $("fleet-estop").hidden = state.user.role === "viewer";
    $("new-mission").hidden = state.user.role === "viewer";
    state.fleets = state.user.role === "admin"
      ? (await api("/fleets?per_page=500")).items.map((f) => f.id) : state.user.fleets;
    if (!view.map) await initMap();
    view.map.invalidateSize();
    stream();
  }

  // -- the event stream ---------------------------------------------------------------------------------------
  function setLive(value, text) {
    state.live = value;
    $("live-status").dataset.state = value;
    $("live-status").textContent = text;
  }

  async function stream() {
    if (streamAbort) streamAbort.abort();
    const controller = new AbortController();
    streamAbort = controller;
    let backoff = 1000;
    while (!controller.signal.aborted) {
      let reason = null;
      try {
        let saved = tokens.load();
        if (!saved) return;
        if (saved.expiresAt - Date.now() < 15000) saved = await refresh();
        const headers = { Authorization: `Bearer ${saved.access}`, Accept: "text/event-stream" };
        if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
        const response = await fetch(`${API}/events`, { headers, signal: controller.signal, cache: "no-store" });
        if (response.status === 401) { await refresh(); continue; }
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        setLive("live", "live");
        backoff = 1000;
        reason = await readEvents(response.body.getReader());
      } catch (error) {
        if (controller.signal.aborted) return;
        if (String(error.message).includes("session ended")) { showLogin("your session has ended"); return; }
      }
      if (reason === "session_ended") { tokens.clear(); showLogin("your session has ended"); return; }
      setLive("offline", "reconnecting…");
      await new Promise((resolve) => setTimeout(resolve, backoff));
      backoff = Math.min(backoff * 2, 10000);
    }
  }

  async function readEvents(reader) {
    const decoder = new TextDecoder();
    let buffer = "";
    let fields = {};
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return null;
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).replace(/\r$/, "");
        buffer = buffer.slice(newline + 1);
        if (line === "") {
          if (fields.event) {
            if (fields.id) state.lastEventId = fields.id;
            const ended = dispatch(fields.event, fields.data || "");
            if (ended) return ended;
          }
          fields = {};
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const name = colon < 0 ? line : line.slice(0, colon);
          const data = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          fields[name] = name === "data" && fields.data !== undefined ? `${fields.data}\n${data}` : data;
        }
      }
    }
  }

  function dispatch(event, data) {
    const body = JSON.parse(data);
    if (event === "snapshot") onSnapshot(body);
    else if (event === "vehicles") onVehicles(body.rows);
    else if (event === "mission") onMission(body);
    else if (event === "alarm") onAlarm(body);
    else if (event === "end") return body.reason;
    scheduleRender();
    return null;
  }

  function vehicleFromRow(row) {
    const vehicle = {};
    state.columns.forEach((column, i) => { vehicle[column] = row[i]; });
    return vehicle;
  }

  function onSnapshot(body) {
    state.columns = body.columns;
    state.vehicles.clear();
    for (const row of body.vehicles) { const v = vehicleFromRow(row); state.vehicles.set(v.id, v); }
    state.missions.clear();
    for (const mission of body.missions) state.missions.set(mission.id, mission);
    state.alarms.clear();
    for (const alarm of body.alarms) state.alarms.set(alarm.id, alarm);
    for (const marker of view.markers.values()) marker.remove();
    view.markers.clear();
    loadStops();
  }

  function onVehicles(rows) {
    for (const row of rows) {
      const fresh = vehicleFromRow(row);
      const known = state.vehicles.get(fresh.id);
      if (known && known.updated_ms > fresh.updated_ms) continue;   // a replayed, older state
      state.vehicles.set(fresh.id, fresh);
      if (known && Boolean(known.estop) !== Boolean(fresh.estop)) loadStops();   // a stop set or released
      else if (fresh.estop && awaitingConfirmation()) loadStopsSoon();   // the worker records confirmations
      if (state.selected && state.selected.type === "vehicle" && state.selected.id === fresh.id && view.trail
          && fresh.lat !== null && (!known || known.telemetry_ms !== fresh.telemetry_ms)) {
        view.trail.addLatLng([fresh.lat, fresh.lon]);
      }
    }
  }

  function onMission({ event, mission }) {
    const known = state.missions.get(mission.id);
    if (!known || Date.parse(known.updated_at) <= Date.parse(mission.updated_at)) state.missions.set(mission.id, mission);
    const events = state.missionEvents.get(mission.id) || new Map();
    if (!events.has(event.id)) events.set(event.id, event);
    state.missionEvents.set(mission.id, events);
    // every transition that arrived live, once (the timeline may have read it over REST already)
    if (event.from_state !== event.to_state && !state.liveTransitionIds.has(event.id)) {
      state.liveTransitionIds.add(event.id);
      state.transitions.push({ mission_id: mission.id, to_state: event.to_state, id: event.id });
    }
  }

  function onAlarm(alarm) {
    const known = state.alarms.get(alarm.id);
    if (known && Date.parse(known.updated_at) > Date.parse(alarm.updated_at)) return;
    state.alarms.set(alarm.id, alarm);
    const raisedNow = alarm.state === "active" && (!known || alarm.count > known.count || known.state !== "active");
    if (raisedNow) toast(`${alarm.severity.toUpperCase()}: ${alarm.subject} — ${alarm.message}`, `sev-${alarm.severity}`);
  }

  // The emergency stops in force. They are not in the event stream: a stop shows in it as the vehicles' `estop`
  // flag, so the list is read again when a flag changes, after the snapshot, and after this console's own actions.
  function loadStops() {
    if (stopsLoading) { stopsLoading.again = true; return stopsLoading.done; }
    const loading = { again: false };
    loading.done = (async () => {
      do {
        loading.again = false;
        try {
          const page = await api("/emergency-stops?per_page=500");
          state.stops = new Map(page.items.map((stop) => [stop.id, stop]));
        } catch (error) { toast(`emergency stops: ${error.message}`, "error"); }
      } while (loading.again);
      stopsLoading = null;
      scheduleRender();
    })();
    stopsLoading = loading;
    return loading.done;
  }
  // A confirmation is recorded by the worker after the vehicle's status arrived, with no event of its own: while a
  // listed stop waits for one, news from a stopped vehicle reads the list again, at most once a second.
  let stopsSoon = null;
  function awaitingConfirmation() { return [...state.stops.values()].some((stop) => stop.acknowledged < stop.vehicles); }
  function loadStopsSoon() {
    if (!stopsSoon) stopsSoon = setTimeout(() => { stopsSoon = null; loadStops(); }, 1000);
  }
  function stopTarget(stop) {
    if (stop.scope === "vehicle") return `/vehicles/${encodeURIComponent(stop.vehicle_id)}`;
    if (stop.scope === "fleet") return `/fleets/${encodeURIComponent(stop.fleet_id)}`;
    return "";
  }
  function stopLabel(stop) {
    if (stop.scope === "vehicle") return `vehicle ${stop.vehicle_id}`;
    if (stop.scope === "fleet") return `fleet ${stop.fleet_id}`;
    return "all fleets";
  }
  function canRelease(stop) {
    return state.user.role === "admin" || (state.user.role === "operator" && stop.scope !== "all");
  }

  // -- derived state ------------------------------------------------------------------------------------------
  function activeMissionOf(vehicleId) {
    let found = null;
    for (const m of state.missions.values()) {
      if (m.vehicle_id === vehicleId && ACTIVE.has(m.state)) found = m;
    }
    return found;
  }
  function isStale(v) { return !v.online || !v.last_seen_ms || Date.now() - v.last_seen_ms > STALE_MS; }
  function look(v) {
    if (isStale(v)) return "stale";
    if (v.estop || v.mode === "ESTOP" || v.health === "FATAL") return "bad";
    if (v.health === "WARNING") return "warn";
    if (activeMissionOf(v.id)) return "busy";
    return "ok";
  }
  function openAlarmsOf(vehicleId) {
    return [...state.alarms.values()].filter((a) => a.vehicle_id === vehicleId && a.state !== "cleared");
  }
  function missionDeadline(m) {
    if (m.state === "queued" && m.expires_at) return ["expires in", Date.parse(m.expires_at)];
    if (ACTIVE.has(m.state) && m.timeout_s) {
      return ["times out in", Date.parse(m.last_event_at || m.updated_at) + m.timeout_s * 1000];
    }
    return null;
  }

  // -- the map ------------------------------------------------------------------------------------------------
  async function initMap() {
    const settings = await fetch("config.json").then((r) => r.json()).catch(() => ({}));
    view.map = L.map("map", { attributionControl: Boolean(settings.tile_url) }).setView([48.137, 11.575], 14);
    if (settings.tile_url) {
      L.tileLayer(settings.tile_url, { maxZoom: 20, attribution: settings.tile_attribution || "" }).addTo(view.map);
    } else {
      const Grid = L.GridLayer.extend({
        createTile() {
          const tile = document.createElement("canvas");
          const size = this.getTileSize();
          tile.width = size.x; tile.height = size.y;
          const g = tile.getContext("2d");
          g.strokeStyle = "#e2e7ec";
          for (let i = 1; i < 4; i += 1) {
            g.beginPath(); g.moveTo((size.x * i) / 4, 0); g.lineTo((size.x * i) / 4, size.y); g.stroke();
            g.beginPath(); g.moveTo(0, (size.y * i) / 4); g.lineTo(size.x, (size.y * i) / 4); g.stroke();
          }
          g.strokeStyle = "#c9d1d9";
          g.strokeRect(0, 0, size.x, size.y);
          return tile;
        },
      });
      new Grid({ maxZoom: 22 }).addTo(view.map);
    }
    L.control.scale({ imperial: false }).addTo(view.map);
    view.trail = null;
    view.map.on("click", (event) => { if (state.draft) addDraftPoint(event.latlng); });
  }

  function markerHtml(v) {
    const battery = v.battery_pct === null ? "" : `${Math.round(v.battery_pct)}%`;
    return `<svg class="arrow" viewBox="0 0 28 28" style="transform: rotate(${v.heading_deg || 0}deg)">`
      + `<path d="M14 2 L24 25 L14 19 L4 25 Z"/></svg>`
      + (battery ? `<span class="badge${v.battery_pct < 20 ? " low" : ""}">${battery}</span>` : "");
  }

  function drawMarkers() {
    for (const v of state.vehicles.values()) {
      let marker = view.markers.get(v.id);
      if (v.lat === null || v.lon === null || v.status === "decommissioned") {
        if (marker) { marker.remove(); view.markers.delete(v.id); }
        continue;
      }
      const classes = `vehicle-marker state-${look(v)}${isSelected("vehicle", v.id) ? " selected" : ""}`;
      const html = markerHtml(v);
      if (!marker) {
        marker = L.marker([v.lat, v.lon], {
          icon: L.divIcon({ className: classes, html, iconSize: [28, 28], iconAnchor: [14, 14] }),
          title: v.name ? `${v.id} (${v.name})` : v.id, keyboard: false });
        marker.on("click", () => select("vehicle", v.id));
        marker.addTo(view.map);
        marker.getElement().dataset.vehicleId = v.id;
        marker.htmlCache = html;
        view.markers.set(v.id, marker);
      } else {
        marker.setLatLng([v.lat, v.lon]);
        const element = marker.getElement();
        if (element) {
          element.className = element.className.replace(/vehicle-marker.*$/, classes);
          if (marker.htmlCache !== html) { element.innerHTML = html; marker.htmlCache = html; }
        }
      }
      const element = marker.getElement();
      if (element) element.dataset.look = look(v);
    }
    for (const [id, marker] of view.markers) {
      if (!state.vehicles.has(id)) { marker.remove(); view.markers.delete(id); }
    }
    if (!state.fitted && view.markers.size) {
      const bounds = L.latLngBounds([...view.markers.values()].map((m) => m.getLatLng()));
      view.map.fitBounds(bounds.pad(0.5), { maxZoom: 16 });
      state.fitted = true;
    }
  }

  function clearSelectionLayers() {
    if (view.trail) { view.trail.remove(); view.trail = null; }
    if (view.route) { view.route.remove(); view.route = null; }
    view.routeMarkers.forEach((m) => m.remove());
    view.routeMarkers = [];
  }

  function drawRoute(mission) {
    if (view.route) { view.route.remove(); view.route = null; }
    view.routeMarkers.forEach((m) => m.remove());
    view.routeMarkers = [];
    if (!mission || !mission.waypoints || !mission.waypoints.length) return;
    const points = mission.waypoints.map((w) => [w.lat, w.lon]);
    view.route = L.polyline(points, { color: "#1565c0", dashArray: "6 6", weight: 2 }).addTo(view.map);
    view.routeMarkers = points.map((p, i) => L.marker(p, {
      icon: L.divIcon({ className: "waypoint-marker", html: String(i + 1), iconSize: [22, 22], iconAnchor: [11, 11] }),
      interactive: false, zIndexOffset: -1000 }).addTo(view.map));   // under the vehicles
  }

  async function loadTrail(vehicleId) {
    const from = new Date(Date.now() - TRAIL_MINUTES * 60000).toISOString();
    const page = await api(`/vehicles/${encodeURIComponent(vehicleId)}/telemetry?from=${encodeURIComponent(from)}`
                           + `&limit=${TRAIL_MAX_POINTS}`).catch(() => ({ items: [] }));
    if (!isSelected("vehicle", vehicleId)) return;
    if (view.trail) view.trail.remove();
    view.trail = L.polyline(page.items.map((p) => [p.lat, p.lon]), { color: "#6a1b9a", weight: 3, opacity: 0.7 })
      .addTo(view.map);
  }

  // -- selection and the detail panel -------------------------------------------------------------------------
  function isSelected(type, id) { return state.selected && state.selected.type === type && state.selected.id === id; }

  async function select(type, id) {
    state.selected = { type, id, detail: null };
    clearSelectionLayers();
    $("detail").hidden = false;
    view.map.invalidateSize();
    if (type === "vehicle") {
      loadTrail(id);
      const mission = activeMissionOf(id);
      drawRoute(mission);
      state.selected.detail = await api(`/vehicles/${encodeURIComponent(id)}`).catch((e) => ({ error: e.message }));
    } else {
      state.selected.detail = await api(`/missions/${id}`).catch((e) => ({ error: e.message }));
      const events = state.missionEvents.get(id) || new Map();
      for (const event of state.selected.detail.timeline || []) {
        if (!events.has(event.id)) events.set(event.id, { ...event, at: event.server_time });
      }
      state.missionEvents.set(id, events);
      drawRoute(state.missions.get(id) || state.selected.detail);
    }
    scheduleRender();
  }

  $("detail-close").addEventListener("click", () => {
    state.selected = null;
    clearSelectionLayers();
    $("detail").hidden = true;
    view.map.invalidateSize();
    scheduleRender();
  });

  function renderDetail() {
    const selected = state.selected;
    if (!selected) return;
    const body = $("detail-body");
    const html = selected.type === "vehicle" ? vehicleDetail(selected) : missionDetail(selected);
    if (body.renderedHtml !== html) { body.innerHTML = html; body.renderedHtml = html; }
  }

  function row(label, value) { return `<tr><td>${esc(label)}</td><td>${value}</td></tr>`; }

  function vehicleDetail(selected) {
    const v = state.vehicles.get(selected.id);
    const d = selected.detail || {};
    if (!v) return `<h2>${esc(selected.id)}</h2><p class="muted">not visible</p>`;
    const mission = activeMissionOf(v.id);
    const config = d.config || {};
    const operator = state.user.role !== "viewer";
    const inSync = config.reported_version === config.desired_version;
    const alarms = openAlarmsOf(v.id);
    return `<h2 data-vehicle-id="${esc(v.id)}"><span class="dot state-${look(v)}"></span> ${esc(v.id)}</h2>
      <p class="muted">${esc(v.name || "")} ${esc(d.model || "")} · fleet ${esc(v.fleet_id)} · ${esc(v.status)}</p>
      ${operator ? `<div class="buttons">
        <button id="vehicle-estop" class="danger" type="button">E-stop</button>
        <button id="vehicle-release" type="button">Release</button>
        <button id="vehicle-revoke" type="button" ${v.status === "revoked" ? "disabled" : ""}>Revoke</button>
      </div>` : ""}
      <h4>Presence</h4><table>
        ${row("online", `<span id="vehicle-online">${v.online ? "online" : "offline"}</span>`)}
        ${row("last seen", `<span id="vehicle-last-seen">${esc(ago(v.last_seen_ms))}</span>`)}
        ${row("since", esc(time(v.online ? d.presence?.connected_at : d.presence?.disconnected_at)))}
      </table>
      <h4>Latest telemetry</h4><table>
        ${row("position", `${fmt(v.lat, 5)}, ${fmt(v.lon, 5)}`)}
        ${row("heading", fmt(v.heading_deg, 0, "°"))}
        ${row("speed", fmt(v.speed_mps, 1, " m/s"))}
        ${row("battery", `<span id="vehicle-battery">${fmt(v.battery_pct, 0, " %")}</span>`)}
        ${row("device time", esc(v.telemetry_ms ? new Date(v.telemetry_ms).toLocaleTimeString() : "—"))}
      </table>
      <h4>Health</h4><table>
        ${row("mode", esc(v.mode || "—"))}
        ${row("health", `<span id="vehicle-health">${esc(v.health || "—")}</span>`)}
        ${row("e-stop", `<span id="vehicle-estop-state">${v.estop ? "ACTIVE" : "off"}</span>`)}
        ${row("errors", esc((d.health?.errors || []).map((e) => e.code || JSON.stringify(e)).join(", ") || "none"))}
      </table>
      ${mission ? `<h4>Mission</h4><p><a href="#" data-open-mission="${esc(mission.id)}">${esc(mission.name)}</a>
        <span class="chip ms-${esc(mission.state)}">${esc(mission.state)}</span></p>` : ""}
      ${alarms.length ? `<h4>Alarms</h4><ul class="timeline">${alarms.map((a) =>
        `<li><span class="chip sev-${esc(a.severity)}">${esc(a.severity)}</span> ${esc(a.kind)}: ${esc(a.message)}</li>`
      ).join("")}</ul>` : ""}
      <h4>Configuration <span class="muted">${inSync ? "in sync" : "waiting for the vehicle"}</span></h4>
      <table>${row(`desired v${config.desired_version ?? "—"}`, `<pre>${esc(JSON.stringify(config.desired ?? {}, null, 1))}</pre>`)}
        ${row(`reported v${config.reported_version ?? "—"}`, `<pre>${esc(JSON.stringify(config.reported ?? null, null, 1))}</pre>`)}
      </table>`;
  }

  function missionDetail(selected) {
    const m = state.missions.get(selected.id) || selected.detail || {};
    if (!m.id) return `<h2>mission</h2><p class="error">${esc(selected.detail?.error || "not found")}</p>`;
    const events = [...(state.missionEvents.get(m.id) || new Map()).values()].sort((a, b) => a.id - b.id);
    const deadline = missionDeadline(m);
    const canCancel = state.user.role !== "viewer" && !TERMINAL.has(m.state) && m.state !== "cancel_requested";
    return `<h2 data-mission-id="${esc(m.id)}">${esc(m.name)}</h2>
      <p><span id="mission-state" class="chip ms-${esc(m.state)}">${esc(m.state)}</span>
         ${deadline ? `<span class="muted">${esc(deadline[0])} ${clock((deadline[1] - Date.now()) / 1000)}</span>` : ""}</p>
      ${canCancel ? `<div class="buttons"><button id="mission-cancel" type="button">Cancel mission</button></div>` : ""}
      <table>
        ${row("vehicle", `<a href="#" data-open-vehicle="${esc(m.vehicle_id)}">${esc(m.vehicle_id)}</a>`)}
        ${row("priority", esc(m.priority))}
        ${row("progress", m.progress && m.progress.percent !== null
          ? `${fmt(m.progress.percent, 0, " %")} ${esc(m.progress.step || "")}` : "—")}
        ${row("waypoints", esc((m.waypoints || []).length))}
        ${row("created", `${esc(time(m.created_at))} by ${esc(m.created_by || "—")}`)}
        ${m.failure_reason ? row("reason", esc(m.failure_reason)) : ""}
      </table>
      <h4>Timeline</h4><ol id="mission-timeline" class="timeline">${foldProgress(events).map(({ e, repeats }) =>
        `<li data-to-state="${esc(e.to_state)}">${esc(time(e.at))} · ${esc(e.event)}${repeats > 1 ? ` ×${repeats}` : ""}
          ${e.from_state !== e.to_state ? `→ <b>${esc(e.to_state)}</b>` : ""}
          <span class="muted">${esc(e.actor_type)}${e.actor_id ? ` ${esc(e.actor_id)}` : ""}</span></li>`).join("")}</ol>`;
  }

  // Progress reports that change no state are folded into one line (the last one, and how many there were).
  function foldProgress(events) {
    const folded = [];
    for (const e of events) {
      const last = folded[folded.length - 1];
      if (last && e.from_state === e.to_state && last.e.to_state === e.to_state && last.e.event === e.event) {
        last.repeats += 1;
        last.e = { ...e, from_state: last.e.from_state };
      } else {
        folded.push({ e, repeats: 1 });
      }
    }
    return folded;
  }

  $("detail-body").addEventListener("click", async (event) => {
    const target = event.target.closest("button, a");
    if (!target) return;
    event.preventDefault();
    const selected = state.selected;
    if (target.dataset.openMission) { select("mission", target.dataset.openMission); return; }
    if (target.dataset.openVehicle) { select("vehicle", target.dataset.openVehicle); return; }
    const id = selected && selected.id;
    try {
      if (target.id === "vehicle-estop") {
        const result = await api(`/vehicles/${encodeURIComponent(id)}/emergency-stop`, { method: "POST",
          body: { reason: `e-stop from the console by ${state.user.username}` } });
        toast(`e-stop sent to ${id}${result.delivered ? "" : " (vehicle offline: it gets it when it connects)"}`,
          "sev-critical");
        loadStops();
      } else if (target.id === "vehicle-release") {
        if (!await confirmModal({ title: `Release ${id}?`, text: "The vehicle may move again.", word: null })) return;
        const result = await api(`/vehicles/${encodeURIComponent(id)}/emergency-release`, { method: "POST", body: {} });
        const held = (result.still_stopped_by || []).map(stopLabel);
        toast(held.length ? `${id}'s own stop released; still stopped by ${held.join(", ")}` : `release sent to ${id}`);
        loadStops();
      } else if (target.id === "vehicle-revoke") {
        const answer = await confirmModal({ title: `Revoke ${id}?`, word: id, reason: true,
          text: "Its device secret stops working and its MQTT session is closed. It needs a new enrollment." });
        if (!answer) return;
        await api(`/vehicles/${encodeURIComponent(id)}/revoke`, { method: "POST", body: { reason: answer.reason || null } });
        toast(`${id} revoked`);
        state.selected.detail = await api(`/vehicles/${encodeURIComponent(id)}`).catch(() => state.selected.detail);
      } else if (target.id === "mission-cancel") {
        await api(`/missions/${id}/cancel`, { method: "POST", body: {} });
        toast("cancel requested");
      }
    } catch (error) {
      toast(error.message, "error");
    }
    scheduleRender();
  });

  // -- confirmation dialog ------------------------------------------------------------------------------------
  function confirmModal({ title, text = "", word = null, reason = false, reasonRequired = false, scopes = null }) {
    return new Promise((resolve) => {
      $("modal-scope-label").hidden = !scopes;
      $("modal-scope").innerHTML = (scopes || []).map(([value, label]) =>
        `<option value="${esc(value)}">${esc(label)}</option>`).join("");
      $("modal-title").textContent = title;
      $("modal-text").textContent = text;
      $("modal-reason-label").hidden = !reason;
      $("modal-reason").value = "";
      $("modal-reason").required = reasonRequired;
      $("modal-confirm-label").hidden = !word;
      $("modal-word").textContent = word || "";
      $("modal-confirm").value = "";
      $("modal").hidden = false;
      (word ? $("modal-confirm") : reason ? $("modal-reason") : $("modal-ok")).focus();
      const close = (answer) => {
        $("modal").hidden = true;
        $("modal-form").onsubmit = null;
        $("modal-cancel").onclick = null;
        resolve(answer);
      };
      $("modal-form").onsubmit = (event) => {
        event.preventDefault();
        if (word && $("modal-confirm").value.trim() !== word) { $("modal-confirm").focus(); return; }
        close({ reason: $("modal-reason").value.trim(), scope: $("modal-scope").value });
      };
      $("modal-cancel").onclick = () => close(null);
    });
  }

  $("fleet-estop").addEventListener("click", async () => {
    const scopes = state.fleets.map((fleet) => [`fleet:${fleet}`, `every vehicle of fleet ${fleet}`]);
    if (state.user.role === "admin") scopes.push(["all", "every vehicle of every fleet"]);
    if (!scopes.length) { toast("you operate no fleet", "error"); return; }
    const answer = await confirmModal({ title: "Emergency stop", word: "STOP", reason: true, reasonRequired: true,
      scopes, text: "The vehicles stop at once, vehicles that connect later too, and stay stopped until the stop "
        + "is released from the Stops tab." });
    if (!answer) return;
    const path = answer.scope === "all" ? "/emergency-stop"
      : `/fleets/${encodeURIComponent(answer.scope.slice("fleet:".length))}/emergency-stop`;
    try {
      const result = await api(path, { method: "POST", body: { reason: answer.reason } });
      toast(`${stopLabel(result.stop)} stopped: ${result.vehicles} vehicle(s)`, "sev-critical");
      await loadStops();
      showTab("stops");
    } catch (error) { toast(error.message, "error"); }
  });

  // -- new mission by clicking the map ------------------------------------------------------------------------
  $("new-mission").addEventListener("click", () => {
    state.draft = { points: [] };
    view.draftLayer = L.layerGroup().addTo(view.map);
    const select = $("draft-vehicle");
    const choices = [...state.vehicles.values()].filter((v) => v.status === "active").sort((a, b) =>
      a.id.localeCompare(b.id));
    select.innerHTML = choices.map((v) => `<option value="${esc(v.id)}">${esc(v.id)}${v.online ? "" : " (offline)"}`
      + "</option>").join("");
    if (state.selected && state.selected.type === "vehicle") select.value = state.selected.id;
    $("draft-count").textContent = "0";
    $("mission-draft").hidden = false;
    $("map").classList.add("drafting");
  });

  function addDraftPoint(latlng) {
    state.draft.points.push(latlng);
    redrawDraft();
  }

  function redrawDraft() {
    view.draftLayer.clearLayers();
    const points = state.draft.points;
    if (points.length > 1) L.polyline(points, { color: "#ef6c00", dashArray: "4 6" }).addTo(view.draftLayer);
    points.forEach((p, i) => L.marker(p, { interactive: false, icon: L.divIcon({ className: "waypoint-marker draft",
      html: String(i + 1), iconSize: [22, 22], iconAnchor: [11, 11] }) }).addTo(view.draftLayer));
    $("draft-count").textContent = String(points.length);
  }

  function endDraft() {
    state.draft = null;
    if (view.draftLayer) { view.draftLayer.remove(); view.draftLayer = null; }
    $("mission-draft").hidden = true;
    $("map").classList.remove("drafting");
  }

  $("draft-undo").addEventListener("click", () => { state.draft.points.pop(); redrawDraft(); });
  $("draft-cancel").addEventListener("click", endDraft);
  $("draft-create").addEventListener("click", async () => {
    const points = state.draft.points;
    if (!points.length) { toast("click the map to add at least one waypoint", "error"); return; }
    const body = { vehicle_id: $("draft-vehicle").value, name: $("draft-name").value.trim() || "console mission",
                   priority: Number($("draft-priority").value) || 0,
                   waypoints: points.map((p) => ({ lat: Number(p.lat.toFixed(7)), lon: Number(p.lng.toFixed(7)) })) };
    try {
      const mission = await api("/missions", { method: "POST", body, headers: { "Idempotency-Key": randomKey() } });
      state.missions.set(mission.id, { ...mission, ...(state.missions.get(mission.id) || {}) });
      endDraft();
      toast(`mission created: ${mission.state}`);
      showTab("missions");
      select("mission", mission.id);
    } catch (error) { toast(error.message, "error"); }
  });

  // -- lists --------------------------------------------------------------------------------------------------
  function showTab(name) {
    state.tab = name;
    document.querySelectorAll(".tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
    for (const tab of ["vehicles", "missions", "alarms", "stops"]) $(`tab-${tab}`).hidden = tab !== name;
    scheduleRender();
  }
  document.querySelectorAll(".tabs button").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
  for (const id of ["vehicle-search", "vehicle-filter", "mission-filter", "alarm-filter"]) {
    $(id).addEventListener("input", scheduleRender);
  }

  function vehicleMatches(v) {
    const query = $("vehicle-search").value.trim().toLowerCase();
    if (query && !v.id.toLowerCase().includes(query) && !(v.name || "").toLowerCase().includes(query)) return false;
    switch ($("vehicle-filter").value) {
      case "online": return !isStale(v);
      case "offline": return isStale(v);
      case "mission": return Boolean(activeMissionOf(v.id));
      case "estop": return Boolean(v.estop || v.mode === "ESTOP");
      case "alarm": return openAlarmsOf(v.id).length > 0;
      default: return true;
    }
  }

  function renderVehicles() {
    const all = [...state.vehicles.values()].filter((v) => v.status !== "decommissioned");
    const shown = all.filter(vehicleMatches).sort((a, b) => a.id.localeCompare(b.id)).slice(0, 500);
    $("vehicle-count").textContent = String(all.length);
    patchList($("vehicle-list"), shown.map((v) => ({
      key: v.id, className: isSelected("vehicle", v.id) ? "selected" : "", data: { vehicleId: v.id, look: look(v) },
      html: `<span class="dot state-${look(v)}"></span>
        <span class="grow">${esc(v.id)} <span class="sub">${esc(v.name || "")}</span><br>
        <span class="sub">${v.online ? "online" : "offline"} · seen ${esc(ago(v.last_seen_ms))}</span></span>
        <span class="sub">${v.battery_pct === null ? "" : `${Math.round(v.battery_pct)} %`}</span>` })));
  }

  function renderMissions() {
    const filter = $("mission-filter").value;
    const all = [...state.missions.values()].sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at));
    const shown = all.filter((m) => filter === "all" || !TERMINAL.has(m.state));
    $("mission-count").textContent = String(all.filter((m) => !TERMINAL.has(m.state)).length);
    patchList($("mission-list"), shown.map((m) => {
      const deadline = missionDeadline(m);
      return { key: m.id, className: isSelected("mission", m.id) ? "selected" : "",
               data: { missionId: m.id, state: m.state },
               html: `<span class="chip ms-${esc(m.state)}">${esc(m.state)}</span>
        <span class="grow">${esc(m.name)}<br><span class="sub">${esc(m.vehicle_id)}
        ${m.progress && m.progress.percent !== null ? ` · ${Math.round(m.progress.percent)} %` : ""}</span></span>
        <span class="sub countdown">${deadline ? `${esc(deadline[0])} ${clock((deadline[1] - Date.now()) / 1000)}` : ""}
        </span>` };
    }));
  }

  function renderAlarms() {
    const filter = $("alarm-filter").value;
    const all = [...state.alarms.values()].sort((a, b) => (SEVERITY_RANK[b.severity] - SEVERITY_RANK[a.severity])
      || Date.parse(b.last_raised_at) - Date.parse(a.last_raised_at));
    const shown = all.filter((a) => filter === "all" || (filter === "active" ? a.state === "active" : a.state !== "cleared"));
    const canAck = state.user.role !== "viewer";
    patchList($("alarm-list"), shown.map((a) => ({
      key: String(a.id), className: "", data: { alarmId: a.id, kind: a.kind, subject: a.subject, state: a.state },
      html: `<span class="chip sev-${esc(a.severity)}">${esc(a.severity)}</span>
        <span class="grow">${esc(a.kind.replace(/_/g, " "))} · ${esc(a.vehicle_id || a.subject)}${a.count > 1 ? ` ×${a.count}` : ""}
          <br><span class="sub">${esc(a.message)}</span>
          <br><span class="sub">${esc(a.state)}${a.acknowledged_by ? ` by ${esc(a.acknowledged_by)}` : ""}
          · ${esc(ago(Date.parse(a.last_raised_at)))}${a.in_condition ? "" : " · condition over"}</span></span>
        ${canAck && a.state === "active" ? `<button type="button" class="ack" data-ack="${a.id}">Ack</button>` : ""}` })));
  }

  function renderStops() {
    const all = [...state.stops.values()].sort((a, b) => Date.parse(b.set_at) - Date.parse(a.set_at));
    patchList($("stop-list"), all.map((stop) => ({
      key: String(stop.id), className: "", data: { stopId: stop.id, scope: stop.scope,
        subject: stop.vehicle_id || stop.fleet_id || "all" },
      html: `<span class="chip sev-critical">stop</span>
        <span class="grow">${esc(stopLabel(stop))}<br><span class="sub">${esc(stop.reason)}</span>
          <br><span class="sub">by ${esc(stop.set_by)} · ${esc(ago(Date.parse(stop.set_at)))}</span>
          <br><span class="sub"><span class="confirmed">${stop.acknowledged}/${stop.vehicles}</span> vehicles
          confirmed</span></span>
        ${canRelease(stop) ? `<button type="button" class="ack" data-release="${stop.id}">Release</button>` : ""}` })));
  }

  $("stop-list").addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-release]");
    const stop = button && state.stops.get(Number(button.dataset.release));
    if (stop) {
      const answer = await confirmModal({ title: `Release the stop on ${stopLabel(stop)}?`, reason: true,
        word: "RELEASE", text: "Vehicles held by no other stop may move again." });
      if (!answer) return;
      try {
        await api(`${stopTarget(stop)}/emergency-release`, { method: "POST", body: answer.reason ? { reason: answer.reason } : {} });
        toast(`${stopLabel(stop)} released`);
      } catch (error) { toast(error.message, "error"); }
      await loadStops();
      return;
    }
    const item = event.target.closest("li[data-stop-id]");
    const picked = item && state.stops.get(Number(item.dataset.stopId));
    if (picked && picked.scope === "vehicle") select("vehicle", picked.vehicle_id);
  });

  $("vehicle-list").addEventListener("click", (event) => {
    const item = event.target.closest("li[data-vehicle-id]");
    if (item) {
      select("vehicle", item.dataset.vehicleId);
      const v = state.vehicles.get(item.dataset.vehicleId);
      if (v && v.lat !== null) view.map.panTo([v.lat, v.lon]);
    }
  });
  $("mission-list").addEventListener("click", (event) => {
    const item = event.target.closest("li[data-mission-id]");
    if (item) select("mission", item.dataset.missionId);
  });
  $("alarm-list").addEventListener("click", async (event) => {
    const ack = event.target.closest("button[data-ack]");
    if (ack) {
      ack.disabled = true;
      try {
        const alarm = await api(`/alarms/${ack.dataset.ack}/acknowledge`, { method: "POST", body: {} });
        onAlarm(alarm);
      } catch (error) { toast(error.message, "error"); }
      scheduleRender();
      return;
    }
    const item = event.target.closest("li[data-alarm-id]");
    const alarm = item && state.alarms.get(Number(item.dataset.alarmId));
    if (alarm && alarm.vehicle_id) select("vehicle", alarm.vehicle_id);
  });

  // -- rendering ----------------------------------------------------------------------------------------------
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      render();
    });
  }

  function render() {
    if (!view.map || $("app").hidden) return;
    drawMarkers();
    if (state.tab === "vehicles") renderVehicles();
    if (state.tab === "missions") renderMissions();
    if (state.tab === "alarms") renderAlarms();
    if (state.tab === "stops") renderStops();
    $("stop-count").textContent = state.stops.size ? String(state.stops.size) : "";   // on every tab
    const active = [...state.alarms.values()].filter((a) => a.state === "active").length;
    $("alarm-count").textContent = active ? String(active) : "";   // on every tab
    renderDetail();
    if (state.selected && state.selected.type === "vehicle") {
      const mission = activeMissionOf(state.selected.id);
      if ((mission && mission.id) !== view.routeMission) { drawRoute(mission); view.routeMission = mission && mission.id; }
    }
  }
  setInterval(scheduleRender, 1000);   // countdowns, "last seen", staleness

  window.fleetConsole = { state, view };   // for the browser tests and the curious

  // -- go -----------------------------------------------------------------------------------------------------
  const saved = tokens.load();
  if (saved) {
    scheduleRefresh(saved);
    start().catch(() => showLogin());
  } else {
    showLogin();
  }
})();
