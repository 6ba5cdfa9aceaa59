// stacklens web UI: one view at a time (tabs), a shared time window (zoom/pan), a shared
// selection, an events table linked to the timeline, two time cursors, and the URL keeping
// the view state (#view=…&host=…&start=…&end=…) so a reload or a shared link restores it.
//
// Times: epoch nanoseconds need 61 bits, JavaScript numbers hold 53, so absolute times are
// BigInt here (they travel as strings); bars come as offsets (ns) from the answer's origin.
// The x axis is relative to an origin (the window's start, or cursor A when chosen) in a unit
// fitting the window (ns … h), and its title names the origin's wall-clock time and the unit.
"use strict";
const VIEW_TITLES = {vm_states: "VM states", tasks: "Service tasks", requests: "Request flow",
  migration: "Migration", ovs: "OvS packets", kernel: "Kernel threads & CPUs", resources: "Resources per host"};
const STATE_COLOURS = {
  // VM states (Nova's vm_state)
  active: "#43a047", building: "#1e88e5", stopped: "#78909c", paused: "#fb8c00", suspended: "#8e24aa",
  shelved: "#6d4c41", shelved_offloaded: "#4e342e", resized: "#00acc1", soft_deleted: "#9e9e9e",
  deleted: "#212121", error: "#e53935", rescued: "#fdd835", unknown: "#b0bec5",
  // task outcomes
  ok: "#1e88e5", open: "#fbc02d",
  // migration stages
  attempt: "#90a4ae", precopy: "#26a69a", round: "#5e35b1", "stop&copy": "#d50000", nova: "#f9a825",
  // kernel thread states and CPU activity
  running: "#2e7d32", runnable: "#ff6f00", blocked: "#cfd8dc", io_wait: "#8d6e63", syscall: "#1565c0",
  irq: "#c2185b", softirq: "#f48fb1",
};
const STATE_NAMES = {running: "running", runnable: "preempted (runnable)", blocked: "blocked (sleeping)",
  io_wait: "blocked on I/O", syscall: "in a system call", irq: "IRQ handler", softirq: "soft IRQ",
  ok: "task ok", error: "task failed", open: "task unfinished", attempt: "migration attempt",
  precopy: "precopy (first pass)", round: "dirty-page round", "stop&copy": "stop&copy (VM paused)", nova: "Nova step"};
const THIN = new Set(["syscall"]);  // drawn over the thread's state, half height
const UNITS = [["h", 3600e9], ["min", 60e9], ["s", 1e9], ["ms", 1e6], ["µs", 1e3], ["ns", 1]];
const state = {summary: null, view: "vm_states", start: null, end: null, host: null, offset: 0, origin: null,
  sel: null, selIds: null, cursors: [], cursorMode: false, axis: null, last: null, eventsQuery: null};

// Everything from the traces goes through esc() before Plotly (which renders some HTML in
// hover text and labels) and through textContent in the DOM.
function esc(s) {
  return String(s ?? "").replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}
function el(tag, text, cls) { const e = document.createElement(tag); if (text != null) e.textContent = text; if (cls) e.className = cls; return e; }
async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) { let m = String(r.status); try { m = (await r.json()).error || m; } catch (_) {} throw new Error(m); }
  return r.json();
}
const big = v => (v == null || v === "" ? null : BigInt(v));

// ---- time formatting ----------------------------------------------------------------------
function wall(ns) {  // BigInt epoch ns → "2016-08-03 16:23:20.892486133"
  const ms = ns / 1000000n, sub = ((ns % 1000000n) + 1000000n) % 1000000n;
  const iso = new Date(Number(ms)).toISOString();
  return iso.slice(0, 10) + " " + iso.slice(11, 23) + String(sub).padStart(6, "0");
}
function duration(ns) {  // a Number of ns in the unit that reads best
  const a = Math.abs(ns);
  for (const [u, f] of UNITS) if (a >= f || u === "ns") return (ns / f).toFixed(a / f >= 100 ? 1 : 3).replace(/\.?0+$/, "") + " " + u;
}
function unitFor(widthNs) {
  for (const [u, f] of UNITS) if (widthNs >= 2 * f) return [u, f];
  return ["ns", 1];
}

