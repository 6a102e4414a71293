// Radiographs: a patient's studies, uploading radiographs (DICOM, PNG, JPEG; one or many, with
// progress while the server de-identifies and renders them), the viewer (js/viewer.js) with
// window/level from the server's 16-bit data, measurements, annotations tooth by tooth, the AI
// findings as a separate layer the clinician accepts, edits or rejects one by one, and signing
// (then the PDF report and the FHIR Bundle, with only the accepted findings).

import { ApiError, api } from "./api.js";
import { $, $$, announce, clear, h } from "./dom.js";
import { formatDate, formatNumber, t, tn } from "./i18n.js";
import { POLL_MS, bindUpload, dataUrl, fetchBlob, live, problem, setText } from "./radiographs-io.js";
import { Viewer } from "./viewer.js";
import { FINDINGS, TOOL_KEYS, buildLayout } from "./viewer-layout.js";

const RENDER_DEBOUNCE_MS = 180;
const base = "/v1/radiographs";

/** FDI two-digit notation: quadrants 1–4 teeth 1–8 (permanent), quadrants 5–8 teeth 1–5 (primary). */
export function validTooth(n) {
  if (!Number.isInteger(n)) return false;
  const quadrant = Math.floor(n / 10);
  const tooth = n % 10;
  if (quadrant >= 1 && quadrant <= 4) return tooth >= 1 && tooth <= 8;
  if (quadrant >= 5 && quadrant <= 8) return tooth >= 1 && tooth <= 5;
  return false;
}

const state = {
  bound: false, me: null, patient: "", studies: [], study: null, image: null, annotations: [],
  selected: null, editing: null, pending: null, redraw: null, viewer: null, poll: null,
  window: null, invert: false, renderSeq: 0, renderTimer: null, renderAbort: null,
  status: null, busy: false, confirmDelete: null, analysis: null, windowStart: null,
};

/** A confirmation shown beside the image and said to screen readers. */
function confirm(text) {
  setText("#rad-hint", text, "ok");
  live(text);
}

function findingLabel(finding) { return t(`rad.finding_${FINDINGS.includes(finding) ? finding : "other"}`); }

function signed(study) { return Boolean(study && (study.signed || study.status === "signed" || study.signed_at)); }

function debounceRender() {
  clearTimeout(state.renderTimer);
  state.renderTimer = setTimeout(render, RENDER_DEBOUNCE_MS);
}

// -- patient and studies ------------------------------------------------------------------------

async function loadStudies(keepOpen = true) {
  const patient = $("#rad-patient").value.trim();
  const err = $("#rad-patient-error");
  err.hidden = true;
  $("#rad-patient").removeAttribute("aria-invalid");
  if (!patient) {
    err.textContent = t("rad.need_patient");
    err.hidden = false;
    $("#rad-patient").setAttribute("aria-invalid", "true");
    $("#rad-patient").focus();
    return;
  }
  state.patient = patient;
  setText("#rad-studies-status", t("rad.loading"));
  try {
    const out = await api(`${base}/studies?patient_id=${encodeURIComponent(patient)}`);
    state.studies = out.data || [];
    setText("#rad-studies-status", state.studies.length ? tn("rad.study_count", state.studies.length) : t("rad.no_studies"));
    renderStudies();
    if (keepOpen && state.study && !state.studies.some((s) => s.id === state.study.id)) closeStudy();
  } catch (e) {
    setText("#rad-studies-status", problem(e), "error");
  }
}

function studyState(study) {
  return signed(study) ? "signed" : study.status || "ready";
}

function renderStudies() {
  const list = clear($("#rad-studies"));
  for (const study of state.studies) {
    const current = state.study?.id === study.id;
    const images = study.images?.length ?? study.image_count ?? 0;
    list.append(h("li", { class: `rad-study${current ? " current" : ""}`, dataset: { study: study.id } },
      h("button", { type: "button", class: "rad-study-open", "aria-current": current ? "true" : null, onclick: () => openStudy(study.id) },
        h("span", { class: "rad-study-name" }, study.description || t("rad.untitled")),
        h("span", { class: "rad-study-tags" },
          h("span", { class: `badge rad-state-${studyState(study)}` }, t(`rad.state_${studyState(study)}`)),
          h("span", { class: "hint" }, tn("rad.images", images)),
          h("span", { class: "hint" }, formatDate(study.created_at))))));
  }
}

