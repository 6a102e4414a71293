// Scribe: record a consultation in the browser (MediaRecorder, level meter, timer) or
// upload a recording or paste a transcript; the transcript beside the draft note; click a
// statement to highlight the transcript lines it came from; edit, sign, amend, download
// the PDF and the FHIR document.

import { ApiError, api, authHeaders } from "./api.js";
import { $, announce, clear, h } from "./dom.js";
import { errorMessage } from "./errors.js";
import { t } from "./i18n.js";

const state = {
  bound: false, encounter: null, editing: false, recorder: null, stream: null, chunks: [],
  started: 0, timer: null, meterFrame: null, audioContext: null, busy: false, polling: null,
};

function setStatus(text, kind = "") {
  const el = $("#scribe-status");
  el.textContent = text;
  el.dataset.kind = kind;
}

function fail(err) {
  state.busy = false;
  setStatus(err instanceof ApiError ? errorMessage(err) : String(err.message || err), "error");
  updateButtons();
}

function fields() {
  return {
    template: $("#scribe-template").value,
    language: $("#scribe-language").value,
    patient_id: $("#scribe-patient-id").value.trim(),
    patient_name: $("#scribe-patient-name").value.trim(),
    clinician_name: $("#scribe-clinician").value.trim(),
  };
}

// -- recording ------------------------------------------------------------------------------

function mimeType() {
  for (const type of ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm"]) {
    if (window.MediaRecorder?.isTypeSupported?.(type)) return type;
  }
  return "";
}

function tick() {
  const s = Math.floor((Date.now() - state.started) / 1000);
  $("#scribe-timer").textContent = `${String(Math.floor(s / 60)).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
}

function meter(stream) {
  const Context = window.AudioContext || window.webkitAudioContext;
  if (!Context) return;
  state.audioContext = new Context();
  const analyser = state.audioContext.createAnalyser();
  analyser.fftSize = 1024;
  state.audioContext.createMediaStreamSource(stream).connect(analyser);
  const data = new Float32Array(analyser.fftSize);
  const level = $("#scribe-level");
  const draw = () => {
    analyser.getFloatTimeDomainData(data);
    let sum = 0;
    for (const v of data) sum += v * v;
    level.value = Math.min(1, Math.sqrt(sum / data.length) * 4);
    level.dataset.active = level.value > 0.02 ? "1" : "0";
    state.meterFrame = requestAnimationFrame(draw);
  };
  draw();
}

async function startRecording() {
  if (!navigator.mediaDevices?.getUserMedia || !window.MediaRecorder) {
    setStatus(t("scribe.no_recorder"), "error");
    return;
  }
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    setStatus(t("scribe.mic_denied"), "error");
    return;
  }
  const type = mimeType();
  state.recorder = new MediaRecorder(state.stream, type ? { mimeType: type } : {});
  state.chunks = [];
  state.recorder.ondataavailable = (e) => { if (e.data.size) state.chunks.push(e.data); };
  state.recorder.onstop = () => {
    const blob = new Blob(state.chunks, { type: state.recorder.mimeType || "audio/webm" });
    const ext = blob.type.includes("ogg") ? "ogg" : "webm";
    submitAudio(blob, `recording.${ext}`);
  };
  state.recorder.start(1000);
  state.started = Date.now();
  tick();
  state.timer = setInterval(tick, 250);
  meter(state.stream);
  $("#scribe-record").dataset.recording = "1";
  $("#scribe-record").textContent = t("scribe.stop");
  setStatus(t("scribe.recording"), "busy");
  announce(t("scribe.recording"));
}

function stopRecording() {
  clearInterval(state.timer);
  cancelAnimationFrame(state.meterFrame);
  state.audioContext?.close();
  state.audioContext = null;
  $("#scribe-level").value = 0;
  $("#scribe-record").dataset.recording = "0";
  $("#scribe-record").textContent = t("scribe.record");
  if (state.recorder && state.recorder.state !== "inactive") state.recorder.stop();
  for (const track of state.stream?.getTracks() || []) track.stop();
  state.stream = null;
}

// -- creating an encounter ------------------------------------------------------------------

function submitAudio(blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  for (const [key, value] of Object.entries(fields())) if (value) form.append(key, value);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/scribe/encounters");
  for (const [key, value] of Object.entries(authHeaders())) xhr.setRequestHeader(key, value);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) {
      const pct = Math.round((100 * e.loaded) / e.total);
      setStatus(pct < 100 ? t("scribe.uploading", { pct }) : t("scribe.transcribing"), "busy");
      $("#scribe-progress").value = pct / 100;
    }
  };
  xhr.onload = () => {
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
    if (xhr.status >= 400) fail(new ApiError(xhr.status, body));
    else if (xhr.status === 202) poll(body);  // a long recording: transcribed by a background job
    else display(body, t("scribe.drafted"));
  };
  xhr.onerror = () => fail(new Error(t("scribe.network")));
  state.busy = true;
  updateButtons();
  $("#scribe-progress").hidden = false;
  $("#scribe-progress").value = 0;
  setStatus(t("scribe.uploading", { pct: 0 }), "busy");
  xhr.send(form);
}

// A long recording is transcribed in chunks by a background job: the encounter is polled
// and its progress (chunks done / in all) shown on the progress bar until the draft is ready.
function showProgress(enc) {
  const bar = $("#scribe-progress");
  const job = enc.job || {};
  const pct = Math.round(100 * (enc.progress || 0));
  const text = t("scribe.chunks", { done: job.chunks_done ?? 0, total: job.chunks_total ?? "?", pct });
  bar.hidden = false;
  bar.value = enc.progress || 0;
  bar.setAttribute("aria-label", t("scribe.transcribing"));
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  bar.setAttribute("aria-valuenow", String(pct));
  bar.setAttribute("aria-valuetext", text);
  setStatus(text, "busy");
}

async function poll(enc) {
  const id = enc.id;
  state.polling = id;
  state.busy = true;
  updateButtons();
  showProgress(enc);
  while (state.polling === id) {
    await new Promise((resolve) => setTimeout(resolve, 1500));
    if (state.polling !== id) return;
    let now;
    try { now = await api(`/v1/scribe/encounters/${id}`); } catch (err) { state.polling = null; fail(err); return; }
    if (now.status === "transcribing") { showProgress(now); continue; }
    state.polling = null;
    if (now.status === "draft") { display(now, t("scribe.drafted")); return; }
    $("#scribe-progress").hidden = true;
    fail(new Error(now.job?.error?.message || t(`scribe.state_${now.status}`)));
  }
}

async function submitText() {
  const text = $("#scribe-text").value;
  if (!text.trim()) { setStatus(t("scribe.empty_text"), "error"); return; }
  const f = fields();
  const body = { transcript: text, template: f.template, language: f.language };
  const patient = {};
  if (f.patient_id) patient.id = f.patient_id;
  if (f.patient_name) patient.name = f.patient_name;
  if (Object.keys(patient).length) body.patient = patient;
  if (f.clinician_name) body.clinician = { name: f.clinician_name };
  state.busy = true;
  updateButtons();
  setStatus(t("scribe.drafting"), "busy");
  try {
    display(await api("/v1/scribe/encounters", { method: "POST", body }), t("scribe.drafted"));
  } catch (err) { fail(err); }
}

// -- showing an encounter -------------------------------------------------------------------

function highlight(lines) {
  for (const li of document.querySelectorAll("#scribe-transcript li")) {
    li.classList.toggle("hl", lines.includes(Number(li.dataset.n)));
  }
  const first = document.querySelector(`#scribe-transcript li[data-n="${lines[0]}"]`);
  first?.scrollIntoView({ block: "nearest" });
}

