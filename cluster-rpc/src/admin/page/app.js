"use strict";
// The admin page: reads the hub's snapshot feed (server-sent events over fetch, so the
// token travels in a header, never in a later URL) and renders it; actions are POSTs.

const TOKEN_KEY = "network-cluster-admin-token";
const HISTORY = 300; // seconds of rates the hub keeps (view::HISTORY_SECONDS)
const token = (() => {
  const params = new URLSearchParams(location.search);
  const given = params.get("token");
  if (given) {
    sessionStorage.setItem(TOKEN_KEY, given);
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
    return given;
  }
  return sessionStorage.getItem(TOKEN_KEY) || "";
})();
const auth = { Authorization: "Bearer " + token };

const $ = (id) => document.getElementById(id);
const view = { page: 0, perPage: 50, filter: "" };
let role = "read-only";
let feed = null;
let lastUpdate = 0;

// ---- formatting ----
const num = (n) => Math.round(n).toLocaleString("en-US");
const rate = (n) => (n >= 100 ? num(n) : n.toFixed(1));
function bytes(n) {
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : Math.round(n)) + " " + units[i];
}
function duration(s) {
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}
function since(ms) {
  return new Date(ms).toLocaleTimeString() + " (" + duration(Math.max(0, Math.round((Date.now() - ms) / 1000))) + " ago)";
}

// ---- DOM helpers (text only: nothing from the network becomes markup) ----
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children) node.append(child);
  return node;
}
function setText(id, text) { const node = $(id); if (node.textContent !== text) node.textContent = text; }
function button(label, cls, onClick) {
  const b = el("button", { type: "button", className: cls, textContent: label });
  b.addEventListener("click", onClick);
  return b;
}
// A cell built from nodes, rebuilt only when `key` changes (so buttons survive refreshes).
const nodes = (key, make) => ({ key, make });
// Keeps one <tr> per row key, updating cells in place. A cell is text or nodes(...).
function syncRows(tbody, rows, key, cells, empty, idColumn) {
  const existing = new Map([...tbody.children].filter((r) => r.dataset.key).map((r) => [r.dataset.key, r]));
  const wanted = [];
  for (const row of rows) {
    const k = key(row);
    let tr = existing.get(k);
    existing.delete(k);
    if (!tr) { tr = el("tr"); tr.dataset.key = k; tr.dataset.id = k; }
    const values = cells(row);
    while (tr.children.length > values.length) tr.lastChild.remove();
    values.forEach((value, i) => {
      let td = tr.children[i];
      if (!td) { td = el("td"); tr.append(td); }
      if (value && value.make) {
        if (td.dataset.key !== value.key) { td.replaceChildren(value.make()); td.dataset.key = value.key; }
      } else {
        const text = String(value);
        if (td.textContent !== text || td.dataset.key) { td.textContent = text; delete td.dataset.key; }
      }
      if (i === idColumn) td.className = "id";
    });
    wanted.push(tr);
  }
  if (!rows.length) wanted.push(el("tr", {}, el("td", { className: "empty", colSpan: 9, textContent: empty })));
  tbody.replaceChildren(...wanted);
}
// Action buttons: disabled for a read-only token (the server refuses them too).
function actions(...make) {
  return nodes("actions:" + role, () => {
    const span = el("span");
    for (const b of make.map((m) => m())) {
      if (role !== "admin") { b.disabled = true; b.title = "this token may only view"; }
      span.append(b, " ");
    }
    return span;
  });
}

// ---- charts ----
function chart(svgId, maxId, series) {
  const svg = $(svgId);
  const max = Math.max(1, ...series.flatMap((s) => s.values));
  // The axis spans what the hub has kept (at least a minute, at most five), newest at
  // the right edge.
  const span = Math.min(HISTORY, Math.max(60, ...series.map((s) => s.values.length)));
  const lines = series.map((s) => {
    const n = s.values.length;
    const points = s.values.map((v, i) => {
      const x = (600 * (span - n + i)) / (span - 1);
      return x.toFixed(1) + "," + (118 - (v / max) * 112).toFixed(1);
    });
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("stroke", getComputedStyle(document.documentElement).getPropertyValue(s.color));
    return line;
  });
  svg.replaceChildren(...lines);
  setText(maxId, "· last " + (span < HISTORY ? span + " s" : "5 minutes") + " · peak " + rate(max) + " /s");
}

