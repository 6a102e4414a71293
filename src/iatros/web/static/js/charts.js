// Charts drawn as plain SVG (no library): bars, stacked bars, lines, horizontal bars.
// Each chart is an image with a text summary for screen readers and native tooltips.

import { h } from "./dom.js";

const HEIGHT = 190;
const PAD = { top: 12, right: 12, bottom: 26, left: 56 };

function svg(tag, attrs = {}, ...children) {
  return h(`svg:${tag}`, attrs, ...children);
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function frame(width, labels, max, yFormat, xFormat) {
  const group = svg("g", { class: "axes" });
  const inner = HEIGHT - PAD.top - PAD.bottom;
  for (let i = 0; i <= 4; i++) {
    const y = PAD.top + inner - (inner * i) / 4;
    group.append(
      svg("line", { x1: PAD.left, x2: width - PAD.right, y1: y, y2: y, class: i ? "grid" : "axis" }),
      svg("text", { x: PAD.left - 6, y: y + 4, "text-anchor": "end", class: "tick" }, yFormat((max * i) / 4)),
    );
  }
  const n = labels.length;
  const plotWidth = width - PAD.left - PAD.right;
  const picks = n <= 1 ? [0] : [0, Math.floor((n - 1) / 2), n - 1];
  for (const i of new Set(picks)) {
    if (i >= n) continue;
    const x = PAD.left + (plotWidth * (i + 0.5)) / n;
    const anchor = i === 0 && n > 1 ? "start" : i === n - 1 && n > 1 ? "end" : "middle";
    const tx = anchor === "start" ? PAD.left : anchor === "end" ? width - PAD.right : x;
    group.append(svg("text", { x: tx, y: HEIGHT - 8, "text-anchor": anchor, class: "tick" }, xFormat(labels[i])));
  }
  return group;
}

function container(width, summary) {
  return svg("svg", {
    width, height: HEIGHT, viewBox: `0 0 ${width} ${HEIGHT}`, role: "img", "aria-label": summary, class: "chart-svg",
  });
}

/** Vertical bars, stacked when several series are given. */
export function barChart({ width, labels, series, yFormat, xFormat, summary }) {
  const root = container(width, summary);
  const totals = labels.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  // Counts: a multiple of 4 so that the four grid lines fall on whole numbers.
  const max = Math.max(4, Math.ceil(niceMax(Math.max(0, ...totals)) / 4) * 4);
  root.append(frame(width, labels, max, yFormat, xFormat));
  const inner = HEIGHT - PAD.top - PAD.bottom;
  const plotWidth = width - PAD.left - PAD.right;
  const slot = plotWidth / Math.max(labels.length, 1);
  const barWidth = Math.max(1, Math.min(28, slot * 0.7));
  labels.forEach((label, i) => {
    let base = 0;
    for (const s of series) {
      const value = s.values[i] || 0;
      if (!value) continue;
      const y0 = PAD.top + inner - (inner * base) / max;
      const y1 = PAD.top + inner - (inner * (base + value)) / max;
      root.append(svg("rect", {
        x: PAD.left + slot * i + (slot - barWidth) / 2, y: y1, width: barWidth, height: Math.max(0.5, y0 - y1),
        class: `fill-${s.color}`,
      }, svg("title", {}, `${xFormat(label)} · ${s.name}: ${yFormat(value)}`)));
      base += value;
    }
  });
  return root;
}

/** Lines (gaps where a value is null). */
export function lineChart({ width, labels, series, yFormat, xFormat, summary, max: fixedMax }) {
  const root = container(width, summary);
  const values = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
  const max = fixedMax ?? niceMax(Math.max(0, ...values));
  root.append(frame(width, labels, max, yFormat, xFormat));
  const inner = HEIGHT - PAD.top - PAD.bottom;
  const plotWidth = width - PAD.left - PAD.right;
  const n = Math.max(labels.length, 1);
  const x = (i) => PAD.left + (plotWidth * (i + 0.5)) / n;
  const y = (v) => PAD.top + inner - (inner * v) / max;
  for (const s of series) {
    let d = "";
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    if (d) root.append(svg("path", { d, class: `line stroke-${s.color}${s.dashed ? " dashed" : ""}` }));
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      root.append(svg("circle", { cx: x(i), cy: y(v), r: 3, class: `fill-${s.color}` },
        svg("title", {}, `${xFormat(labels[i])} · ${s.name}: ${yFormat(v)}`)));
    });
  }
  return root;
}

/** Horizontal bars for shares (model mix, routing decisions). */
export function hbarChart({ width, items, format, summary }) {
  const rowHeight = 26;
  const height = Math.max(rowHeight, items.length * rowHeight) + 4;
  const labelWidth = Math.min(220, Math.max(110, width * 0.42));
  const root = svg("svg", {
    width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": summary, class: "chart-svg",
  });
  const max = Math.max(1, ...items.map((item) => item.value));
  const barSpace = width - labelWidth - 70;
  items.forEach((item, i) => {
    const y = i * rowHeight + 2;
    const label = item.label.length > 34 ? `${item.label.slice(0, 33)}…` : item.label;
    root.append(
      svg("text", { x: 0, y: y + 17, class: "tick label" }, label, svg("title", {}, item.label)),
      svg("rect", {
        x: labelWidth, y: y + 4, height: rowHeight - 10, width: Math.max(1, (barSpace * item.value) / max),
        class: `fill-${item.color || "c1"}`,
      }, svg("title", {}, `${item.label}: ${format(item.value)}`)),
      svg("text", { x: labelWidth + Math.max(1, (barSpace * item.value) / max) + 6, y: y + 17, class: "tick" }, format(item.value)),
    );
  });
  return root;
}

/** A legend as an HTML list (readable text, not just colours). */
export function legend(series) {
  return h("ul", { class: "legend" }, series.map((s) =>
    h("li", {}, h("span", { class: `swatch fill-${s.color}${s.dashed ? " dashed" : ""}`, "aria-hidden": "true" }), s.name)));
}
