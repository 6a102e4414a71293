// Chat: conversations kept in this browser, streamed answers, sources, feedback, and the
// clinical safety loop: each grounded answer's verification (the trust signal), escalations
// passed to a reviewer, and the reviewer's answer arriving in the same conversation.

import { api, streamChat } from "./api.js";
import { $, announce, clear, h, icon, uid } from "./dom.js";
import { errorMessage } from "./errors.js";
import { formatDate, formatMs, formatNumber, formatPercent, t, tn } from "./i18n.js";
import { renderMarkdown } from "./markdown.js";

const MAX_CONVERSATIONS = 200;
const STORAGE_PREFIX = "iatros.conversations.";
const REVIEW_POLL_MS = 5000;
const OPEN_REVIEW = new Set(["open", "claimed"]);
const state = {
  me: null,
  storageKey: null,
  conversations: [],
  currentId: null,
  streaming: null, // {controller, conv, msg, view}
  renamingId: null,
  deletingId: null,
  bound: false,
  poll: null, // {timer, convId}: polling the current conversation's open review items
};

// -- storage --------------------------------------------------------------------

function load() {
  try {
    const data = JSON.parse(localStorage.getItem(state.storageKey) || "[]");
    return Array.isArray(data) ? data.filter((c) => c && typeof c.id === "string" && Array.isArray(c.messages)) : [];
  } catch {
    return [];
  }
}

function save() {
  if (!state.storageKey) return; // signed out: an answer ending late writes nothing back
  state.conversations.sort((a, b) => (b.updated || 0) - (a.updated || 0));
  state.conversations = state.conversations.slice(0, MAX_CONVERSATIONS);
  try {
    localStorage.setItem(state.storageKey, JSON.stringify(state.conversations));
  } catch {
    announce(t("chat.storage_full"), "error");
  }
}

const current = () => state.conversations.find((c) => c.id === state.currentId) || null;

/** The id the gateway files this conversation's escalations under (an identifier, <= 64). */
export function conversationId(conv) {
  const clean = String(conv?.id ?? "").replace(/[^A-Za-z0-9_-]/g, "").slice(0, 64);
  return clean || null;
}

function titleOf(conv) {
  return conv?.title || t("chat.untitled");
}

function newConversation() {
  const conv = { id: uid(), title: "", created: Date.now(), updated: Date.now(), messages: [] };
  state.conversations.unshift(conv);
  return conv;
}

// -- conversation list ------------------------------------------------------------

function renderList() {
  const list = $("#conv-list");
  clear(list);
  if (!state.conversations.length) {
    list.append(h("li", { class: "conv-empty" }, t("chat.no_conversations")));
  }
  for (const conv of state.conversations) {
    const title = titleOf(conv);
    const isCurrent = conv.id === state.currentId;
    const li = h("li", { class: `conv-item${isCurrent ? " current" : ""}`, dataset: { id: conv.id } });
    if (state.renamingId === conv.id) {
      const input = h("input", {
        id: `rename-${conv.id}`, value: conv.title || "", maxlength: 120, autocomplete: "off",
      });
      const form = h("form", {
        class: "conv-rename",
        onSubmit: (e) => {
          e.preventDefault();
          conv.title = input.value.trim().slice(0, 120);
          state.renamingId = null;
          save();
          renderList();
          renderHeader();
          focusItem(conv.id, ".conv-open");
        },
      },
      h("label", { for: input.id, class: "visually-hidden" }, t("chat.rename_label")),
      input,
      h("button", { class: "icon-btn", type: "submit", "aria-label": t("chat.save") }, icon("check")),
      h("button", {
        class: "icon-btn", type: "button", "aria-label": t("chat.cancel"),
        onClick: () => { state.renamingId = null; renderList(); focusItem(conv.id, ".conv-rename-btn"); },
      }, icon("x")));
      input.addEventListener("keydown", (e) => {
        if (e.key === "Escape") { e.stopPropagation(); state.renamingId = null; renderList(); focusItem(conv.id, ".conv-rename-btn"); }
      });
      li.append(form);
      list.append(li);
      queueMicrotask(() => { input.focus(); input.select(); });
      continue;
    }
    if (state.deletingId === conv.id) {
      li.append(h("div", { class: "conv-confirm", role: "group", "aria-label": t("chat.delete_confirm", { title }) },
        h("span", {}, t("chat.delete_confirm", { title })),
        h("button", {
          class: "btn btn-danger btn-small", type: "button",
          onClick: () => deleteConversation(conv.id),
        }, t("chat.delete")),
        h("button", {
          class: "btn btn-small", type: "button",
          onClick: () => { state.deletingId = null; renderList(); focusItem(conv.id, ".conv-delete-btn"); },
        }, t("chat.cancel"))));
      list.append(li);
      queueMicrotask(() => li.querySelector(".btn-danger")?.focus());
      continue;
    }
    li.append(
      h("button", {
        class: "conv-open", type: "button", "aria-current": isCurrent ? "true" : null,
        onClick: () => openConversation(conv.id),
      }, h("span", { class: "conv-name" }, title), h("span", { class: "conv-date" }, formatDate(conv.updated))),
      h("button", {
        class: "icon-btn conv-rename-btn", type: "button", "aria-label": t("chat.rename", { title }),
        title: t("chat.rename", { title }),
        onClick: () => { state.renamingId = conv.id; state.deletingId = null; renderList(); },
      }, icon("edit")),
      h("button", {
        class: "icon-btn conv-delete-btn", type: "button", "aria-label": t("chat.delete_named", { title }),
        title: t("chat.delete_named", { title }),
        onClick: () => { state.deletingId = conv.id; state.renamingId = null; renderList(); },
      }, icon("trash")),
    );
    list.append(li);
  }
}

