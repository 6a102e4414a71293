// Reviews (admins and keys with the reviewer capability): the queue of escalations and
// approvals, one item's detail (question, conversation, candidate sources, the model's
// draft, the verification), claim, answer (optionally saved to the knowledge base), dismiss.
// The header's badge shows how many items wait (open + claimed), refreshed periodically.

import { api, ApiError } from "./api.js";
import { $, announce, append, clear, h, icon } from "./dom.js";
import { errorMessage } from "./errors.js";
import { formatDate, formatPercent, locale, t } from "./i18n.js";

const BADGE_MS = 30_000;
const LIST_MS = 15_000;
const NAME_KEY = "iatros.reviewer_name";
const STATUSES = ["pending", "open", "claimed", "answered", "dismissed", "all"];
const REASONS = ["no_source", "unsupported_detail", "model_failure", "user_request", "feedback", "approval"];
const OPEN = new Set(["open", "claimed"]);
const state = {
  me: null, items: [], selected: null, item: null, bound: false,
  badgeTimer: null, listTimer: null, loading: false, error: null,
};

// -- the header badge ---------------------------------------------------------------------

export async function refreshBadge() {
  const badge = $("#rev-badge");
  if (!badge || !state.me) return;
  let pending = 0;
  try {
    pending = (await api("/v1/reviews/counts")).pending || 0;
  } catch {
    return; // the next tick tries again
  }
  badge.hidden = !pending;
  badge.dataset.count = String(pending);
  clear(badge).append(h("span", { "aria-hidden": "true" }, String(pending)),
    h("span", { class: "visually-hidden" }, t("rev.badge", { n: pending })));
}

function startBadge() {
  stopBadge();
  refreshBadge();
  state.badgeTimer = setInterval(() => { if (!document.hidden) refreshBadge(); }, BADGE_MS);
}

function stopBadge() {
  if (state.badgeTimer) clearInterval(state.badgeTimer);
  state.badgeTimer = null;
}

// -- the queue ----------------------------------------------------------------------------

function ageText(seconds) {
  const rtf = new Intl.RelativeTimeFormat(locale(), { numeric: "auto" });
  const s = Math.max(0, Number(seconds) || 0);
  if (s < 60) return rtf.format(-Math.round(s), "second");
  if (s < 3600) return rtf.format(-Math.round(s / 60), "minute");
  if (s < 86400) return rtf.format(-Math.round(s / 3600), "hour");
  return rtf.format(-Math.round(s / 86400), "day");
}

const statusBadge = (status) => h("span", { class: `badge review-badge status-${status}` }, t(`rev.status_${status}`));
const reasonText = (reason) => t(`rev.reason_${reason}`);

export async function refresh({ quiet = false } = {}) {
  if (state.loading) return;
  state.loading = true;
  const status = $("#rev-status").value;
  const reason = $("#rev-reason").value;
  const params = new URLSearchParams({ limit: "200" });
  if (status !== "all") params.set("status", status);
  if (reason) params.set("reason", reason);
  const line = $("#rev-list-status");
  if (!quiet) line.textContent = t("rev.loading");
  $("#rev-list").setAttribute("aria-busy", "true");
  try {
    const data = await api(`/v1/reviews?${params}`);
    state.items = data.data || [];
    renderList();
    line.textContent = state.items.length ? t("rev.shown", { n: state.items.length }) : t("rev.empty");
  } catch (err) {
    line.textContent = errorMessage(err);
  } finally {
    state.loading = false;
    $("#rev-list").setAttribute("aria-busy", "false");
  }
  refreshBadge();
}

function renderList() {
  const list = $("#rev-list");
  clear(list);
  for (const item of state.items) {
    const selected = item.id === state.selected;
    list.append(h("li", { class: `rev-item${selected ? " current" : ""}${item.overdue ? " overdue" : ""}`, dataset: { id: item.id, status: item.status } },
      h("button", {
        class: "rev-open", type: "button", "aria-current": selected ? "true" : null,
        onClick: () => select(item.id, true),
      },
      h("span", { class: "rev-question" }, item.question),
      h("span", { class: "rev-tags" },
        statusBadge(item.status),
        h("span", { class: "badge" }, reasonText(item.reason)),
        item.overdue ? h("span", { class: "badge badge-danger rev-overdue" }, icon("alert"), t("rev.overdue")) : null,
        h("span", { class: "rev-age" }, ageText(item.age_s))))));
  }
}

