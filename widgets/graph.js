// edgebench model graph view (anywidget ES module; plain JS, no build step, no imports).
//
// Python (edgebench/notebook/graph_layout.py) computes the layout; this file only draws it:
// traitlets `nodes` [{id, name, op, kind, label, x, y, w, h, color, outputs, weights, consts}],
// `edges` [{s, t, tensor, dtype, shape}], `heat` {id: {ms, share, calls, norm}}, `info` {...},
// `height` (px).  Clicking a node sets `selected` (its name).  Mouse: drag to pan, wheel to zoom.

const SVG = "http://www.w3.org/2000/svg";
let instances = 0;

function svg(tag, attrs, parent) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function html(tag, cls, parent, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

// light yellow -> orange -> dark red, t in [0, 1]
const STOPS = [[255, 245, 200], [253, 174, 97], [230, 85, 13], [127, 39, 4]];
function heatColor(t) {
  t = Math.max(0, Math.min(1, Number(t) || 0)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(t));
  const f = t - i;
  const c = STOPS[i].map((a, k) => Math.round(a + f * (STOPS[i + 1][k] - a)));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

function textColor(fill) {
  const m = /^#?([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(fill);
  let rgb = m ? [1, 2, 3].map((i) => parseInt(m[i], 16)) : null;
  if (!rgb) {
    const n = /rgb\((\d+), (\d+), (\d+)\)/.exec(fill);
    rgb = n ? [n[1], n[2], n[3]].map(Number) : [0, 0, 0];
  }
  const lum = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255;
  return lum > 0.6 ? "#1b1b1b" : "#ffffff";
}

function fmtMs(ms) {
  if (ms >= 100) return ms.toFixed(0) + " ms";
  if (ms >= 1) return ms.toFixed(2) + " ms";
  return (ms * 1000).toFixed(1) + " µs";
}

// a path from a's bottom to b's top through the bend points of a long edge (straight down
// through each layer it crosses); the label goes 70% along the first segment
function edgePath(a, b, points) {
  let cx = a.x, cy = a.y + a.h / 2;
  let d = `M ${cx} ${cy}`, lx = null, ly = null;
  const seg = (nx, ny) => {
    const dy = Math.max(12, (ny - cy) / 2);
    d += ` C ${cx} ${cy + dy}, ${nx} ${ny - dy}, ${nx} ${ny}`;
    if (lx === null) {
      lx = cx + 0.78 * (nx - cx);  // the curve's x at t = 0.7
      ly = cy + 0.7 * (ny - cy);
    }
    cx = nx;
    cy = ny;
  };
  for (const [px, py] of points) {
    seg(px, py - a.h / 2);
    d += ` L ${px} ${py + a.h / 2}`;
    cy = py + a.h / 2;
  }
  seg(b.x, b.y - b.h / 2 - 1);
  return { d, lx, ly };
}

function render({ model, el }) {
  const uid = `eb-graph-${++instances}`;
  const root = html("div", "eb-graph", el);
  const bar = html("div", "eb-graph-bar", root);
  const title = html("span", "eb-graph-title", bar);
  const summary = html("span", "eb-graph-info", bar);
  const legend = html("span", "eb-graph-legend", bar);
  const buttons = html("span", "eb-graph-buttons", bar);
  const btnTop = html("button", "eb-graph-btn", buttons, "top");
  const btnFit = html("button", "eb-graph-btn", buttons, "fit");
  const btnShapes = html("button", "eb-graph-btn", buttons, "shapes");
  btnTop.title = "Back to the inputs, at a readable size";
  btnFit.title = "Fit the whole graph";
  btnShapes.title = "Show or hide tensor shapes on the edges";
  const view = html("div", "eb-graph-view", root);
  const tip = html("div", "eb-graph-tip", view);
  const canvas = svg("svg", { class: "eb-graph-svg", width: "100%", height: "100%" }, view);
  const defs = svg("defs", {}, canvas);
  const marker = svg("marker", {
    id: `${uid}-arrow`, viewBox: "0 0 10 10", refX: "9", refY: "5",
    markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse",
  }, defs);
  svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "eb-graph-arrow" }, marker);
  const scene = svg("g", {}, canvas);
  const gEdges = svg("g", { class: "eb-graph-edges" }, scene);
  const gLabels = svg("g", { class: "eb-graph-edge-labels" }, scene);
  const gNodes = svg("g", { class: "eb-graph-nodes" }, scene);

  let nodes = [], edges = [], heat = {}, info = {}, byId = new Map();
  let k = 1, tx = 0, ty = 0, placed = false, frame = 0, showShapes = true;
  let selectedEl = null;

  function apply() {
    if (frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      scene.setAttribute("transform", `translate(${tx},${ty}) scale(${k})`);
      root.classList.toggle("eb-far", k < 0.55);
      root.classList.toggle("eb-very-far", k < 0.25);
    });
  }

  function size() {
    return [view.clientWidth || 600, view.clientHeight || model.get("height") || 520];
  }

  function toTop() {
    const [W] = size();
    const gw = Math.max(1, (info.max_x || 0) - (info.min_x || 0));
    k = Math.max(0.35, Math.min(1, (W - 40) / gw));
    tx = W / 2 - k * ((info.max_x || 0) + (info.min_x || 0)) / 2;
    ty = 16 - k * (info.min_y || 0);
    apply();
  }

  function fit() {
    const [W, H] = size();
    const gw = Math.max(1, (info.max_x || 0) - (info.min_x || 0));
    const gh = Math.max(1, (info.max_y || 0) - (info.min_y || 0));
    k = Math.max(0.02, Math.min(1.5, (W - 40) / gw, (H - 32) / gh));
    tx = W / 2 - k * ((info.max_x || 0) + (info.min_x || 0)) / 2;
    ty = H / 2 - k * ((info.max_y || 0) + (info.min_y || 0)) / 2;
    apply();
  }

  function fill(n) {
    const h = heat[String(n.id)];
    if (info.profiled && n.kind === "op") return h ? heatColor(0.08 + 0.92 * h.norm) : "#f2f2f2";
    return n.color || "#888";
  }

  function draw() {
    nodes = model.get("nodes") || [];
    edges = model.get("edges") || [];
    heat = model.get("heat") || {};
    info = model.get("info") || {};
    byId = new Map(nodes.map((n) => [n.id, n]));
    view.style.height = `${model.get("height") || 520}px`;
    for (const g of [gEdges, gLabels, gNodes]) g.replaceChildren();

    title.textContent = info.name || "graph";
    let text = `${info.shown ?? nodes.length} of ${info.n_nodes ?? nodes.length} nodes`;
    if (info.hidden) text += `, ${info.hidden} constant/shape nodes hidden`;
    if (info.truncated) text += `, cut at ${info.max_nodes} (pass max_nodes=None for all)`;
    if (info.profiled) {
      text += ` · operator time ${fmtMs(info.total_ms || 0)}`;
      if (info.unattributed_ms > 0) text += ` (${fmtMs(info.unattributed_ms)} in fused nodes not matched)`;
    }
    summary.textContent = text;
    legend.replaceChildren();
    if (info.profiled) {
      html("span", "eb-graph-legend-label", legend, "0");
      html("span", "eb-graph-ramp", legend).style.background =
        `linear-gradient(to right, ${[0, 0.33, 0.66, 1].map(heatColor).join(", ")})`;
      html("span", "eb-graph-legend-label", legend, fmtMs(info.max_ms || 0));
    }

    for (const e of edges) {
      const a = byId.get(e.s), b = byId.get(e.t);
      if (!a || !b) continue;
      const { d, lx, ly } = edgePath(a, b, e.points || []);
      const p = svg("path", { d, class: "eb-graph-edge", "marker-end": `url(#${uid}-arrow)` }, gEdges);
      p.dataset.s = e.s;
      p.dataset.t = e.t;
      p.__edge = e;
      if (e.shape && !/^[?×]+$/.test(e.shape)) {  // nothing to say when no dim is known
        const t = svg("text", { x: lx + 4, y: ly, class: "eb-graph-edge-label" }, gLabels);
        t.textContent = e.shape;
      }
    }
    for (const n of nodes) {
      const g = svg("g", {
        class: `eb-graph-node eb-kind-${n.kind}`, transform: `translate(${n.x - n.w / 2},${n.y - n.h / 2})`,
      }, gNodes);
      g.__node = n;
      const f = fill(n);
      svg("rect", { width: n.w, height: n.h, rx: n.kind === "op" ? 5 : 14, fill: f }, g);
      const t = svg("text", { x: n.w / 2, y: n.h / 2, fill: textColor(f) }, g);
      t.textContent = n.label;
      if (n.consts) svg("circle", { cx: n.w - 4, cy: 4, r: 2.5, class: "eb-graph-const" }, g);
    }
    if (!placed && view.clientWidth) {
      toTop();
      placed = true;
    }
  }

  // tooltips
  function showTip(evt, lines) {
    tip.replaceChildren();
    for (const [i, line] of lines.entries()) html("div", i ? "" : "eb-graph-tip-head", tip, line);
    tip.style.display = "block";
    const r = view.getBoundingClientRect();
    let x = evt.clientX - r.left + 14, y = evt.clientY - r.top + 14;
    if (x + tip.offsetWidth > r.width) x = Math.max(4, x - tip.offsetWidth - 28);
    if (y + tip.offsetHeight > r.height) y = Math.max(4, y - tip.offsetHeight - 28);
    tip.style.left = `${x}px`;
    tip.style.top = `${y}px`;
  }

  function nodeLines(n) {
    const lines = [`${n.op}${n.kind === "op" ? "  " + n.name : ""}`];
    if (n.domain) lines.push(`domain ${n.domain}`);
    for (const o of n.outputs || []) lines.push(`→ ${o}`);
    for (const w of n.weights || []) lines.push(`weight ${w}`);
    if (n.consts) lines.push(`${n.consts} constant input(s) (hidden)`);
    if (n.subgraph) lines.push("has subgraphs (not drawn)");
    const h = heat[String(n.id)];
    if (h) lines.push(`time ${fmtMs(h.ms)} (${(100 * h.share).toFixed(1)}% of operator time, ${h.calls} calls)`);
    else if (info.profiled && n.kind === "op") lines.push("no time recorded (fused or not run)");
    return lines;
  }

  function highlight(n, on) {
    for (const p of gEdges.children) {
      if (p.dataset.s == n.id || p.dataset.t == n.id) p.classList.toggle("eb-hot", on);
    }
  }

  let hovered = null;
  canvas.addEventListener("pointermove", (evt) => {
    if (dragging) return;
    const g = evt.target.closest && evt.target.closest(".eb-graph-node");
    if (g && g.__node) {
      if (hovered !== g.__node) {
        if (hovered) highlight(hovered, false);
        hovered = g.__node;
        highlight(hovered, true);
      }
      showTip(evt, nodeLines(g.__node));
    } else if (evt.target.__edge) {
      const e = evt.target.__edge;
      showTip(evt, [e.tensor, `${e.dtype}[${e.shape}]`]);
    } else {
      if (hovered) highlight(hovered, false);
      hovered = null;
      tip.style.display = "none";
    }
  });
  canvas.addEventListener("pointerleave", () => {
    if (hovered) highlight(hovered, false);
    hovered = null;
    tip.style.display = "none";
  });

  // pan and zoom
  let dragging = false, moved = false, sx = 0, sy = 0, stx = 0, sty = 0, downNode = null;
  canvas.addEventListener("pointerdown", (evt) => {
    if (evt.button !== 0) return;
    dragging = true;
    moved = false;
    downNode = (evt.target.closest && evt.target.closest(".eb-graph-node")) || null;
    sx = evt.clientX; sy = evt.clientY; stx = tx; sty = ty;
    canvas.setPointerCapture(evt.pointerId);
    root.classList.add("eb-dragging");
  });
  canvas.addEventListener("pointermove", (evt) => {
    if (!dragging) return;
    const dx = evt.clientX - sx, dy = evt.clientY - sy;
    if (Math.abs(dx) + Math.abs(dy) > 3) moved = true;
    tx = stx + dx;
    ty = sty + dy;
    apply();
  });
  const endDrag = () => {
    if (!dragging) return;
    dragging = false;
    root.classList.remove("eb-dragging");
    if (!moved) {
      const g = downNode;  // the pointer is captured: evt.target is the canvas now
      if (selectedEl) selectedEl.classList.remove("eb-selected");
      selectedEl = g || null;
      if (g) g.classList.add("eb-selected");
      model.set("selected", g && g.__node ? g.__node.name : "");
      model.save_changes();
    }
  };
  canvas.addEventListener("pointerup", endDrag);
  canvas.addEventListener("pointercancel", endDrag);
  canvas.addEventListener("wheel", (evt) => {
    evt.preventDefault();
    const r = canvas.getBoundingClientRect();
    const px = evt.clientX - r.left, py = evt.clientY - r.top;
    const f = Math.exp(-evt.deltaY * (evt.deltaMode === 1 ? 0.05 : 0.0015));
    const nk = Math.max(0.02, Math.min(4, k * f));
    tx = px - (px - tx) * (nk / k);
    ty = py - (py - ty) * (nk / k);
    k = nk;
    apply();
  }, { passive: false });

  btnTop.addEventListener("click", toTop);
  btnFit.addEventListener("click", fit);
  btnShapes.addEventListener("click", () => {
    showShapes = !showShapes;
    root.classList.toggle("eb-no-shapes", !showShapes);
  });

  // place the graph once the view has a size (it has none until it is attached)
  const ro = new ResizeObserver(() => {
    if (!placed && view.clientWidth) {
      toTop();
      placed = true;
    }
  });
  ro.observe(view);

  const redraw = () => draw();
  model.on("change:nodes", redraw);
  model.on("change:edges", redraw);
  model.on("change:heat", redraw);
  model.on("change:info", redraw);
  model.on("change:height", redraw);
  draw();

  return () => {
    ro.disconnect();
    if (frame) cancelAnimationFrame(frame);
    model.off("change:nodes", redraw);
    model.off("change:edges", redraw);
    model.off("change:heat", redraw);
    model.off("change:info", redraw);
    model.off("change:height", redraw);
  };
}

export default { render };