function focusItem(id, selector) {
  queueMicrotask(() => $(`#conv-list li[data-id="${CSS.escape(id)}"] ${selector}`)?.focus());
}

function deleteConversation(id) {
  if (state.streaming?.conv.id === id) state.streaming.controller.abort();
  state.conversations = state.conversations.filter((c) => c.id !== id);
  state.deletingId = null;
  if (state.currentId === id) state.currentId = state.conversations[0]?.id ?? null;
  save();
  renderList();
  renderConversation();
  startReviewPoll();
  announce(t("chat.deleted"));
  $("#conv-new").focus();
}

function openConversation(id) {
  state.currentId = id;
  state.renamingId = null;
  state.deletingId = null;
  renderList();
  renderConversation();
  closeDrawer();
  $("#prompt").focus();
  startReviewPoll();
}

// -- messages -------------------------------------------------------------------

function renderHeader() {
  $("#conv-current").textContent = titleOf(current());
}

function renderConversation() {
  renderHeader();
  const box = $("#messages");
  clear(box);
  const conv = current();
  if (!conv || !conv.messages.length) {
    box.append(h("div", { class: "chat-empty" },
      h("p", { class: "chat-empty-title" }, t("chat.empty_title")),
      h("p", {}, t("chat.empty"))));
    return;
  }
  conv.messages.forEach((msg) => box.append(messageView(msg).root));
  box.scrollTop = box.scrollHeight;
}

function citationFactory(msg) {
  const sources = msg.sources || [];
  return (n) => {
    const source = sources.find((s, i) => sourceNumber(s, i) === n);
    if (!source) return null;
    return h("button", {
      class: "cite", type: "button",
      "aria-label": t("chat.cite_label", { n, document: source.document ?? "" }),
      onClick: () => {
        const target = document.getElementById(`src-${msg.id}-${n}`);
        if (!target) return;
        for (const other of document.querySelectorAll(".source.highlight")) other.classList.remove("highlight");
        target.classList.add("highlight");
        target.scrollIntoView({ block: "nearest", behavior: "smooth" });
        target.focus({ preventScroll: true });
      },
    }, String(n));
  };
}

const sourceNumber = (source, index) => Number(source.n ?? source.index ?? index + 1);

function renderBody(view) {
  const { msg } = view;
  clear(view.body);
  if (msg.role === "user") {
    if (view.editing) view.body.append(editForm(view));
    else view.body.append(h("p", { class: "user-text" }, msg.content));
    return;
  }
  if (msg.role === "reviewer") {
    renderReviewerBody(view);
    return;
  }
  if (msg.escalate) {
    view.body.append(h("div", { class: "escalate", role: "note" },
      icon("alert"),
      h("div", {},
        h("strong", {}, t("chat.escalate_title")),
        h("p", {}, t("chat.escalate_text")))));
  }
  const md = h("div", { class: "md" });
  md.append(renderMarkdown(msg.content, { citation: citationFactory(msg), headingOffset: 2 }));
  if (msg.status === "streaming") md.append(h("span", { class: "cursor", "aria-hidden": "true" }));
  else addCodeCopy(md);
  view.body.append(md);
  if (msg.status === "streaming" && !msg.content) {
    view.body.append(h("p", { class: "thinking" }, t("chat.thinking")));
  }
  const unsupported = msg.verification?.unsupported || [];
  if (unsupported.length && msg.status !== "streaming") view.body.append(unsupportedList(msg, unsupported));
  if (msg.review) view.body.append(reviewState(msg.review));
  if (msg.status === "stopped") view.body.append(h("p", { class: "status-line stopped" }, t("chat.stopped")));
  if (msg.status === "error") {
    view.body.append(h("p", { class: "status-line error-text", role: "alert" }, `${t("chat.failed")} ${msg.error || ""}`));
  }
}