// ---- the time axis: value = (ns - axis origin) / unit --------------------------------------
function makeAxis(start, end) {
  const origin = state.origin ?? start;
  const [unit, f] = unitFor(Number(end - start));
  return {origin, unit, f,
    x: ns => Number(ns - origin) / f,
    ns: v => origin + BigInt(Math.round(v * f)),
    title: `time since ${wall(origin)} UTC${state.origin != null ? " (origin: cursor A)" : ""}, in ${unit}`};
}

function selected(bar) {
  const s = state.selIds; if (!s) return true;
  return (bar.vm && s.vms.has(bar.vm)) || (bar.request_id && s.requests.has(bar.request_id)) || (bar.tid != null && s.tids.has(bar.tid));
}
function threadColour(tid) {  // a stable, distinct colour per thread (golden-angle hues)
  const h = (Number(tid) * 137.508) % 360;
  return `hsl(${h.toFixed(0)}, 62%, ${45 + (Number(tid) % 3) * 8}%)`;
}

// ---- drawing ------------------------------------------------------------------------------
function barsOf(d) {  // a view answered as columns (one array per field; lane: index into d.lanes)
  const c = d.columns, k = d.bar_constants || {}, bars = new Array(c.s.length);
  for (let i = 0; i < bars.length; i++) {
    bars[i] = {...k, lane: d.lanes[c.lane[i]], s: c.s[i], e: c.e[i], label: c.label[i], state: c.state[i],
      vm: c.vm[i], tid: c.tid[i], cpu: c.cpu[i], merged: c.merged[i]};
  }
  return bars;
}