// ---- rendering ----
function render(s) {
  role = s.role;
  const badge = $("role");
  badge.textContent = s.role === "admin" ? "admin" : "read-only";
  badge.className = "badge " + s.role;
  lastUpdate = Date.now();
  setText("c-connections", num(s.hub.connections));
  setText("c-members", num(s.hub.members));
  setText("c-subscriptions", num(s.hub.subscriptions));
  setText("c-in", rate(s.rates.messages_in));
  setText("c-out", rate(s.rates.messages_out));
  setText("c-bytes", bytes(s.rates.bytes_in) + " / " + bytes(s.rates.bytes_out));
  setText("c-uptime", duration(s.hub.uptime_s));
  chart("chart-messages", "chart-messages-max", [
    { values: s.history.messages_in, color: "--s1" },
    { values: s.history.messages_out, color: "--s2" },
  ]);

  const c = s.connections;
  const first = c.matching ? c.page * c.per_page + 1 : 0;
  setText("page-info", first + "–" + Math.min(c.matching, (c.page + 1) * c.per_page) + " of " + num(c.matching));
  setText("conn-count", num(c.total) + " open" + (c.filter ? ", " + num(c.matching) + " match" : ""));
  $("prev").disabled = c.page === 0;
  $("next").disabled = (c.page + 1) * c.per_page >= c.matching;
  syncRows($("connections"), c.rows, (r) => r.id, (r) => [
    r.id, r.ip,
    nodes(JSON.stringify(r.parameters), () => el("span", {}, ...r.parameters.map(([k, v]) => el("span", { className: "param", textContent: k + "=" + v })))),
    r.compressed ? "yes" : "no", bytes(r.backpressure), r.strikes, since(r.connected_ms),
    actions(() => button("Disconnect", "danger disconnect", () => act("connections", r.id, "disconnect", "disconnect " + r.id))),
  ], c.filter ? "no connection matches the filter" : "no connections", 0);

  syncRows($("services"), s.services, (r) => r.name, (r) => [
    r.name, r.on_hub ? "yes" : "", num(r.members),
    r.sample.map((m) => m.name || m.id.slice(0, 8)).join(", ") + (r.members > r.sample.length ? ", …" : ""),
  ], "no services");
  setText("subject-count", num(s.subjects.total) + " patterns");
  syncRows($("subjects"), s.subjects.rows, (r) => r.pattern, (r) => [r.pattern, num(r.subscribers)], "no subscriptions");

  const j = s.jobs;
  for (const k of ["waiting", "delayed", "active", "completed", "failed"]) setText("j-" + k, num(j[k]));
  setText("j-dead", num(j.dead) + (j.dead_more ? "+" : ""));
  chart("chart-jobs", "chart-jobs-max", [
    { values: s.history.jobs_completed, color: "--s1" },
    { values: s.history.jobs_failed, color: "--s3" },
  ]);
  setText("worker-count", num(j.workers_total) + " connected");
  syncRows($("workers"), j.workers, (r) => r.id, (r) => [
    r.name || r.id,
    nodes(r.active + "/" + r.credits, () => {
      const load = el("span", { className: "bar" }, el("i"));
      load.firstChild.style.width = (r.credits ? (100 * r.active) / r.credits : 0) + "%";
      return el("span", {}, load, r.active + " / " + r.credits);
    }),
    num(r.completed), rate(r.per_second),
  ], "no workers");
  syncRows($("dead"), j.dead_letters, (r) => r.id, (r) => [
    r.id, r.name, r.attempts, r.last_error,
    actions(
      () => button("Requeue", "requeue", () => act("dead", r.id, "requeue", "requeue " + r.id)),
      () => button("Delete", "danger delete", () => act("dead", r.id, "delete", "delete " + r.id)),
    ),
  ], "no dead letters", 0);
}

// ---- the feed ----
function connect() {
  if (feed) feed.abort();
  const controller = new AbortController();
  feed = controller;
  const query = new URLSearchParams({ page: view.page, per_page: view.perPage, filter: view.filter });
  fetch("/admin/api/feed?" + query, { headers: auth, signal: controller.signal })
    .then(async (response) => {
      if (response.status === 401) { location.replace("/admin"); return; }
      if (!response.ok) throw new Error("feed: " + response.status);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) render(JSON.parse(data));
        }
      }
      throw new Error("feed ended");
    })
    .catch((error) => {
      if (controller.signal.aborted) return;
      console.warn(error);
      setTimeout(() => { if (feed === controller) connect(); }, 1000);
    });
}
setInterval(() => {
  const live = $("live");
  const age = (Date.now() - lastUpdate) / 1000;
  live.textContent = lastUpdate ? (age < 3 ? "live" : "no update for " + Math.round(age) + " s") : "waiting for the feed";
  live.className = "live" + (lastUpdate && age >= 3 ? " stale" : "");
}, 1000);

// ---- actions ----
function toast(text) {
  const t = $("toast");
  t.textContent = text;
  t.className = "show";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = ""; }, 3000);
}
async function act(what, id, action, label) {
  const response = await fetch("/admin/api/" + what + "/" + encodeURIComponent(id) + "/" + action, { method: "POST", headers: auth });
  const body = await response.json().catch(() => ({}));
  toast(response.ok ? "done: " + label : "refused (" + response.status + "): " + (body.error || label));
  if (what === "jobs") lookup(id);
}
async function lookup(id) {
  const box = $("job");
  if (!id) return;
  const response = await fetch("/admin/api/jobs/" + encodeURIComponent(id), { headers: auth });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) { box.replaceChildren(el("p", { className: "empty", textContent: body.error || "not found" })); return; }
  const dl = el("dl");
  for (const k of ["id", "name", "state", "attempts", "worker", "progress", "last_error"]) {
    if (body[k] === null || body[k] === undefined) continue;
    dl.append(el("dt", { textContent: k }), el("dd", { textContent: String(body[k]) }));
  }
  const parts = [dl];
  if (body.state !== "dead") {
    parts.push(actions(() => button("Cancel job", "danger cancel", () => act("jobs", body.id, "cancel", "cancel " + body.id))).make());
  }
  box.replaceChildren(...parts);
}

// ---- controls ----
let filterTimer;
$("filter").addEventListener("input", (e) => {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => { view.filter = e.target.value.trim(); view.page = 0; connect(); }, 250);
});
$("prev").addEventListener("click", () => { if (view.page > 0) { view.page--; connect(); } });
$("next").addEventListener("click", () => { view.page++; connect(); });
$("lookup").addEventListener("submit", (e) => { e.preventDefault(); lookup($("job-id").value.trim()); });
connect();
