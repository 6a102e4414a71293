// The Radiographs view talking to its API: errors in the interface's language (naming the
// file or field), images fetched with the key (thumbnails as data: URLs: the app's CSP
// allows no blob: images), and uploads: one study from one or many files, with progress.

import { ApiError, api, authHeaders, upload } from "./api.js";
import { $, announce, clear, h } from "./dom.js";
import { errorMessage } from "./errors.js";
import { t, tn } from "./i18n.js";

export const POLL_MS = 700;
export const base = "/v1/radiographs";

/**
 * A server error in the interface's language: known codes are translated, naming the file
 * (the server's `files.N` parameter is the Nth file sent) or the field.
 */
export function problem(err, files = []) {
  if (err instanceof ApiError && err.code) {
    const key = `rad.err_${err.code}`;
    const index = /^files[.[](\d+)/.exec(err.param || "");
    const param = index && files[Number(index[1])] ? files[Number(index[1])].name : err.param || t("rad.file");
    const text = t(key, { param });
    if (text !== key) return text;
  }
  return errorMessage(err);
}

export function setText(selector, text, kind = "") {
  const el = $(selector);
  el.textContent = text;
  el.dataset.kind = kind;
}

/** Said to screen readers only: routine confirmations would pile up as pop-ups. */
export function live(text) { $("#rad-live").textContent = text; }

export async function fetchBlob(path, signal) {
  const resp = await fetch(path, { headers: authHeaders(), signal });
  if (!resp.ok) throw new ApiError(resp.status, await resp.json().catch(() => null));
  return resp.blob();
}

export function dataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

/**
 * Send `files` as one study of the patient in #rad-patient, with a progress row per file
 * (bytes sent, then the server's processing of each image); `done(study)` once all are.
 */
async function uploadFiles(files, done) {
  if (!files.length) return;
  const patient = $("#rad-patient").value.trim();
  if (!patient) {
    const err = $("#rad-patient-error");
    err.textContent = t("rad.need_patient_upload");
    err.hidden = false;
    $("#rad-patient").setAttribute("aria-invalid", "true");
    $("#rad-patient").focus();
    return;
  }
  const list = clear($("#rad-uploads"));
  const rows = files.map((file) => {
    const bar = h("progress", { max: 1, value: 0, "aria-label": file.name });
    const note = h("span", { class: "hint" }, t("rad.uploading"));
    const li = h("li", { class: "upload-item", dataset: { name: file.name } }, h("span", { class: "rad-up-name" }, file.name), bar, note);
    list.append(li);
    return { li, bar, note };
  });
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  form.append("patient_id", patient);
  const description = $("#rad-description").value.trim();
  if (description) form.append("description", description);
  setText("#rad-upload-status", tn("rad.uploading_n", files.length), "busy");
  let study;
  try {
    study = await upload(`${base}/studies`, form, {
      onProgress: (ratio) => { for (const r of rows) r.bar.value = ratio * 0.3; },
    });
  } catch (e) {
    const text = problem(e, files);
    setText("#rad-upload-status", text, "error");
    for (const r of rows) { r.note.textContent = t("rad.refused"); r.li.dataset.status = "failed"; r.bar.value = 0; }
    if (e instanceof ApiError && e.message && !text.includes(e.message)) {
      list.append(h("li", { class: "hint rad-error-detail" }, t("rad.error_detail", { detail: e.message })));
    }
    announce(text, "error");
    return;
  }
  $("#rad-description").value = "";
  await followUpload(study.id, rows, done);
}

/** Poll the new study and show each image's processing progress until all are done. */
async function followUpload(id, rows, done) {
  for (;;) {
    let study;
    try {
      study = await api(`${base}/studies/${id}`);
    } catch (e) {
      setText("#rad-upload-status", problem(e), "error");
      return;
    }
    study.images.forEach((image, i) => {
      const row = rows[i];
      if (!row) return;
      row.li.dataset.status = image.status;
      row.bar.value = image.status === "ready" ? 1 : 0.3 + 0.7 * (image.progress || 0);
      row.note.textContent = image.status === "ready" ? t("rad.image_ready")
        : image.status === "failed" ? (image.error || t("rad.image_failed"))
          : t("rad.processing_pct", { pct: Math.round((image.progress || 0) * 100) });
    });
    const pending = study.images.some((i) => i.status === "processing");
    if (!pending) {
      const failed = study.images.filter((i) => i.status === "failed").length;
      const text = failed ? tn("rad.upload_failed_n", failed) : t("rad.upload_done");
      setText("#rad-upload-status", text, failed ? "error" : "ok");
      if (failed) announce(text, "error");
      else live(text);
      await done(study);
      return;
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

/** Uploads from the drop zone (drag and drop) and the file picker. */
export function bindUpload(done) {
  const zone = $("#rad-drop");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    uploadFiles([...(e.dataTransfer?.files || [])], done);
  });
  $("#rad-files").addEventListener("change", (e) => {
    const files = [...e.target.files];
    e.target.value = "";
    uploadFiles(files, done);
  });
}