async function draw() {
  const chart = document.getElementById("chart");
  chart.dataset.ready = "0";
  // level of detail from the plot's own width (the lanes' labels take ~300 px); the kernel
  // view at 2 px per bucket: thousands of SVG bars are what makes a browser slow
  const plotPx = Math.max(100, (chart.clientWidth || 1300) - 300);
  const q = new URLSearchParams({px: String(state.view === "kernel" ? Math.round(plotPx / 2) : plotPx)});
  if (state.start != null) { q.set("start", state.start); q.set("end", state.end); }
  if (state.view === "kernel") { if (state.host) q.set("host", state.host); q.set("offset", state.offset); }
  document.getElementById("host-box").style.display = state.view === "kernel" ? "" : "none";
  const t = performance.now();
  let d;
  try { d = await getJSON(`/api/view/${state.view}?` + q); }
  catch (e) { showError(e); chart.dataset.ready = "1"; chart.dataset.error = e.message; return; }
  delete chart.dataset.error;
  if (d.columns) d.bars = barsOf(d);
  const fetched = performance.now() - t;
  state.last = d;
  const dOrigin = BigInt(d.origin), start = BigInt(d.start), end = BigInt(d.end);
  if (d.host) { state.host = d.host; document.getElementById("host").value = d.host; }
  const ax = state.axis = makeAxis(start, end);
  const abs = off => dOrigin + BigInt(off);
  const xOf = off => ax.x(abs(off));
  const range = [ax.x(start), ax.x(end)];
  const plotW = Math.max(200, (chart.clientWidth || 1000) - 330);
  const minW = (range[1] - range[0]) / plotW * 2;  // every interval at least 2 px wide
  const lanes = d.lanes || [...new Set(d.bars.map(b => b.lane))];
  const traces = [], groups = {};
  d.bars.forEach((b, i) => {
    const faded = !selected(b);
    const key = (b.state || b.layer) + (faded ? "-faded" : "");
    (groups[key] ||= {idx: [], state: b.state || b.layer, faded}).idx.push(i);
  });
  const hover = b => `<b>${esc(b.label)}</b><br>${esc(b.lane)}<br>start ${esc(wall(abs(b.s)))} UTC`
    + ` (${duration(Number(abs(b.s) - ax.origin))} after origin)<br>duration ${duration(b.e - b.s)}`
    + (b.merged > 1 ? `<br>${b.merged} intervals merged (level of detail: zoom in)` : "")
    + (b.request_id ? `<br>request ${esc(b.request_id)}` : "");
  for (const g of Object.values(groups).sort((a, b) => (THIN.has(a.state) ? 1 : 0) - (THIN.has(b.state) ? 1 : 0))) {
    const bars = g.idx.map(i => d.bars[i]);
    const isCpu = g.state === "cpu";
    traces.push({type: "bar", orientation: "h",
      name: esc(isCpu ? "on CPU (colour = thread)" : (STATE_NAMES[g.state] || (state.view === "vm_states" ? "VM " : "") + g.state))
        + (g.faded ? " (not selected)" : ""),
      legendgroup: g.state, showlegend: !g.faded || !groups[g.state], y: bars.map(b => esc(b.lane)), base: bars.map(b => xOf(b.s)),
      x: bars.map(b => Math.max(xOf(b.e) - xOf(b.s), minW)), width: THIN.has(g.state) ? 0.35 : 0.8,
      marker: {color: isCpu ? bars.map(b => threadColour(b.tid)) : (STATE_COLOURS[g.state] || "#607d8b"),
        opacity: g.faded ? 0.18 : 0.95, line: {width: g.state === "stop&copy" ? 2 : 0, color: "#000"}},
      text: state.view === "migration" ? bars.map(b => barText(b)) : undefined, textposition: "inside", insidetextanchor: "middle",
      textfont: {color: "#fff", size: 11}, constraintext: "both",
      hovertext: bars.map(hover), hoverinfo: "text", customdata: g.idx});
  }
  if (state.view === "requests") traces.push(...hopArrows(d.bars, xOf));
  const shapes = [];
  for (const b of d.bars) if (b.state === "stop&copy")  // stop&copy: the VM is paused, highlighted over all lanes
    shapes.push({type: "rect", xref: "x", yref: "paper", x0: xOf(b.s), x1: Math.max(xOf(b.e), xOf(b.s) + 3 * minW), y0: 0, y1: 1,
      fillcolor: "rgba(213,0,0,0.22)", line: {width: 0}, layer: "below"});
  for (const [i, c] of state.cursors.entries())
    shapes.push({type: "line", xref: "x", yref: "paper", x0: ax.x(c), x1: ax.x(c), y0: 0, y1: 1,
      line: {color: "#6a1b9a", width: 2, dash: i ? "dash" : "solid"}});
  let yTitle = "";
  for (const s of d.series || []) {
    const faded = state.selIds && s.vm && !state.selIds.vms.has(s.vm);
    yTitle = s.unit === "packets" ? `packets per ${duration(d.bucket_ns || 1)}` : s.unit === "VMs" ? "VMs on the host" : s.unit || "";
    if (s.unit === "packets") {
      traces.push({type: "bar", name: esc(s.name), x: s.x.map(x => xOf(x) + (d.bucket_ns || 1) / ax.f / 2), y: s.y,
        width: (d.bucket_ns || 1) / ax.f, hovertext: s.y.map((v, i) => `${esc(s.name)}: ${v} in ${duration(d.bucket_ns)} from ${esc(wall(abs(s.x[i])))} UTC`),
        hoverinfo: "text"});
      continue;
    }
    traces.push({type: "scatter", mode: s.unit === "pages" ? "lines+markers+text" : "lines+markers", name: esc(s.name),
      x: s.x.map(xOf), y: s.y, yaxis: d.bars.length ? "y2" : "y", line: {shape: s.unit === "VMs" ? "hv" : "linear"},
      text: s.unit === "pages" ? s.y.map((_, i) => i ? `R${i}` : "pre") : undefined, textposition: "top center",
      opacity: faded ? 0.2 : 1, hovertext: s.y.map((v, i) => `${esc(s.name)}: ${v} ${esc(s.unit || "")}<br>${esc(wall(abs(s.x[i])))} UTC`),
      hoverinfo: "text"});
  }
  const empty = !d.bars.length && !(d.series || []).some(s => s.x.length);
  // lanes of 18 px; with a dirty-pages panel under them, everything within the visible box
  const height = !d.bars.length ? 560 : (d.series || []).length ? 610 : Math.max(560, lanes.length * 18 + 140);
  chart.style.height = height + "px";
  document.getElementById("cursorlayer").style.height = height + "px";
  // bars: the time axis on top (lanes scroll below it, as in Trace Compass), legend above it
  const hasSeries = d.bars.length > 0 && (d.series || []).some(s => s.x.length);
  const top = d.bars.length > 0, packets = (d.series || []).some(s => s.unit === "packets");
  const layout = {barmode: packets ? "stack" : "overlay", bargap: 0, height, showlegend: !empty,
    margin: {l: 10, r: 60, t: top ? 120 : 60, b: top ? 20 : 70},
    legend: {orientation: "h", x: 0, y: 1, yref: "container", yanchor: "top", title: {text: "<b>colour:</b>"}},
    xaxis: {title: {text: esc(ax.title), standoff: 6}, range, exponentformat: "none", separatethousands: true,
      ticksuffix: " " + ax.unit, zeroline: false, showgrid: true, visible: !empty, side: top ? "top" : "bottom",
      automargin: true, showline: true, mirror: true},
    yaxis: d.bars.length ? {automargin: true, type: "category", domain: hasSeries ? [0.38, 1] : [0, 1], categoryorder: "array", categoryarray: lanes.map(esc).reverse(),
      title: {text: laneTitle()}, visible: !empty}
      : {title: {text: esc(yTitle)}, visible: !empty, rangemode: "tozero", automargin: true,
         ...(yTitle === "VMs on the host" ? {dtick: 1, tickformat: "d"} : {})},
    // dirty pages per round: a panel of its own under the lanes, log scale (rounds span decades)
    yaxis2: {domain: [0, 0.3], anchor: "x", type: "log", title: {text: "dirty pages (log)"}, automargin: true},
    shapes, dragmode: "zoom", hovermode: "closest",
    annotations: empty ? [{text: esc(d.message || "no data"), xref: "paper", yref: "paper", x: 0.5, y: 0.5, showarrow: false,
      font: {size: 18, color: "#555"}}] : []};
  document.getElementById("viewtitle").textContent = VIEW_TITLES[state.view] + (d.host ? " — host " + d.host : "")
    + (state.view === "kernel" && d.bars.length ? " (lanes: CPUs and their interrupts, then threads as process [pid] › thread (tid))" : "");
  await Plotly.react(chart, traces, layout, {responsive: true, scrollZoom: true, displaylogo: false, displayModeBar: false});
  bindChart(chart);
  pager(d);
  document.getElementById("status").textContent = (d.message ? d.message + " — " : "")
    + `${d.bars.length} bars, ${(d.series || []).length} series: answered in ${fetched.toFixed(0)} ms, drawn in ${(performance.now() - t - fetched).toFixed(0)} ms`
    + ` — window ${wall(start)} → ${wall(end)} UTC (${duration(Number(end - start))})`;
  state.shown = [start, end];
  chart.dataset.ready = "1";
  chart.dataset.bars = String(d.bars.length);
  chart.dataset.series = String((d.series || []).filter(s => s.x.length).length);
  chart.dataset.empty = empty ? "1" : "0";
  saveUrl();
}
function laneTitle() {
  return {vm_states: "VM (by name)", tasks: "worker (service / thread)", requests: "host / service",
    migration: "migration (VM source→destination)"}[state.view] || "";
}
function barText(b) {
  if (b.state === "round") return (b.label.match(/round \d+/) || [""])[0].replace("round ", "R");
  if (b.state === "precopy") return "precopy";
  if (b.state === "stop&copy") return "stop&copy";
  return "";
}
function hopArrows(bars, xOf) {
  // consecutive hops of one request: an arrow from the end of one to the start of the next
  const by = {};
  for (const b of bars) if (b.request_id && b.merged === 1) (by[b.request_id] ||= []).push(b);
  const xs = [], ys = [], hv = [];
  let n = 0;
  for (const [rid, hops] of Object.entries(by)) {
    hops.sort((a, b) => a.s - b.s);
    for (let i = 1; i < hops.length && n < 400; i++) {
      const a = hops[i - 1], b = hops[i];
      if (a.lane === b.lane) continue;
      xs.push(xOf(Math.min(a.e, b.s)), xOf(b.s), null); ys.push(esc(a.lane), esc(b.lane), null);
      const h = `request ${esc(rid)}: ${esc(a.label)} → ${esc(b.label)}`; hv.push(h, h, null); n++;
    }
  }
  if (!n) return [];
  return [{type: "scatter", mode: "lines+markers", name: "hop (request flow)", x: xs, y: ys, hovertext: hv, hoverinfo: "text",
    line: {color: "#37474f", width: 1.5}, marker: {symbol: "arrow", angleref: "previous", size: 11, color: "#37474f"}}];
}
function pager(d) {
  const p = document.getElementById("pager");
  if (state.view !== "kernel" || !d.threads_total) { p.style.display = "none"; return; }
  p.style.display = "";
  const a = d.offset + 1, b = Math.min(d.offset + d.page, d.threads_total);
  document.getElementById("threads-info").textContent = `threads ${a}–${b} of ${d.threads_total} in this window (by process)`;
  document.getElementById("threads-prev").disabled = d.offset === 0;
  document.getElementById("threads-next").disabled = b >= d.threads_total;
  p.dataset.page = d.page; p.dataset.total = d.threads_total;
}

