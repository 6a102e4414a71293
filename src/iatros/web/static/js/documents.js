// Documents: collections, uploads with progress per file, ingestion jobs, deletion.
//
// Each file is sent in its own request so that its upload progress, its ingestion job
// and its error are its own; two uploads run at a time.

import { api, upload } from "./api.js";
import { $, announce, clear, h, icon, uid } from "./dom.js";
import { errorMessage, ingestMessage } from "./errors.js";
import { formatDate, formatNumber, t, tn } from "./i18n.js";

const EXTENSIONS = [".pdf", ".md", ".markdown", ".html", ".htm", ".xhtml", ".txt", ".text", ".docx"];
const PARALLEL = 2;
const POLL_MS = 600;

const state = {
  me: null,
  collections: [],
  selected: null,
  documents: [],
  uploads: [],
  queue: [],
  active: 0,
  deletingId: null,
  deletingCollection: false,
  tenant: "", // a platform admin's pick: whose documents to manage ("" = its own tenant)
  bound: false,
};

const enc = encodeURIComponent;

/** `path` for the tenant a platform admin picked (its own when none): `?tenant=`. */
function scoped(path, tenant = state.tenant) {
  return tenant ? `${path}${path.includes("?") ? "&" : "?"}tenant=${enc(tenant)}` : path;
}
const canManage = () => Boolean(state.me?.capabilities?.documents_manage);

// -- collections ----------------------------------------------------------------

async function loadCollections() {
  try {
    const data = await api(scoped("/v1/knowledge/collections"));
    state.collections = (data.data || []).map((c) => ({ name: c.name, documents: c.documents ?? 0, chunks: c.chunks ?? 0 }));
  } catch (err) {
    state.collections = [];
    announce(errorMessage(err), "error");
  }
  const names = state.collections.map((c) => c.name);
  if (!names.includes(state.selected)) state.selected = names[0] ?? null;
  renderCollections();
}

function renderCollections() {
  const list = $("#collection-list");
  clear(list);
  const all = state.collections;
  if (!all.length) list.append(h("li", { class: "hint" }, t("docs.no_collections")));
  for (const col of all) {
    const isCurrent = col.name === state.selected;
    list.append(h("li", {},
      h("button", {
        class: `collection${isCurrent ? " current" : ""}`, type: "button",
        "aria-current": isCurrent ? "true" : null,
        onClick: () => select(col.name),
      },
      h("span", { class: "collection-name" }, col.name),
      h("span", { class: "collection-counts" },
        col.documents ? `${tn("docs.documents", col.documents)} · ${tn("docs.passages", col.chunks)}`
          : t("docs.empty_collection")))));
  }
  $("#collection-form").hidden = !canManage();
  renderSelected();
}

function renderSelected() {
  const title = $("#docs-collection-title");
  title.textContent = state.selected ? t("docs.collection_named", { name: state.selected }) : t("docs.no_selection");
  $("#upload-area").hidden = !canManage() || !state.selected;
  renderCollectionActions();
}

/** Delete the selected collection, with its documents, after an inline confirmation. */
function renderCollectionActions() {
  const box = $("#collection-actions");
  clear(box);
  const name = state.selected;
  if (!canManage() || !name) return;
  if (!state.deletingCollection) {
    box.append(h("button", {
      class: "btn btn-small", type: "button", id: "collection-delete",
      onClick: () => { state.deletingCollection = true; renderCollectionActions(); },
    }, icon("trash"), t("docs.delete_collection")));
    return;
  }
  const count = state.collections.find((c) => c.name === name)?.documents ?? 0;
  box.append(
    h("span", { class: "confirm-text", role: "alert" }, tn("docs.delete_collection_confirm", count, { name })),
    h("button", { class: "btn btn-danger btn-small", type: "button", onClick: () => removeCollection(name) }, t("docs.delete")),
    h("button", {
      class: "btn btn-small", type: "button",
      onClick: () => { state.deletingCollection = false; renderCollectionActions(); $("#collection-delete")?.focus(); },
    }, t("chat.cancel")));
  queueMicrotask(() => box.querySelector(".btn-danger")?.focus());
}

async function removeCollection(name) {
  try {
    await api(scoped(`/v1/knowledge/collections/${enc(name)}`), { method: "DELETE" });
    announce(t("docs.collection_deleted", { name }));
    if (state.selected === name) state.selected = null;
  } catch (err) {
    announce(errorMessage(err), "error");
  }
  state.deletingCollection = false;
  await loadCollections();
  await loadDocuments();
  window.dispatchEvent(new CustomEvent("iatros:collections"));
}

async function createCollection(name) {
  // Selected at once, so files dropped meanwhile go to it (an upload creates it too).
  const previous = state.selected;
  state.selected = name;
  state.documents = [];
  renderSelected();
  renderDocuments();
  try {
    await api(scoped("/v1/knowledge/collections"), { method: "POST", body: { name } });
  } catch (err) {
    announce(errorMessage(err), "error");
    if (state.selected === name) state.selected = previous;
    renderSelected();
    return;
  }
  await loadCollections();
  await select(name);
  window.dispatchEvent(new CustomEvent("iatros:collections"));
}