async function openStudy(id, { keepImage = false } = {}) {
  stopPolling();
  try {
    const study = await api(`${base}/studies/${encodeURIComponent(id)}`);
    showStudy(study, keepImage);
  } catch (e) {
    setText("#rad-studies-status", problem(e), "error");
  }
}

function closeStudy() {
  stopPolling();
  state.study = null;
  state.image = null;
  state.viewer?.clearImage();
  $("#rad-study").hidden = true;
  renderStudies();
}

function showStudy(study, keepImage) {
  const changed = state.study?.id !== study.id;
  state.study = study;
  state.studies = state.studies.map((s) => (s.id === study.id ? study : s));
  const panel = $("#rad-study");
  panel.hidden = false;
  $("#rad-study-title").textContent = study.description || t("rad.untitled");
  const st = studyState(study);
  const badge = $("#rad-study-state");
  badge.textContent = t(`rad.state_${st}`);
  badge.dataset.status = st;
  badge.className = `pill badge rad-state-${st}`;
  $("#rad-study-meta").textContent = [formatDate(study.created_at), tn("rad.images", study.images.length)].join(" · ");
  renderThumbs(changed);
  renderSign();
  renderStudies();
  const ready = study.images.filter((i) => i.status === "ready");
  if (study.images.some((i) => i.status === "processing")) schedulePoll(study.id);
  const keep = keepImage && state.image && ready.find((i) => i.id === state.image.id);
  if (keep) {
    state.image = keep;
    applyReadOnly();
  } else if (ready.length && (!state.image || changed || !ready.some((i) => i.id === state.image.id))) {
    openImage(ready[0]);
  } else if (!ready.length) {
    $("#rad-workspace").hidden = true;
  }
}

function schedulePoll(id) {
  stopPolling();
  state.poll = setTimeout(() => openStudy(id, { keepImage: true }), POLL_MS);
}

function stopPolling() {
  clearTimeout(state.poll);
  state.poll = null;
}

// -- thumbnails ---------------------------------------------------------------------------------

function renderThumbs(changed) {
  const list = $("#rad-thumbs");
  if (changed) clear(list);
  const study = state.study;
  study.images.forEach((image, i) => {
    let li = list.querySelector(`li[data-image="${image.id}"]`);
    const label = t("rad.image_n", { n: i + 1, total: study.images.length });
    if (!li) {
      li = h("li", { dataset: { image: image.id } },
        h("button", { type: "button", class: "rad-thumb", onclick: () => { const img = state.study.images.find((x) => x.id === image.id); if (img?.status === "ready") openImage(img); } },
          h("span", { class: "rad-thumb-pic" }),
          h("span", { class: "rad-thumb-label" })));
      list.append(li);
    }
    const button = li.querySelector("button");
    const pic = li.querySelector(".rad-thumb-pic");
    const text = li.querySelector(".rad-thumb-label");
    button.disabled = image.status !== "ready";
    button.setAttribute("aria-pressed", state.image?.id === image.id ? "true" : "false");
    li.dataset.status = image.status;
    if (image.status === "processing") {
      text.textContent = `${label} · ${t("rad.processing_pct", { pct: Math.round((image.progress || 0) * 100) })}`;
      if (!pic.querySelector("progress")) clear(pic).append(h("progress", { max: 1, value: image.progress || 0, "aria-label": label }));
      else pic.querySelector("progress").value = image.progress || 0;
    } else if (image.status === "failed") {
      text.textContent = `${label} · ${image.error ? image.error : t("rad.image_failed")}`;
      clear(pic);
    } else {
      text.textContent = label;
      if (!pic.querySelector("img")) {
        clear(pic);
        // A data: URL: the app's Content-Security-Policy allows no blob: images.
        fetchBlob(`${base}/images/${image.id}/thumbnail.png`).then(dataUrl).then((url) => {
          clear(pic).append(h("img", { src: url, alt: "" }));
        }).catch(() => {});
      }
    }
  });
}