// -- one item -----------------------------------------------------------------------------

async function select(id, focus = false) {
  state.selected = id;
  // The item's own address (#/reviews/<id>): a reload or a shared link opens it again.
  history.replaceState(null, "", `#/reviews/${encodeURIComponent(id)}`);
  state.error = null;
  renderList();
  try {
    state.item = await api(`/v1/reviews/${encodeURIComponent(id)}`);
  } catch (err) {
    state.item = null;
    state.error = errorMessage(err);
  }
  renderDetail();
  if (focus) {
    const title = $("#rev-detail-title");
    title?.focus();
    title?.scrollIntoView({ block: "nearest" });
  }
}

function section(id, title, ...children) {
  return h("section", { class: "rev-section", "aria-labelledby": id }, h("h3", { id }, title), ...children);
}

function excerptView(item) {
  const turns = item.excerpt || [];
  if (!turns.length) return null;
  return section("rev-h-excerpt", t("rev.conversation"),
    h("ol", { class: "rev-excerpt" }, turns.map((turn) => h("li", { class: `turn turn-${turn.role}` },
      h("span", { class: "turn-who" }, turn.role === "user" ? t("rev.asker") : t("rev.assistant")),
      h("p", {}, turn.content)))));
}

function sourcesView(item) {
  const sources = item.sources || [];
  return section("rev-h-sources", t("rev.sources", { n: sources.length }),
    sources.length ? h("ol", { class: "source-list" }, sources.map((source, i) => h("li", { class: "source" },
      h("div", { class: "source-head" },
        h("span", { class: "source-n" }, String(source.index ?? i + 1)),
        h("span", { class: "source-doc" }, String(source.document ?? "")),
        source.page !== null && source.page !== undefined ? h("span", { class: "source-page" }, t("chat.page", { page: source.page })) : null),
      h("blockquote", { class: "source-snippet" }, String(source.snippet ?? "")),
      typeof source.score === "number" ? h("span", { class: "source-score" }, t("chat.relevance", { value: formatPercent(source.score) })) : null)))
      : h("p", { class: "hint" }, t("rev.no_sources")));
}

function verificationView(item) {
  const v = item.details?.verification;
  if (!v) return null;
  const rows = [...(v.unsupported || []).map((d) => ({ ...d, ok: false })), ...(v.supported || []).map((d) => ({ ...d, ok: true }))];
  return section("rev-h-verification", t("rev.verification"),
    h("p", {}, t(`rev.verification_${v.action || "none"}`)),
    rows.length ? h("ul", { class: "rev-details" }, rows.map((d) => h("li", { class: d.ok ? "detail-ok" : "detail-bad" },
      icon(d.ok ? "check" : "alert"),
      h("span", { class: "visually-hidden" }, d.ok ? t("rev.supported") : t("rev.unsupported")),
      h("strong", {}, String(d.detail ?? "")),
      " — ",
      h("span", {}, String(d.sentence ?? "")),
      d.evidence ? h("span", { class: "rev-evidence" }, t(d.source ? "chat.checked_against_n" : "chat.checked_against", { n: d.source ?? "", evidence: d.evidence })) : null)))
      : null);
}