async function select(name) {
  state.selected = name;
  state.deletingId = null;
  state.deletingCollection = false;
  renderCollections();
  await loadDocuments();
}

// -- documents --------------------------------------------------------------------

async function loadDocuments() {
  const name = state.selected;
  if (!name) {
    state.documents = [];
    renderDocuments();
    return;
  }
  try {
    const data = await api(scoped(`/v1/knowledge/collections/${enc(name)}/documents`));
    if (name !== state.selected) return;
    state.documents = data.data || [];
  } catch (err) {
    state.documents = [];
    if (err.status !== 404) announce(errorMessage(err), "error");
  }
  renderDocuments();
}

function renderDocuments() {
  const body = $("#doc-rows");
  clear(body);
  if (!state.documents.length) {
    body.append(h("tr", {}, h("td", { colspan: 5, class: "hint" }, t("docs.no_documents"))));
    return;
  }
  for (const doc of state.documents) {
    const actions = h("td", { class: "actions" });
    if (canManage()) {
      if (state.deletingId === doc.id) {
        actions.append(
          h("span", { class: "confirm-text" }, t("docs.delete_confirm")),
          h("button", { class: "btn btn-danger btn-small", type: "button", onClick: () => remove(doc) }, t("docs.delete")),
          h("button", {
            class: "btn btn-small", type: "button",
            onClick: () => { state.deletingId = null; renderDocuments(); },
          }, t("chat.cancel")));
        queueMicrotask(() => actions.querySelector(".btn-danger")?.focus());
      } else {
        actions.append(h("button", {
          class: "icon-btn", type: "button", "aria-label": t("docs.delete_named", { name: doc.name }),
          title: t("docs.delete_named", { name: doc.name }),
          onClick: () => { state.deletingId = doc.id; renderDocuments(); },
        }, icon("trash")));
      }
    }
    body.append(h("tr", { dataset: { id: doc.id } },
      h("th", { scope: "row" }, h("span", { class: "doc-name" }, icon("file"), h("span", {}, String(doc.name ?? doc.id)))),
      // data-label: on a phone each row is a card and its figures say what they are.
      h("td", { "data-label": t("docs.col_pages") }, doc.pages === null || doc.pages === undefined ? "–" : formatNumber(doc.pages)),
      h("td", { "data-label": t("docs.col_chunks") }, formatNumber(doc.chunks ?? 0)),
      h("td", { "data-label": t("docs.col_updated") }, formatDate(doc.updated_at)),
      actions));
  }
}

async function remove(doc) {
  try {
    await api(scoped(`/v1/knowledge/collections/${enc(state.selected)}/documents/${enc(doc.id)}`), { method: "DELETE" });
    announce(t("docs.deleted", { name: doc.name }));
  } catch (err) {
    announce(errorMessage(err), "error");
  }
  state.deletingId = null;
  await loadCollections();
  await loadDocuments();
  window.dispatchEvent(new CustomEvent("iatros:collections"));
}

// -- uploads ------------------------------------------------------------------------

function addFiles(files) {
  if (!state.selected || !canManage()) return;
  for (const file of files) {
    const item = { id: uid(), file, name: file.name, collection: state.selected, tenant: state.tenant, state: "waiting", progress: 0 };
    const ext = file.name.includes(".") ? file.name.slice(file.name.lastIndexOf(".")).toLowerCase() : "";
    if (!EXTENSIONS.includes(ext)) {
      item.state = "error";
      item.error = t("docs.unsupported", { formats: EXTENSIONS.join(" ") });
    }
    state.uploads.unshift(item);
    if (item.state === "waiting") state.queue.push(item);
  }
  renderUploads();
  pump();
}

function pump() {
  while (state.active < PARALLEL && state.queue.length) {
    const item = state.queue.shift();
    state.active++;
    run(item).finally(() => {
      state.active--;
      pump();
      if (!state.active && !state.queue.length) finished();
    });
  }
}

async function finished() {
  await loadCollections();
  await loadDocuments();
  window.dispatchEvent(new CustomEvent("iatros:collections"));
}

async function run(item) {
  item.state = "uploading";
  renderUpload(item);
  const form = new FormData();
  form.append("files", item.file, item.file.name);
  try {
    const accepted = await upload(scoped(`/v1/knowledge/collections/${enc(item.collection)}/documents`, item.tenant), form, {
      onProgress: (ratio) => { item.progress = ratio; renderUpload(item); },
    });
    item.progress = 1;
    item.jobId = accepted?.job_id ?? accepted?.id;
    item.state = "queued";
    renderUpload(item);
    if (item.jobId) await follow(item);
    else item.state = "done";
  } catch (err) {
    item.state = "error";
    item.error = errorMessage(err);
  }
  renderUpload(item);
  if (item.state === "error") announce(t("docs.file_failed", { name: item.name }), "error");
  else announce(t("docs.file_done", { name: item.name }));
}

