// The Evacuate dashboard: reads /v1/hosts and /v1/evacuations, and re-reads them when
// the live stream (/v1/events/stream, Server-Sent Events) says something happened.
// Every stream event is also kept for the timeline of its evacuation. No framework, no
// build step; everything from the API is put in the page as text, never as HTML.
"use strict";

const STATES = ["up", "suspect", "fencing", "down", "isolated", "returning", "maintenance"];
const RECENT = 6;            // closed evacuations shown
const HOST_WINDOW_MS = 300e3; // host events this long before an evacuation belong to its timeline
const POLL_MS = 10e3;         // re-read even without events (the stream may be down)

const state = { token: "", hosts: [], evacs: [], details: {}, events: [], source: null, timer: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function when(iso) {
  if (!iso) return "-";
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toISOString().replace("T", " ").slice(0, 23);
}

// --- the token: from the URL fragment (never sent to a server), kept for this tab ----
function takeToken() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("evacuate-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("evacuate-token") || "";
}

function askToken(message) {
  document.getElementById("main").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
}

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + state.token } });
  if (r.status === 401 || r.status === 403) {
    sessionStorage.removeItem("evacuate-token");
    throw Object.assign(new Error("token refused"), { auth: true });
  }
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

// --- reading the state ---------------------------------------------------------------
async function load() {
  try {
    const [hosts, evacs] = await Promise.all([api("/v1/hosts"), api("/v1/evacuations?limit=20")]);
    state.hosts = hosts.items;
    state.evacs = evacs.items;
    const wanted = evacs.items.filter((e, i) => e.status === "running" || i < RECENT);
    const details = await Promise.all(wanted.map((e) => api("/v1/evacuations/" + e.id)));
    for (const d of details) state.details[d.id] = d;
    render();
    document.getElementById("updated").textContent = "updated " + when(new Date().toISOString());
  } catch (err) {
    if (err.auth) { stopStream(); askToken("the API refused this token"); return; }
    document.getElementById("updated").textContent = "read failed: " + err.message;
  }
}

function reloadSoon() {
  clearTimeout(state.timer);
  state.timer = setTimeout(load, 250);
}

// --- the live stream -------------------------------------------------------------------
function setLive(status) {
  const badge = document.getElementById("live");
  badge.dataset.live = status;
  badge.textContent = status;
}

function keep(events) {
  const seen = new Set(state.events.map((e) => e.id));
  for (const e of events) if (!seen.has(e.id)) { state.events.push(e); seen.add(e.id); }
  state.events.sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
  if (state.events.length > 2000) state.events.splice(0, state.events.length - 2000);
}

async function loadRecentEvents() { // what this API process saw before the page was opened
  try { keep((await api("/v1/events?limit=1000")).items); } catch (err) { /* the stream still works */ }
}

function stopStream() {
  if (state.source) state.source.close();
  state.source = null;
}

function startStream() {
  stopStream();
  const src = new EventSource("/v1/events/stream?access_token=" + encodeURIComponent(state.token));
  state.source = src;
  src.onopen = () => { setLive("live"); reloadSoon(); };
  src.onerror = () => setLive("reconnecting"); // EventSource retries by itself, with Last-Event-ID
  src.onmessage = (msg) => { keep([JSON.parse(msg.data)]); reloadSoon(); };
  src.addEventListener("lagged", () => {
    setLive("lagged");
    setTimeout(startStream, 500); // dropped for being slow: connect again and re-read
  });
}

// --- rendering -------------------------------------------------------------------------
function renderHosts() {
  const byState = {};
  for (const h of state.hosts) (byState[h.state] = byState[h.state] || []).push(h);
  const order = STATES.concat(Object.keys(byState).filter((s) => !STATES.includes(s)).sort());
  const boxes = order.filter((s) => byState[s]).map((s) =>
    el("div", { class: "state", "data-state": s },
      el("h3", {}, `${s} (${byState[s].length})`),
      byState[s].map((h) => el("div", { class: "host", "data-host": h.name, "data-state": h.state },
        el("strong", {}, h.name), " ",
        el("span", { class: "muted why" }, [h.state_reason || "", h.enabled ? "" : " (disabled)",
          h.reserved ? " (reserved)" : ""].join("")),
      ))));
  document.getElementById("hosts").replaceChildren(...(boxes.length ? boxes : [el("p", { class: "muted" }, "no hosts")]));
}