/** The reviewer's answer: a message of its own, signed and dated. */
function renderReviewerBody(view) {
  const { msg } = view;
  const who = msg.reviewerName || t("chat.reviewer");
  view.body.append(h("p", { class: "reviewer-sign" },
    msg.dismissed ? t("chat.review_dismissed_by", { name: who, date: formatDate(msg.answeredAt) })
      : t("chat.review_answered_by", { name: who, date: formatDate(msg.answeredAt) })));
  if (msg.question) view.body.append(h("p", { class: "reviewer-question" }, t("chat.review_question", { question: msg.question })));
  if (msg.content) {
    const md = h("div", { class: "md" });
    md.append(renderMarkdown(msg.content, { headingOffset: 2 }));
    view.body.append(md);
  }
}

const KIND_KEYS = { number: "chat.kind_number", drug: "chat.kind_drug", laterality: "chat.kind_laterality", negation: "chat.kind_negation" };

/** The details the sources do not support, each with the passage it was checked against. */
function unsupportedList(msg, details) {
  const headingId = `unsupported-${msg.id}`;
  const list = h("ul", { class: "unsupported-list" });
  for (const d of details) {
    list.append(h("li", {},
      h("span", { class: "unsupported-detail" }, String(d.detail ?? "")),
      " ",
      h("span", { class: "unsupported-kind" }, `(${t(KIND_KEYS[d.kind] || "chat.kind_other")})`),
      d.sentence ? h("span", { class: "unsupported-sentence" }, t("chat.in_sentence", { sentence: d.sentence })) : null,
      h("span", { class: "unsupported-evidence" }, d.evidence
        ? t(d.source ? "chat.checked_against_n" : "chat.checked_against", { n: d.source ?? "", evidence: d.evidence })
        : t("chat.not_in_sources"))));
  }
  return h("section", { class: "unsupported", "aria-labelledby": headingId },
    h("h3", { id: headingId, class: "unsupported-title" }, icon("alert"), t("chat.unsupported_title")),
    list);
}

function reviewState(review) {
  const status = review.status || "open";
  const key = status === "answered" ? "chat.review_answered"
    : status === "dismissed" ? "chat.review_closed"
      : status === "claimed" ? "chat.review_claimed" : "chat.review_passed";
  return h("p", { class: `review-state review-${status}`, dataset: { status } }, icon(status === "answered" ? "check" : "alert"), t(key));
}

/** The trust signal: what the faithfulness check concluded about this answer. */
function trustBadge(msg) {
  if (msg.reviewed) {
    return h("span", { class: "badge badge-ok trust", dataset: { trust: "reviewed" } }, icon("check"),
      t("chat.trust_reviewed", { name: msg.reviewed.reviewer || "", date: formatDate(msg.reviewed.reviewed_at, { dateStyle: "medium" }) }));
  }
  const v = msg.verification;
  if (!v) return null;
  if (v.action === "withheld") {
    return h("span", { class: "badge badge-danger trust", dataset: { trust: "withheld" } }, icon("alert"), t("chat.trust_withheld"));
  }
  if (v.action === "flagged" || v.status === "unsupported") {
    return h("span", { class: "badge badge-warn trust", dataset: { trust: "flagged" } }, icon("alert"), t("chat.trust_flagged"));
  }
  if (v.status === "supported") {
    return h("span", { class: "badge badge-ok trust", dataset: { trust: "verified" }, title: t("chat.trust_verified_tip") },
      icon("check"), t("chat.trust_verified"));
  }
  return h("span", { class: "badge trust", dataset: { trust: "no-details" }, title: t("chat.trust_none_tip") }, t("chat.trust_none"));
}

function renderMeta(view) {
  const { msg } = view;
  clear(view.meta);
  if (msg.role !== "assistant") return;
  const items = [];
  const trust = trustBadge(msg);
  if (trust) items.push(trust);
  if (msg.deployment) items.push(h("span", { class: "badge badge-model", title: t("chat.model_answered") }, msg.deployment));
  if (msg.cache && msg.cache.startsWith("hit")) {
    items.push(h("span", { class: "badge badge-cache" }, icon("cache"),
      t(msg.cache === "hit-semantic" ? "chat.cache_semantic" : "chat.cache_exact")));
  }
  // How well the best source matches the question: not trust in the answer (that is the
  // verification badge above), so it is worded and styled as a plain measure.
  const match = typeof msg.retrievalMatch === "number" ? msg.retrievalMatch : msg.confidence;
  if (typeof match === "number") {
    items.push(h("span", { class: "badge badge-match", title: t("chat.retrieval_match_tip") },
      t("chat.retrieval_match", { value: formatPercent(match) }),
      h("span", { class: "visually-hidden" }, ` (${t("chat.retrieval_match_tip")})`)));
  }
  if (msg.ttftMs) items.push(h("span", { class: "meta-item" }, t("chat.ttft", { value: formatMs(msg.ttftMs) })));
  if (msg.usage?.completion_tokens) {
    items.push(h("span", { class: "meta-item" }, tn("chat.tokens", msg.usage.completion_tokens)));
  }
  if (msg.route) {
    items.push(h("details", { class: "route" },
      h("summary", {}, t("chat.route")),
      h("code", {}, msg.route)));
  }
  view.meta.append(...items);
}

