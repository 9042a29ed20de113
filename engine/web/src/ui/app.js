// The coordinator's web UI: polls the REST API once a second and renders
// the cluster, its workers and the selected job (drawing with charts.js). Values from the API are
// always set as text (never as markup): job output is untrusted.
"use strict";

const API = "/api/v1";
const POLL_MS = 1000;

// The coordinator's token, when it has one: asked for once per tab.
let token = sessionStorage.getItem("sluice-token") || "";
let selected = decodeURIComponent((location.hash.match(/^#job=(.+)$/) || [])[1] || "");
// Per job: the previous counters and when they were read, for rates.
const previous = new Map();
// Whether this page watches one embedded job (no coordinator), and whether
// the last answer said that job had ended.
let embedded = false;
let lastEnded = false;
const ENDED = ["FINISHED", "FAILED", "CANCELED"];

// Sets a node's children, skipping the null and undefined of optional
// parts (the DOM would show them as the text "null").
function fill(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function table(headers, rows, opts) {
  const numeric = (opts && opts.numeric) || [];
  return el("table", { class: (opts && opts.class) || "" },
    el("thead", {}, el("tr", {}, headers.map((h, i) =>
      el("th", numeric.includes(i) ? { class: "num" } : {}, h)))),
    el("tbody", {}, rows.map((r) => {
      const tr = el("tr", r.attrs || {}, (r.cells || r).map((c, i) =>
        el("td", numeric.includes(i) ? { class: "num" } : {}, c)));
      return tr;
    })));
}

function state(s) {
  return el("span", { class: "state " + s }, s);
}

function ago(ms) {
  if (!ms) return "-";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  return new Date(ms).toLocaleString();
}

// A duration in ms, in the largest unit that keeps it readable.
function span(ms) {
  const s = ms / 1000;
  if (Math.abs(s) < 120) return s.toFixed(1) + " s";
  if (Math.abs(s) < 7200) return Math.round(s / 60) + " min";
  if (Math.abs(s) < 172800) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " d";
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function count(n) {
  return Number(n).toLocaleString("en-US");
}

function headers(extra) {
  const h = Object.assign({ accept: "application/json" }, extra || {});
  if (token) h.authorization = "Bearer " + token;
  return h;
}

// A 401 means a token is needed (or the one given is wrong).
class NeedsToken extends Error {}

async function get(path) {
  const r = await fetch(API + path, { headers: headers() });
  if (r.status === 401) throw new NeedsToken("this coordinator needs a token");
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
    throw new Error(msg);
  }
  return r.json();
}

async function post(path, body) {
  const r = await fetch(API + path, {
    method: "POST",
    headers: headers({ "content-type": "application/json" }),
    body: JSON.stringify(body || {}),
  });
  if (r.status === 401) throw new NeedsToken("this coordinator needs a token");
  const answer = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(answer.error || r.status + " " + r.statusText);
  return answer;
}

function select(id) {
  selected = id;
  history.replaceState(null, "", "#job=" + encodeURIComponent(id));
  refresh();
}

function renderSummary(c) {
  const jobs = Object.entries(c.jobs || {}).filter(([, n]) => n > 0).map(([s, n]) => el("span", {}, s.toLowerCase() + " ", el("b", {}, n)));
  document.getElementById("summary").replaceChildren(
    el("span", {}, "workers ", el("b", {}, c.workers_alive)),
    el("span", {}, "slots ", el("b", {}, c.used_slots + " / " + c.slots)),
    ...jobs);
}

function renderJobs(jobs) {
  const rows = jobs
    .slice()
    .sort((a, b) => b.submitted_ms - a.submitted_ms)
    .map((j) => ({
      attrs: { class: "job" + (j.id === selected ? " selected" : ""), onclick: () => select(j.id), "data-job": j.id },
      cells: [j.id, j.name, state(j.state), j.attempt, j.restarts, j.latest_checkpoint ?? "-", ago(j.updated_ms)],
    }));
  document.getElementById("jobs").replaceChildren(rows.length
    ? table(["id", "name", "state", "attempt", "restarts", "checkpoint", "updated"], rows, { numeric: [3, 4, 5] })
    : el("p", { class: "muted" }, "No jobs. Submit one with `sluice submit`."));
}

// Each worker's executors' CPU over the last minutes.
function renderWorkerLoad(load) {
  const ids = [...new Set(load.points.flatMap((p) => p.workers.map((w) => w.worker)))].sort();
  if (!ids.length) return null;
  return lineChart("Executors' CPU per worker (cores)", ids.map((id) => ({
    name: id,
    points: load.points.map((p) => [p.time_ms, (p.workers.find((w) => w.worker === id) || {}).cpu_cores ?? null]),
  })), (v) => v.toFixed(v < 10 ? 1 : 0));
}

function renderWorkers(workers, load) {
  const rows = workers.map((w) => [
    w.id, w.host, w.used_slots + " / " + w.slots, w.capacity,
    w.alive ? "alive" : el("span", { class: "dead" }, "dead"),
    (w.since_heartbeat_ms / 1000).toFixed(1) + " s",
    w.process ? bytes(w.process.rss_bytes) + ", " + (w.process.cpu_ms / 1000).toFixed(1) + " s CPU" : "-",
  ]);
  fill(document.getElementById("workers"), rows.length
    ? table(["id", "host", "slots", "capacity", "", "heartbeat", "worker process"], rows)
    : el("p", { class: "muted" }, "No workers registered."), renderWorkerLoad(load));
}

function rates(job) {
  const now = Date.now();
  const before = previous.get(job.id);
  previous.set(job.id, { at: now, nodes: job.nodes });
  const out = new Map();
  if (!before || before.nodes.length !== job.nodes.length) return out;
  const secs = (now - before.at) / 1000;
  if (secs <= 0) return out;
  job.nodes.forEach((n, i) => {
    const p = before.nodes[i];
    out.set(n.node, {
      in: Math.max(0, n.records_in - p.records_in) / secs,
      out: Math.max(0, n.records_out - p.records_out) / secs,
    });
  });
  return out;
}

function renderPlan(job) {
  const counters = new Map(job.nodes.map((n) => [n.node, n]));
  const perSec = rates(job);
  const rows = [];
  for (const v of job.vertices) {
    v.nodes.forEach(([node, name], i) => {
      const c = counters.get(node) || { records_in: 0, records_out: 0 };
      const r = perSec.get(node);
      rows.push([
        i === 0 ? v.id : "",
        i === 0 ? v.parallelism : "",
        name,
        count(c.records_in),
        count(c.records_out),
        r ? count(Math.round(r.out)) : "-",
      ]);
    });
  }
  return el("div", {},
    el("p", { class: "muted" }, "Records of attempt " + job.attempt +
      (job.attempt > 1 ? " (each attempt counts from the checkpoint it started from, not from the job's start)" : "") + "."),
    table(["vertex", "parallelism", "operator", "records in", "records out", "out / s"], rows, { numeric: [0, 1, 3, 4, 5] }));
}

// Per vertex of the running attempt: the highest subtask's busy,
// backpressured and idle milliseconds per second (Flink's definitions) and
// watermark lag; the vertex busy near 1000 whose upstream is
// backpressured is the bottleneck.
function renderLoad(metrics) {
  const byVertex = new Map();
  for (const s of metrics.subtasks) {
    const v = byVertex.get(s.vertex) || { name: s.vertex_name, n: 0, busy: 0, back: 0, idle: 0, lag: null, inq: null, outq: null };
    if (s.input_queue_usage != null) v.inq = Math.max(v.inq ?? 0, s.input_queue_usage);
    if (s.output_queue_usage != null) v.outq = Math.max(v.outq ?? 0, s.output_queue_usage);
    v.n += 1;
    v.busy = Math.max(v.busy, s.busy_ms_per_s);
    v.back = Math.max(v.back, s.backpressured_ms_per_s);
    v.idle = Math.max(v.idle, s.idle_ms_per_s);
    if (s.watermark_lag_ms != null) v.lag = Math.max(v.lag ?? s.watermark_lag_ms, s.watermark_lag_ms);
    byVertex.set(s.vertex, v);
  }
  if (!byVertex.size) return [el("p", { class: "muted" }, "Not running.")];
  const rows = [...byVertex.entries()].map(([id, v]) => [
    id, v.name, v.n, v.busy, v.back, v.idle, v.lag == null ? "-" : span(v.lag),
    v.inq == null ? "-" : Math.round(v.inq * 100) + "%", v.outq == null ? "-" : Math.round(v.outq * 100) + "%",
  ]);
  const procs = metrics.executors.map((e) => "executor " + e.executor + ": " + bytes(e.rss_bytes) +
    ", " + (e.cpu_ms / 1000).toFixed(1) + " s CPU, " + bytes(e.net_sent_bytes || 0) + " sent, " +
    bytes(e.net_received_bytes || 0) + " received");
  return [
    table(["vertex", "name", "subtasks", "busy ms/s", "backpressured ms/s", "idle ms/s", "watermark lag", "in queue", "out queue"],
      rows, { numeric: [0, 2, 3, 4, 5, 6, 7, 8] }),
    procs.length ? el("p", { class: "muted" }, procs.join(" · ")) : null,
    renderSubtasks(metrics),
  ];
}

// Every subtask on its own row, to spot skew (one subtask of a vertex far
// busier, or further behind, than its siblings). Folded unless opened;
// it stays open across refreshes.
let subtasksOpen = false;
function renderSubtasks(metrics) {
  const pct = (u) => (u == null ? "-" : Math.round(u * 100) + "%");
  const rows = metrics.subtasks.slice()
    .sort((a, b) => a.vertex - b.vertex || a.subtask - b.subtask)
    .map((s) => [
      s.vertex + "." + s.subtask, s.vertex_name, count(s.records_in), count(s.records_out),
      s.busy_ms_per_s, s.backpressured_ms_per_s, pct(s.input_queue_usage), pct(s.output_queue_usage),
      s.watermark_lag_ms == null ? "-" : span(s.watermark_lag_ms),
      s.latency ? duration(s.latency.p99_ms) : "-",
    ]);
  const d = el("details", { class: "subtasks", ontoggle: () => { subtasksOpen = d.open; } },
    el("summary", {}, "Per subtask (" + rows.length + ")"),
    table(["subtask", "vertex", "records in", "records out", "busy ms/s", "backpressured ms/s",
      "in queue", "out queue", "watermark lag", "p99 latency"], rows, { numeric: [2, 3, 4, 5, 6, 7, 8, 9] }));
  d.open = subtasksOpen;
  return d;
}

// The job graph: each vertex shaded by its busiest subtask's busy time
// (now), with its rates from the newest point of the history.
function renderGraph(job, metrics, history) {
  const load = new Map();
  for (const s of metrics.subtasks) {
    const l = load.get(s.vertex) || { busy: 0, back: 0, in: null, out: null };
    l.busy = Math.max(l.busy, s.busy_ms_per_s);
    l.back = Math.max(l.back, s.backpressured_ms_per_s);
    load.set(s.vertex, l);
  }
  const newest = history.points[history.points.length - 1];
  for (const v of (newest && newest.vertices) || []) {
    const l = load.get(v.vertex) || { busy: null, back: null };
    l.in = v.records_in_per_s;
    l.out = v.records_out_per_s;
    load.set(v.vertex, l);
  }
  if (!job.vertices.length) return el("p", { class: "muted" }, "No plan.");
  return el("div", { class: "graph-box" }, jobGraph(job.vertices, load),
    el("p", { class: "muted legend" }, "Fill: busy time of the busiest subtask, green (idle) to red (busy 1000 ms/s); " +
      "purple bar: backpressured time; edges: how records are routed."));
}

// Time-series charts from the coordinator's history of the job.
function renderCharts(job, history) {
  const pts = history.points;
  const series = (name, f) => ({ name, points: pts.map((p) => [p.time_ms, f(p)]) });
  const checkpoints = pts.flatMap((p) => p.checkpoints.map(([, ms]) => [p.time_ms, ms]));
  const names = new Map(job.vertices.map((v) => [v.id, v.name]));
  const vertices = [...new Set(pts.flatMap((p) => p.vertices.map((v) => v.vertex)))].sort((a, b) => a - b);
  const charts = [
    lineChart("Throughput (records/s)", [
      series("sources", (p) => p.source_records_per_s),
      series("last vertices", (p) => p.sink_records_per_s),
    ]),
    lineChart("Watermark lag", [series("largest", (p) => p.watermark_lag_ms)], duration),
    lineChart("Latency, source to sink (p99)", [series("markers", (p) => p.latency_p99_ms ?? null)], duration,
      { empty: "no latency marker reached a sink yet" }),
    lineChart("Source backlog (records not read)", [series("all splits", (p) => p.source_pending)], compact,
      { empty: "no source reports a backlog" }),
    lineChart("Checkpoint duration", [{ name: "checkpoints", points: checkpoints }],
      duration, { dots: true, empty: "no checkpoint completed recently" }),
    lineChart("Busy (ms/s, busiest subtask)", vertices.map((id) => ({
      name: id + " " + (names.get(id) || ""),
      points: pts.map((p) => [p.time_ms, (p.vertices.find((v) => v.vertex === id) || {}).busy_ms_per_s ?? null]),
    }))),
  ];
  return el("div", { class: "charts" }, charts);
}

function renderPlacement(job) {
  if (!job.placement.length) return el("p", { class: "muted" }, "Not running.");
  const rows = job.placement.map((p) => [p.task.vertex + "." + p.task.subtask, p.worker, p.executor]);
  return table(["subtask", "worker", "executor"], rows);
}

function renderCheckpoints(cps) {
  const s = cps.stats;
  const head = el("p", {},
    "completed ", el("b", {}, s.completed), " · aborted ", el("b", {}, s.aborted),
    " · restarts ", el("b", {}, s.restarts),
    " · restored from ", el("b", {}, s.restored_from ?? "-"),
    cps.dir ? el("span", { class: "muted" }, " · in ", el("code", {}, cps.dir)) : null);
  if (!s.recent.length) return [head];
  const rows = s.recent.slice().reverse().slice(0, 10).map((r) => [
    r.id, r.savepoint ? "savepoint" : "checkpoint", r.figures.duration_ms + " ms",
    r.figures.alignment_ms + " ms", bytes(r.figures.bytes), bytes(r.figures.uploaded_bytes || 0),
  ]);
  return [head, table(["id", "kind", "duration", "alignment", "size", "uploaded"], rows, { numeric: [0, 2, 3, 4, 5] })];
}

function renderResults(results) {
  if (!results.sinks.length) return [el("p", { class: "muted" }, "No rows have reached a sink yet.")];
  const parts = [el("p", { class: "muted" },
    "The newest rows each sink received; a sink commits them with the next checkpoint.")];
  for (const s of results.sinks) {
    parts.push(el("p", {}, el("b", {}, s.name), el("span", { class: "muted" }, " · " + ago(s.updated_ms))));
    const rows = s.rows.slice().reverse();
    const chart = resultBars(s.columns, s.rows);
    parts.push(el("div", { class: "results-box" },
      chart ? barChart(chart.title, chart.bars) : null,
      el("div", { class: "results-table" }, table(s.columns, rows, { class: "results" }))));
  }
  return parts;
}

async function act(what, job) {
  try {
    if (what === "cancel") {
      if (!confirm("Cancel job " + job.id + "?")) return;
      await post("/jobs/" + encodeURIComponent(job.id) + "/cancel");
    } else {
      const dir = prompt("Savepoint directory (or s3:// URL):");
      if (!dir) return;
      const stop = confirm("Stop the job once the savepoint is taken?");
      const taken = await post("/jobs/" + encodeURIComponent(job.id) + "/savepoint", { dir, stop });
      alert("Savepoint taken: " + taken.location);
    }
  } catch (e) {
    alert(what + " failed: " + e.message);
  }
  refresh();
}

// The selected job's details, asked for beside the listings so a refresh
// is one round of requests (an embedded job's page has little time to see
// how it ended).
function jobDetails(jobId) {
  const id = encodeURIComponent(jobId);
  return Promise.all([
    get("/jobs/" + id + "/checkpoints"), get("/jobs/" + id + "/results"), get("/jobs/" + id + "/metrics"),
    get("/jobs/" + id + "/history"),
  ]);
}

async function renderJob(jobs, details) {
  const pane = document.getElementById("job");
  const job = jobs.find((j) => j.id === selected);
  if (!job) {
    pane.replaceChildren(el("p", { class: "muted" }, selected ? "No job " + selected + "." : "Select a job."));
    return;
  }
  // Asked for before the listing said which job is selected (the first
  // refresh), or for another job: ask now.
  const [cps, results, metrics, history] = await (details && details.id === job.id ? details.answers : jobDetails(job.id));
  await readLogs(job.id);
  const ended = ENDED.includes(job.state);
  fill(pane,
    el("div", { class: "actions" }, ended ? null : [
      el("button", { onclick: () => act("savepoint", job) }, "Savepoint"), " ",
      el("button", { onclick: () => act("cancel", job) }, "Cancel"),
    ]),
    el("h2", {}, job.name + " ", el("span", { class: "muted" }, job.id), " ", state(job.state)),
    el("p", { class: "muted" },
      "attempt " + job.attempt + " · parallelism " + job.parallelism +
      (job.rescaling_to ? " (rescaling to " + job.rescaling_to + ")" : "") + " · restarts " + job.restarts + " · submitted " + ago(job.submitted_ms) +
      " · stale messages refused " + job.rejected_stale),
    el("p", {}, el("code", {}, job.args.join(" "))),
    job.error ? el("div", { class: "error" }, job.error) : null,
    el("h3", {}, "Graph"), renderGraph(job, metrics, history),
    el("h3", {}, "Over the last minutes"), renderCharts(job, history),
    el("h3", {}, "Plan"), renderPlan(job),
    el("h3", {}, "Load"), ...renderLoad(metrics),
    el("h3", {}, "Results"), ...renderResults(results),
    el("h3", {}, "Checkpoints"), ...renderCheckpoints(cps),
    el("h3", {}, "Placement"), renderPlacement(job),
    ...renderExceptions(job),
    ...renderAutoscaler(job),
    ...renderLogs(job));
}

// What the autoscaler of a job submitted with --autoscale decided, newest
// first, with why.
function renderAutoscaler(job) {
  const a = job.autoscaler;
  if (!a) return [];
  const rows = a.decisions.slice().reverse().map((d) => [
    new Date(d.time_ms).toLocaleTimeString(), d.from + " → " + d.to, d.reason, d.error || "",
  ]);
  return [el("h3", {}, "Autoscaler (" + a.min + ".." + a.max + ")"),
    rows.length
      ? el("div", { class: "autoscaler" }, table(["time", "parallelism", "why", "failed"], rows))
      : el("p", { class: "muted autoscaler" }, "No rescale decided yet.")];
}

// The newest lines of the job's executors' logs (a coordinator forwards
// them from its workers; an embedded job logs to its own stderr). Read
// incrementally: each refresh asks for the lines after the last one.
const LOG_LINES = 300;
let logView = { job: null, next: null, lines: [], dropped: 0, missing: false };

async function readLogs(jobId) {
  if (embedded) return;
  if (logView.job !== jobId) logView = { job: jobId, next: null, lines: [], dropped: 0, missing: false };
  const id = encodeURIComponent(jobId);
  const query = logView.next === null ? "?tail=" + LOG_LINES : "?since=" + logView.next + "&limit=1000";
  try {
    const answer = await get("/jobs/" + id + "/logs" + query);
    logView.lines = logView.lines.concat(answer.lines).slice(-LOG_LINES);
    logView.next = answer.next;
    logView.dropped = answer.dropped;
  } catch (e) {
    if (e instanceof NeedsToken) throw e;
    // A coordinator of an older release has no log route.
    logView.missing = true;
  }
}

function renderLogs(job) {
  if (embedded || logView.missing || logView.job !== job.id) return [];
  const old = document.querySelector("pre.logs");
  // Stay at the bottom if the reader was there; leave them where they
  // scrolled otherwise.
  const atBottom = !old || old.scrollTop + old.clientHeight >= old.scrollHeight - 4;
  const pre = el("pre", { class: "logs" }, logView.lines.length
    ? logView.lines.map((l) => `a${l.attempt}/e${l.executor} ${l.text}\n`)
    : "No lines yet (executors log warnings and errors unless the workers run with RUST_LOG=info).");
  requestAnimationFrame(() => {
    pre.scrollTop = atBottom ? pre.scrollHeight : (old ? old.scrollTop : 0);
  });
  return [el("h3", {}, "Executors' logs"), pre];
}

// The job's failures, newest first: when, which attempt, the cause and
// what followed.
function renderExceptions(job) {
  const ex = job.exceptions || [];
  if (ex.length === 0) return [];
  const rows = ex.slice().reverse().map((e) => ({
    cells: [new Date(e.time_ms).toLocaleTimeString(), e.attempt, e.outcome, e.error],
  }));
  return [el("h3", {}, "Exceptions (" + ex.length + ")"),
    table(["time", "attempt", "then", "cause"], rows, { numeric: [1] })];
}

function askForToken(message) {
  const status = document.getElementById("status");
  if (status.querySelector("form")) return;
  const input = el("input", { type: "password", placeholder: "token", autocomplete: "off", size: "24" });
  const form = el("form", {
    onsubmit: (ev) => {
      ev.preventDefault();
      token = input.value.trim();
      sessionStorage.setItem("sluice-token", token);
      status.replaceChildren("checking…");
      refresh();
    },
  }, message + " ", input, " ", el("button", { type: "submit" }, "Use"));
  status.className = "down";
  status.replaceChildren(form);
  input.focus();
}

let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  const status = document.getElementById("status");
  try {
    let details = null;
    if (selected) {
      details = { id: selected, answers: jobDetails(selected) };
      // A job that is gone answers 404: the listing says so instead.
      details.answers.catch(() => {});
    }
    const [cluster, jobs, workers, load] = await Promise.all([
      get("/cluster"), get("/jobs"), get("/workers"), get("/workers/load"),
    ]);
    // An embedded job's process has no control address.
    embedded = !cluster.control;
    lastEnded = embedded && jobs.length > 0 && jobs.every((j) => ENDED.includes(j.state));
    if (embedded && !selected && jobs.length === 1) selected = jobs[0].id;
    renderSummary(cluster);
    renderJobs(jobs);
    renderWorkers(workers, load);
    await renderJob(jobs, details);
    status.className = "";
    status.textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    if (e instanceof NeedsToken) {
      askForToken(token ? "Wrong token." : "This coordinator needs a token.");
    } else {
      status.className = "down";
      if (embedded && lastEnded) {
        // The job ended and its process exited with it: nothing is wrong.
        status.className = "";
        status.textContent = "the job ended; its process has exited";
      } else if (embedded) {
        status.textContent = "the job's process is unreachable (it may have exited): " + e.message;
        markEnded();
      } else {
        status.textContent = "coordinator unreachable: " + e.message;
      }
    }
  } finally {
    busy = false;
  }
}

// An embedded job's process that went away took its job with it: its
// state shown last may say RUNNING, so it is marked as no longer known.
function markEnded() {
  for (const s of document.querySelectorAll(".state")) {
    if (!ENDED.includes(s.textContent)) {
      s.className = "state GONE";
      s.textContent = "GONE";
    }
  }
  for (const b of document.querySelectorAll(".actions button")) b.disabled = true;
}

refresh();
setInterval(refresh, POLL_MS);