// -- one image in the viewer -----------------------------------------------------------------

/**
 * The slider range for window/level. The image object does not give the data's range, so
 * it is the default window's extent rounded up to a whole bit depth (a 12-bit radiograph
 * whose default window is 2048/4096 gets 0–4095).
 */
function windowRange(image) {
  if (image.kind !== "dicom" || !image.window) return { min: 0, max: 255 };
  const { center, width } = image.window;
  const top = Math.max(255, center + width / 2);
  return { min: Math.floor(Math.min(0, center - width / 2)), max: 2 ** Math.ceil(Math.log2(top)) - 1 };
}

function defaultWindow(image) {
  if (image.window) return { center: image.window.center, width: image.window.width, changed: false };
  return { center: 128, width: 256, changed: false };
}

function syncSliders() {
  const range = windowRange(state.image);
  const wc = $("#rad-wc");
  const ww = $("#rad-ww");
  wc.min = String(range.min);
  wc.max = String(range.max);
  ww.min = "1";
  ww.max = String(Math.max(2, (range.max - range.min) * 2));
  wc.value = String(state.window.center);
  ww.value = String(state.window.width);
  $("#rad-wc-value").textContent = formatNumber(Math.round(state.window.center));
  $("#rad-ww-value").textContent = formatNumber(Math.round(state.window.width));
}

function setWindow(center, width) {
  const range = windowRange(state.image);
  state.window = {
    center: Math.max(range.min, Math.min(range.max, center)),
    width: Math.max(1, Math.min((range.max - range.min) * 2, width)),
    changed: true,
  };
  syncSliders();
  debounceRender();
}

function renderPath() {
  const params = new URLSearchParams();
  if (state.window?.changed) {
    params.set("center", String(Math.round(state.window.center)));
    params.set("width", String(Math.max(1, Math.round(state.window.width))));
  }
  if (state.invert) params.set("invert", "1");
  const query = params.toString();
  return `${base}/images/${state.image.id}/render.png${query ? `?${query}` : ""}`;
}

/** Fetch the rendition for the current window/level (the latest request wins). */
async function render(first = false) {
  if (!state.image) return;
  const seq = ++state.renderSeq;
  state.renderAbort?.abort();
  const abort = new AbortController();
  state.renderAbort = abort;
  $("#rad-loading").hidden = false;
  try {
    const blob = await fetchBlob(renderPath(), abort.signal);
    const bitmap = await createImageBitmap(blob);
    if (seq !== state.renderSeq) return;
    state.viewer.setImage(bitmap, state.image, { keepView: !first });
    $("#rad-canvas").dataset.rendered = renderPath();
    $("#rad-loading").hidden = true;
  } catch (e) {
    if (e.name === "AbortError") return;
    $("#rad-loading").hidden = true;
    setText("#rad-hint", problem(e), "error");
  }
}

async function openImage(image) {
  state.image = image;
  state.window = defaultWindow(image);
  state.invert = false;
  state.selected = null;
  state.analysis = null;
  closeForm();
  $("#rad-workspace").hidden = false;
  $(".rad-stage").style.aspectRatio = `${image.width} / ${image.height}`; // no wasted black bands
  $("#rad-invert").setAttribute("aria-pressed", "false");
  $("#rad-ai-raw").hidden = true;
  setText("#rad-ai-status", "");
  setText("#rad-measure", "");
  setText("#rad-hint", "");
  syncSliders();
  renderScale();
  renderDeid();
  for (const b of $$("#rad-thumbs .rad-thumb")) b.setAttribute("aria-pressed", b.closest("li").dataset.image === image.id ? "true" : "false");
  applyReadOnly();
  await Promise.all([render(true), loadAnnotations()]);
}

/** What de-identification did to this image (the server's report, counted). */
function renderDeid() {
  const d = state.image?.deidentified || {};
  const removed = (d.removed?.length || 0) + (d.uids_remapped?.length || 0);
  const masked = d.burned_in_text?.regions_masked?.length || 0;
  const el = $("#rad-deid");
  el.textContent = d.profile
    ? t("rad.deid", { profile: d.profile, removed: tn("rad.deid_removed", removed), masked: tn("rad.deid_masked", masked) })
    : "";
  el.dataset.masked = String(masked);
}