function renderActions(view) {
  const { msg } = view;
  clear(view.actions);
  if (msg.role === "user") {
    if (!state.streaming && !view.editing) {
      view.actions.append(h("button", {
        class: "icon-btn msg-edit", type: "button", "aria-label": t("chat.edit"), title: t("chat.edit"),
        onClick: () => { view.editing = true; renderBody(view); renderActions(view); },
      }, icon("edit")));
    }
    return;
  }
  if (msg.role === "assistant" && !state.streaming && isLastAnswer(msg) && msg.status !== "streaming") {
    view.actions.append(h("button", {
      class: "icon-btn msg-regenerate", type: "button", "aria-label": t("chat.regenerate"), title: t("chat.regenerate"),
      onClick: () => regenerate(msg),
    }, icon("refresh")));
  }
  if (msg.role !== "assistant" || msg.status === "streaming" || !msg.content) return;
  view.actions.append(h("button", {
    class: "icon-btn", type: "button", "aria-label": t("chat.copy"), title: t("chat.copy"),
    onClick: () => copyText(msg.content),
  }, icon("copy")));
  const canAsk = state.me?.capabilities?.reviews_ask && !msg.review && !msg.reviewed;
  if (canAsk && msg.status === "done") {
    // After a thumbs-down on a grounded answer, one click sends it on (reason "feedback").
    const sendOn = msg.feedback?.rating === "down" && grounded(msg);
    view.actions.append(h("button", {
      class: `btn btn-small ${sendOn ? "btn-primary send-reviewer" : "ask-human"}`, type: "button",
      onClick: () => askHuman(view, sendOn ? "feedback" : "user_request"),
    }, t(sendOn ? "chat.send_to_reviewer" : "chat.ask_human")));
  }
  if (!msg.requestId || !state.me?.capabilities?.feedback) return;
  for (const rating of ["up", "down"]) {
    view.actions.append(h("button", {
      class: `icon-btn feedback-${rating}`, type: "button",
      "aria-pressed": msg.feedback?.rating === rating ? "true" : "false",
      "aria-label": t(rating === "up" ? "chat.good" : "chat.bad"),
      title: t(rating === "up" ? "chat.good" : "chat.bad"),
      onClick: () => rate(view, rating),
    }, icon(rating)));
  }
  if (view.commenting) {
    const id = `comment-${msg.id}`;
    const area = h("textarea", { id, rows: 2, maxlength: 2000 });
    view.actions.append(h("form", {
      class: "feedback-comment",
      onSubmit: async (e) => {
        e.preventDefault();
        await rate(view, "down", area.value.trim());
      },
    },
    h("label", { for: id }, t("chat.comment_label")),
    area,
    h("div", { class: "row" },
      h("button", { class: "btn btn-small btn-primary", type: "submit" }, t("chat.send_feedback")),
      h("button", {
        class: "btn btn-small", type: "button",
        onClick: () => { view.commenting = false; renderActions(view); },
      }, t("chat.cancel")))));
    queueMicrotask(() => area.focus());
  }
}

function renderSources(view) {
  const { msg } = view;
  clear(view.sources);
  const sources = msg.sources || [];
  view.root.classList.toggle("has-sources", sources.length > 0);
  view.sources.hidden = sources.length === 0;
  if (!sources.length) return;
  const headingId = `sources-${msg.id}`;
  view.sources.setAttribute("aria-labelledby", headingId);
  view.sources.append(h("h3", { id: headingId, class: "sources-title" }, tn("chat.sources", sources.length)));
  const list = h("ol", { class: "source-list" });
  sources.forEach((source, index) => {
    const n = sourceNumber(source, index);
    const where = source.page !== null && source.page !== undefined ? t("chat.page", { page: source.page }) : "";
    list.append(h("li", { class: "source", id: `src-${msg.id}-${n}`, tabindex: "-1" },
      h("div", { class: "source-head" },
        h("span", { class: "source-n" }, String(n)),
        h("span", { class: "source-doc" }, String(source.document ?? "")),
        where && h("span", { class: "source-page" }, where)),
      // Passages are shown as plain text: a document cannot inject markup here.
      h("blockquote", { class: "source-snippet" }, String(source.snippet ?? "")),
      typeof source.score === "number" && h("span", { class: "source-score" },
        t("chat.relevance", { value: formatPercent(source.score) }))));
  });
  view.sources.append(list);
}

