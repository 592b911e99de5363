// Line charts in SVG, no library: several series on shared axes, linear or log y, a legend and a
// hover read-out. chart.update(series) redraws in place (cheap: series are thinned to ~1500 points).

import { fmt } from "./api.js";

const NS = "http://www.w3.org/2000/svg";
export const COLORS = ["#0072b2", "#e69f00", "#009e73", "#d55e00", "#cc79a7", "#56b4e9", "#7f7f7f", "#000000"];
const MARGIN = { top: 28, right: 16, bottom: 34, left: 58 };
const MAX_POINTS = 1500;

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// "Nice" tick values covering [lo, hi]: steps of 1, 2 or 5 × 10^k.
function ticks(lo, hi, count = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function logTicks(lo, hi) {
  const out = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of [1, 2, 5]) {
      const v = m * Math.pow(10, e);
      if (v >= lo && v <= hi) out.push(v);
    }
  }
  return out.length >= 2 ? out : ticks(lo, hi);
}

function thin(points) {
  if (points.length <= MAX_POINTS) return points;
  const stride = points.length / MAX_POINTS, out = [];
  for (let i = 0; i < MAX_POINTS; i++) out.push(points[Math.floor(i * stride)]);
  out.push(points[points.length - 1]);
  return out;
}

export class LineChart {
  // options: {title, xLabel, yLabel, logY, name (data-chart attribute), height}
  constructor(container, options = {}) {
    this.options = options;
    this.root = svg("svg", { class: "chart", "data-chart": options.name || "", role: "img" });
    this.root.setAttribute("aria-label", options.title || "chart");
    this.height = options.height || 240;
    container.append(this.root);
    this.series = [];
    this.root.addEventListener("mousemove", (e) => this.hover(e));
    this.root.addEventListener("mouseleave", () => this.hover(null));
  }

  // series: [{name, points: [[x, y], ...], color?, markers?, dashed?}]
  update(series) {
    this.series = series.map((s, i) => ({ ...s, color: s.color || COLORS[i % COLORS.length],
      points: thin(s.points.filter((p) => Number.isFinite(p[1]))) }));
    this.draw();
  }

  draw() {
    const root = this.root, o = this.options;
    root.replaceChildren();
    const width = Math.max(280, root.parentNode ? root.parentNode.clientWidth - 2 : 560);
    const height = this.height;
    root.setAttribute("viewBox", `0 0 ${width} ${height}`);
    root.setAttribute("width", width);
    root.setAttribute("height", height);
    root.append(svg("text", { x: MARGIN.left, y: 16, class: "chart-title" }, o.title || ""));
    const all = this.series.flatMap((s) => s.points);
    if (!all.length) {
      root.append(svg("text", { x: width / 2, y: height / 2, class: "chart-empty", "text-anchor": "middle" },
        "no data yet"));
      return;
    }
    let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
    let ys = all.map((p) => p[1]);
    const log = o.logY && ys.every((y) => y > 0);
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) { const pad = Math.abs(y0) * 0.1 || 1; y0 -= pad; y1 += pad; }
    else if (!log) { const pad = (y1 - y0) * 0.06; y0 -= pad; y1 += pad; }
    const W = width - MARGIN.left - MARGIN.right, H = height - MARGIN.top - MARGIN.bottom;
    const fy = log ? (y) => Math.log10(y) : (y) => y;
    const sx = (x) => MARGIN.left + ((x - x0) / (x1 - x0)) * W;
    const sy = (y) => MARGIN.top + H - ((fy(y) - fy(y0)) / (fy(y1) - fy(y0))) * H;
    this.scale = { sx, sy, x0, x1, W };
    const grid = svg("g", { class: "chart-grid" });
    for (const t of log ? logTicks(y0, y1) : ticks(y0, y1)) {
      grid.append(svg("line", { x1: MARGIN.left, x2: MARGIN.left + W, y1: sy(t), y2: sy(t) }));
      grid.append(svg("text", { x: MARGIN.left - 6, y: sy(t) + 4, "text-anchor": "end" }, fmt(t, 3)));
    }
    for (const t of ticks(x0, x1, 6).filter(Number.isInteger)) {  // steps are whole numbers
      grid.append(svg("line", { x1: sx(t), x2: sx(t), y1: MARGIN.top, y2: MARGIN.top + H, class: "v" }));
      grid.append(svg("text", { x: sx(t), y: MARGIN.top + H + 16, "text-anchor": "middle" }, fmt(t, 4)));
    }
    root.append(grid);
    root.append(svg("text", { x: MARGIN.left + W / 2, y: height - 3, "text-anchor": "middle", class: "chart-axis" },
      o.xLabel || "step"));
    if (o.yLabel) {
      root.append(svg("text", { x: 12, y: MARGIN.top + H / 2, "text-anchor": "middle", class: "chart-axis",
        transform: `rotate(-90 12 ${MARGIN.top + H / 2})` }, o.yLabel + (log ? " (log)" : "")));
    }
    let lx = width - MARGIN.right;
    for (const s of [...this.series].reverse()) {  // legend, right-aligned on the title line
      const label = svg("text", { x: lx, y: 16, "text-anchor": "end", class: "chart-legend" }, s.name);
      root.append(label);
      const w = label.getComputedTextLength ? label.getComputedTextLength() : s.name.length * 7;
      root.append(svg("rect", { x: lx - w - 14, y: 8, width: 10, height: 10, fill: s.color }));
      lx -= w + 26;
    }
    for (const s of this.series) {
      if (!s.points.length) continue;
      const d = s.points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
      root.append(svg("path", { d, class: "chart-line", stroke: s.color, "data-series": s.name,
        "data-points": s.points.length, "stroke-dasharray": s.dashed ? "5 4" : "none" }));
      if (s.markers || s.points.length === 1) {
        for (const p of s.points.slice(-200)) {
          root.append(svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: s.color }));
        }
      }
    }
    this.cursor = svg("g", { class: "chart-cursor", visibility: "hidden" });
    root.append(this.cursor);
  }

  hover(event) {
    if (!this.cursor || !this.scale) return;
    if (!event) { this.cursor.setAttribute("visibility", "hidden"); return; }
    const box = this.root.getBoundingClientRect();
    const { sx, sy, x0, x1, W } = this.scale;
    const px = ((event.clientX - box.left) / box.width) * this.root.viewBox.baseVal.width;
    const x = x0 + ((px - MARGIN.left) / W) * (x1 - x0);
    this.cursor.replaceChildren();
    const lines = [];
    for (const s of this.series) {
      if (!s.points.length) continue;
      let best = s.points[0];
      for (const p of s.points) if (Math.abs(p[0] - x) < Math.abs(best[0] - x)) best = p;
      lines.push([s, best]);
    }
    if (!lines.length) return;
    const at = lines[0][1][0];
    this.cursor.append(svg("line", { x1: sx(at), x2: sx(at), y1: MARGIN.top, y2: this.height - MARGIN.bottom }));
    const text = svg("text", { x: Math.min(sx(at) + 8, this.root.viewBox.baseVal.width - 150), y: MARGIN.top + 14 });
    text.append(svg("tspan", { x: text.getAttribute("x"), dy: 0 }, `step ${fmt(at)}`));
    for (const [s, p] of lines) {
      this.cursor.append(svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 4, fill: s.color }));
      text.append(svg("tspan", { x: text.getAttribute("x"), dy: 15, fill: s.color }, `${s.name}: ${fmt(p[1])}`));
    }
    this.cursor.append(text);
    this.cursor.setAttribute("visibility", "visible");
  }
}
