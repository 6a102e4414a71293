// The radiograph viewer: one canvas showing a server rendition of the image (window/level are
// applied on the server from the 16-bit data, so this only draws 8-bit pictures) under a view
// transform (zoom, pan), with the annotations drawn on top in image coordinates.
//
// Input is pointer events (mouse, pen, touch: one finger drags, two fingers pinch) and the
// keyboard: in the pan tool the arrows pan; in a drawing tool they move a cursor that Space or
// Enter places points with, so that every shape can be drawn without a pointer.

const MIN_SCALE = 0.02;
const MAX_SCALE = 40;
const AI_COLOUR = "#ff3fd0";
const SELECTED = "#ffd400";
export const FINDING_COLOURS = {
  caries: "#ff8a00",
  deep_caries: "#ff3b30",
  periapical_lesion: "#00c7ff",
  impacted_tooth: "#7cff4f",
  restoration: "#f5f5f5",
  bone_loss: "#ffe14d",
  other: "#b388ff",
};

/** Distance from p to the segment ab (all in image coordinates). */
function segmentDistance(p, a, b) {
  const dx = b[0] - a[0];
  const dy = b[1] - a[1];
  const len = dx * dx + dy * dy;
  const u = len ? Math.max(0, Math.min(1, ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / len)) : 0;
  return Math.hypot(p[0] - (a[0] + u * dx), p[1] - (a[1] + u * dy));
}