function who(msg) {
  if (msg.role === "user") return t("chat.you");
  if (msg.role === "reviewer") return t("chat.reviewer");
  return t("chat.assistant");
}

function messageView(msg) {
  const root = h("article", {
    class: `msg msg-${msg.role}`, dataset: { id: msg.id, status: msg.status || "done" },
    "aria-label": who(msg),
  });
  const body = h("div", { class: "msg-body" });
  const meta = h("div", { class: "msg-meta" });
  const actions = h("div", { class: "msg-actions" });
  const sources = h("aside", { class: "sources", hidden: true });
  const main = h("div", { class: "msg-main" },
    h("div", { class: "msg-who", "aria-hidden": "true" }, who(msg)),
    body, meta, actions);
  root.append(main, sources);
  if (msg.requestId) root.dataset.requestId = msg.requestId;
  const view = { msg, root, body, meta, actions, sources, commenting: false };
  renderBody(view);
  renderMeta(view);
  renderActions(view);
  renderSources(view);
  return view;
}

/** The answer a regeneration replaces: the conversation's last message, an assistant's. */
function isLastAnswer(msg) {
  const messages = current()?.messages || [];
  return messages[messages.length - 1] === msg;
}

/**
 * Ask the last question again, for a new answer: the old answer and its question leave
 * the conversation and the question is sent with `refresh` (a cached answer would only
 * repeat the old one; the new answer replaces it in the cache).
 */
function regenerate(msg) {
  const conv = current();
  if (!conv || state.streaming) return;
  const at = conv.messages.indexOf(msg);
  const question = conv.messages.slice(0, at).reverse().find((m) => m.role === "user");
  if (!question) return;
  conv.messages = conv.messages.slice(0, conv.messages.indexOf(question));
  send(question.content, { cache: "refresh" });
}

/** Edit a question in place, then resend it: what followed it in the conversation goes. */
function editForm(view) {
  const { msg } = view;
  const area = h("textarea", { class: "edit-text", rows: 3, "aria-label": t("chat.edit_label") });
  area.value = msg.content;
  const cancel = () => { view.editing = false; renderBody(view); renderActions(view); };
  const submit = () => {
    const text = area.value.trim();
    const conv = current();
    if (!text || !conv || state.streaming) return;
    conv.messages = conv.messages.slice(0, conv.messages.indexOf(msg));
    send(text);
  };
  area.addEventListener("keydown", (e) => {
    if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); cancel(); }
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); submit(); }
  });
  queueMicrotask(() => { area.focus(); area.setSelectionRange(area.value.length, area.value.length); });
  return h("form", { class: "edit-form", onSubmit: (e) => { e.preventDefault(); submit(); } },
    area,
    h("div", { class: "edit-actions" },
      h("button", { class: "btn btn-small", type: "button", onClick: cancel }, t("chat.cancel")),
      h("button", { class: "btn btn-primary btn-small", type: "submit" }, t("chat.edit_send"))));
}

const grounded = (msg) => Boolean(msg.collection || msg.routeKnowledge || msg.sources?.length || msg.verification || msg.retrievalMatch !== undefined);

/** What the conversation said up to `msg`, as the review item's excerpt. */
function historyUntil(conv, msg) {
  const out = [];
  for (const m of conv.messages) {
    if (m.content && (m.role === "user" || m.role === "assistant" || m.role === "reviewer")) {
      out.push({ role: m.role === "user" ? "user" : "assistant", content: m.content.slice(0, 8000) });
    }
    if (m === msg) break;
  }
  return out.slice(-50);
}

/** "Ask a human" (or a thumbs-down sent on): a review item tied to this conversation. */
async function askHuman(view, reason) {
  const { msg } = view;
  const conv = state.conversations.find((c) => c.messages.includes(msg));
  if (!conv) return;
  const index = conv.messages.indexOf(msg);
  const question = [...conv.messages.slice(0, index)].reverse().find((m) => m.role === "user")?.content || msg.content;
  const body = {
    question: question.slice(0, 8000),
    messages: historyUntil(conv, msg),
    draft: msg.content.slice(0, 20000),
    reason,
  };
  const cid = conversationId(conv);
  if (cid) body.conversation_id = cid;
  const collection = msg.collection || msg.routeKnowledge; // chosen, or the route's own
  if (collection) body.collection = collection;
  if (msg.requestId) body.request_id = msg.requestId;
  for (const button of view.actions.querySelectorAll("button")) button.disabled = true;
  try {
    const item = await api("/v1/reviews", { method: "POST", body });
    msg.review = { id: item.id, status: item.status, reason: item.reason };
    conv.awaitingReview = true;
    save();
    renderBody(view);
    renderActions(view);
    announce(t("chat.review_passed"));
    startReviewPoll();
  } catch (err) {
    renderActions(view);
    announce(errorMessage(err), "error");
  }
}