function facts(item) {
  const dl = h("dl", { class: "rev-facts" });
  const add = (label, value) => { if (value !== null && value !== undefined && value !== "") dl.append(h("dt", {}, label), h("dd", {}, value)); };
  add(t("rev.status"), statusBadge(item.status));
  add(t("rev.reason"), reasonText(item.reason));
  add(t("rev.asked"), `${formatDate(item.created_at)} (${ageText(item.age_s)})`);
  add(t("rev.due"), item.due_at ? h("span", { class: item.overdue ? "error-text" : "" }, formatDate(item.due_at), item.overdue ? ` — ${t("rev.overdue")}` : "") : null);
  add(t("rev.asker_key"), item.asker);
  add(t("rev.route"), item.route || null);
  add(t("rev.collection"), item.details?.collection || null);
  if (typeof item.details?.retrieval_match === "number") add(t("rev.match"), formatPercent(item.details.retrieval_match));
  add(t("rev.claimed_by"), item.claimed_by);
  if (state.me?.platform) add(t("rev.tenant"), item.tenant);
  return dl;
}

function closedView(item) {
  if (OPEN.has(item.status)) return null;
  return section("rev-h-closed", item.status === "answered" ? t("rev.answer_given") : t("rev.dismissed"),
    h("p", { class: "hint" }, t("rev.closed_by", { name: item.reviewer_name || item.answered_by || "", date: formatDate(item.answered_at) })),
    item.answer ? h("blockquote", { class: "rev-answer" }, item.answer) : null,
    item.document_id ? h("p", { class: "rev-saved" }, icon("file"), t("rev.saved", { id: item.document_id })) : null);
}

function actionsView(item) {
  if (!OPEN.has(item.status)) return null;
  const mine = item.claimed_by && item.claimed_by === state.me?.key_id;
  const claim = h("button", {
    class: "btn", type: "button", id: "rev-claim", disabled: mine ? true : null,
    onClick: () => act(item, "claim", null, t("rev.claimed_ok")),
  }, mine ? t("rev.claimed_by_you") : t("rev.claim"));
  if (item.kind === "approval") {
    return h("div", { class: "rev-actions" }, h("div", { class: "row" }, claim),
      h("p", { class: "hint" }, t("rev.approval_hint")));
  }
  const area = h("textarea", { id: "rev-answer", rows: 5, maxlength: 20000, required: true, "aria-describedby": "rev-answer-hint" });
  const name = h("input", { id: "rev-name", maxlength: 128, autocomplete: "name", value: localStorage.getItem(NAME_KEY) || "" });
  const canSave = Boolean(item.details?.collection);
  const keep = h("input", { id: "rev-save", type: "checkbox", disabled: canSave ? null : true, "aria-describedby": "rev-save-hint" });
  const note = h("textarea", { id: "rev-note", rows: 2, maxlength: 4000 });
  const form = h("form", {
    class: "rev-form", novalidate: true,
    onSubmit: (e) => {
      e.preventDefault();
      const text = area.value.trim();
      if (!text) {
        area.setAttribute("aria-invalid", "true");
        showError(t("rev.answer_required"));
        area.focus();
        return;
      }
      area.removeAttribute("aria-invalid");
      localStorage.setItem(NAME_KEY, name.value.trim());
      act(item, "answer", { answer: text, reviewer_name: name.value.trim(), save_to_knowledge: keep.checked }, t("rev.answered_ok"));
    },
  },
  h("label", { for: "rev-answer" }, t("rev.answer")),
  area,
  h("p", { id: "rev-answer-hint", class: "hint" }, t("rev.answer_hint")),
  h("label", { for: "rev-name" }, t("rev.your_name")),
  name,
  h("div", { class: "check" }, keep, h("label", { for: "rev-save" }, t("rev.save_knowledge"))),
  h("p", { id: "rev-save-hint", class: "hint" }, canSave ? t("rev.save_hint", { collection: item.details.collection }) : t("rev.save_unavailable")),
  h("div", { class: "row" }, h("button", { class: "btn btn-primary", type: "submit", id: "rev-send" }, t("rev.send"))));
  const dismiss = h("details", { class: "rev-dismiss" },
    h("summary", {}, t("rev.dismiss_open")),
    h("label", { for: "rev-note" }, t("rev.note")),
    note,
    h("div", { class: "row" }, h("button", {
      class: "btn btn-danger", type: "button", id: "rev-dismiss",
      onClick: () => act(item, "dismiss", { note: note.value.trim() }, t("rev.dismissed_ok")),
    }, t("rev.dismiss"))));
  return h("div", { class: "rev-actions" }, h("div", { class: "row" }, claim), form, dismiss);
}