/** The job's report for one file, whichever shape the server uses (files or results). */
function fileReport(job, name) {
  const entries = [...(job.files || []), ...(job.results || [])].filter((f) => f && typeof f === "object");
  return entries.find((f) => f.filename === name) || (entries.length === 1 ? entries[0] : null);
}

async function follow(item) {
  for (;;) {
    const job = await api(scoped(`/v1/knowledge/jobs/${enc(item.jobId)}`, item.tenant));
    const report = fileReport(job, item.name);
    const fileState = report?.state ?? report?.status;
    if (report && (fileState === "error" || fileState === "failed" || report.error)) {
      item.state = "error";
      item.error = ingestMessage(report);
      return;
    }
    if (job.state === "failed") {
      item.state = "error";
      item.error = report?.error ? ingestMessage(report) : job.error || t("docs.failed");
      return;
    }
    if (job.state === "done") {
      item.state = "done";
      item.chunks = report?.chunks ?? null;
      item.skipped = fileState === "skipped";
      return;
    }
    item.state = job.state === "running" ? "running" : "queued";
    renderUpload(item);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

function uploadStateText(item) {
  switch (item.state) {
    case "waiting": return t("docs.s_waiting");
    case "uploading": return t("docs.s_uploading", { percent: Math.round(item.progress * 100) });
    case "queued": return t("docs.s_queued");
    case "running": return t("docs.s_running");
    case "done":
      if (item.skipped) return t("docs.s_skipped");
      return item.chunks === null || item.chunks === undefined ? t("docs.s_done") : tn("docs.s_done_chunks", item.chunks);
    default: return `${t("docs.s_error")} ${item.error || ""}`;
  }
}

function uploadView(item) {
  const uploaded = ["queued", "running", "done"].includes(item.state) ? 1 : item.progress;
  const percent = Math.round(uploaded * 100);
  const progress = h("progress", { max: 100, "aria-label": t("docs.progress_of", { name: item.name }) });
  progress.value = percent;
  if (item.state === "queued" || item.state === "running") progress.removeAttribute("value"); // indeterminate
  return h("li", { class: `upload upload-${item.state}`, dataset: { id: item.id, state: item.state } },
    h("span", { class: "upload-name" }, icon(item.state === "error" ? "alert" : item.state === "done" ? "check" : "file"), item.name),
    progress,
    h("span", { class: "upload-state", role: item.state === "error" ? "alert" : null }, uploadStateText(item)));
}

function renderUpload(item) {
  const existing = $(`#upload-list li[data-id="${item.id}"]`);
  if (existing) existing.replaceWith(uploadView(item));
  else renderUploads();
}

function renderUploads() {
  const list = $("#upload-list");
  clear(list);
  for (const item of state.uploads.slice(0, 50)) list.append(uploadView(item));
}

// -- lifecycle ----------------------------------------------------------------------------

function bind() {
  if (state.bound) return;
  state.bound = true;
  const zone = $("#dropzone");
  const input = $("#file-input");
  input.addEventListener("change", () => {
    addFiles([...input.files]);
    input.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (e) => {
      e.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    addFiles([...(e.dataTransfer?.files || [])]);
  });
  $("#docs-tenant").addEventListener("change", async (e) => {
    state.tenant = e.target.value;
    state.selected = null;
    await loadCollections();
    await loadDocuments();
  });
  $("#collection-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const field = $("#collection-name");
    const name = field.value.trim();
    if (!field.checkValidity() || !name) {
      field.setAttribute("aria-invalid", "true");
      announce(t("docs.name_invalid"), "error");
      field.focus();
      return;
    }
    field.removeAttribute("aria-invalid");
    field.value = "";
    createCollection(name);
  });
}

export async function init(me) {
  state.me = me;
  bind();
}

/** A platform admin picks whose documents to manage: the tenants that have keys. */
async function loadTenants() {
  const field = $("#docs-tenant-field");
  field.hidden = !state.me?.platform;
  if (field.hidden) return;
  const select = $("#docs-tenant");
  let tenants = [];
  try {
    const keys = await api("/admin/keys");
    tenants = [...new Set((keys.data || []).map((k) => k.tenant))].sort();
  } catch (err) {
    announce(errorMessage(err), "error");
  }
  const own = state.me.tenant;
  clear(select);
  select.append(h("option", { value: "" }, t("docs.tenant_own", { tenant: own })));
  for (const tenant of tenants.filter((x) => x !== own)) select.append(h("option", { value: tenant }, tenant));
  select.value = tenants.includes(state.tenant) ? state.tenant : "";
  state.tenant = select.value;
}

export async function show() {
  await loadTenants();
  renderSelected();
  renderUploads();
  await loadCollections();
  await loadDocuments();
}

export function relabel() {
  if (!state.me) return;
  renderCollections();
  renderDocuments();
  renderUploads();
}

export function reset() {
  state.me = null;
  state.tenant = "";
  state.collections = [];
  state.selected = null;
  state.documents = [];
  state.uploads = [];
  state.queue = [];
}