// -- reviewers' answers ------------------------------------------------------------------

/** Poll the current conversation's review items while it has open ones (every 5 s). */
function startReviewPoll() {
  const conv = current();
  if (state.poll && state.poll.convId === conv?.id) return;
  stopReviewPoll();
  if (!conv?.awaitingReview || !state.me?.capabilities?.reviews_ask || !conversationId(conv)) return;
  const poll = { timer: null, convId: conv.id, busy: false };
  state.poll = poll;
  const tick = async () => {
    if (state.poll !== poll) return;
    if ($("#view-chat").hidden || document.hidden) { stopReviewPoll(); return; }
    await checkReviews(conv);
    if (state.poll === poll) {
      if (conv.awaitingReview) poll.timer = setTimeout(tick, REVIEW_POLL_MS);
      else state.poll = null;
    }
  };
  tick();
}

function stopReviewPoll() {
  if (state.poll?.timer) clearTimeout(state.poll.timer);
  state.poll = null;
}

async function checkReviews(conv) {
  let items;
  try {
    const data = await api(`/v1/reviews/mine?${new URLSearchParams({ conversation_id: conversationId(conv) })}`);
    items = data.data || [];
  } catch {
    return; // offline or signed out: the next tick (or opening the conversation) tries again
  }
  if (!state.conversations.includes(conv)) { conv.awaitingReview = false; return; }
  let changed = false;
  const added = [];
  const delivered = new Set(conv.messages.filter((m) => m.role === "reviewer").map((m) => m.reviewId));
  // Oldest first, so that answers arrive in the order the questions were asked.
  for (const item of [...items].reverse()) {
    for (const m of conv.messages) {
      if (m.role !== "assistant" || !(m.review?.id === item.id || (!m.review?.id && m.requestId && m.requestId === item.request_id))) continue;
      if (!m.review || m.review.status !== item.status || !m.review.id) {
        m.review = { ...(m.review || {}), id: item.id, status: item.status, reason: item.reason };
        changed = true;
      }
    }
    if ((item.status === "answered" || item.status === "dismissed") && !delivered.has(item.id)) {
      added.push({
        id: uid(), role: "reviewer", status: "done", ts: Date.now(), reviewId: item.id,
        content: item.answer || "", reviewerName: item.reviewer_name || "", answeredAt: item.answered_at,
        question: item.question, dismissed: item.status === "dismissed",
      });
      conv.messages.push(added[added.length - 1]);
      delivered.add(item.id);
      changed = true;
      announce(t("chat.review_arrived"));
    }
  }
  for (const m of conv.messages) {
    // An escalation that no item answers to was not passed on (no review queue there).
    if (m.role === "assistant" && m.review && !m.review.id) { delete m.review; changed = true; }
  }
  const open = items.some((i) => OPEN_REVIEW.has(i.status));
  if (conv.awaitingReview !== open) { conv.awaitingReview = open; changed = true; }
  if (!changed) return;
  conv.updated = Date.now();
  save();
  if (conv.id !== state.currentId) return;
  const box = $("#messages");
  const stick = nearBottom(box);
  // While an answer streams, its view must stay the one being written: only add the new
  // messages (the status lines are redrawn when the conversation is next drawn).
  if (state.streaming) for (const m of added) box.append(messageView(m).root);
  else renderConversation();
  if (stick) box.scrollTop = box.scrollHeight;
}

/** A copy button on each code block of a finished answer (the code alone, not the answer). */
function addCodeCopy(md) {
  for (const pre of md.querySelectorAll("pre")) {
    const text = pre.textContent;
    const wrap = h("div", { class: "code-block" });
    pre.replaceWith(wrap);
    // A text button, no icon: inside the answer nothing but the model's text is markup-free.
    wrap.append(pre, h("button", {
      class: "btn btn-small code-copy", type: "button", "aria-label": t("chat.copy_code"),
      onClick: () => copyText(text, t("chat.code_copied")),
    }, t("chat.copy_short")));
  }
}

async function copyText(text, done = t("chat.copied")) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = h("textarea", { class: "visually-hidden" });
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  announce(done);
}

async function rate(view, rating, comment = null) {
  const { msg } = view;
  const text = comment ?? "";
  try {
    await api("/v1/feedback", { method: "POST", body: { request_id: msg.requestId, rating, comment: text } });
    msg.feedback = { rating, comment: text };
    // A thumbs down invites a comment (optional); sending the comment closes the form.
    view.commenting = rating === "down" && comment === null;
    save();
    renderActions(view);
    if (!view.commenting) view.actions.querySelector(`.feedback-${rating}`)?.focus();
    announce(t(comment ? "chat.feedback_comment_thanks" : "chat.feedback_thanks"));
  } catch (err) {
    announce(errorMessage(err), "error");
  }
}