function timelineOf(evac) {
  const start = Date.parse(evac.created_at) - HOST_WINDOW_MS;
  const end = evac.completed_at ? Date.parse(evac.completed_at) + 1000 : Infinity;
  const rows = [];
  const names = {};
  for (const i of (state.details[evac.id] || {}).items || []) names[i.instance_uuid] = i.instance_name;
  for (const a of (state.details[evac.id] || {}).audit || []) {
    rows.push({ at: a.at, kind: a.kind, text: a.detail, from: "audit" });
  }
  for (const e of state.events) {
    const t = Date.parse(e.at);
    const mine = e.evacuation_id === evac.id ||
      (e.kind === "host" && e.host === evac.source && t >= start && t <= end) ||
      (e.type === "EvacuationRequested" && e.host === evac.source && t >= start && t <= end);
    const uuid = e.data && e.data.instance_uuid;
    const text = uuid && names[uuid] ? e.text.replace(uuid, names[uuid]) : e.text;
    if (mine) rows.push({ at: e.at, kind: e.type, text: text, from: "event" });
  }
  rows.sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
  return el("ol", { class: "timeline", "data-timeline": evac.id },
    rows.map((r) => el("li", { "data-from": r.from },
      el("time", { datetime: r.at }, when(r.at)), el("span", { class: "kind" }, r.kind), r.text)));
}

function itemsTable(detail) {
  if (!detail || !detail.items) return el("p", { class: "muted" }, "items loading");
  return el("table", {},
    el("thead", {}, el("tr", {}, ["instance", "target", "attempt", "status", "reason"].map((h) => el("th", {}, h)))),
    el("tbody", {}, detail.items.map((i) => el("tr", { "data-item": i.instance_name },
      el("td", {}, i.instance_name), el("td", {}, i.target || "-"), el("td", {}, i.attempt),
      el("td", {}, el("span", { class: "status", "data-status": i.status }, i.status)),
      el("td", { class: "muted" }, i.reason || "")))));
}

function evacCard(evac) {
  const c = evac.counts;
  return el("div", { class: "evac", "data-evacuation": evac.id, "data-source": evac.source, "data-status": evac.status },
    el("h3", {}, `${evac.source} `, el("span", { class: "status", "data-status": evac.status }, evac.status),
      el("span", { class: "muted" }, ` — ${evac.trigger}, started ${when(evac.created_at)}`,
        evac.completed_at ? `, closed ${when(evac.completed_at)}` : "")),
    el("div", {}, el("progress", { max: c.items || 1, value: c.done }), ` ${c.done}/${c.items} rebuilt`,
      c.not_done ? `, ${c.not_done} not` : "", c.pending ? `, ${c.pending} pending` : ""),
    el("div", { class: "muted" }, evac.reason || ""),
    itemsTable(state.details[evac.id]),
    timelineOf(evac));
}

function render() {
  document.getElementById("login").hidden = true;
  document.getElementById("main").hidden = false;
  renderHosts();
  const running = state.evacs.filter((e) => e.status === "running");
  const closed = state.evacs.filter((e) => e.status !== "running").slice(0, RECENT);
  const none = () => el("p", { class: "muted" }, "none");
  document.getElementById("running").replaceChildren(...(running.length ? running.map(evacCard) : [none()]));
  document.getElementById("recent").replaceChildren(...(closed.length ? closed.map(evacCard) : [none()]));
  const hostEvents = state.events.filter((e) => e.kind === "host").slice(-30).reverse();
  document.getElementById("host-events").replaceChildren(...hostEvents.map((e) =>
    el("li", { "data-host": e.host }, el("time", { datetime: e.at }, when(e.at)),
      el("span", { class: "kind" }, e.type), e.text)));
}

// --- start -------------------------------------------------------------------------------
function begin() {
  state.token = takeToken();
  if (!state.token) { askToken(""); return; }
  loadRecentEvents().then(load).then(() => {
    if (state.token && !document.getElementById("main").hidden) startStream();
  });
}

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("evacuate-token", document.getElementById("token").value);
  begin();
});
setInterval(() => { if (state.token && !document.getElementById("main").hidden) load(); }, POLL_MS);
begin();