function renderScale() {
  const s = state.image?.pixel_spacing_mm;
  $("#rad-scale").textContent = s
    ? t("rad.scale_mm", { row: formatNumber(s[0], { maximumFractionDigits: 4 }), col: formatNumber(s[1], { maximumFractionDigits: 4 }) })
    : t("rad.scale_px");
}

function toggleInvert() {
  state.invert = !state.invert;
  $("#rad-invert").setAttribute("aria-pressed", String(state.invert));
  render();
}

function resetView() {
  state.window = defaultWindow(state.image);
  state.invert = false;
  $("#rad-invert").setAttribute("aria-pressed", "false");
  syncSliders();
  state.viewer.ruler = null;
  setText("#rad-measure", "");
  render().then(() => state.viewer.fit());
  state.viewer.fit();
}

function lengthText(m) {
  return `${formatNumber(m.value, { maximumFractionDigits: m.unit === "mm" ? 1 : 0 })} ${m.unit}`;
}

// -- tools -----------------------------------------------------------------------------------

function chooseTool(tool) {
  if (signed(state.study) && !["pan", "measure"].includes(tool)) return;
  state.viewer.setTool(tool);
  if (tool !== state.redraw?.shape) state.redraw = null;
  for (const b of $$("#rad-toolbar .rad-tool")) b.setAttribute("aria-pressed", b.dataset.tool === tool ? "true" : "false");
  setText("#rad-hint", t(`rad.hint_${tool}`));
}

function applyReadOnly() {
  const readOnly = signed(state.study);
  state.viewer.setReadOnly(readOnly);
  for (const b of $$("#rad-toolbar .rad-tool")) {
    const drawing = !["pan", "measure"].includes(b.dataset.tool);
    b.hidden = readOnly && drawing;
  }
  if (readOnly) {
    chooseTool(state.viewer.tool);
    closeForm();
  }
  renderAi();
}

// -- annotations ------------------------------------------------------------------------------

async function loadAnnotations() {
  const image = state.image;
  try {
    const out = await api(`${base}/images/${image.id}/annotations`);
    if (state.image?.id !== image.id) return;
    state.annotations = out.data || [];
  } catch (e) {
    state.annotations = [];
    setText("#rad-hint", problem(e), "error");
  }
  state.viewer.setAnnotations(state.annotations);
  renderAnnotations();
}

function annotationTitle(a) {
  const tooth = a.tooth ? t("rad.tooth_n", { n: a.tooth }) : t("rad.no_tooth");
  return `${tooth} · ${findingLabel(a.finding)} · ${t(`rad.shape_${a.shape}`)}`;
}

function actionButton(key, id, handler, extra = {}) {
  return h("button", { type: "button", class: "btn btn-small", "data-action": key, ...extra, onclick: handler, "aria-describedby": `rad-ann-${id}-title` }, t(`rad.${key}`));
}

