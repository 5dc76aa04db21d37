// b24-journal console: a single page over the read API. No framework, no
// build step, no inline code (the page's Content-Security-Policy forbids
// it). The read token lives in this tab's sessionStorage only.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "b24j-read-token";
const PAGE = 50;

const state = {
  portal: null,     // the portal shown, as named in the URL
  cursors: [],      // cursors of the pages before the current one
  cursor: null,     // cursor of the current page (null: newest)
  next: null,       // next_cursor of the current page
  shown: new Map(), // event id -> event, on screen
  newest: null,     // cursor of the newest event on the first page
  source: null,     // the live EventSource
  liveGen: 0,       // bumps when live mode restarts, to drop stale work
  domains: {},      // member id -> domain, from the portal list
};

function token() { return sessionStorage.getItem(KEY); }

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path) {
  const res = await fetch(path, { method, headers: { Authorization: "Bearer " + token() } });
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) {
    const msg = (body && body.error) || res.status + " " + res.statusText;
    if (res.status === 401) { signOut(msg); }
    throw new ApiError(res.status, msg);
  }
  return body;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c === null || c === undefined ? "" : c);
  return e;
}

function when(iso) {
  if (!iso) return "—";
  return iso.replace("T", " ").replace(/\.\d+Z$/, "Z").replace(/Z$/, " UTC");
}

function show(section) {
  for (const id of ["signin", "portals", "portal"]) $(id).hidden = id !== section;
  $("signout").hidden = section === "signin";
}

function signOut(message) {
  stopLive();
  sessionStorage.removeItem(KEY);
  $("signin-error").textContent = message || "";
  $("crumb").textContent = "";
  show("signin");
}

// --- Portal list ---------------------------------------------------------

async function showPortals() {
  stopLive();
  show("portals");
  $("crumb").textContent = "portals";
  const body = await api("GET", "/v1/portals");
  for (const p of body.portals) state.domains[p.member_id] = p.domain;
  const rows = body.portals.map((p) => {
    const name = p.domain || p.member_id;
    const tr = el("tr", { "data-portal": p.member_id },
      el("td", {}, el("div", {}, name), el("div", { class: "sub" }, p.domain ? p.member_id : "")),
      el("td", {}, el("span", { class: "state " + p.status }, p.status), " ", el("span", { class: "sub" }, p.source)),
      el("td", { class: "num" }, String(p.events)),
      el("td", { class: "num" }, String(p.duplicates)),
      el("td", {}, when(p.last_received_at)));
    tr.addEventListener("click", () => { location.hash = "#/p/" + encodeURIComponent(p.member_id); });
    return tr;
  });
  $("portal-table").tBodies[0].replaceChildren(...rows);
}

// --- One portal ----------------------------------------------------------

function filterParams() {
  const q = new URLSearchParams();
  const add = (name, id) => { const v = $(id).value.trim(); if (v) q.set(name, v); };
  add("event", "f-event");
  add("entity_id", "f-entity");
  add("since", "f-since");
  add("until", "f-until");
  return q;
}

async function showPortal(portal) {
  if (state.portal !== portal) {
    stopLive();
    $("live").checked = false;
    for (const id of ["f-event", "f-entity", "f-since", "f-until"]) $(id).value = "";
    state.portal = portal;
  }
  show("portal");
  $("detail").hidden = true;
  const domain = state.domains[portal];
  $("crumb").textContent = domain || portal;
  $("portal-title").textContent = domain ? `${domain} (${portal})` : portal;
  state.cursors = [];
  state.cursor = null;
  await Promise.all([loadPage(), loadChart()]);
}

async function loadPage() {
  $("portal-error").textContent = "";
  const q = filterParams();
  q.set("limit", String(PAGE));
  if (state.cursor) q.set("cursor", state.cursor);
  let body;
  try {
    body = await api("GET", `/v1/portals/${encodeURIComponent(state.portal)}/events?${q}`);
  } catch (e) {
    $("portal-error").textContent = e.message;
    return;
  }
  state.shown.clear();
  const rows = body.events.map((ev) => row(ev, false));
  $("events").tBodies[0].replaceChildren(...rows);
  state.next = body.next_cursor;
  if (!state.cursor) state.newest = body.events.length ? body.events[0].cursor : state.newest;
  $("older").disabled = !state.next;
  $("newer").disabled = state.cursors.length === 0 && !state.cursor;
  const page = state.cursors.length + 1;
  $("page-info").textContent = `page ${page} · ${body.events.length} events`;
}

function row(ev, fresh) {
  state.shown.set(ev.id, ev);
  const tr = el("tr", { class: fresh ? "fresh" : "", "data-id": ev.id },
    el("td", {}, when(ev.received_at)),
    el("td", {}, ev.event),
    el("td", {}, ev.entity_id === null ? "—" : ev.entity_id),
    el("td", {}, when(ev.ts)),
    el("td", { class: "num" }, String(ev.duplicates)));
  tr.addEventListener("click", () => detail(ev));
  return tr;
}

function detail(ev) {
  $("detail-id").textContent = ev.id;
  $("detail-json").textContent = JSON.stringify(ev, null, 2);
  $("detail").hidden = false;
  $("detail").scrollIntoView({ block: "nearest" });
}