function showError(message) {
  const box = $("#rev-error");
  if (!box) return;
  box.textContent = message;
  box.hidden = !message;
}

async function act(item, action, body, done) {
  const buttons = [...document.querySelectorAll("#rev-detail button")];
  for (const b of buttons) b.disabled = true;
  showError("");
  try {
    const updated = await api(`/v1/reviews/${encodeURIComponent(item.id)}/${action}`, { method: "POST", body: body ?? undefined });
    state.item = updated;
    announce(done);
    renderDetail();
    $("#rev-detail-title")?.focus();
    refresh({ quiet: true });
  } catch (err) {
    let message = errorMessage(err);
    if (err instanceof ApiError && err.status === 409) {
      // Closed (or claimed) by someone else meanwhile: show what it is now, say why.
      try { state.item = await api(`/v1/reviews/${encodeURIComponent(item.id)}`); } catch { /* keep */ }
      message = `${message} ${t("rev.reloaded")}`;
      renderDetail();
      refresh({ quiet: true });
    } else {
      for (const b of buttons) b.disabled = false;
    }
    showError(message);
  }
}

function renderDetail() {
  const box = $("#rev-detail");
  clear(box);
  const item = state.item;
  box.hidden = !item && !state.error;
  if (!item) {
    if (state.error) box.append(h("p", { class: "error-text", role: "alert" }, state.error));
    return;
  }
  append(box, [
    h("h2", { id: "rev-detail-title", tabindex: "-1", class: "rev-title" }, item.question),
    h("p", { id: "rev-error", class: "error-text rev-error", role: "alert", hidden: true }),
    facts(item),
    excerptView(item),
    item.draft ? section("rev-h-draft", t("rev.draft"), h("blockquote", { class: "rev-draft" }, item.draft)) : null,
    verificationView(item),
    sourcesView(item),
    closedView(item),
    actionsView(item),
  ]);
}

// -- lifecycle ------------------------------------------------------------------------------

function fillFilters() {
  const status = $("#rev-status");
  const reason = $("#rev-reason");
  const chosen = [status.value || "pending", reason.value];
  clear(status);
  for (const s of STATUSES) status.append(h("option", { value: s }, s === "all" ? t("rev.all_statuses") : t(`rev.status_${s}`)));
  clear(reason);
  reason.append(h("option", { value: "" }, t("rev.all_reasons")));
  for (const r of REASONS) reason.append(h("option", { value: r }, reasonText(r)));
  status.value = chosen[0];
  reason.value = chosen[1];
}

function bind() {
  if (state.bound) return;
  state.bound = true;
  $("#rev-filters").addEventListener("submit", (e) => { e.preventDefault(); refresh(); });
  $("#rev-status").addEventListener("change", () => refresh());
  $("#rev-reason").addEventListener("change", () => refresh());
}

function startList() {
  stopList();
  state.listTimer = setInterval(() => {
    if ($("#view-reviews").hidden) { stopList(); return; }
    if (!document.hidden) refresh({ quiet: true });
  }, LIST_MS);
}

function stopList() {
  if (state.listTimer) clearInterval(state.listTimer);
  state.listTimer = null;
}

export async function init(me) {
  state.me = me;
  bind();
  fillFilters();
  startBadge();
}

export async function show() {
  startList();
  await refresh();
  const wanted = location.hash.split("/")[2];
  if (wanted && wanted !== state.selected) await select(decodeURIComponent(wanted));
}

export function relabel() {
  if (!state.me) return;
  fillFilters();
  renderList();
  renderDetail();
  refreshBadge();
}

export function reset() {
  stopBadge();
  stopList();
  state.me = null;
  state.items = [];
  state.selected = null;
  state.item = null;
  clear($("#rev-list"));
  clear($("#rev-detail"));
  const badge = $("#rev-badge");
  clear(badge).hidden = true;
}
