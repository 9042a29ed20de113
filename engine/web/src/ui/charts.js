// Drawing for the web UI, in SVG built node by node (no library, no
// markup strings: every label is set as text, so job output cannot inject
// anything): the job graph, time-series line charts and bar charts.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#1f6feb", "#d97706", "#059669", "#9333ea", "#dc2626", "#0891b2", "#65a30d", "#db2777"];

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// A short form of a number: 1.2k, 3.4M.
function compact(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "-";
  const a = Math.abs(n);
  if (a >= 1e9) return (n / 1e9).toFixed(a >= 1e10 ? 0 : 1) + "G";
  if (a >= 1e6) return (n / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
  if (a >= 1e3) return (n / 1e3).toFixed(a >= 1e4 ? 0 : 1) + "k";
  return a >= 10 || a === 0 ? Math.round(n).toString() : n.toFixed(1);
}

// A round upper bound for an axis (1, 2 or 5 times a power of ten).
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function truncate(s, n) {
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}

// The colour of a vertex busy `busy` ms of each second: green (idle) to
// red (busy), as Flink's job graph shades it.
function busyColour(busy) {
  const f = Math.max(0, Math.min(1, busy / 1000));
  return "hsl(" + Math.round(130 * (1 - f)) + ", 70%, " + Math.round(88 - 10 * f) + "%)";
}

// Layers of a DAG: a vertex one right of the furthest vertex feeding it.
function layers(vertices) {
  const byId = new Map(vertices.map((v) => [v.id, v]));
  const known = vertices.some((v) => (v.inputs || []).length > 0);
  const depth = new Map();
  const visit = (v, seen) => {
    if (depth.has(v.id)) return depth.get(v.id);
    if (seen.has(v.id)) return 0;
    seen.add(v.id);
    let d = 0;
    if (known) {
      for (const i of v.inputs || []) {
        const up = byId.get(i.vertex);
        if (up) d = Math.max(d, visit(up, seen) + 1);
      }
    } else {
      // A plan that does not say how its vertices connect: a chain.
      d = vertices.indexOf(v);
    }
    depth.set(v.id, d);
    return d;
  };
  vertices.forEach((v) => visit(v, new Set()));
  const columns = [];
  for (const v of vertices) {
    const d = depth.get(v.id);
    (columns[d] = columns[d] || []).push(v);
  }
  const edges = [];
  vertices.forEach((v, i) => {
    if (known) for (const inp of v.inputs || []) edges.push({ from: inp.vertex, to: v.id, kind: inp.partitioning });
    else if (i > 0) edges.push({ from: vertices[i - 1].id, to: v.id, kind: "" });
  });
  return { columns: columns.filter(Boolean), edges };
}

// The job graph: a box per vertex (name, parallelism, rates), filled by
// its busiest subtask's busy time, with a bar for its backpressure; the
// edges say how records are routed. `load` maps a vertex id to
// { in, out, busy, back } (rates may be null).
function jobGraph(vertices, load) {
  const W = 210, H = 74, GX = 70, GY = 22, PAD = 12;
  const { columns, edges } = layers(vertices);
  const rows = Math.max(1, ...columns.map((c) => c.length));
  const width = PAD * 2 + columns.length * W + Math.max(0, columns.length - 1) * GX;
  const height = PAD * 2 + rows * H + (rows - 1) * GY;
  const pos = new Map();
  columns.forEach((col, x) => {
    const top = PAD + ((rows - col.length) * (H + GY)) / 2;
    col.forEach((v, y) => pos.set(v.id, { x: PAD + x * (W + GX), y: top + y * (H + GY) }));
  });
  const root = svg("svg", {
    class: "graph", width, height, viewBox: "0 0 " + width + " " + height,
    role: "img", "aria-label": "job graph",
  });
  root.append(svg("defs", {}, svg("marker", {
    id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse",
  }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#6b7385" }))));
  for (const e of edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    if (!a || !b) continue;
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
    const mx = (x1 + x2) / 2;
    root.append(svg("path", {
      class: "edge", d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`,
      fill: "none", stroke: "#6b7385", "stroke-width": 1.5, "marker-end": "url(#arrow)",
    }));
    if (e.kind) {
      root.append(svg("text", { x: mx, y: (y1 + y2) / 2 - 5, "text-anchor": "middle", class: "edge-label" }, e.kind));
    }
  }
  for (const v of vertices) {
    const p = pos.get(v.id);
    const l = load.get(v.id) || {};
    const busy = l.busy ?? 0, back = l.back ?? 0;
    const g = svg("g", { class: "vertex", "data-vertex": v.id, "data-busy": busy, "data-backpressured": back, transform: `translate(${p.x},${p.y})` });
    g.append(svg("title", {}, v.name + "\nbusy " + busy + " ms/s, backpressured " + back + " ms/s"));
    g.append(svg("rect", { width: W, height: H, rx: 6, fill: l.busy == null ? "#f3f4f6" : busyColour(busy), stroke: "#9aa3b5" }));
    g.append(svg("text", { x: 8, y: 18, class: "v-title" }, truncate(v.id + " · " + v.name, 30)));
    g.append(svg("text", { x: 8, y: 36, class: "v-line" }, "parallelism " + v.parallelism + (v.source ? " · source" : "")));
    g.append(svg("text", { x: 8, y: 52, class: "v-line" },
      "in " + compact(l.in) + "/s · out " + compact(l.out) + "/s"));
    // Backpressure: a bar along the bottom, full at 1000 ms/s.
    g.append(svg("rect", { x: 0, y: H - 8, width: W, height: 8, fill: "#e5e7eb", rx: 3 }));
    g.append(svg("rect", { class: "backpressure", x: 0, y: H - 8, width: (W * Math.min(1000, back)) / 1000, height: 8, fill: "#7c3aed", rx: 3 }));
    root.append(g);
  }
  return root;
}

// A duration in ms in the largest unit that keeps it short.
function duration(ms) {
  const a = Math.abs(ms);
  if (a < 1000) return Math.round(ms) + " ms";
  if (a < 120e3) return (ms / 1000).toFixed(a < 10e3 ? 1 : 0) + " s";
  if (a < 7200e3) return Math.round(ms / 60e3) + " min";
  if (a < 172800e3) return Math.round(ms / 3600e3) + " h";
  return compact(ms / 86400e3) + " d";
}

// A time-series line chart. `series`: [{ name, points: [[time_ms, value]] }]
// (a null value breaks the line); `format` writes an axis value. The
// legend sits under the title, three names to a row.
function lineChart(title, series, format, opts) {
  const W = 420, L = 58, R = 10, B = 22, PER_ROW = 3;
  const legendRows = Math.ceil(series.length / PER_ROW);
  const T = 24 + legendRows * 13, H = 150 + legendRows * 13;
  const fmt = format || compact;
  const all = series.flatMap((s) => s.points.filter((p) => p[1] !== null && p[1] !== undefined));
  const root = svg("svg", { class: "chart", width: W, height: H, viewBox: `0 0 ${W} ${H}`, "data-chart": title, "data-points": all.length });
  root.append(svg("text", { x: 6, y: 14, class: "c-title" }, title));
  series.forEach((s, i) => {
    const colour = s.colour || PALETTE[i % PALETTE.length];
    const lx = 10 + (i % PER_ROW) * ((W - 20) / PER_ROW), ly = 22 + Math.floor(i / PER_ROW) * 13;
    root.append(svg("rect", { x: lx, y: ly + 2, width: 10, height: 3, fill: colour }));
    root.append(svg("text", { x: lx + 14, y: ly + 7, class: "c-legend" }, truncate(s.name, 22)));
  });
  if (!all.length) {
    root.append(svg("text", { x: W / 2, y: (T + H) / 2, "text-anchor": "middle", class: "c-empty" }, (opts && opts.empty) || "no data yet"));
    return root;
  }
  const t1 = Math.max(...all.map((p) => p[0]));
  const t0 = Math.min(t1 - 60000, ...all.map((p) => p[0]));
  const ymax = niceMax(Math.max(...all.map((p) => p[1])));
  const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - v / ymax) * (H - T - B);
  for (const f of [0, 0.5, 1]) {
    const v = ymax * f;
    root.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e3e6ec" }));
    root.append(svg("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end", class: "c-axis" }, fmt(v)));
  }
  root.append(svg("text", { x: L, y: H - 6, class: "c-axis" }, "-" + duration(t1 - t0).replace(".0 ", " ")));
  root.append(svg("text", { x: W - R, y: H - 6, "text-anchor": "end", class: "c-axis" }, "now"));
  series.forEach((s, i) => {
    const colour = s.colour || PALETTE[i % PALETTE.length];
    if (opts && opts.dots) {
      for (const p of s.points) {
        if (p[1] === null || p[1] === undefined) continue;
        root.append(svg("circle", { cx: x(p[0]), cy: y(p[1]), r: 3, fill: colour },
          svg("title", {}, s.name + ": " + fmt(p[1]))));
      }
      return;
    }
    const has = (p) => p && p[1] !== null && p[1] !== undefined;
    let d = "";
    s.points.forEach((p, k) => {
      if (!has(p)) return;
      const [px, py] = [x(p[0]).toFixed(1), y(p[1]).toFixed(1)];
      d += (has(s.points[k - 1]) ? " L " : " M ") + px + " " + py;
      // A point with no neighbour draws no line: a dot shows it.
      if (!has(s.points[k - 1]) && !has(s.points[k + 1])) {
        root.append(svg("circle", { cx: px, cy: py, r: 2.5, fill: colour }));
      }
    });
    if (d) root.append(svg("path", { d, fill: "none", stroke: colour, "stroke-width": 1.8, class: "line" }));
  });
  return root;
}

// A horizontal bar chart of [{ label, value }].
function barChart(title, bars, format) {
  const fmt = format || compact;
  const W = 420, ROW = 18, T = 24, L = 150;
  const H = T + Math.max(1, bars.length) * ROW + 6;
  const root = svg("svg", { class: "chart bars", width: W, height: H, viewBox: `0 0 ${W} ${H}`, "data-chart": title, "data-bars": bars.length });
  root.append(svg("text", { x: 4, y: 14, class: "c-title" }, title));
  const max = Math.max(0, ...bars.map((b) => b.value)) || 1;
  bars.forEach((b, i) => {
    const yy = T + i * ROW;
    root.append(svg("text", { x: L - 6, y: yy + 12, "text-anchor": "end", class: "c-axis" }, truncate(b.label, 22)));
    const w = Math.max(1, ((W - L - 60) * Math.max(0, b.value)) / max);
    root.append(svg("rect", { class: "bar", x: L, y: yy + 2, width: w, height: ROW - 5, fill: b.colour || PALETTE[0], rx: 2 },
      svg("title", {}, b.label + ": " + fmt(b.value))));
    root.append(svg("text", { x: L + w + 4, y: yy + 12, class: "c-axis" }, fmt(b.value)));
  });
  return root;
}

// From a sink's newest rows, the bars worth drawing: the last column whose
// every value is a number (not a time), per row labelled by the other
// columns that are not times, of the newest window if the rows carry
// one; the largest 15. None when no column is numeric.
function resultBars(columns, rows) {
  const timeLike = (c) => /(^|_)(window|start|end|time|timestamp|ts|date|date_time)($|_)/i.test(c);
  const numeric = (i) => rows.length > 0 && rows.every((r) => r[i] !== "" && !Number.isNaN(Number(r[i])));
  let value = -1;
  columns.forEach((c, i) => { if (!timeLike(c) && numeric(i)) value = i; });
  if (value < 0) return null;
  const windowCol = columns.findIndex((c) => /window_end|window_start|^window$|^end$|^start$/i.test(c));
  const labels = columns.map((c, i) => i).filter((i) => i !== value && !timeLike(columns[i]));
  const label = (r) => (labels.length ? labels.map((i) => r[i]).join(" · ") : "row");
  let picked = rows, title = columns[value] + (labels.length ? " by " + labels.map((i) => columns[i]).join(", ") : "");
  if (windowCol >= 0) {
    const vals = rows.map((r) => r[windowCol]);
    const numbers = vals.every((v) => v !== "" && !Number.isNaN(Number(v)));
    const newer = (a, b) => (numbers ? Number(b) > Number(a) : b > a);
    const newest = vals.reduce((a, b) => (newer(a, b) ? b : a));
    const inNewest = rows.filter((r) => r[windowCol] === newest);
    if (inNewest.length > 1) {
      picked = inNewest;
      title += " (" + columns[windowCol] + " " + newest + ")";
    } else {
      // One row per window (a top-1 query): the newest windows side by side.
      const bars = rows.slice().sort((a, b) => (newer(a[windowCol], b[windowCol]) ? 1 : -1)).slice(0, 15)
        .map((r) => ({ label: r[windowCol].replace(/^\d{4}-\d\d-\d\dT/, "") + " · " + label(r), value: Number(r[value]) }));
      return { title: title + ", newest " + columns[windowCol] + " first", bars };
    }
  }
  const bars = picked.map((r) => ({ label: label(r), value: Number(r[value]) }));
  bars.sort((a, b) => b.value - a.value);
  return { title, bars: bars.slice(0, 15) };
}
