// Experiments (admins): the report of each A/B test — arms, lift, always-valid intervals,
// the sample-ratio check, the decision and why — then the canary rollouts with the check
// of every interval, and the releases of each route. Read-only: changes go through
// `iatros experiments|rollouts|releases` or the /admin API (platform administrators).

import { api } from "./api.js";
import { $, clear, h } from "./dom.js";
import { errorMessage } from "./errors.js";
import { formatDate, t } from "./i18n.js";

const state = { me: null, selected: null };

const pct = (x) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)} %`);
const num = (x) => (x === null || x === undefined ? "–" : Number(x).toPrecision(4));

function table(headKeys, rows, attrs = {}) {
  return h("table", { class: "table", ...attrs },
    h("thead", {}, h("tr", {}, headKeys.map((k) => h("th", { scope: "col" }, t(k))))),
    h("tbody", {}, rows));
}

function analysisView(report) {
  const rows = [];
  for (const arm of report.variants) {
    for (const [metric, m] of Object.entries(arm.metrics)) {
      const seq = m.vs_control && m.vs_control.sequential;
      rows.push(h("tr", { dataset: { variant: arm.name, metric } },
        h("td", {}, arm.name), h("td", {}, String(arm.requests)), h("td", {}, metric),
        h("td", {}, num(m.mean)),
        h("td", {}, seq ? pct(seq.lift) : "–"),
        h("td", {}, seq ? `[${num(seq.ci_low)}, ${num(seq.ci_high)}]` : "–"),
        h("td", {}, seq ? num(seq.p_value) : "–")));
    }
  }
  const history = (report.history || []).flatMap((point) =>
    Object.entries(point.variants).map(([name, v]) => h("tr", {},
      h("td", {}, formatDate(new Date(point.at), { dateStyle: "short", timeStyle: "short" })),
      h("td", {}, name), h("td", {}, String(v.requests)), h("td", {}, pct(v.lift)),
      h("td", {}, `[${num(v.ci_low)}, ${num(v.ci_high)}]`))));
  const d = report.decision;
  return h("div", { id: "exp-analysis" },
    h("h3", {}, t("exp.analysis_of", { id: report.experiment_id })),
    h("p", { id: "exp-decision", class: d.action === "blocked" ? "error" : "notice" },
      `${t(`exp.action_${d.action}`)}${d.winner ? ` (${d.winner})` : ""}: ${d.why}`),
    h("p", { id: "exp-srm", class: report.srm.mismatch ? "error" : "muted" },
      t(report.srm.mismatch ? "exp.srm_bad" : "exp.srm_ok", { p: num(report.srm.p_value) })),
    table(["exp.variant", "exp.requests", "exp.metric", "exp.mean", "exp.lift", "exp.interval",
      "exp.p_value"], rows),
    h("p", { class: "muted" }, t("exp.method")),
    history.length
      ? [h("h4", {}, t("exp.over_time", { metric: report.primary_metric })),
        table(["exp.at", "exp.variant", "exp.requests", "exp.lift", "exp.interval"], history,
          { id: "exp-history" })]
      : null);
}

async function select(id) {
  state.selected = id;
  const slot = $("#exp-report");
  clear(slot).append(h("p", { class: "muted" }, t("exp.loading")));
  try {
    clear(slot).append(analysisView(await api(`/admin/experiments/${encodeURIComponent(id)}/analysis`)));
  } catch (err) {
    clear(slot).append(h("p", { class: "error" }, errorMessage(err)));
  }
}

function experimentRow(e) {
  return h("tr", { dataset: { experiment: e.id } },
    h("td", {}, e.name), h("td", {}, e.route), h("td", {}, t(`exp.status_${e.status}`)),
    h("td", {}, e.variants.map((v) => `${v.name} ${v.share} %`).join(", ")),
    h("td", {}, e.primary_metric),
    h("td", {}, e.started_at
      ? h("button", { type: "button", class: "btn", onclick: () => select(e.id) }, t("exp.show"))
      : "–"));
}

function rolloutRow(r) {
  const last = r.history.length ? r.history[r.history.length - 1] : null;
  return h("tr", { dataset: { rollout: r.id } },
    h("td", {}, r.id), h("td", {}, r.route), h("td", {}, t(`exp.rollout_${r.status}`)),
    h("td", {}, `${r.step} %`), h("td", {}, `${r.failures}/${r.max_failures}`),
    h("td", {}, last ? `${last.verdict}: ${last.reasons.join("; ") || t("exp.all_passed")}` : "–"));
}

function releaseRow(r) {
  return h("tr", { dataset: { release: r.id } },
    h("td", {}, r.id), h("td", {}, r.route), h("td", {}, String(r.version)),
    h("td", {}, t(`exp.state_${r.state.replace("-", "_")}`)), h("td", {}, r.author),
    h("td", {}, r.note));
}

async function render() {
  const root = $("#view-experiments");
  clear(root).append(h("h1", { id: "exp-title" }, t("exp.title")));
  try {
    const [exps, rollouts, releases] = await Promise.all([
      api("/admin/experiments"), api("/admin/rollouts"), api("/admin/releases")]);
    root.append(
      h("h2", {}, t("exp.experiments")),
      exps.data.length
        ? table(["exp.name", "exp.route", "exp.status", "exp.variants", "exp.primary", "exp.report"],
          exps.data.map(experimentRow), { id: "exp-list" })
        : h("p", { class: "muted" }, t("exp.none")),
      h("div", { id: "exp-report", "aria-live": "polite" }),
      h("h2", {}, t("exp.rollouts")),
      rollouts.data.length
        ? table(["exp.id", "exp.route", "exp.status", "exp.step", "exp.failures", "exp.last_check"],
          rollouts.data.map(rolloutRow), { id: "rollout-list" })
        : h("p", { class: "muted" }, t("exp.no_rollouts")),
      h("h2", {}, t("exp.releases")),
      releases.data.length
        ? table(["exp.id", "exp.route", "exp.version", "exp.state", "exp.author", "exp.note"],
          releases.data.map(releaseRow), { id: "release-list" })
        : h("p", { class: "muted" }, t("exp.no_releases")));
    if (state.selected) select(state.selected);
  } catch (err) {
    root.append(h("p", { class: "error" }, errorMessage(err)));
  }
}

export async function init(me) {
  state.me = me;
}

export function show() {
  render();
}

export function reset() {
  state.selected = null;
}