function renderAnnotations() {
  const list = clear($("#rad-ann-list"));
  const readOnly = signed(state.study);
  const ordered = [
    ...state.annotations.filter((a) => a.source !== "ai"),
    ...state.annotations.filter((a) => a.source === "ai"),
  ];
  if (!ordered.length) list.append(h("li", { class: "hint rad-ann-empty" }, t("rad.no_annotations")));
  for (const a of ordered) {
    const ai = a.source === "ai";
    const selected = state.selected === a.id;
    const actions = [];
    if (!readOnly) {
      if (ai && a.status !== "accepted") actions.push(actionButton("accept", a.id, () => patch(a, { status: "accepted" }, "rad.accepted")));
      actions.push(actionButton("edit", a.id, () => openForm({ annotation: a })));
      if (ai && a.status !== "rejected") actions.push(actionButton("reject", a.id, () => patch(a, { status: "rejected" }, "rad.rejected")));
      if (!ai) {
        const confirming = state.confirmDelete === a.id;
        actions.push(actionButton(confirming ? "confirm_delete" : "delete", a.id, () => remove(a), { class: `btn btn-small${confirming ? " btn-danger" : ""}` }));
      }
    }
    list.append(h("li", {
      class: `rad-ann${ai ? " rad-ann-ai" : ""}${selected ? " selected" : ""}`,
      dataset: { id: a.id, source: a.source, status: a.status, tooth: a.tooth ?? "", finding: a.finding },
    },
    h("button", { type: "button", class: "rad-ann-select", id: `rad-ann-${a.id}-title`, "aria-pressed": selected ? "true" : "false", onclick: () => select(selected ? null : a.id, true) },
      ai ? h("span", { class: "rad-ai-badge" }, t("rad.ai_badge")) : null,
      h("span", { class: "rad-ann-text" }, annotationTitle(a)),
      ai && a.confidence != null ? h("span", { class: "rad-conf" }, t("rad.confidence", { pct: Math.round(a.confidence * 100) })) : null,
      ai ? h("span", { class: `badge rad-status-${a.status}` }, t(`rad.status_${a.status}`)) : null),
    a.explanation ? h("p", { class: "rad-expl" }, a.explanation) : null,
    a.note ? h("p", { class: "rad-note" }, a.note) : null,
    actions.length ? h("div", { class: "rad-ann-actions" }, actions) : null));
  }
}

function select(id, fromList = false) {
  state.selected = id;
  state.viewer.setSelected(id);
  renderAnnotations();
  if (fromList && id) $(`#rad-ann-${CSS.escape(id)}-title`)?.focus();
  if (!fromList && id) {
    const a = state.annotations.find((x) => x.id === id);
    if (a) live(annotationTitle(a));
    $(`#rad-ann-list li[data-id="${CSS.escape(id)}"]`)?.scrollIntoView({ block: "nearest" });
  }
}

async function patch(a, body, okKey) {
  try {
    const updated = await api(`${base}/annotations/${a.id}`, { method: "PATCH", body: { version: a.version, ...body } });
    state.annotations = state.annotations.map((x) => (x.id === a.id ? updated : x));
    state.viewer.setAnnotations(state.annotations);
    renderAnnotations();
    if (okKey) confirm(t(okKey));
    $(`#rad-ann-${CSS.escape(a.id)}-title`)?.focus();
    return updated;
  } catch (e) {
    if (e instanceof ApiError && e.status === 409) await reloadAfterConflict(e);
    else announce(problem(e), "error");
    return null;
  }
}

async function reloadAfterConflict(e) {
  announce(problem(e), "error");
  if (e.code === "study_signed") await openStudy(state.study.id, { keepImage: true });
  await loadAnnotations();
}

async function remove(a) {
  if (state.confirmDelete !== a.id) {
    state.confirmDelete = a.id;
    renderAnnotations();
    $(`#rad-ann-list li[data-id="${CSS.escape(a.id)}"] [data-action=confirm_delete]`)?.focus();
    return;
  }
  state.confirmDelete = null;
  try {
    await api(`${base}/annotations/${a.id}`, { method: "DELETE" });
    state.annotations = state.annotations.filter((x) => x.id !== a.id);
    if (state.selected === a.id) state.selected = null;
    state.viewer.setAnnotations(state.annotations);
    renderAnnotations();
    confirm(t("rad.deleted"));
    $("#rad-canvas").focus();
  } catch (e) {
    announce(problem(e), "error");
    renderAnnotations();
  }
}

// -- the annotation form (new shape, or editing one) --------------------------------------------

function openForm({ shape, points, annotation }) {
  const form = $("#rad-ann-form");
  state.editing = annotation || null;
  state.pending = annotation ? null : { shape, points };
  state.returnFocus = annotation ? `rad-ann-${annotation.id}-title` : null;
  const ai = annotation?.source === "ai";
  $("#rad-form-title").textContent = annotation
    ? t(ai ? "rad.edit_ai_title" : "rad.edit_title", { what: annotationTitle(annotation) })
    : t("rad.new_title", { shape: t(`rad.shape_${shape}`) });
  $("#rad-form-save").textContent = t(ai && annotation.status !== "accepted" ? "rad.save_accept" : "rad.save");
  $("#rad-form-redraw").hidden = !annotation;
  $("#rad-finding").value = annotation?.finding || $("#rad-finding").value || "caries";
  $("#rad-tooth").value = annotation?.tooth ?? "";
  $("#rad-note").value = annotation?.note ?? "";
  toothError("");
  $("#rad-form-error").hidden = true;
  form.hidden = false;
  form.scrollIntoView({ block: "nearest" });
  $("#rad-finding").focus();
}