function bindChart(chart) {
  if (chart._stacklensBound) return;
  chart._stacklensBound = true;
  chart.on("plotly_relayout", ev => {
    if (!state.axis) return;
    if (ev["xaxis.range[0]"] != null) {
      state.start = state.axis.ns(ev["xaxis.range[0]"]); state.end = state.axis.ns(ev["xaxis.range[1]"]);
      if (state.end <= state.start) state.end = state.start + 1n;
      redraw();
    } else if (ev["xaxis.autorange"]) { state.start = state.end = null; redraw(); }
  });
  chart.on("plotly_click", ev => {
    if (state.cursorMode || ev.event?.shiftKey) return;  // a cursor click, handled below
    const p = ev.points && ev.points[0]; if (!p || p.customdata == null || !state.last) return;
    const b = state.last.bars[p.customdata]; if (!b) return;
    clickBar(b).catch(showError);
  });
  // time cursors: shift-click on the plot, or in cursor mode a transparent layer over the
  // chart takes the clicks (Plotly never sees them: no zoom, no double-click reset)
  const cursorAt = ev => {
    if (!state.axis) return;
    const xa = chart._fullLayout.xaxis, box = chart.getBoundingClientRect();
    const px = ev.clientX - box.left - xa._offset;
    if (px < 0 || px > xa._length) return;
    setCursor(state.axis.ns(xa.p2l(px)));
  };
  chart.addEventListener("click", ev => { if (ev.shiftKey) cursorAt(ev); }, true);
  document.getElementById("cursorlayer").addEventListener("click", ev => { ev.stopPropagation(); cursorAt(ev); });
}
let pending = null;
function redraw() { document.getElementById("chart").dataset.ready = "0"; clearTimeout(pending); pending = setTimeout(() => draw().catch(showError), 60); }
function showError(e) { document.getElementById("status").textContent = "error: " + e.message; }