function insidePolygon(p, points) {
  let inside = false;
  for (let i = 0, j = points.length - 1; i < points.length; j = i++) {
    const [xi, yi] = points[i];
    const [xj, yj] = points[j];
    if ((yi > p[1]) !== (yj > p[1]) && p[0] < ((xj - xi) * (p[1] - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

function polygonArea(points) {
  let twice = 0;
  for (let i = 0, j = points.length - 1; i < points.length; j = i++) {
    twice += (points[j][0] + points[i][0]) * (points[j][1] - points[i][1]);
  }
  return Math.abs(twice) / 2;
}

/** The box [[x0,y0],[x1,y1]] with its corners ordered. */
export function normaliseBox(a, b) {
  return [[Math.min(a[0], b[0]), Math.min(a[1], b[1])], [Math.max(a[0], b[0]), Math.max(a[1], b[1])]];
}

/**
 * Length of the segment ab: millimetres when the image says its pixel spacing
 * (DICOM's [row, column] spacing: rows are apart vertically, columns horizontally), else pixels.
 */
export function measure(a, b, spacing) {
  const dx = b[0] - a[0];
  const dy = b[1] - a[1];
  if (spacing && spacing.length === 2) {
    return { value: Math.hypot(dx * spacing[1], dy * spacing[0]), unit: "mm" };
  }
  return { value: Math.hypot(dx, dy), unit: "px" };
}

export class Viewer {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {object} on callbacks: create(shape, points), select(id), measured({value, unit}),
   *   window(center, width) while dragging window/level, status(text key, vars) for what the
   *   keyboard did, view() after zoom or pan.
   */
  constructor(canvas, on) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.on = on;
    this.bitmap = null;
    this.image = null; // {id, width, height, pixel_spacing_mm}
    this.scale = 1;
    this.tx = 0;
    this.ty = 0;
    this.tool = "pan";
    this.readOnly = false;
    this.annotations = [];
    this.selected = null;
    this.showAi = true;
    this.draft = null; // {shape, points} being drawn
    this.ruler = null; // [a, b] of the last measurement
    this.cursor = null; // keyboard cursor in image coordinates
    this.pointers = new Map();
    this.gesture = null;
    this.windowDrag = null;
    this.focused = false;
    this.frame = 0;
    this.bind();
    new ResizeObserver(() => this.resize()).observe(canvas.parentElement);
  }

  // -- state from outside ---------------------------------------------------------------------

  setImage(bitmap, image, { keepView = false } = {}) {
    const same = keepView && this.image && this.image.id === image.id;
    if (this.bitmap && this.bitmap !== bitmap) this.bitmap.close?.(); // a panoramic is ~18 MB
    this.bitmap = bitmap;
    this.image = image;
    if (!same) {
      this.draft = null;
      this.ruler = null;
      this.cursor = [image.width / 2, image.height / 2];
      this.fit();
    } else this.draw();
  }

  clearImage() {
    this.bitmap?.close?.();
    this.bitmap = null;
    this.image = null;
    this.annotations = [];
    this.draft = null;
    this.ruler = null;
    this.draw();
  }

  setAnnotations(list) { this.annotations = list; this.draw(); }
  setSelected(id) { this.selected = id; this.draw(); }
  setShowAi(show) { this.showAi = show; this.draw(); }
  setReadOnly(readOnly) {
    this.readOnly = readOnly;
    if (readOnly && !["pan", "measure"].includes(this.tool)) this.setTool("pan");
  }

  setTool(tool) {
    this.tool = tool;
    this.draft = null;
    if (tool !== "measure") this.ruler = null;
    this.canvas.dataset.tool = tool;
    this.draw();
  }

  cancelDraft() {
    if (!this.draft) return false;
    this.draft = null;
    this.draw();
    return true;
  }

  // -- view transform ---------------------------------------------------------------------

  size() {
    const rect = this.canvas.getBoundingClientRect();
    return { w: rect.width, h: rect.height };
  }

  resize() {
    const { w, h } = this.size();
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(w * dpr));
    const height = Math.max(1, Math.round(h * dpr));
    if (this.canvas.width !== width || this.canvas.height !== height) {
      const fitted = this.isFitted();
      this.canvas.width = width;
      this.canvas.height = height;
      if (fitted) this.fit();
      else this.draw();
    }
  }

  isFitted() { return this.fitted === true; }

  fit() {
    if (!this.image) { this.draw(); return; }
    const { w, h } = this.size();
    const scale = Math.min(w / this.image.width, h / this.image.height) || 1;
    this.scale = scale;
    this.tx = (w - this.image.width * scale) / 2;
    this.ty = (h - this.image.height * scale) / 2;
    this.fitted = true;
    this.draw();
    this.on.view?.();
  }

  /** Zoom by `factor` keeping the screen point (sx, sy) still (the canvas centre by default). */
  zoomBy(factor, sx, sy) {
    if (!this.image) return;
    const { w, h } = this.size();
    const cx = sx ?? w / 2;
    const cy = sy ?? h / 2;
    const scale = Math.max(MIN_SCALE, Math.min(MAX_SCALE, this.scale * factor));
    const applied = scale / this.scale;
    this.tx = cx - (cx - this.tx) * applied;
    this.ty = cy - (cy - this.ty) * applied;
    this.scale = scale;
    this.fitted = false;
    this.draw();
    this.on.view?.();
  }

  panBy(dx, dy) {
    this.tx += dx;
    this.ty += dy;
    this.fitted = false;
    this.draw();
    this.on.view?.();
  }

  toImage(sx, sy) { return [(sx - this.tx) / this.scale, (sy - this.ty) / this.scale]; }
  toScreen(p) { return [p[0] * this.scale + this.tx, p[1] * this.scale + this.ty]; }

  clampToImage(p) {
    return [Math.max(0, Math.min(this.image.width, p[0])), Math.max(0, Math.min(this.image.height, p[1]))];
  }

  zoomPercent() { return Math.round(this.scale * 100); }

  // -- drawing ----------------------------------------------------------------------------

  draw() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = 0; this.paint(); });
  }

  paint() {
    const { ctx, canvas } = this;
    const dpr = canvas.width / Math.max(1, this.size().w);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#0b0f10";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if (!this.bitmap || !this.image) return;
    ctx.setTransform(dpr * this.scale, 0, 0, dpr * this.scale, dpr * this.tx, dpr * this.ty);
    ctx.imageSmoothingEnabled = this.scale < 2;
    ctx.drawImage(this.bitmap, 0, 0, this.image.width, this.image.height);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    for (const a of this.annotations) {
      if (a.status === "rejected") continue;
      if (a.source === "ai" && !this.showAi) continue;
      this.paintAnnotation(a);
    }
    if (this.draft) this.paintDraft();
    if (this.ruler) this.paintRuler();
    if (this.focused && this.tool !== "pan" && this.cursor) this.paintCursor();
  }

  stroke(points, closed, colour, { dashed = false, width = 2 } = {}) {
    const { ctx } = this;
    ctx.beginPath();
    points.forEach((p, i) => {
      const [x, y] = this.toScreen(p);
      if (i) ctx.lineTo(x, y);
      else ctx.moveTo(x, y);
    });
    if (closed) ctx.closePath();
    ctx.setLineDash([]);
    ctx.lineWidth = width + 2;
    ctx.strokeStyle = "rgba(0,0,0,0.75)";
    ctx.stroke();
    ctx.setLineDash(dashed ? [8, 5] : []);
    ctx.lineWidth = width;
    ctx.strokeStyle = colour;
    ctx.stroke();
    ctx.setLineDash([]);
  }

  dot(p, colour, radius = 5) {
    const { ctx } = this;
    const [x, y] = this.toScreen(p);
    ctx.beginPath();
    ctx.arc(x, y, radius, 0, Math.PI * 2);
    ctx.fillStyle = colour;
    ctx.fill();
    ctx.lineWidth = 2;
    ctx.strokeStyle = "rgba(0,0,0,0.8)";
    ctx.stroke();
  }

  label(p, text, colour, badge) {
    const { ctx } = this;
    const [x, y] = this.toScreen(p);
    ctx.font = "600 13px system-ui, sans-serif";
    let left = x;
    const top = Math.max(0, y - 20);
    if (badge) {
      const bw = ctx.measureText(badge).width + 8;
      ctx.fillStyle = AI_COLOUR;
      ctx.fillRect(left, top, bw, 18);
      ctx.fillStyle = "#000";
      ctx.fillText(badge, left + 4, top + 13);
      left += bw;
    }
    if (!text) return;
    const tw = ctx.measureText(text).width + 8;
    ctx.fillStyle = "rgba(0,0,0,0.78)";
    ctx.fillRect(left, top, tw, 18);
    ctx.fillStyle = colour;
    ctx.fillText(text, left + 4, top + 13);
  }

  paintAnnotation(a) {
    const ai = a.source === "ai";
    const selected = a.id === this.selected;
    const colour = selected ? SELECTED : ai ? AI_COLOUR : FINDING_COLOURS[a.finding] || FINDING_COLOURS.other;
    const options = { dashed: ai && a.status === "proposed", width: selected ? 4 : 2 };
    const pts = a.points;
    if (a.shape === "point") this.dot(pts[0], colour, selected ? 7 : 5);
    else if (a.shape === "box") {
      const [[x0, y0], [x1, y1]] = normaliseBox(pts[0], pts[1]);
      this.stroke([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], true, colour, options);
    } else this.stroke(pts, true, colour, options);
    const anchor = a.shape === "box" ? normaliseBox(pts[0], pts[1])[0] : pts.reduce((m, p) => (p[1] < m[1] ? p : m), pts[0]);
    const text = this.on.labelOf ? this.on.labelOf(a) : a.finding;
    const badge = ai ? (this.on.badgeOf ? this.on.badgeOf(a) : "AI") : null;
    this.label(anchor, text, colour, badge);
  }

  paintDraft() {
    const { shape, points } = this.draft;
    const live = this.draft.hover ? [...points, this.draft.hover] : points;
    if (shape === "box" && live.length >= 2) {
      const [[x0, y0], [x1, y1]] = normaliseBox(live[0], live[live.length - 1]);
      this.stroke([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], true, SELECTED, { dashed: true });
    } else if (shape === "polygon" && live.length >= 2) {
      this.stroke(live, false, SELECTED, { dashed: true });
    }
    for (const p of points) this.dot(p, SELECTED, 4);
  }

  paintRuler() {
    const [a, b] = this.ruler;
    this.stroke([a, b], false, "#7df9ff", { width: 2 });
    this.dot(a, "#7df9ff", 3);
    this.dot(b, "#7df9ff", 3);
    if (this.on.rulerText) this.label(b, this.on.rulerText(measure(a, b, this.image.pixel_spacing_mm)), "#7df9ff");
  }

  paintCursor() {
    const { ctx } = this;
    const [x, y] = this.toScreen(this.cursor);
    ctx.lineWidth = 3;
    ctx.strokeStyle = "#000";
    ctx.beginPath();
    ctx.moveTo(x - 12, y); ctx.lineTo(x + 12, y); ctx.moveTo(x, y - 12); ctx.lineTo(x, y + 12);
    ctx.stroke();
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = SELECTED;
    ctx.stroke();
  }

  // -- hit testing ------------------------------------------------------------------------

  /**
   * The annotation under image point p. Where shapes overlap, the smallest wins (a point
   * before any area), so that a small finding inside a large one can still be picked.
   */
  hit(p) {
    const tolerance = 8 / this.scale;
    let best = null;
    let bestArea = Infinity;
    for (const a of [...this.annotations].reverse()) {
      if (a.status === "rejected" || (a.source === "ai" && !this.showAi)) continue;
      const pts = a.points;
      let area = null;
      if (a.shape === "point") {
        if (Math.hypot(p[0] - pts[0][0], p[1] - pts[0][1]) <= tolerance * 1.5) area = 0;
      } else if (a.shape === "box") {
        const [[x0, y0], [x1, y1]] = normaliseBox(pts[0], pts[1]);
        if (p[0] >= x0 - tolerance && p[0] <= x1 + tolerance && p[1] >= y0 - tolerance && p[1] <= y1 + tolerance) area = (x1 - x0) * (y1 - y0);
      } else if (a.shape === "polygon") {
        const near = pts.some((q, i) => segmentDistance(p, q, pts[(i + 1) % pts.length]) <= tolerance);
        if (near || insidePolygon(p, pts)) area = polygonArea(pts);
      }
      if (area !== null && area < bestArea) { best = a.id; bestArea = area; }
    }
    return best;
  }

  // -- building shapes (pointer and keyboard share these) ---------------------------------

  /** Place a point for the current tool at image point p (clamped to the image). */
  place(p) {
    if (!this.image) return;
    const q = this.clampToImage(p);
    const tool = this.tool;
    if (tool === "point") {
      this.on.create?.("point", [q]);
    } else if (tool === "box" || tool === "measure") {
      if (!this.draft) {
        this.draft = { shape: tool, points: [q] };
        if (tool === "measure") this.ruler = null;
        this.on.status?.(tool === "box" ? "rad.kb_box_first" : "rad.kb_measure_first");
      } else {
        const a = this.draft.points[0];
        this.draft = null;
        if (tool === "measure") {
          this.ruler = [a, q];
          this.on.measured?.(measure(a, q, this.image.pixel_spacing_mm));
        } else if (Math.abs(a[0] - q[0]) >= 1 && Math.abs(a[1] - q[1]) >= 1) {
          this.on.create?.("box", normaliseBox(a, q));
        } else this.on.status?.("rad.kb_too_small");
      }
    } else if (tool === "polygon") {
      if (!this.draft) this.draft = { shape: "polygon", points: [] };
      this.draft.points.push(q);
      this.on.status?.("rad.kb_polygon_point", { n: this.draft.points.length });
    }
    this.draw();
  }

  /** Close the polygon being drawn (three points at least). */
  finishPolygon() {
    if (this.draft?.shape !== "polygon") return false;
    if (this.draft.points.length < 3) {
      this.on.status?.("rad.kb_polygon_short");
      return true;
    }
    // A double click also placed its two clicks: drop vertices that repeat the previous one.
    const points = this.draft.points.filter((p, i, all) => !i || Math.hypot(p[0] - all[i - 1][0], p[1] - all[i - 1][1]) >= 1);
    if (points.length < 3) {
      this.draft.points = points;
      this.on.status?.("rad.kb_polygon_short");
      return true;
    }
    this.draft = null;
    this.draw();
    this.on.create?.("polygon", points);
    return true;
  }

  // -- events ---------------------------------------------------------------------------------

  bind() {
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => this.pointerDown(e));
    c.addEventListener("pointermove", (e) => this.pointerMove(e));
    c.addEventListener("pointerup", (e) => this.pointerUp(e));
    c.addEventListener("pointercancel", (e) => this.pointerUp(e, true));
    c.addEventListener("dblclick", (e) => { e.preventDefault(); this.finishPolygon(); });
    c.addEventListener("wheel", (e) => this.wheel(e), { passive: false });
    c.addEventListener("keydown", (e) => this.key(e));
    c.addEventListener("focus", () => { this.focused = true; this.draw(); });
    c.addEventListener("blur", () => { this.focused = false; this.draw(); });
  }

  local(e) {
    const rect = this.canvas.getBoundingClientRect();
    return [e.clientX - rect.left, e.clientY - rect.top];
  }

  pointerDown(e) {
    if (!this.image) return;
    this.canvas.focus({ preventScroll: true });
    try { this.canvas.setPointerCapture(e.pointerId); } catch { /* a pointer already gone */ }
    const at = this.local(e);
    this.pointers.set(e.pointerId, at);
    if (this.pointers.size === 2) {
      // Two fingers: a pinch (zoom and pan together); whatever one finger started is dropped.
      const [a, b] = [...this.pointers.values()];
      this.gesture = { kind: "pinch", distance: Math.hypot(a[0] - b[0], a[1] - b[1]), mid: [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2] };
      if (this.draft && this.draft.shape !== "polygon") this.draft = null;
      return;
    }
    if (this.pointers.size > 2) return;
    const p = this.toImage(...at);
    const windowing = (e.shiftKey || e.ctrlKey) && this.tool === "pan";
    if (windowing) {
      this.gesture = { kind: "window", start: at };
      this.on.windowStart?.();
    } else if (this.tool === "pan") {
      this.gesture = { kind: "pan", start: at, last: at, moved: false, p };
    } else if ((this.tool === "box" || this.tool === "measure") && this.draft) {
      this.gesture = { kind: "tap", start: at }; // the second corner of a click, click shape
    } else if (this.tool === "box" || this.tool === "measure") {
      this.draft = { shape: this.tool, points: [this.clampToImage(p)] };
      this.gesture = { kind: "drag-shape", start: at };
      if (this.tool === "measure") this.ruler = null;
    } else {
      this.gesture = { kind: "tap", start: at };
    }
  }

  pointerMove(e) {
    if (!this.image) return;
    const at = this.local(e);
    if (!this.pointers.has(e.pointerId)) {
      if (this.draft) {
        this.draft.hover = this.clampToImage(this.toImage(...at));
        this.draw();
      }
      return;
    }
    this.pointers.set(e.pointerId, at);
    const g = this.gesture;
    if (!g) return;
    if (g.kind === "pinch" && this.pointers.size >= 2) {
      const [a, b] = [...this.pointers.values()];
      const distance = Math.hypot(a[0] - b[0], a[1] - b[1]);
      const mid = [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2];
      this.tx += mid[0] - g.mid[0];
      this.ty += mid[1] - g.mid[1];
      if (g.distance > 0) this.zoomBy(distance / g.distance, mid[0], mid[1]);
      g.distance = distance;
      g.mid = mid;
    } else if (g.kind === "pan") {
      const dx = at[0] - g.last[0];
      const dy = at[1] - g.last[1];
      if (Math.hypot(at[0] - g.start[0], at[1] - g.start[1]) > 4) g.moved = true;
      g.last = at;
      if (g.moved) this.panBy(dx, dy);
    } else if (g.kind === "window") {
      this.on.windowDrag?.(at[0] - g.start[0], at[1] - g.start[1], this.size());
    } else if (g.kind === "drag-shape" && this.draft) {
      this.draft.hover = this.clampToImage(this.toImage(...at));
      if (this.tool === "measure") {
        this.ruler = [this.draft.points[0], this.draft.hover];
      }
      this.draw();
    }
  }

  pointerUp(e, cancelled = false) {
    if (!this.pointers.has(e.pointerId)) return;
    const at = this.local(e);
    this.pointers.delete(e.pointerId);
    const g = this.gesture;
    if (g?.kind === "pinch") {
      if (this.pointers.size === 0) this.gesture = null;
      return;
    }
    this.gesture = null;
    if (cancelled || !g) { if (g?.kind === "drag-shape") this.draft = null; this.draw(); return; }
    const p = this.toImage(...at);
    if (g.kind === "pan" && !g.moved) {
      this.on.select?.(this.hit(g.p));
    } else if (g.kind === "window") {
      this.on.windowEnd?.();
    } else if (g.kind === "drag-shape") {
      const moved = Math.hypot(at[0] - g.start[0], at[1] - g.start[1]) > 4;
      if (moved) {
        this.draft.hover = null;
        this.place(p); // the second corner
      } else {
        // A click without a drag: keep the first corner; the next click is the second one.
        this.draft.hover = null;
        this.draw();
      }
    } else if (g.kind === "tap") {
      this.place(p);
    }
  }

  wheel(e) {
    if (!this.image) return;
    e.preventDefault();
    const [x, y] = this.local(e);
    this.zoomBy(Math.exp(-e.deltaY * (e.deltaMode === 1 ? 0.05 : 0.0015)), x, y);
  }

  /** Follow the keyboard cursor: pan so that it stays on screen. */
  keepCursorVisible() {
    const [x, y] = this.toScreen(this.cursor);
    const { w, h } = this.size();
    const margin = 24;
    let dx = 0;
    let dy = 0;
    if (x < margin) dx = margin - x;
    if (x > w - margin) dx = w - margin - x;
    if (y < margin) dy = margin - y;
    if (y > h - margin) dy = h - margin - y;
    if (dx || dy) this.panBy(dx, dy);
  }

  key(e) {
    if (!this.image) return;
    const arrows = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    const k = e.key;
    let handled = true;
    if (k in arrows) {
      const [dx, dy] = arrows[k];
      if (this.tool === "pan") {
        const step = e.shiftKey ? 120 : 30;
        this.panBy(-dx * step, -dy * step);
      } else {
        const step = (e.shiftKey ? 50 : 5) / this.scale;
        this.cursor = this.clampToImage([this.cursor[0] + dx * step, this.cursor[1] + dy * step]);
        if (this.draft) this.draft.hover = this.cursor;
        if (this.tool === "measure" && this.draft) this.ruler = [this.draft.points[0], this.cursor];
        this.keepCursorVisible();
        this.draw();
      }
    } else if (k === "+" || k === "=") this.zoomBy(1.25);
    else if (k === "-" || k === "_") this.zoomBy(0.8);
    else if (k === "0") this.fit();
    else if ((k === " " || k === "Enter") && this.tool !== "pan") {
      if (k === "Enter" && this.draft?.shape === "polygon") this.finishPolygon();
      else {
        this.place(this.cursor);
        if (this.draft) this.draft.hover = this.cursor;
      }
    } else if (k === "Backspace" && this.draft?.shape === "polygon") {
      this.draft.points.pop();
      if (!this.draft.points.length) this.draft = null;
      this.draw();
    } else if (k === "Escape" && this.draft) {
      this.cancelDraft();
      this.on.status?.("rad.kb_cancelled");
    } else handled = false;
    if (handled) e.preventDefault();
  }
}
