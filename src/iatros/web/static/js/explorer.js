// Request explorer (admins and auditors): search recent requests, open one to see its
// route decision, sources, attempts and the waterfall of its spans (GET /admin/requests).
// Content is shown only when the gateway logged it (log_content); otherwise there is none.

import { api } from "./api.js";
import { $, append, clear, h } from "./dom.js";
import { errorMessage } from "./errors.js";
import { formatDate, formatMoney, formatMs, formatNumber, t } from "./i18n.js";

const PERIODS = { "15m": 900e3, "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3 };
const state = { me: null, built: false, rows: [], next: null, loading: false };

function field(label, control) {
  return h("label", { class: "field" }, h("span", {}, label), control);
}

function select(id, options) {
  return h("select", { id }, options.map(([value, label]) => h("option", { value }, label)));
}

function build() {
  const root = $("#view-requests");
  clear(root);
  root.append(
    h("h1", { id: "req-title" }, t("req.title")),
    h("form", { id: "req-filters", class: "filters card" },
      field(t("req.period"), select("req-period", Object.keys(PERIODS).map((p) => [p, t(`req.period_${p}`)]))),
      field(t("req.model"), h("input", { id: "req-model", type: "text", maxlength: "128" })),
      field(t("req.key"), h("input", { id: "req-key", type: "text", maxlength: "32" })),
      field(t("req.route"), h("input", { id: "req-route", type: "text", maxlength: "200" })),
      field(t("req.status"), select("req-status-filter", [["", t("req.any")], ["2xx", "2xx"], ["4xx", "4xx"], ["5xx", "5xx"]])),
      field(t("req.cache"), select("req-cache", [["", t("req.any")], ["hit", t("req.cache_hit")], ["miss", t("req.cache_miss")], ["bypass", t("req.cache_bypass")]])),
      field(t("req.escalated"), select("req-escalated", [["", t("req.any")], ["true", t("req.yes")], ["false", t("req.no")]])),
      h("button", { type: "submit", class: "primary" }, t("req.search"))),
    h("p", { id: "req-status", class: "muted", role: "status" }),
    h("table", { id: "req-table", class: "table" },
      h("thead", {}, h("tr", {},
        ["req.time", "req.model", "req.deployment", "req.status", "req.cache", "req.grounding", "req.tokens", "req.cost", "req.latency"]
          .map((k) => h("th", { scope: "col" }, t(k))))),
      h("tbody", {})),
    h("button", { id: "req-more", type: "button", hidden: true, onClick: () => load(true) }, t("req.more")),
    h("section", { id: "req-detail", class: "card", hidden: true, "aria-live": "polite" }));
  $("#req-filters").addEventListener("submit", (event) => { event.preventDefault(); load(false); });
  state.built = true;
}

function params(more) {
  const out = new URLSearchParams({ limit: "50" });
  const period = PERIODS[$("#req-period").value] ?? PERIODS["1h"];
  out.set("since", new Date(Date.now() - period).toISOString());
  for (const [id, name] of [["req-model", "model"], ["req-key", "key"], ["req-route", "route"],
    ["req-status-filter", "status"], ["req-cache", "cache"], ["req-escalated", "escalated"]]) {
    const value = $(`#${id}`).value.trim();
    if (value) out.set(name, value);
  }
  if (more && state.next) out.set("before_id", String(state.next));
  return out;
}

async function load(more = false) {
  if (state.loading) return;
  state.loading = true;
  const status = $("#req-status");
  status.textContent = t("req.loading");
  try {
    const page = await api(`/admin/requests?${params(more)}`);
    state.rows = more ? state.rows.concat(page.data) : page.data;
    state.next = page.next_before_id;
    renderRows();
    status.textContent = page.tracing
      ? t("req.count", { n: formatNumber(state.rows.length) })
      : `${t("req.count", { n: formatNumber(state.rows.length) })} ${t("req.tracing_off")}`;
    $("#req-more").hidden = !state.next;
  } catch (err) {
    status.textContent = errorMessage(err);
  } finally {
    state.loading = false;
  }
}

function renderRows() {
  const body = $("#req-table tbody");
  clear(body);
  for (const row of state.rows) {
    const open = () => detail(row.request_id);
    body.append(h("tr", {
      class: row.status >= 400 ? "row-error" : row.escalated ? "row-escalated" : "",
      tabindex: "0", dataset: { requestId: row.request_id }, onClick: open,
      onKeydown: (e) => { if (e.key === "Enter") open(); },
    },
    h("td", {}, formatDate(new Date(row.ts), { dateStyle: "short", timeStyle: "medium" })),
    h("td", {}, row.model),
    h("td", {}, row.deployment || "–"),
    h("td", {}, String(row.status)),
    h("td", {}, row.cache),
    h("td", {}, row.escalated ? t("req.escalated_yes") : (row.grounding || "–")),
    h("td", { class: "num" }, `${formatNumber(row.prompt_tokens)} / ${formatNumber(row.completion_tokens)}`),
    h("td", { class: "num" }, formatMoney(row.cost_eur)),
    h("td", { class: "num" }, formatMs(row.latency_ms))));
  }
}

/** The spans as a waterfall: one row per span, its bar placed on the request's own time line. */
function waterfall(trace) {
  const spans = trace.spans;
  const start = Math.min(...spans.map((s) => s.start_ns));
  const end = Math.max(...spans.map((s) => s.end_ns));
  const total = Math.max(end - start, 1);
  const list = h("ol", { class: "waterfall", "aria-label": t("req.timeline") });
  for (const span of spans) {
    const ms = (span.end_ns - span.start_ns) / 1e6;
    const bar = h("span", { class: `wf-bar wf-${span.kind}${span.error ? " wf-error" : ""}` });
    bar.style.left = `${((span.start_ns - start) / total) * 100}%`;
    bar.style.width = `${Math.max(((span.end_ns - span.start_ns) / total) * 100, 0.5)}%`;
    list.append(h("li", { class: "wf-row", dataset: { span: span.name } },
      h("span", { class: "wf-name", title: span.name }, span.parent_span_id ? `↳ ${span.name}` : span.name),
      h("span", { class: "wf-track" }, bar),
      h("span", { class: "wf-ms" }, `${formatNumber(ms, { maximumFractionDigits: 2 })} ms${span.error ? ` · ${span.error}` : ""}`)));
  }
  return list;
}

function definition(pairs) {
  return h("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

async function detail(requestId) {
  const box = $("#req-detail");
  box.hidden = false;
  clear(box).append(h("p", {}, t("req.loading")));
  try {
    const d = await api(`/admin/requests/${encodeURIComponent(requestId)}`);
    const r = d.record;
    const decision = d.route_decision;
    append(clear(box), [
      h("h2", {}, t("req.detail_title", { id: r.request_id })),
      definition([
        [t("req.time"), formatDate(new Date(r.ts), { dateStyle: "medium", timeStyle: "medium" })],
        [t("req.key"), `${r.key_id} (${r.tenant})`],
        [t("req.model"), `${r.model} → ${r.deployment || "–"}`],
        [t("req.route_decision"), r.route || "–"],
        [t("req.tried"), decision.tried.length ? decision.tried.join(" → ") : "–"],
        [t("req.status"), String(r.status)],
        [t("req.cache"), r.cache],
        [t("req.grounding"), r.escalated ? t("req.escalated_yes") : (r.grounding || "–")],
        [t("req.tokens"), `${formatNumber(r.prompt_tokens)} / ${formatNumber(r.completion_tokens)}`],
        [t("req.cost"), formatMoney(r.cost_eur)],
        [t("req.latency"), formatMs(r.latency_ms)],
      ]),
      h("h3", {}, t("req.timeline")),
      d.trace ? waterfall(d.trace) : h("p", { class: "muted" }, d.tracing ? t("req.no_trace") : t("req.tracing_off")),
      d.sources.length ? h("h3", {}, t("req.sources")) : null,
      d.sources.length ? h("ol", { class: "sources" }, d.sources.map((s) =>
        h("li", {}, `${s.document_id ?? "?"} · ${s.chunk_id} · ${formatNumber(s.score, { maximumFractionDigits: 3 })}`))) : null,
      h("h3", {}, t("req.content")),
      d.content
        ? h("pre", { class: "content" }, JSON.stringify(d.content, null, 2))
        : h("p", { class: "muted" }, t("req.no_content"))]);
    box.focus?.();
  } catch (err) {
    clear(box).append(h("p", { class: "error" }, errorMessage(err)));
  }
}

export async function init(me) {
  state.me = me;
  if (!state.built) build();
}

export function show() {
  if (!state.built) build();
  load(false);
}

export function reset() {
  state.rows = [];
  state.next = null;
  state.built = false;
  clear($("#view-requests"));
}

export function relabel() {
  if (!state.me) return;
  build();
  renderRows();
}