// ---- time cursors -------------------------------------------------------------------------
function setCursor(ns) {
  if (state.cursors.length >= 2) state.cursors = [];
  state.cursors.push(ns);
  showCursors();
  redraw();
}
function showCursors() {
  const c = state.cursors, box = document.getElementById("cursors");
  if (!c.length) { box.textContent = ""; box.dataset.delta = ""; return; }
  let t = `A ${wall(c[0])}`;
  if (c.length === 2) {
    const delta = c[1] - c[0];
    t += `  B ${wall(c[1])}  Δ(B−A) = ${duration(Number(delta))}`;
    box.dataset.delta = String(delta);
  }
  box.textContent = t;
}

// ---- events table -------------------------------------------------------------------------
async function clickBar(b) {
  const s = BigInt(state.last.origin) + BigInt(b.s), e = BigInt(state.last.origin) + BigInt(b.e);
  const q = {start: String(s), end: String(e)};
  // a request's or a VM's events span hosts (and a task's host is the one that ran it, not
  // always the host its records were collected on): those are not filtered by host
  if (b.host && (b.layer === "kernel" || !(b.request_id || b.vm))) q.host = b.host;
  if (b.layer === "kernel") { if (b.lane.startsWith("CPU ")) q.cpu = String(b.cpu); else if (b.tid != null) q.tid = String(b.tid); }
  else if (b.request_id) q.request_id = b.request_id;
  else if (b.vm) q.vm = b.vm;
  state.clicked = {...b, start: q.start, end: q.end};
  await loadEvents([q], `${b.label} — ${b.lane}`);
  if (b.layer !== "kernel" && (b.request_id || b.vm)) await select(b.request_id ? {request: b.request_id} : {vm: b.vm});
}
async function loadEvents(queries, what) {
  state.eventsQuery = {queries, what};
  const text = document.getElementById("filter").value.trim();
  const info = document.getElementById("events-info"), body = document.querySelector("#events tbody");
  info.textContent = "loading…";
  const seen = new Map();
  let total = 0, complete = true;
  for (const q of queries) {  // several queries (a finding's evidence): rows merged, each once
    const p = new URLSearchParams({...q, limit: "500"});
    if (text) p.set("q", text);
    const r = await getJSON("/api/events?" + p);
    total += r.total; complete &&= r.rows.length === r.total;
    for (const row of r.rows) seen.set([row.ts, row.host, row.name, row.cpu, row.tid].join("|"), row);
  }
  const rows = [...seen.values()];
  if (queries.length > 1 && complete) total = rows.length;  // overlapping queries: count each event once
  rows.sort((a, b) => (BigInt(a.ts) < BigInt(b.ts) ? -1 : BigInt(a.ts) > BigInt(b.ts) ? 1 : 0));
  const origin = state.axis ? state.axis.origin : 0n;
  body.replaceChildren(...rows.map(r => {
    const tr = el("tr"); tr.dataset.ts = r.ts;
    const ts = BigInt(r.ts);
    for (const [v, cls] of [[wall(ts), ""], [duration(Number(ts - origin)), ""], [r.host, ""], [r.layer, ""], [r.cpu ?? "", ""],
      [r.tid ?? "", ""], [r.name, ""], [r.fields ?? "", "fields"]]) tr.append(el("td", String(v), cls));
    return tr;
  }));
  info.textContent = `${total} event(s) of ${what}` + (text ? ` matching “${text}”` : "") + (rows.length < total ? ` (first ${rows.length} shown)` : "");
  const box = document.getElementById("eventsbox");
  box.dataset.total = String(total); box.dataset.rows = String(rows.length); box.dataset.ready = "1";
}