async function loadChart() {
  const now = Math.floor(Date.now() / 1000);
  const since = now - 47 * 3600;
  let body;
  try {
    body = await api("GET", `/v1/portals/${encodeURIComponent(state.portal)}/stats?bucket=hour&since=${since}&until=${now}`);
  } catch (e) {
    $("chart").replaceChildren(el("p", { class: "error" }, e.message));
    return;
  }
  drawChart(body.buckets);
}

function drawChart(buckets) {
  const NS = "http://www.w3.org/2000/svg";
  const W = 960, H = 120, PAD = 16;
  const max = Math.max(1, ...buckets.map((b) => b.events));
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  const total = buckets.reduce((a, b) => a + b.events, 0);
  svg.setAttribute("aria-label", `${total} events in the last ${buckets.length} hours`);
  const w = W / buckets.length;
  buckets.forEach((b, i) => {
    const h = (b.events / max) * (H - PAD - 4);
    const r = document.createElementNS(NS, "rect");
    r.setAttribute("class", "bar");
    r.setAttribute("x", String(i * w + 1));
    r.setAttribute("y", String(H - PAD - h));
    r.setAttribute("width", String(Math.max(1, w - 2)));
    r.setAttribute("height", String(h));
    r.setAttribute("data-events", String(b.events));
    const t = document.createElementNS(NS, "title");
    t.textContent = `${when(b.time)}: ${b.events} events, ${b.duplicates} duplicates`;
    r.append(t);
    svg.append(r);
  });
  const label = (x, text, anchor) => {
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", String(x));
    t.setAttribute("y", String(H - 3));
    t.setAttribute("text-anchor", anchor);
    t.textContent = text;
    svg.append(t);
  };
  if (buckets.length) {
    label(2, when(buckets[0].time), "start");
    label(W - 2, `${when(buckets[buckets.length - 1].time)} · max ${max}/h`, "end");
  }
  $("chart").replaceChildren(svg);
}

// --- Live mode -----------------------------------------------------------
// A ticket (POST …/stream-tickets) opens the stream for EventSource, which
// cannot send Authorization. EventSource reconnects by itself and resends
// Last-Event-ID, so nothing is missed or repeated across a reconnect; a
// closed stream (ticket expired, service restarted past its retries) gets
// a new ticket and resumes after the last event shown.

async function startLive() {
  stopLive();
  const gen = ++state.liveGen;
  if (state.cursor) { state.cursor = null; state.cursors = []; await loadPage(); }
  if (gen !== state.liveGen) return;
  const q = filterParams();
  q.delete("since");
  q.delete("until");
  $("live-state").textContent = "connecting…";
  let ticket;
  try {
    ticket = await api("POST", `/v1/portals/${encodeURIComponent(state.portal)}/stream-tickets?${q}`);
  } catch (e) {
    $("live-state").textContent = "live mode failed: " + e.message;
    return;
  }
  if (gen !== state.liveGen) return;
  let url = ticket.stream_url;
  if (state.newest) url += "&cursor=" + encodeURIComponent(state.newest);
  const source = new EventSource(url);
  state.source = source;
  source.onopen = () => { $("live-state").textContent = "live"; };
  source.onmessage = (m) => {
    const ev = JSON.parse(m.data);
    state.newest = m.lastEventId || ev.cursor;
    if (state.shown.has(ev.id)) return;
    const body = $("events").tBodies[0];
    body.prepend(row(ev, true));
    while (body.rows.length > 500) body.deleteRow(-1);
  };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      $("live-state").textContent = "reconnecting…";
      setTimeout(() => { if (gen === state.liveGen && $("live").checked) startLive(); }, 1000);
    } else {
      $("live-state").textContent = "reconnecting…";
    }
  };
}

function stopLive() {
  state.liveGen++;
  if (state.source) { state.source.close(); state.source = null; }
  $("live-state").textContent = "";
}

// --- Wiring --------------------------------------------------------------

async function route() {
  if (!token()) { show("signin"); return; }
  const m = location.hash.match(/^#\/p\/(.+)$/);
  try {
    if (m) await showPortal(decodeURIComponent(m[1])); else await showPortals();
  } catch (e) {
    if (e.status !== 401) {
      const where = m ? "portal-error" : "signin-error";
      $(where).textContent = e.message;
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("token").value.trim());
    $("token").value = "";
    $("signin-error").textContent = "";
    location.hash = "#/";
    await route();
  });
  $("signout").addEventListener("click", () => signOut(""));
  $("home").addEventListener("click", (e) => { e.preventDefault(); location.hash = "#/"; });
  $("filters").addEventListener("submit", async (e) => {
    e.preventDefault();
    state.cursors = [];
    state.cursor = null;
    state.newest = null;
    await loadPage();
    if ($("live").checked) await startLive();
  });
  $("clear").addEventListener("click", () => {
    for (const id of ["f-event", "f-entity", "f-since", "f-until"]) $(id).value = "";
    $("filters").requestSubmit();
  });
  $("older").addEventListener("click", async () => {
    if (!state.next) return;
    $("live").checked = false;
    stopLive();
    state.cursors.push(state.cursor);
    state.cursor = state.next;
    await loadPage();
  });
  $("newer").addEventListener("click", async () => {
    state.cursor = state.cursors.length ? state.cursors.pop() : null;
    await loadPage();
  });
  $("live").addEventListener("change", () => { if ($("live").checked) startLive(); else stopLive(); });
  $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
  window.addEventListener("hashchange", route);
  route();
});
