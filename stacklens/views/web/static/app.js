// stacklens web UI: one view at a time (tabs), shared time window (zoom/pan), shared selection.
"use strict";
const VIEW_TITLES = {vm_states: "VM states", tasks: "Service tasks", requests: "Request flow",
  migration: "Migration", ovs: "OvS packets", kernel: "Kernel threads & CPUs", resources: "Resources per host"};
const COLOURS = {app: "#1e88e5", virt: "#8e24aa", kernel: "#f9a825", net: "#43a047", storage: "#3949ab",
  running: "#43a047", runnable: "#e53935", cpu: "#78909c"};
const state = {summary: null, view: "vm_states", start: null, end: null, sel: null, selIds: null, busy: false};

// Everything from the traces goes through esc() before Plotly (which renders some HTML in
// hover text) and through textContent in the DOM.
function esc(s) {
  return String(s ?? "").replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}
function el(tag, text, cls) { const e = document.createElement(tag); if (text != null) e.textContent = text; if (cls) e.className = cls; return e; }
async function getJSON(url) { const r = await fetch(url); if (!r.ok) throw new Error(url + ": " + r.status); return r.json(); }
const toS = ns => (ns - state.summary.t0) / 1e9;
const toNs = s => Math.round(s * 1e9) + state.summary.t0;

function selected(bar) {
  const s = state.selIds; if (!s) return true;
  return (bar.vm && s.vms.has(bar.vm)) || (bar.request_id && s.requests.has(bar.request_id)) || (bar.tid != null && s.tids.has(bar.tid));
}

async function draw() {
  const chart = document.getElementById("chart");
  chart.dataset.ready = "0";
  const q = new URLSearchParams({px: String(document.getElementById("chart").clientWidth || 1000)});
  if (state.start != null) { q.set("start", state.start); q.set("end", state.end); }
  const t = performance.now();
  const d = await getJSON(`/api/view/${state.view}?` + q);
  const lanes = [...new Set(d.bars.map(b => b.lane))];
  const traces = [];
  const groups = {};
  for (const b of d.bars) {
    const key = (b.state || b.layer) + (selected(b) ? "" : "-faded");
    (groups[key] ||= {bars: [], colour: COLOURS[b.state] || COLOURS[b.layer] || "#607d8b", faded: !selected(b), name: b.state || b.layer}).bars.push(b);
  }
  for (const g of Object.values(groups)) {
    traces.push({type: "bar", orientation: "h", name: esc(g.name) + (g.faded ? " (other)" : ""),
      y: g.bars.map(b => esc(b.lane)), base: g.bars.map(b => toS(b.start)),
      x: g.bars.map(b => Math.max(toS(b.end) - toS(b.start), 1e-7)),
      marker: {color: g.colour, opacity: g.faded ? 0.18 : 0.95, line: {width: 0}},
      hovertext: g.bars.map(b => esc(b.label) + "<br>" + esc(b.lane) + (b.merged > 1 ? `<br>${b.merged} merged (level of detail)` : "")),
      hoverinfo: "text", customdata: g.bars.map(b => JSON.stringify({vm: b.vm, request_id: b.request_id, tid: b.tid}))});
  }
  for (const s of d.series || []) {
    const faded = state.selIds && s.vm && !state.selIds.vms.has(s.vm);
    traces.push({type: "scatter", mode: "lines+markers", name: esc(s.name), x: s.x.map(toS), y: s.y, yaxis: d.bars.length ? "y2" : "y",
      opacity: faded ? 0.2 : 1, hovertext: s.y.map((v, i) => esc(s.name) + ": " + v), hoverinfo: "text"});
  }
  const layout = {barmode: "overlay", margin: {l: 260, r: 50, t: 30, b: 40}, showlegend: true,
    title: {text: esc(VIEW_TITLES[state.view]), font: {size: 14}},
    xaxis: {title: "seconds since " + new Date(state.summary.t0 / 1e6).toISOString(),
            range: state.start != null ? [toS(state.start), toS(state.end)] : undefined},
    yaxis: {automargin: true, categoryorder: "array", categoryarray: lanes.map(esc).reverse(), type: d.bars.length ? "category" : "linear"},
    yaxis2: {overlaying: "y", side: "right", title: "dirty pages / count"}, dragmode: "zoom"};
  await Plotly.react(chart, traces, layout, {responsive: true, scrollZoom: true, displaylogo: false});
  if (!chart._stacklensBound) {
    chart._stacklensBound = true;
    chart.on("plotly_relayout", ev => {
      if (ev["xaxis.range[0]"] != null) { state.start = toNs(ev["xaxis.range[0]"]); state.end = toNs(ev["xaxis.range[1]"]); redraw(); }
      else if (ev["xaxis.autorange"]) { state.start = state.end = null; redraw(); }
    });
    chart.on("plotly_click", ev => {
      const p = ev.points && ev.points[0]; if (!p || !p.customdata) return;
      const ids = JSON.parse(p.customdata);
      if (ids.request_id) select({request: ids.request_id}); else if (ids.vm) select({vm: ids.vm});
    });
  }
  document.getElementById("status").textContent =
    `${d.bars.length} bars, ${(d.series || []).length} series in ${(performance.now() - t).toFixed(0)} ms`;
  chart.dataset.ready = "1";
  chart.dataset.bars = String(d.bars.length);
}
let pending = null;
function redraw() { clearTimeout(pending); pending = setTimeout(() => draw().catch(showError), 60); }
function showError(e) { document.getElementById("status").textContent = "error: " + e.message; }