// ---- selection (explain tree) -------------------------------------------------------------
async function select(what) {
  state.sel = what;
  const q = what.request ? "request=" + encodeURIComponent(what.request) : "vm=" + encodeURIComponent(what.vm);
  document.getElementById("selection").textContent = what.request ? "request " + what.request : "VM " + what.vm;
  let tree;
  try { tree = await getJSON("/api/explain?" + q); } catch (e) { tree = {label: "no explanation: " + e.message, children: []}; }
  const ids = {vms: new Set(), requests: new Set(), tids: new Set()};
  const root = document.getElementById("tree");
  root.replaceChildren((function node(n, depth) {  // the whole tree, collapsible, nothing cut
    const a = n.attrs || {};
    if (a.vm) ids.vms.add(a.vm); if (a.instance) ids.vms.add(a.instance); if (a.request_id) ids.requests.add(a.request_id); if (a.tid != null) ids.tids.add(a.tid);
    const kids = n.children || [];
    if (!kids.length) { const d = el("div", n.label, "leaf"); d.dataset.kind = n.kind || ""; return d; }
    const det = el("details"); det.open = depth < 3; det.dataset.kind = n.kind || "";
    det.append(el("summary", n.label + ` (${kids.length})`), ...kids.map(c => node(c, depth + 1)));
    return det;
  })(tree, 0));
  if (what.vm) ids.vms.add(what.vm); if (what.request) ids.requests.add(what.request);
  state.selIds = ids;
  document.body.dataset.selected = "1";
  await draw();
}

