// Feedback (admins, auditors, reviewers): every thumbs up or down with its comment, and the
// request it rated (route, cache outcome, the grounded answer's safety outcome), filtered
// by rating, model, deployment and dates; the counts of up and down under the same filters.

import { api } from "./api.js";
import { $, clear, h } from "./dom.js";
import { errorMessage } from "./errors.js";
import { formatDate, formatNumber, t } from "./i18n.js";

const state = { me: null, data: null, bound: false, loading: false };

function dayStart(value, plusDays = 0) {
  if (!value) return null;
  const date = new Date(`${value}T00:00:00`); // the user's local midnight
  if (Number.isNaN(date.getTime())) return null;
  date.setDate(date.getDate() + plusDays);
  return date.toISOString();
}

function query() {
  const params = new URLSearchParams({ limit: "200" });
  const rating = $("#fb-rating").value;
  const model = $("#fb-model").value.trim();
  const deployment = $("#fb-deployment").value.trim();
  const since = dayStart($("#fb-from").value);
  const until = dayStart($("#fb-to").value, 1); // "to" includes that whole day
  if (rating) params.set("rating", rating);
  if (model) params.set("model", model);
  if (deployment) params.set("deployment", deployment);
  if (since) params.set("since", since);
  if (until) params.set("until", until);
  return params;
}

export async function refresh() {
  if (state.loading) return;
  state.loading = true;
  const status = $("#fb-status");
  status.textContent = t("fb.loading");
  $("#fb-table").setAttribute("aria-busy", "true");
  try {
    state.data = await api(`/v1/feedback?${query()}`);
    render();
    status.textContent = state.data.data.length ? t("fb.shown", { n: state.data.data.length }) : t("fb.empty");
  } catch (err) {
    status.textContent = errorMessage(err);
  } finally {
    state.loading = false;
    $("#fb-table").setAttribute("aria-busy", "false");
  }
}

const GROUNDING = ["supported", "no-details", "flagged", "withheld", "escalated", "reviewed"];

function groundingText(value) {
  if (!value) return t("fb.not_grounded");
  return GROUNDING.includes(value) ? t(`fb.grounding_${value.replace("-", "_")}`) : value;
}

function render() {
  const data = state.data;
  if (!data) return;
  const counts = $("#fb-counts");
  clear(counts);
  counts.append(
    h("div", { class: "kpi", dataset: { kpi: "up" } }, h("span", { class: "kpi-label" }, t("fb.up")),
      h("span", { class: "kpi-value" }, formatNumber(data.counts?.up ?? 0))),
    h("div", { class: "kpi", dataset: { kpi: "down" } }, h("span", { class: "kpi-label" }, t("fb.down")),
      h("span", { class: "kpi-value" }, formatNumber(data.counts?.down ?? 0))));
  const body = $("#fb-rows");
  clear(body);
  for (const row of data.data || []) {
    body.append(h("tr", { dataset: { id: String(row.id), rating: row.rating } },
      h("td", {}, formatDate(row.created_at)),
      h("td", {}, h("span", { class: `badge ${row.rating === "down" ? "badge-warn" : "badge-ok"}` },
        t(row.rating === "down" ? "fb.rating_down" : "fb.rating_up"))),
      h("td", { class: "fb-comment" }, row.comment || h("span", { class: "hint" }, t("fb.no_comment"))),
      h("td", {}, row.model || "–"),
      h("td", {}, row.deployment || "–"),
      h("td", { class: "fb-grounding" }, groundingText(row.grounding)),
      h("td", {}, row.cache || "–"),
      h("td", { class: "fb-request" },
        h("code", {}, row.request_id),
        row.route ? h("details", { class: "route" }, h("summary", {}, t("fb.route")), h("code", {}, row.route)) : null,
        typeof row.status === "number" && row.status >= 400 ? h("span", { class: "badge badge-danger" }, String(row.status)) : null),
      h("td", {}, h("code", {}, row.key_id))));
  }
}

function bind() {
  if (state.bound) return;
  state.bound = true;
  $("#fb-filters").addEventListener("submit", (e) => { e.preventDefault(); refresh(); });
  $("#fb-rating").addEventListener("change", () => refresh());
}

export async function init(me) {
  state.me = me;
  bind();
}

export async function show() {
  await refresh();
}

export function relabel() {
  if (state.me && state.data) render();
}

export function reset() {
  state.me = null;
  state.data = null;
  clear($("#fb-rows"));
  clear($("#fb-counts"));
}