function closeForm() {
  const form = $("#rad-ann-form");
  if (!form) return;
  const wasOpen = !form.hidden;
  form.hidden = true;
  state.pending = null;
  state.editing = null;
  state.redraw = null;
  // Back where the form was opened from: the annotation's entry in the list, or the image.
  const back = state.returnFocus && document.getElementById(state.returnFocus);
  state.returnFocus = null;
  if (wasOpen && back) back.focus();
  else if (wasOpen && state.viewer?.image) $("#rad-canvas").focus();
}

function toothError(text) {
  const el = $("#rad-tooth-error");
  el.textContent = text;
  el.hidden = !text;
  if (text) $("#rad-tooth").setAttribute("aria-invalid", "true");
  else $("#rad-tooth").removeAttribute("aria-invalid");
}

/** The tooth from the form: null when empty; undefined (and the error shown) when invalid. */
function readTooth() {
  const raw = $("#rad-tooth").value.trim();
  if (!raw) return null;
  const n = /^\d{1,2}$/.test(raw) ? Number(raw) : NaN;
  if (!validTooth(n)) {
    toothError(t("rad.tooth_invalid", { value: raw }));
    $("#rad-tooth").focus();
    return undefined;
  }
  return n;
}

async function submitForm(event) {
  event.preventDefault();
  toothError("");
  $("#rad-form-error").hidden = true;
  const tooth = readTooth();
  if (tooth === undefined) return;
  const body = { finding: $("#rad-finding").value, tooth, note: $("#rad-note").value.trim() || null };
  const editing = state.editing;
  try {
    if (editing) {
      const extra = editing.source === "ai" && editing.status !== "accepted" ? { status: "accepted" } : {};
      const updated = await api(`${base}/annotations/${editing.id}`, { method: "PATCH", body: { version: editing.version, ...body, ...extra } });
      state.annotations = state.annotations.map((x) => (x.id === editing.id ? updated : x));
      confirm(t("rad.saved"));
    } else {
      const { shape, points } = state.pending;
      const created = await api(`${base}/images/${state.image.id}/annotations`, { method: "POST", body: { shape, points, ...body } });
      state.annotations = [...state.annotations, created];
      confirm(t("rad.created", { what: annotationTitle(created) }));
    }
  } catch (e) {
    formError(e);
    if (e instanceof ApiError && e.status === 409) await reloadAfterConflict(e);
    return;
  }
  state.viewer.setAnnotations(state.annotations);
  state.viewer.setSelected(state.selected);
  renderAnnotations();
  closeForm();
}

function formError(e) {
  const text = problem(e);
  if (e instanceof ApiError && e.param && /tooth/.test(e.param)) {
    toothError(text);
    $("#rad-tooth").focus();
    return;
  }
  const el = $("#rad-form-error");
  el.textContent = text;
  el.hidden = false;
}

/** Draw the shape of the annotation being edited again (a keyboard user cannot drag handles). */
function startRedraw() {
  const a = state.editing;
  if (!a) return;
  state.redraw = a;
  $("#rad-ann-form").hidden = true;
  chooseTool(a.shape);
  state.redraw = a;
  setText("#rad-hint", t("rad.redraw_hint", { shape: t(`rad.shape_${a.shape}`) }));
  $("#rad-canvas").focus();
}

async function shapeDrawn(shape, points) {
  const rounded = points.map(([x, y]) => [Math.round(x * 10) / 10, Math.round(y * 10) / 10]);
  if (state.redraw && state.redraw.shape === shape) {
    const a = state.redraw;
    state.redraw = null;
    state.editing = null;
    const updated = await patch(a, { points: rounded }, "rad.saved");
    if (updated) chooseTool("pan");
    return;
  }
  openForm({ shape, points: rounded });
}