function renderTranscript(enc) {
  const list = clear($("#scribe-transcript"));
  for (const line of enc.transcript.lines) {
    list.append(h("li", { dataset: { n: line.n }, class: line.low_confidence ? "low" : null },
      h("span", { class: "ln" }, `L${line.n}`),
      line.speaker ? h("span", { class: "who" }, t(`scribe.${line.speaker}`)) : null,
      h("span", { class: "said" }, line.text)));
  }
}

function renderNote(enc) {
  const box = clear($("#scribe-note"));
  for (const section of enc.note.sections) {
    const items = h("ul", { class: "statements" });
    for (const s of section.statements) {
      items.append(h("li", { class: s.unsupported ? "unsupported" : null },
        h("button", {
          type: "button", class: "stmt", dataset: { lines: s.lines.join(",") },
          onclick: () => highlight(s.lines),
          title: s.unsupported ? t("scribe.unsupported") : t("scribe.lines", { lines: s.lines.join(", ") }),
        }, s.text),
        s.unsupported ? h("span", { class: "flag" }, t("scribe.unsupported")) : null));
    }
    const editor = h("textarea", { class: "sec-edit", dataset: { section: section.id }, rows: 3,
      "aria-label": section.title, hidden: !state.editing });
    editor.value = section.statements.map((s) => s.text).join("\n");
    items.hidden = state.editing;
    box.append(h("section", { class: "note-sec", dataset: { section: section.id } },
      h("h3", {}, section.title), items, editor));
  }
  const st = enc.note.structured || {};
  const facts = [
    ...(st.medications || []).map((m) => `${t("scribe.med")}: ${[m.name, m.dose && `${m.dose.value} ${m.dose.unit}`, m.route, m.frequency].filter(Boolean).join(", ")}`),
    ...(st.allergies || []).map((a) => `${t("scribe.allergy")}: ${a.substance}`),
    ...(st.vitals || []).map((v) => `${v.name.replace(/_/g, " ")}: ${typeof v.value === "object" ? `${v.value.systolic}/${v.value.diastolic}` : v.value} ${v.unit}`),
    ...(st.teeth?.length ? [`${t("scribe.teeth")}: ${st.teeth.map((x) => x.fdi).join(", ")}`] : []),
  ];
  if (facts.length) {
    box.append(h("section", { class: "note-sec facts" }, h("h3", {}, t("scribe.structured")),
      h("ul", {}, facts.map((f) => h("li", {}, f)))));
  }
}

