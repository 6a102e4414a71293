// Alerts (admins and auditors): what fires now, what resolved, the silences in force
// (GET /admin/alerts, refreshed every 10 s while shown). Silences are set with
// `iatros alerts silence` or POST /admin/alerts/silences (platform administrators).

import { api } from "./api.js";
import { $, clear, h } from "./dom.js";
import { errorMessage } from "./errors.js";
import { formatDate, t } from "./i18n.js";

const REFRESH_MS = 10_000;
const state = { me: null, timer: null, data: null };

function when(ts) {
  return ts ? formatDate(new Date(ts * 1000), { dateStyle: "short", timeStyle: "medium" }) : "–";
}

function row(alert) {
  const flags = [alert.silenced ? t("alerts.silenced") : null, alert.inhibited ? t("alerts.inhibited") : null]
    .filter(Boolean).join(", ");
  return h("tr", { class: `sev-${alert.severity}`, dataset: { alert: alert.name, group: alert.group } },
    h("td", { class: `sev-${alert.severity}` }, t(`alerts.sev_${alert.severity}`)),
    h("td", {}, alert.name),
    h("td", {}, alert.group),
    h("td", {}, alert.summary),
    h("td", {}, when(alert.starts_at)),
    h("td", {}, alert.state === "resolved" ? when(alert.ends_at) : flags || "–"));
}

function table(alerts) {
  return h("table", { class: "table" },
    h("thead", {}, h("tr", {}, ["alerts.severity", "alerts.alert", "alerts.scope", "alerts.summary", "alerts.since", "alerts.state"]
      .map((k) => h("th", { scope: "col" }, t(k))))),
    h("tbody", {}, alerts.map(row)));
}

function render() {
  const root = $("#view-alerts");
  clear(root);
  root.append(h("h1", { id: "alerts-title" }, t("alerts.title")));
  const data = state.data;
  if (!data) return;
  if (!data.enabled) {
    root.append(h("p", { class: "notice" }, t("alerts.disabled")));
    return;
  }
  root.append(
    h("h2", {}, t("alerts.active")),
    data.active.length ? table(data.active) : h("p", { class: "muted", id: "alerts-none" }, t("alerts.none")),
    h("h2", {}, t("alerts.silences")),
    data.silences.length
      ? h("ul", {}, data.silences.map((s) => h("li", {}, `${Object.entries(s.matchers).map(([k, v]) => `${k}=${v}`).join(", ")} — ${t("alerts.until", { time: when(s.ends_at) })}${s.comment ? ` (${s.comment})` : ""}`)))
      : h("p", { class: "muted" }, t("alerts.no_silences")),
    h("h2", {}, t("alerts.resolved")),
    data.resolved.length ? table(data.resolved.slice().reverse()) : h("p", { class: "muted" }, t("alerts.none_resolved")),
    h("p", { class: "muted", id: "alerts-status", role: "status" }, t("alerts.updated", { time: formatDate(new Date(), { timeStyle: "medium" }) })));
}

async function refresh() {
  try {
    state.data = await api("/admin/alerts");
    render();
  } catch (err) {
    clear($("#view-alerts")).append(h("p", { class: "error" }, errorMessage(err)));
  }
}

export async function init(me) {
  state.me = me;
}

export function show() {
  refresh();
  clearInterval(state.timer);
  state.timer = setInterval(() => { if (!$("#view-alerts").hidden) refresh(); }, REFRESH_MS);
}

export function reset() {
  clearInterval(state.timer);
  state.timer = null;
  state.data = null;
  clear($("#view-alerts"));
}

export function relabel() {
  if (state.data) render();
}