function tab(name) {
  state.view = name; state.offset = 0;
  document.querySelectorAll("#tabs a").forEach(a => a.classList.toggle("active", a.dataset.view === name));
  document.getElementById("chart").dataset.ready = "0";
  return draw().catch(showError);
}

// ---- the URL keeps the view state ---------------------------------------------------------
function saveUrl() {
  const p = new URLSearchParams({view: state.view});
  if (state.start != null) { p.set("start", state.start); p.set("end", state.end); }
  if (state.host) p.set("host", state.host);
  if (state.offset) p.set("offset", state.offset);
  if (state.origin != null) p.set("origin", state.origin);
  if (state.cursors.length) p.set("cursors", state.cursors.join(","));
  if (state.sel) p.set(state.sel.request ? "request" : "vm", state.sel.request || state.sel.vm);
  history.replaceState(null, "", "#" + p);
}
function loadUrl() {
  const p = new URLSearchParams(location.hash.slice(1));
  const ok = v => /^-?[0-9]{1,19}$/.test(v || "");
  if (p.get("view") && state.summary.views.includes(p.get("view"))) state.view = p.get("view");
  if (ok(p.get("start")) && ok(p.get("end"))) { state.start = BigInt(p.get("start")); state.end = BigInt(p.get("end")); }
  if (p.get("host")) state.host = p.get("host");
  if (ok(p.get("offset"))) state.offset = Number(p.get("offset"));
  if (ok(p.get("origin"))) state.origin = BigInt(p.get("origin"));
  if (p.get("cursors")) state.cursors = p.get("cursors").split(",").filter(ok).map(BigInt).slice(0, 2);
  return p.get("request") ? {request: p.get("request")} : p.get("vm") ? {vm: p.get("vm")} : null;
}

// ---- findings → their evidence ------------------------------------------------------------
async function jumpToFinding(f) {
  const ev = f.evidence.filter(e => e.start != null);
  const layer = (ev.find(e => e.layer) || f.evidence.find(e => e.layer) || {}).layer;
  state.view = f.rule.startsWith("migration_interference") ? "kernel" : f.rule.startsWith("migration") ? "migration"
    : f.rule.startsWith("ovs") ? "ovs" : layer === "kernel" ? "kernel" : layer === "virt" ? "migration" : "requests";
  const host = (ev.find(e => e.host) || f.evidence.find(e => e.host) || {}).host || (f.subject.hosts || [])[0];
  if (host && state.summary.kernel_hosts.includes(host)) state.host = host;
  state.offset = 0;
  const queries = [];
  if (ev.length) {
    let s = ev.map(e => BigInt(e.start)).reduce((a, b) => (a < b ? a : b));
    let e = ev.map(x => BigInt(x.end ?? x.start)).reduce((a, b) => (a > b ? a : b)) + 1n;
    const pad = (e - s) / 10n > 1000000n ? (e - s) / 10n : 1000000n;  // at least 1 ms around it
    state.start = s - pad; state.end = e + pad;
    for (const x of ev) {  // the evidence's own events: its threads, its request, its VM, else its host
      const w = {start: String(x.start), end: String(x.end ?? x.start)}, r = x.ref || {};
      const tids = r.tid != null ? [r.tid] : (r.tids || []);
      if (tids.length) for (const tid of tids.slice(0, 6)) queries.push({...w, tid: String(tid), ...(x.host ? {host: x.host} : {})});
      else if (r.request_id) queries.push({...w, request_id: r.request_id});
      else if (r.vm) queries.push({...w, vm: r.vm});
      else queries.push({...w, ...(x.host ? {host: x.host} : {})});
    }
  } else if (f.start != null) {
    state.start = BigInt(f.start) - 1000000n; state.end = BigInt(f.start) + 1000000n;
    queries.push({start: String(state.start), end: String(state.end), ...(host ? {host} : {})});
  } else { state.start = state.end = null; }
  document.querySelectorAll("#tabs a").forEach(a => a.classList.toggle("active", a.dataset.view === state.view));
  if (f.subject.request_id && !f.subject.vm) await select({request: f.subject.request_id});
  else if (f.subject.vm) await select({vm: f.subject.vm}); else await draw();
  const uniq = [...new Map(queries.map(q => [JSON.stringify(q), q])).values()];
  if (uniq.length) await loadEvents(uniq, "the evidence of: " + f.statement);
}