// -- sending and streaming ---------------------------------------------------------

function setStreaming(on) {
  $("#stop").hidden = !on;
  $("#send").disabled = on;
  $("#messages").setAttribute("aria-busy", on ? "true" : "false");
}

function nearBottom(box) {
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

async function send(text, { cache } = {}) {
  if (state.streaming) return;
  let conv = current();
  if (!conv) {
    conv = newConversation();
    state.currentId = conv.id;
  }
  if (!conv.title) conv.title = text.replace(/\s+/g, " ").slice(0, 60);
  const model = $("#model-select").value;
  const collection = $("#collection-field").hidden ? "" : $("#collection-select").value;
  const history = conv.messages
    .filter((m) => m.content && (m.role === "user" || m.status === "done" || m.status === "stopped"))
    .filter((m) => !m.dismissed)
    .map((m) => ({ role: m.role === "user" ? "user" : "assistant", content: m.content }));
  const user = { id: uid(), role: "user", content: text, ts: Date.now() };
  const routeKnowledge = (state.me.chat_models || []).find((m) => m.id === model)?.knowledge || "";
  const msg = { id: uid(), role: "assistant", content: "", ts: Date.now(), status: "streaming", model, collection, routeKnowledge };
  conv.messages.push(user, msg);
  conv.updated = Date.now();
  save();
  renderList();
  renderConversation();
  const box = $("#messages");
  const view = messageView(msg);
  box.lastElementChild.replaceWith(view.root);
  box.scrollTop = box.scrollHeight;

  const controller = new AbortController();
  state.streaming = { controller, conv, msg, view };
  setStreaming(true);
  const started = performance.now();
  let frame = 0;
  const paint = () => {
    frame = 0;
    const stick = nearBottom(box);
    renderBody(view);
    if (stick) box.scrollTop = box.scrollHeight;
  };
  const body = { model, messages: [...history, { role: "user", content: text }] };
  body.iatros = {};
  if (cache) body.iatros.cache = cache;
  if (collection) body.iatros.knowledge = collection;
  const cid = conversationId(conv);
  if (cid) body.iatros.conversation_id = cid;
  try {
    await streamChat(body, {
      signal: controller.signal,
      on: {
        open: (info) => {
          Object.assign(msg, { requestId: info.requestId, deployment: info.model, route: info.route, cache: info.cache });
          view.root.dataset.requestId = info.requestId || "";
          renderMeta(view);
        },
        iatros: (extra) => {
          if (Array.isArray(extra.sources)) msg.sources = extra.sources;
          if (typeof extra.retrieval_match === "number") msg.retrievalMatch = extra.retrieval_match;
          else if (typeof extra.confidence === "number") msg.retrievalMatch = extra.confidence; // older servers
          if (typeof extra.escalate === "boolean") msg.escalate = extra.escalate;
          if (extra.verification) msg.verification = extra.verification;
          if (extra.reviewed) msg.reviewed = extra.reviewed;
          if (extra.review?.id) {
            msg.review = { id: extra.review.id, status: extra.review.status || "open", reason: extra.review.reason };
            conv.awaitingReview = true;
          }
          renderSources(view);
          renderMeta(view);
          if (!frame) frame = requestAnimationFrame(paint);
        },
        delta: (piece) => {
          if (!msg.ttftMs) msg.ttftMs = Math.round(performance.now() - started);
          msg.content += piece;
          if (!frame) frame = requestAnimationFrame(paint);
        },
        usage: (usage) => { msg.usage = usage; },
      },
    });
    msg.status = "done";
    // An escalation the stream did not name (an older server) is still looked for.
    if (msg.escalate && !msg.review) { msg.review = { status: "open" }; conv.awaitingReview = true; }
  } catch (err) {
    if (err?.name === "AbortError") {
      msg.status = "stopped";
      announce(t("chat.stopped"));
    } else {
      msg.status = "error";
      msg.error = errorMessage(err);
    }
  } finally {
    if (frame) cancelAnimationFrame(frame);
    msg.durationMs = Math.round(performance.now() - started);
    state.streaming = null;
    setStreaming(false);
    conv.updated = Date.now();
    save();
    view.root.dataset.status = msg.status;
    renderBody(view);
    renderMeta(view);
    renderActions(view);
    renderSources(view);
    if (nearBottom(box) || msg.status !== "done") box.scrollTop = box.scrollHeight;
    if (document.activeElement === document.body || document.activeElement === $("#stop")) $("#prompt").focus();
    if (conv.awaitingReview && conv.id === state.currentId) startReviewPoll();
  }
}

function stop() {
  state.streaming?.controller.abort();
}

// -- drawer (narrow screens) ----------------------------------------------------------

function openDrawer() {
  $("#conv-panel").classList.add("open");
  $("#conv-toggle").setAttribute("aria-expanded", "true");
  $("#conv-new").focus();
}

function closeDrawer() {
  if (!$("#conv-panel").classList.contains("open")) return;
  $("#conv-panel").classList.remove("open");
  $("#conv-toggle").setAttribute("aria-expanded", "false");
}

// -- pickers ------------------------------------------------------------------------

function fillModels() {
  const select = $("#model-select");
  clear(select);
  const models = state.me.chat_models || [];
  const saved = localStorage.getItem("iatros.model");
  for (const model of models) {
    select.append(h("option", { value: model.id, title: model.description || null },
      model.logical ? model.id : `${model.id} (${t("chat.deployment")})`));
  }
  const preferred = models.find((m) => m.id === saved) || models.find((m) => m.logical) || models[0];
  if (preferred) select.value = preferred.id;
  describeModel();
}

/** What the chosen model is for, in the admin's words (the route's `description`). */
function describeModel() {
  const chosen = (state.me?.chat_models || []).find((m) => m.id === $("#model-select").value);
  const line = $("#model-description");
  line.textContent = chosen?.description || "";
  line.hidden = !chosen?.description;
}

export async function loadCollections() {
  const field = $("#collection-field");
  if (!state.me?.features?.knowledge || !state.me?.capabilities?.documents) {
    field.hidden = true;
    return;
  }
  try {
    const data = await api("/v1/knowledge/collections");
    const select = $("#collection-select");
    const chosen = select.value;
    while (select.options.length > 1) select.remove(1);
    for (const col of data.data || []) select.append(h("option", { value: col.name }, col.name));
    select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
    field.hidden = false;
  } catch {
    field.hidden = true;
  }
}

// -- lifecycle ------------------------------------------------------------------------

function bind() {
  if (state.bound) return;
  state.bound = true;
  const prompt = $("#prompt");
  $("#composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = prompt.value.trim();
    if (!text || state.streaming) return;
    prompt.value = "";
    send(text);
  });
  prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("#composer").requestSubmit();
    }
  });
  $("#stop").addEventListener("click", stop);
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Escape") return;
    if (state.streaming && !$("#view-chat").hidden) { e.preventDefault(); stop(); return; }
    if ($("#conv-panel").classList.contains("open")) { closeDrawer(); $("#conv-toggle").focus(); }
  });
  $("#conv-new").addEventListener("click", () => {
    const empty = current();
    if (!empty || empty.messages.length) {
      const conv = newConversation();
      state.currentId = conv.id;
      save();
    }
    renderList();
    renderConversation();
    closeDrawer();
    prompt.focus();
    startReviewPoll();
  });
  $("#conv-toggle").addEventListener("click", () => {
    if ($("#conv-panel").classList.contains("open")) closeDrawer();
    else openDrawer();
  });
  $("#conv-close").addEventListener("click", () => { closeDrawer(); $("#conv-toggle").focus(); });
  $("#model-select").addEventListener("change", (e) => {
    localStorage.setItem("iatros.model", e.target.value);
    describeModel();
  });
  window.addEventListener("iatros:collections", () => loadCollections());
  // Back to the tab: look for reviewers' answers again (polling pauses while hidden).
  document.addEventListener("visibilitychange", () => { if (!document.hidden && !$("#view-chat").hidden) startReviewPoll(); });
}