// -- AI findings ----------------------------------------------------------------------------------

async function loadStatus() {
  try {
    state.status = await api(`${base}/status`);
  } catch (e) {
    state.status = { vision_models: [], configure: "", error: problem(e) };
  }
  renderAi();
}

function renderAi() {
  if (!$("#rad-analyse")) return;
  const models = state.status?.vision_models || [];
  const readOnly = signed(state.study);
  const none = state.status && !models.length;
  $("#rad-ai-none").hidden = !none;
  $("#rad-ai-how").textContent = state.status?.configure || "models.<name>.vision: true";
  $("#rad-analyse").hidden = !models.length || readOnly;
  $("#rad-analyse").disabled = state.busy;
}

async function analyse() {
  const image = state.image;
  const button = $("#rad-analyse");
  state.busy = true;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  setText("#rad-ai-status", t("rad.analysing"), "busy");
  $("#rad-ai-raw").hidden = true;
  try {
    const out = await api(`${base}/images/${image.id}/analyse`, { method: "POST", body: {} });
    if (state.image?.id !== image.id) return;
    const analysis = out.analysis || {};
    const found = out.annotations || [];
    await loadAnnotations();
    if (analysis.parsed === false) {
      $("#rad-ai-raw-text").textContent = analysis.raw_text || "";
      $("#rad-ai-raw").hidden = false;
      setText("#rad-ai-status", t("rad.ai_unparsed_status"), "error");
    } else {
      const text = `${tn("rad.ai_found", found.length)}${analysis.model ? ` · ${t("rad.ai_model", { model: analysis.model })}` : ""}`;
      setText("#rad-ai-status", text, "ok");
      live(text);
    }
  } catch (e) {
    setText("#rad-ai-status", problem(e), "error");
    if (e instanceof ApiError && e.code === "no_vision_model") await loadStatus();
  } finally {
    state.busy = false;
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

// -- signing and the report ---------------------------------------------------------------------

function renderSign() {
  const study = state.study;
  const done = signed(study);
  $("#rad-sign-form").hidden = done;
  $("#rad-signed").hidden = !done;
  if (done) {
    const who = study.signer?.name || study.signed_by;
    $("#rad-signed-text").textContent = who
      ? t("rad.signed_by", { who, when: formatDate(study.signed_at) })
      : t("rad.signed_on", { when: formatDate(study.signed_at) });
    $("#rad-signed-conclusion").textContent = study.conclusion || "";
  }
  applyReadOnly();
}

async function sign() {
  const conclusion = $("#rad-conclusion").value.trim();
  const err = $("#rad-sign-error");
  err.hidden = true;
  $("#rad-conclusion").removeAttribute("aria-invalid");
  if (!conclusion) {
    err.textContent = t("rad.need_conclusion");
    err.hidden = false;
    $("#rad-conclusion").setAttribute("aria-invalid", "true");
    $("#rad-conclusion").focus();
    return;
  }
  const proposed = state.annotations.filter((a) => a.source === "ai" && a.status === "proposed").length;
  try {
    const name = $("#rad-signer").value.trim();
    const body = name ? { conclusion, name } : { conclusion };
    const study = await api(`${base}/studies/${state.study.id}/sign`, { method: "POST", body });
    showStudy(study.images ? study : await api(`${base}/studies/${state.study.id}`), true);
    renderAnnotations();
    const text = proposed ? `${t("rad.signed_ok")} ${tn("rad.signed_left_out", proposed)}` : t("rad.signed_ok");
    announce(text);
    $("#rad-pdf").focus();
  } catch (e) {
    err.textContent = problem(e);
    err.hidden = false;
    if (e instanceof ApiError && e.status === 409) await openStudy(state.study.id, { keepImage: true });
  }
}

async function download(kind) {
  const study = state.study;
  try {
    const blob = await fetchBlob(`${base}/studies/${study.id}/${kind}`);
    const url = URL.createObjectURL(blob);
    const name = kind === "fhir" ? `radiographs-${study.id}.fhir.json` : `radiographs-${study.id}.pdf`;
    const a = h("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (e) {
    announce(problem(e), "error");
  }
}

// -- wiring ---------------------------------------------------------------------------------------

function bindViewer() {
  const canvas = $("#rad-canvas");
  state.viewer = new Viewer(canvas, {
    create: (shape, points) => shapeDrawn(shape, points),
    select: (id) => select(id),
    measured: (m) => {
      const text = t(m.unit === "mm" ? "rad.length_mm" : "rad.length_px", { value: lengthText(m) });
      setText("#rad-measure", text);
      live(text);
    },
    rulerText: lengthText,
    badgeOf: (a) => `${t("rad.ai_badge")}${a.confidence != null ? ` ${Math.round(a.confidence * 100)} %` : ""}`,
    labelOf: (a) => [a.tooth, findingLabel(a.finding)].filter(Boolean).join(" "),
    status: (key, vars) => { const text = t(key, vars); setText("#rad-hint", text); live(text); },
    view: () => {
      const v = state.viewer;
      $("#rad-zoom-level").textContent = `${v.zoomPercent()} %`;
      // The view transform, for tests and tools that need to aim at image points.
      canvas.dataset.view = [v.scale, v.tx, v.ty].map((n) => n.toFixed(4)).join(" ");
    },
    windowStart: () => { state.windowStart = { ...state.window }; },
    windowDrag: (dx, dy, size) => {
      const range = windowRange(state.image);
      const span = range.max - range.min;
      const start = state.windowStart || state.window;
      setWindow(start.center + (dy / size.h) * span, start.width + (dx / size.w) * span);
    },
    windowEnd: () => { state.windowStart = null; },
  });
  canvas.addEventListener("keydown", (e) => {
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    const k = e.key.toLowerCase();
    if (k in TOOL_KEYS) { chooseTool(TOOL_KEYS[k]); e.preventDefault(); }
    else if (k === "i") { toggleInvert(); e.preventDefault(); }
    else if (e.key === "Escape" && !state.viewer.draft && state.viewer.tool !== "pan") { chooseTool("pan"); e.preventDefault(); }
  });
  $("#rad-wc").addEventListener("input", (e) => setWindow(Number(e.target.value), state.window.width));
  $("#rad-ww").addEventListener("input", (e) => setWindow(state.window.center, Number(e.target.value)));
}

export async function init(me) {
  state.me = me;
  if (state.bound) return;
  state.bound = true;
  buildLayout($("#view-radiographs"), {
    chooseTool, toggleInvert, resetView, startRedraw, closeForm, analyse, sign, download,
    zoomBy: (f) => state.viewer.zoomBy(f),
    fit: () => state.viewer.fit(),
    showAi: (show) => state.viewer.setShowAi(show),
  });
  bindViewer();
  bindUpload(async (study) => {
    state.patient = $("#rad-patient").value.trim();
    await loadStudies(false);
    showStudy(study, false);
  });
  $("#rad-patient-form").addEventListener("submit", (e) => { e.preventDefault(); loadStudies(); });
  $("#rad-ann-form").addEventListener("submit", submitForm);
  $("#rad-ann-form").addEventListener("keydown", (e) => {
    if (e.key === "Escape") { e.preventDefault(); closeForm(); }
  });
  $("#rad-tooth").addEventListener("input", () => toothError(""));
}

export function show() {
  loadStatus();
  state.viewer?.resize();
}

export function relabel() {
  if (!state.bound) return;
  renderStudies();
  if (state.study) {
    showStudy(state.study, true);
    renderAnnotations();
    renderScale();
    renderDeid();
    state.viewer.draw();
  }
  if (state.status) renderAi();
}

export function reset() {
  stopPolling();
  clearTimeout(state.renderTimer);
  Object.assign(state, { patient: "", studies: [], study: null, image: null, annotations: [], selected: null, status: null, redraw: null, pending: null, editing: null });
  if (!state.bound) return;
  state.viewer.clearImage();
  for (const id of ["#rad-patient", "#rad-description", "#rad-signer", "#rad-conclusion"]) $(id).value = "";
  clear($("#rad-studies"));
  clear($("#rad-uploads"));
  clear($("#rad-thumbs"));
  $("#rad-study").hidden = true;
}