async function main() {
  state.summary = await getJSON("/api/summary");
  const s = state.summary;
  document.getElementById("meta").textContent = `${s.events.toLocaleString()} events, hosts: ${s.hosts.join(", ")}`;
  const nav = document.getElementById("tabs");
  for (const v of s.views) { const a = el("a", VIEW_TITLES[v] || v); a.dataset.view = v; a.id = "tab-" + v; a.onclick = () => { state.start = state.end = null; tab(v); }; nav.append(a); }
  const hostSel = document.getElementById("host");  // every host of the store; kernel data or not
  for (const h of s.hosts) {
    const o = el("option", h + (s.kernel_hosts.includes(h) ? "" : " (no kernel events)")); o.value = h;
    hostSel.append(o);
  }
  hostSel.onchange = () => { state.host = hostSel.value; state.offset = 0; state.start = state.end = null; draw().catch(showError); };
  document.getElementById("threads-prev").onclick = () => { state.offset = Math.max(0, state.offset - Number(document.getElementById("pager").dataset.page)); draw().catch(showError); };
  document.getElementById("threads-next").onclick = () => { state.offset += Number(document.getElementById("pager").dataset.page); draw().catch(showError); };
  document.getElementById("clear").onclick = () => { state.sel = state.selIds = null; document.getElementById("selection").textContent = "nothing selected"; document.getElementById("tree").replaceChildren(); draw(); };
  document.getElementById("reset").onclick = () => { state.start = state.end = null; draw(); };
  const cm = document.getElementById("cursor-mode");
  cm.onclick = () => { state.cursorMode = !state.cursorMode; cm.classList.toggle("on", state.cursorMode);
    document.getElementById("cursorlayer").style.display = state.cursorMode ? "block" : "none"; };
  document.getElementById("origin-at-cursor").onclick = () => { state.origin = state.cursors.length ? state.cursors[0] : null; draw(); };
  document.getElementById("copy-link").onclick = () => { saveUrl(); navigator.clipboard?.writeText(location.href).catch(() => {}); };
  let filterTimer = null;
  document.getElementById("filter").oninput = () => { clearTimeout(filterTimer);
    filterTimer = setTimeout(() => { if (state.eventsQuery) loadEvents(state.eventsQuery.queries, state.eventsQuery.what).catch(showError); }, 250); };
  const sel = loadUrl();
  showCursors();
  document.querySelectorAll("#tabs a").forEach(a => a.classList.toggle("active", a.dataset.view === state.view));
  if (sel) await select(sel).catch(showError); else await draw().catch(showError);
  const findings = await getJSON("/api/findings");
  const ol = document.getElementById("findings");
  if (!findings.length) ol.append(el("li", "no findings"));
  findings.forEach((f, i) => {
    const li = el("li", f.statement, f.severity); li.id = "finding-" + i; li.title = "What to do: " + f.action;
    li.onclick = () => jumpToFinding(f).catch(showError);
    ol.append(li);
  });
  document.body.dataset.loaded = "1";
}
main().catch(showError);