export async function init(me) {
  state.me = me;
  state.storageKey = `${STORAGE_PREFIX}${me.tenant}.${me.key_id}`;
  state.conversations = load();
  // An answer interrupted by a closed tab is kept as stopped.
  for (const conv of state.conversations) {
    for (const msg of conv.messages) if (msg.status === "streaming") msg.status = "stopped";
  }
  state.currentId = state.conversations[0]?.id ?? null;
  bind();
  fillModels();
  await loadCollections();
}

export function show() {
  renderList();
  renderConversation();
  setStreaming(Boolean(state.streaming));
  $("#prompt").focus();
  startReviewPoll();
}

export function relabel() {
  if (!state.me) return;
  fillModels();
  if (!state.streaming) {
    renderList();
    renderConversation();
  }
}

/**
 * Sign-out: forget every conversation this browser holds, the signed-out user's and any
 * left by someone who closed the tab without signing out (a shared workstation must not
 * keep patients' questions for the next user).
 */
function forgetConversations() {
  const keys = [];
  for (let i = 0; i < localStorage.length; i++) {
    const key = localStorage.key(i);
    if (key?.startsWith(STORAGE_PREFIX)) keys.push(key);
  }
  for (const key of keys) localStorage.removeItem(key);
}

export function reset() {
  stop();
  stopReviewPoll();
  state.storageKey = null;
  forgetConversations();
  state.me = null;
  state.conversations = [];
  state.currentId = null;
  clear($("#conv-list"));
  clear($("#messages"));
}