async function select(what) {
  state.sel = what;
  const q = what.request ? "request=" + encodeURIComponent(what.request) : "vm=" + encodeURIComponent(what.vm);
  document.getElementById("selection").textContent = what.request ? "request " + what.request : "VM " + what.vm;
  const tree = await getJSON("/api/explain?" + q);
  const ids = {vms: new Set(), requests: new Set(), tids: new Set()};
  const list = document.getElementById("tree"); list.replaceChildren();
  (function walk(n, depth) {
    const a = n.attrs || {};
    if (a.vm) ids.vms.add(a.vm); if (a.instance) ids.vms.add(a.instance); if (a.request_id) ids.requests.add(a.request_id); if (a.tid != null) ids.tids.add(a.tid);
    if (depth < 4) { const li = el("li", "\u00a0".repeat(depth * 2) + n.label); li.dataset.kind = n.kind; list.append(li); }
    (n.children || []).forEach(c => walk(c, depth + 1));
  })(tree, 0);
  if (what.vm) ids.vms.add(what.vm); if (what.request) ids.requests.add(what.request);
  state.selIds = ids;
  document.body.dataset.selected = "1";
  await draw();
}

function tab(name) {
  state.view = name;
  document.querySelectorAll("#tabs a").forEach(a => a.classList.toggle("active", a.dataset.view === name));
  document.getElementById("chart").dataset.ready = "0";
  draw().catch(showError);
}

async function main() {
  state.summary = await getJSON("/api/summary");
  const s = state.summary;
  document.getElementById("meta").textContent = `${s.events.toLocaleString()} events, hosts: ${s.hosts.join(", ")}`;
  const nav = document.getElementById("tabs");
  for (const v of s.views) { const a = el("a", VIEW_TITLES[v] || v); a.dataset.view = v; a.id = "tab-" + v; a.onclick = () => tab(v); nav.append(a); }
  document.getElementById("clear").onclick = () => { state.sel = state.selIds = null; document.getElementById("selection").textContent = "nothing selected"; document.getElementById("tree").replaceChildren(); draw(); };
  document.getElementById("reset").onclick = () => { state.start = state.end = null; draw(); };
  tab("vm_states");
  const findings = await getJSON("/api/findings");
  const ol = document.getElementById("findings");
  if (!findings.length) ol.append(el("li", "no findings"));
  findings.forEach((f, i) => {
    const li = el("li", f.statement, f.severity); li.id = "finding-" + i; li.title = "What to do: " + f.action;
    li.onclick = async () => {   // jump to the evidence: its window, its subject selected, the right view
      const ev = f.evidence.filter(e => e.start != null);
      if (ev.length) { state.start = Math.min(...ev.map(e => e.start)); state.end = Math.max(...ev.map(e => e.end ?? e.start)) + 1;
        const pad = Math.max((state.end - state.start) * 0.05, 1e6); state.start -= pad; state.end += pad; }
      const layer = (f.evidence.find(e => e.layer) || {}).layer;
      state.view = f.rule.startsWith("migration_interference") ? "kernel" : f.rule.startsWith("migration") ? "migration"
        : f.rule.startsWith("ovs") ? "ovs" : layer === "kernel" ? "kernel" : "requests";
      document.querySelectorAll("#tabs a").forEach(a => a.classList.toggle("active", a.dataset.view === state.view));
      if (f.subject.request_id && !f.subject.vm) await select({request: f.subject.request_id});
      else if (f.subject.vm) await select({vm: f.subject.vm}); else await draw();
    };
    ol.append(li);
  });
  document.body.dataset.loaded = "1";
}
main().catch(showError);
