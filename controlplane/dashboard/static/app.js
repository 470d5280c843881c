// The gpucp dashboard: plain JS, no dependencies. It reads the control plane's JSON API and its
// server-sent events; every string from the server is shown with textContent, never as HTML
// (worker ids, tenants and reasons are chosen by whoever registers or submits).
"use strict";

const TOKEN_KEY = "gpucp-token";
const PAGE = 100;
const COLORS = ["#1f5fbf", "#c62828", "#1a7f37", "#b26b00", "#6a1b9a", "#00838f", "#5d4037", "#455a64"];

const ui = {
  summary: null,
  version: "",
  history: [],
  workers: { after: "", stack: [], next: "", loading: false },
  tasks: { token: "", stack: [], next: "", loading: false },
  detail: "",
  firstPaint: { summary: false, tasks: false, workers: false },
};

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (key === "class") node.className = value;
      else if (key === "title") node.title = value;
      else if (key === "onclick") node.addEventListener("click", value);
      else node.dataset[key] = value;
    }
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function replaceRows(table, rows) {
  const body = table.tBodies[0] || table;
  body.replaceChildren(...rows);
}

function badge(text) {
  return el("span", { class: `badge ${String(text).replace(/[^a-z_]/g, "")}` }, text);
}

function ago(ms) {
  const at = Number(ms);
  if (!at) return "never";
  const s = Math.max(0, (Date.now() - at) / 1000);
  if (s < 90) return `${s.toFixed(0)} s ago`;
  if (s < 5400) return `${(s / 60).toFixed(0)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return `${(s * 1000).toFixed(0)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function stateName(value) {
  return String(value || "").replace(/^TASK_STATE_/, "").toLowerCase();
}

// -- auth and requests ----------------------------------------------------------------------------

function takeTokenFromFragment() {
  // A link may carry the token in its fragment (never sent to the server): keep it, drop it from the URL.
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function headers() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

class Refused extends Error {}

async function problem(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

async function getJSON(path) {
  const response = await fetch(path, { headers: headers(), cache: "no-store" });
  if (response.status === 401 || response.status === 403) throw new Refused(await problem(response));
  if (!response.ok) throw new Error(await problem(response));
  return response.json();
}

function showAuth(message) {
  $("auth").hidden = false;
  $("auth-message").textContent = message;
  $("token").focus();
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

function failed(err) {
  if (err instanceof Refused) showAuth(err.message);
  else showError(err.message);
}

// -- the live feed: server-sent events read with fetch, which (unlike EventSource) sends headers --

let feed = null;

async function follow() {
  if (feed) feed.abort();
  const control = new AbortController();
  feed = control;
  let backoff = 1000;
  while (!control.signal.aborted) {
    try {
      const response = await fetch("/api/v1/dashboard/stream", { headers: headers(), signal: control.signal, cache: "no-store" });
      if (response.status === 401 || response.status === 403) {
        setLive(false, "refused");
        showAuth(await problem(response));
        return;
      }
      if (!response.ok) throw new Error(await problem(response));
      setLive(true, "live");
      showError("");
      backoff = 1000;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          dispatch(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
      setLive(false, "reconnecting");
    } catch (err) {
      if (control.signal.aborted) return;
      setLive(false, "reconnecting");
      showError(`live updates stopped: ${err.message}; retrying`);
    }
    await new Promise((resolve) => setTimeout(resolve, backoff));
    backoff = Math.min(backoff * 2, 5000);
  }
}

function dispatch(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  const value = JSON.parse(data.join("\n"));
  if (name === "summary") onSummary(value);
  else if (name === "history") { ui.history = value; drawCharts(); }
  else if (name === "sample") { ui.history.push(value); ui.history = ui.history.slice(-360); drawCharts(); }
}

function setLive(on, text) {
  $("live").className = `badge ${on ? "ok" : "off"}`;
  $("live").textContent = text;
}

function onSummary(summary) {
  ui.summary = summary;
  $("who").textContent = `${summary.principal.name} (${summary.principal.role})`;
  $("updated").textContent = `updated ${new Date(summary.at_ms).toLocaleTimeString()}`;
  for (const node of document.querySelectorAll(".admin")) node.hidden = !summary.admin;
  $("admin-only").hidden = summary.admin;
  renderCards(summary);
  renderQueues(summary);
  if (summary.admin) {
    renderAutoscaler(summary.autoscaler);
    loadWorkers();
  }
  if (summary.version !== ui.version) {
    ui.version = summary.version;
    loadTasks();
    if (ui.detail) openTask(ui.detail);
  }
  painted("summary");
}

function painted(part) {
  // The load time a bench reads: until the summary and the tables it can see are first on screen.
  const seen = ui.firstPaint;
  seen[part] = true;
  const ready = seen.summary && seen.tasks && (seen.workers || !ui.summary.admin);
  if (ready && !document.body.dataset.loadedMs) {
    document.body.dataset.loadedMs = performance.now().toFixed(0);
  }
}

// -- cards, queues, percentiles -------------------------------------------------------------------

function card(label, value, sub) {
  return el("div", { class: "card" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value),
    sub ? el("div", { class: "sub" }, sub) : null);
}

function renderCards(s) {
  const cards = [];
  if (s.admin) {
    const f = s.fleet;
    const w = f.workers;
    cards.push(card("Workers", w.connected + w.draining + w.quarantined + w.disconnected,
      `${w.connected} connected · ${w.draining} draining · ${w.quarantined} quarantined · ` +
      `${w.disconnected} disconnected · ${w.lost} lost`));
    cards.push(card("GPUs", f.gpus, `${f.gpus_unhealthy} unhealthy · mean utilisation ${f.gpu_utilization_mean}%`));
    cards.push(card("GPU memory", `${(f.gpu_memory_used_mb / 1024).toFixed(0)} GiB`,
      `of ${(f.gpu_memory_total_mb / 1024).toFixed(0)} GiB`));
    cards.push(card("Slots free", f.slots_free, `of ${f.slots}`));
    const t = s.tasks_by_state;
    cards.push(card("Pending", t.pending || 0, `${(t.assigned || 0) + (t.running || 0)} on workers`));
    cards.push(card("Finished", (t.succeeded || 0) + (t.failed || 0) + (t.cancelled || 0) + (t.timed_out || 0),
      `${t.succeeded || 0} succeeded · ${t.failed || 0} failed (in memory)`));
    cards.push(card("Placements/s", s.placements_per_second, ""));
    const p = s.percentiles;
    cards.push(card("Wait p50", seconds(p.wait.p50), `p90 ${seconds(p.wait.p90)} · p99 ${seconds(p.wait.p99)}`));
    cards.push(card("Run p50", seconds(p.run.p50), `p90 ${seconds(p.run.p90)} · p99 ${seconds(p.run.p99)}`));
  } else {
    const waiting = Object.values(s.queue_by_tenant).reduce((a, b) => a + b, 0);
    cards.push(card("Pending in your tenants", waiting, `${s.tenants_waiting} tenants waiting`));
  }
  $("cards").replaceChildren(...cards);
}

function renderQueues(s) {
  const tenants = Object.entries(s.queue_by_tenant);
  replaceRows($("by-tenant"), tenants.length
    ? [el("tr", null, el("th", null, "Tenant"), el("th", null, "Pending")),
       ...tenants.map(([t, n]) => el("tr", null, el("td", null, t), el("td", null, n)))]
    : [el("tr", null, el("td", { class: "note" }, "no task waits"))]);
  if (!s.admin) return;
  replaceRows($("by-priority"), [el("tr", null, el("th", null, "Priority"), el("th", null, "Pending")),
    ...Object.entries(s.queue_by_priority).reverse().map(([p, n]) => el("tr", null, el("td", null, p), el("td", null, n)))]);
  const p = s.percentiles;
  replaceRows($("percentiles"), [
    el("tr", null, el("th", null, ""), el("th", null, "p50"), el("th", null, "p90"), el("th", null, "p99"),
      el("th", null, "tasks")),
    ...["wait", "run"].map((k) => el("tr", null, el("td", null, k), el("td", null, seconds(p[k].p50)),
      el("td", null, seconds(p[k].p90)), el("td", null, seconds(p[k].p99)), el("td", null, p[k].count))),
  ]);
}

// -- charts: inline SVG polylines over the last hour ---------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function drawChart(svg, legend, series) {
  const points = ui.history;
  svg.replaceChildren();
  legend.replaceChildren();
  if (points.length < 2) {
    const text = document.createElementNS(SVG, "text");
    text.setAttribute("x", "10"); text.setAttribute("y", "20"); text.setAttribute("fill", "#6b7280");
    text.textContent = "collecting: a sample every 10 s";
    svg.append(text);
    return;
  }
  const t0 = points[0].at_ms;
  const span = Math.max(1, points[points.length - 1].at_ms - t0);
  let max = 1;
  for (const s of series) for (const p of points) max = Math.max(max, s.value(p));
  series.forEach((s, i) => {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", COLORS[i % COLORS.length]);
    line.setAttribute("stroke-width", "2");
    line.setAttribute("vector-effect", "non-scaling-stroke");
    line.setAttribute("points", points.map((p) =>
      `${((p.at_ms - t0) / span * 600).toFixed(1)},${(155 - s.value(p) / max * 145).toFixed(1)}`).join(" "));
    svg.append(line);
    const swatch = el("i");
    swatch.style.background = COLORS[i % COLORS.length];
    legend.append(el("span", null, swatch, s.name));
  });
  legend.append(el("span", null, `max ${max.toFixed(max < 10 ? 2 : 0)} · ${Math.round(span / 60000)} min`));
}

function drawCharts() {
  const last = ui.history[ui.history.length - 1];
  const priorities = last ? Object.keys(last.pending_by_priority).reverse() : [];
  drawChart($("queue-chart"), $("queue-legend"), [
    { name: "all", value: (p) => Object.values(p.pending_by_priority).reduce((a, b) => a + b, 0) },
    ...priorities.map((name) => ({ name, value: (p) => p.pending_by_priority[name] || 0 })),
  ]);
  drawChart($("rate-chart"), $("rate-legend"), [
    { name: "finished/s", value: (p) => p.finished_per_s },
    { name: "submitted/s", value: (p) => p.submitted_per_s },
  ]);
}

// -- the fleet ----------------------------------------------------------------------------------

function workerQuery(after) {
  const q = new URLSearchParams({ limit: String(PAGE) });
  if (after) q.set("after", after);
  if ($("worker-state").value) q.set("state", $("worker-state").value);
  if ($("worker-q").value) q.set("q", $("worker-q").value);
  return `/api/v1/dashboard/workers?${q}`;
}

function gpuCell(g) {
  const util = g.utilization === null ? null : Number(g.utilization);
  const bar = el("span", { class: "bar" }, el("i"));
  bar.firstChild.style.width = `${Math.min(100, util || 0)}%`;
  const mem = g.memory_used_mb === null ? "–" : `${(g.memory_used_mb / 1024).toFixed(1)}/${(g.memory_total_mb / 1024).toFixed(0)} GiB`;
  const text = util === null ? `${g.index}: no report yet`
    : `${g.index}: ${util.toFixed(0)}% ${mem} ${Number(g.temperature_c).toFixed(0)}°C`;
  return el("span", { class: `gpu${g.healthy ? "" : " sick"}`, title: `${g.name}${g.healthy ? "" : " (unhealthy)"}` },
    bar, text);
}

async function loadWorkers() {
  const w = ui.workers;
  if (w.loading) return;
  w.loading = true;
  try {
    const page = await getJSON(workerQuery(w.after));
    w.next = page.next_after;
    replaceRows($("workers"), page.workers.length ? page.workers.map((row) => el("tr", { worker: row.worker_id },
      el("td", null, row.worker_id),
      el("td", { title: row.reason || "" }, badge(row.state)),
      el("td", null, row.state === "lost" ? `${row.reason} (${ago(row.lost_at_ms)})` : row.health),
      el("td", null, row.state === "lost" ? "" : `${row.slots_free}/${row.slots}`),
      el("td", null, ...row.gpus.map(gpuCell)),
      el("td", null, row.state === "lost" ? "" : ago(row.last_heartbeat_ms)),
    )) : [el("tr", null, el("td", { class: "note" }, "no worker matches"))]);
    $("workers-page").textContent = `page ${w.stack.length + 1}`;
    $("workers-next").disabled = !w.next;
    $("workers-prev").disabled = !w.stack.length;
    painted("workers");
  } catch (err) {
    failed(err);
  } finally {
    w.loading = false;
  }
}

// -- tasks ----------------------------------------------------------------------------------------

function taskQuery(token) {
  const q = new URLSearchParams({ limit: String(PAGE) });
  for (const [key, id] of [["state", "task-state"], ["tenant", "task-tenant"], ["kind", "task-kind"]]) {
    if ($(id).value) q.set(key, $(id).value.trim());
  }
  if (token) q.set("page_token", token);
  return `/api/v1/tasks?${q}`;
}

async function loadTasks() {
  const t = ui.tasks;
  if (t.loading) { t.again = true; return; }
  t.loading = true;
  try {
    const page = await getJSON(taskQuery(t.token));
    t.next = page.next_page_token;
    replaceRows($("tasks"), page.tasks.length ? page.tasks.map((task) => {
      const state = stateName(task.state);
      const why = task.pending_reason || task.placement || task.error || "";
      return el("tr", { task: task.id, state, onclick: () => openTask(task.id) },
        el("td", null, task.id), el("td", null, badge(state)), el("td", null, task.spec.tenant),
        el("td", null, task.spec.kind), el("td", null, String(task.spec.priority).replace(/^PRIORITY_/, "").toLowerCase()),
        el("td", null, task.worker_id), el("td", null, task.attempt), el("td", { class: "why" }, why));
    }) : [el("tr", null, el("td", { class: "note" }, "no task matches"))]);
    $("tasks-page").textContent = `page ${t.stack.length + 1}`;
    $("tasks-next").disabled = !t.next;
    $("tasks-prev").disabled = !t.stack.length;
    painted("tasks");
  } catch (err) {
    failed(err);
  } finally {
    t.loading = false;
    if (t.again) { t.again = false; loadTasks(); }
  }
}

async function openTask(id) {
  ui.detail = id;
  try {
    const path = `/api/v1/tasks/${encodeURIComponent(id)}`;
    const [task, events] = await Promise.all([getJSON(path), getJSON(`${path}/events`)]);
    if (ui.detail !== id) return;
    $("task-detail").hidden = false;
    $("detail-id").textContent = id;
    const fields = [
      ["State", stateName(task.state)], ["Tenant", task.spec.tenant], ["Kind", task.spec.kind],
      ["Worker", task.worker_id], ["Attempt", task.attempt], ["GPUs", (task.gpu_indices || []).join(", ")],
      ["Pending because", task.pending_reason], ["Placed because", task.placement], ["Error", task.error],
      ["Earlier attempts", (task.attempt_errors || []).join("\n")], ["Progress", task.progress ? `${(task.progress * 100).toFixed(0)}%` : ""],
      ["Submitted", Number(task.created_at_ms) ? new Date(Number(task.created_at_ms)).toLocaleString() : ""],
      ["Payload", `${task.payload_bytes} bytes`], ["Result", `${task.result_bytes} bytes`],
    ];
    $("detail-fields").replaceChildren(...fields.filter(([, v]) => v !== "" && v !== undefined && v !== null)
      .flatMap(([k, v]) => [el("dt", null, k), el("dd", { field: k }, v)]));
    const rows = events.events.map((e) => el("tr", null, el("td", null, e.seq),
      el("td", null, new Date(Number(e.at_ms)).toLocaleTimeString()), el("td", null, badge(stateName(e.state))),
      el("td", null, e.cause), el("td", null, e.worker_id), el("td", null, e.attempt),
      el("td", null, [e.reason, e.error].filter(Boolean).join(": "))));
    if (events.omitted) rows.splice(1, 0, el("tr", null, el("td", { class: "note" }, `… ${events.omitted} events omitted`)));
    replaceRows($("detail-events"), rows);
  } catch (err) {
    failed(err);
  }
}

// -- the autoscaler -------------------------------------------------------------------------------

function tableOf(table, columns, rows) {
  replaceRows(table, [el("tr", null, ...columns.map(([label]) => el("th", null, label))),
    ...rows.map((row) => el("tr", null, ...columns.map(([, f]) => el("td", null, f(row)))))]);
}

const dollars = (x) => `$${Number(x || 0).toFixed(Math.abs(x || 0) < 1 ? 4 : 2)}`;

function renderAutoscaler(a) {
  $("autoscaler-off").hidden = !!a;
  $("autoscaler-on").hidden = !a;
  if (!a) return;
  $("spend").textContent = `Spent ${dollars(a.total_cost)} (${dollars(a.attributed_cost)} on tasks), now ` +
    `${dollars(a.total_cost_per_hour)}/h · ${a.pods_total} live pods`;
  tableOf($("pools"), [["Pool", (p) => p.pool], ["GPU", (p) => p.gpu_type_id], ["Pods", (p) => `${p.pods} (${p.pods_starting} starting)`],
    ["Min–max", (p) => `${p.min_pods}–${p.max_pods}`], ["Demand", (p) => p.pending_demand], ["Spent", (p) => dollars(p.cost)],
    ["Per hour", (p) => dollars(p.cost_per_hour)]], a.pools);
  tableOf($("pods"), [["Pod", (p) => p.pod_id], ["Pool", (p) => p.pool], ["Worker", (p) => p.worker_id],
    ["State", (p) => badge(p.state)], ["GPUs", (p) => `${p.gpu_count}× ${p.gpu_type_id}`], ["Up", (p) => seconds(p.uptime_s)],
    ["Cost", (p) => dollars(p.cost)]], a.pods);
  tableOf($("spend-tenants"), [["Tenant", (t) => t.tenant], ["GPU hours", (t) => (t.gpu_seconds / 3600).toFixed(2)],
    ["Cost", (t) => dollars(t.cost)]], a.tenants);
  tableOf($("scaling"), [["When", (e) => new Date(Number(e.at_ms)).toLocaleTimeString()], ["Pool", (e) => e.pool],
    ["Action", (e) => e.action], ["Decision", (e) => e.message]], a.events);
}

// -- wiring ---------------------------------------------------------------------------------------

function pager(state, prev, next, load, key) {
  $(prev).addEventListener("click", () => { state[key] = state.stack.pop() || ""; load(); });
  $(next).addEventListener("click", () => { if (state.next) { state.stack.push(state[key]); state[key] = state.next; load(); } });
}

function refilter(state, key, load) {
  return () => { state.stack = []; state[key] = ""; load(); };
}

function start() {
  takeTokenFromFragment();
  pager(ui.workers, "workers-prev", "workers-next", loadWorkers, "after");
  pager(ui.tasks, "tasks-prev", "tasks-next", loadTasks, "token");
  for (const id of ["worker-state", "worker-q"]) $(id).addEventListener("change", refilter(ui.workers, "after", loadWorkers));
  for (const id of ["task-state", "task-tenant", "task-kind"]) $(id).addEventListener("change", refilter(ui.tasks, "token", loadTasks));
  $("detail-close").addEventListener("click", () => { ui.detail = ""; $("task-detail").hidden = true; });
  $("token-button").addEventListener("click", () => showAuth("Give the bearer token this page sends."));
  $("auth").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    $("auth").hidden = true;
    showError("");
    follow();
  });
  // Leaving the page ends its stream at once: a page kept in the back-forward cache would hold its
  // connection open, and a few reloads would use up the streams the server allows a principal.
  window.addEventListener("pagehide", () => { if (feed) feed.abort(); });
  window.addEventListener("pageshow", (event) => { if (event.persisted) follow(); });
  follow();
}

document.addEventListener("DOMContentLoaded", start);