function display(enc, message) {
  state.encounter = enc;
  state.busy = false;
  state.editing = false;
  $("#scribe-progress").hidden = true;
  $("#scribe-result").hidden = false;
  const badge = $("#scribe-state");
  badge.textContent = `${t(`scribe.state_${enc.status}`)} · v${enc.version}`;
  badge.dataset.status = enc.status;
  const cov = enc.note.coverage || {};
  $("#scribe-coverage").textContent = t("scribe.coverage", { linked: cov.linked ?? 0, total: cov.statements ?? 0 });
  renderTranscript(enc);
  renderNote(enc);
  updateButtons();
  if (message) { setStatus(message, "ok"); announce(message); }
}

function updateButtons() {
  const enc = state.encounter;
  const signed = enc?.status === "signed";
  $("#scribe-record").disabled = state.busy && !state.recorder;
  $("#scribe-upload-btn").disabled = state.busy;
  $("#scribe-text-btn").disabled = state.busy;
  $("#scribe-edit").hidden = !enc || signed || state.editing;
  $("#scribe-save").hidden = !state.editing;
  $("#scribe-sign").hidden = !enc || signed || state.editing;
  $("#scribe-amend").hidden = !enc || !signed;
}

// -- editing, signing, downloads ------------------------------------------------------------

function startEdit() {
  state.editing = true;
  renderNote(state.encounter);
  updateButtons();
  document.querySelector("#scribe-note .sec-edit")?.focus();
}

async function saveEdit() {
  const enc = state.encounter;
  const sections = [];
  for (const area of document.querySelectorAll("#scribe-note .sec-edit")) {
    const old = enc.note.sections.find((s) => s.id === area.dataset.section);
    const before = old.statements.map((s) => s.text).join("\n");
    if (area.value === before) continue;
    const statements = area.value.split("\n").map((x) => x.trim()).filter(Boolean).map((text) => {
      const same = old.statements.find((s) => s.text === text);
      return same ? { text, lines: same.lines } : { text };
    });
    sections.push({ id: old.id, statements });
  }
  try {
    const body = { version: enc.version, sections };
    display(await api(`/v1/scribe/encounters/${enc.id}/note`, { method: "PUT", body }), t("scribe.saved"));
  } catch (err) { fail(err); }
}

async function sign() {
  const enc = state.encounter;
  const name = $("#scribe-clinician").value.trim() || enc.clinician?.name;
  if (!name) { setStatus(t("scribe.need_name"), "error"); $("#scribe-clinician").focus(); return; }
  try {
    display(await api(`/v1/scribe/encounters/${enc.id}/sign`, { method: "POST", body: { name } }), t("scribe.signed_ok"));
  } catch (err) { fail(err); }
}

async function amend() {
  try {
    display(await api(`/v1/scribe/encounters/${state.encounter.id}/amend`, { method: "POST" }), t("scribe.amending"));
  } catch (err) { fail(err); }
}

async function download(kind) {
  const enc = state.encounter;
  try {
    const resp = await fetch(`/v1/scribe/encounters/${enc.id}/${kind}`, { headers: authHeaders() });
    if (!resp.ok) throw new ApiError(resp.status, await resp.json().catch(() => null));
    const url = URL.createObjectURL(await resp.blob());
    const a = h("a", { href: url, download: `${enc.id}-v${enc.version}.${kind === "pdf" ? "pdf" : "fhir.json"}` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (err) { fail(err); }
}

// -- the view's life ------------------------------------------------------------------------

export async function init() {
  if (state.bound) return;
  state.bound = true;
  $("#scribe-record").addEventListener("click", () => (state.recorder && state.recorder.state === "recording" ? stopRecording() : startRecording()));
  $("#scribe-upload-btn").addEventListener("click", () => $("#scribe-file").click());
  $("#scribe-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) submitAudio(file, file.name);
    e.target.value = "";
  });
  $("#scribe-text-btn").addEventListener("click", submitText);
  $("#scribe-edit").addEventListener("click", startEdit);
  $("#scribe-save").addEventListener("click", saveEdit);
  $("#scribe-sign").addEventListener("click", sign);
  $("#scribe-amend").addEventListener("click", amend);
  $("#scribe-pdf").addEventListener("click", () => download("pdf"));
  $("#scribe-fhir").addEventListener("click", () => download("fhir"));
  $("#scribe-record").textContent = t("scribe.record");
  updateButtons();
}

export function show() {}

export function reset() {
  if (state.recorder && state.recorder.state === "recording") stopRecording();
  state.recorder = null;
  state.polling = null;
  state.encounter = null;
  state.editing = false;
  if ($("#scribe-result")) $("#scribe-result").hidden = true;
}
