// Operations dashboard (admins and auditors): usage over a period, per tenant and key,
// and deployment health (admins).

import { api } from "./api.js";
import { barChart, hbarChart, legend, lineChart } from "./charts.js";
import { $, clear, h } from "./dom.js";
import { errorMessage } from "./errors.js";
import { formatDate, formatMoney, formatMs, formatNumber, formatPercent, language, t, tn } from "./i18n.js";

const PERIODS = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
const REFRESH_MS = 30_000;
const state = { me: null, data: null, health: null, timer: null, bound: false, loading: false, resize: null };

function localInput(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function query() {
  const period = $("#dash-period").value;
  let until = new Date();
  let since = new Date(until.getTime() - (PERIODS[period] ?? PERIODS["24h"]));
  if (period === "custom") {
    const from = new Date($("#dash-from").value);
    const to = new Date($("#dash-to").value);
    if (!Number.isNaN(from.getTime())) since = from;
    if (!Number.isNaN(to.getTime())) until = to;
  }
  let bucket = $("#dash-bucket").value;
  if (bucket === "auto") bucket = until - since <= 2 * 86400e3 ? "hour" : "day";
  const params = new URLSearchParams({
    since: since.toISOString(), until: until.toISOString(), bucket,
    utc_offset: String(-new Date().getTimezoneOffset()),
  });
  const tenant = $("#dash-tenant").value;
  const key = $("#dash-key").value;
  if (tenant && state.me.platform) params.set("tenant", tenant);
  if (key) params.set("key", key);
  return params;
}

export async function refresh() {
  if (state.loading) return;
  state.loading = true;
  const status = $("#dash-status");
  status.textContent = t("dash.loading");
  $("#view-dashboard").setAttribute("aria-busy", "true");
  try {
    const [data, health] = await Promise.all([
      api(`/admin/stats?${query()}`),
      state.me.capabilities?.deployments ? api("/admin/deployments") : Promise.resolve(null),
    ]);
    state.data = data;
    state.health = health;
    render();
    status.textContent = t("dash.updated", { time: formatDate(new Date(), { timeStyle: "medium" }) });
  } catch (err) {
    status.textContent = errorMessage(err);
  } finally {
    state.loading = false;
    $("#view-dashboard").setAttribute("aria-busy", "false");
  }
}

function kpi(id, label, value, sub = "") {
  return h("div", { class: "kpi", dataset: { kpi: id } },
    h("span", { class: "kpi-label" }, label),
    h("span", { class: "kpi-value" }, value),
    h("span", { class: "kpi-sub" }, sub));
}

function renderKpis(data) {
  const totals = data.totals;
  const ttft = data.ttft || {};
  const box = $("#kpis");
  clear(box);
  box.append(
    kpi("requests", t("dash.requests"), formatNumber(totals.requests),
      totals.cancelled ? tn("dash.cancelled", totals.cancelled) : ""),
    kpi("errors", t("dash.errors"), formatNumber(totals.errors), t("dash.rate", { value: formatPercent(totals.error_rate) })),
    kpi("latency", t("dash.latency"), formatMs(totals.latency_p50_ms), t("dash.p95", { value: formatMs(totals.latency_p95_ms) })),
    kpi("ttft", t("dash.ttft"), formatMs(ttft.p50_ms), `${t("dash.p95", { value: formatMs(ttft.p95_ms) })} *`),
    kpi("tokens", t("dash.tokens"), formatNumber(totals.prompt_tokens + totals.completion_tokens),
      t("dash.tokens_split", { input: formatNumber(totals.prompt_tokens), output: formatNumber(totals.completion_tokens) })),
    kpi("cost", t("dash.cost"), formatMoney(totals.cost_eur, data.currency)),
    kpi("saved", t("dash.saved"), formatMoney(totals.saved_eur, data.currency)),
    kpi("hit_ratio", t("dash.hit_ratio"), formatPercent(totals.cache_hit_ratio),
      t("dash.hits_of", { hits: formatNumber(totals.cache_hits), lookups: formatNumber(totals.cache_lookups) })),
  );
  // The clinical safety loop: grounded answers passed to reviewers, and the ratings.
  const safety = data.safety;
  if (safety) {
    box.append(kpi("escalated", t("dash.escalated"), formatNumber((safety.withheld || 0) + (safety.escalated || 0)),
      t("dash.escalated_sub", { withheld: formatNumber(safety.withheld || 0), escalated: formatNumber(safety.escalated || 0) })));
    box.append(kpi("verified", t("dash.verified"), formatNumber(safety.supported || 0),
      t("dash.verified_sub", { flagged: formatNumber(safety.flagged || 0), reviewed: formatNumber(safety.reviewed || 0) })));
  }
  if (data.feedback) {
    box.append(kpi("feedback", t("dash.feedback"), formatNumber(data.feedback.down || 0),
      t("dash.feedback_sub", { up: formatNumber(data.feedback.up || 0) })));
  }
}

function chartCard(id, title, build, series) {
  const body = h("div", { class: "chart-body" });
  const card = h("figure", { class: "card chart", dataset: { chart: id } },
    h("figcaption", {}, h("h2", {}, title)), body, series ? legend(series) : null);
  return { card, body, build };
}

function renderCharts(data) {
  const box = $("#charts");
  clear(box);
  const labels = data.series.map((b) => b.start);
  const hourly = data.bucket === "hour";
  const xFormat = (iso) => formatDate(iso, hourly ? { hour: "2-digit", minute: "2-digit", day: "numeric", month: "short" } : { day: "numeric", month: "short" });
  const col = (name) => data.series.map((b) => b[name]);
  const sum = (values) => values.reduce((a, b) => a + (b || 0), 0);
  const int = (v) => formatNumber(Math.round(v));
  const money = (v) => formatMoney(v, data.currency);

  const requests = [
    { name: t("dash.ok_requests"), color: "c1", values: data.series.map((b) => b.requests - b.errors - b.cancelled) },
    { name: t("dash.errors"), color: "c2", values: col("errors") },
    { name: t("dash.cancelled"), color: "c4", values: col("cancelled") },
  ];
  const latency = [
    { name: "p50", color: "c1", values: col("latency_p50_ms") },
    { name: "p95", color: "c3", values: col("latency_p95_ms"), dashed: true },
  ];
  const tokens = [
    { name: t("dash.tokens_in"), color: "c1", values: col("prompt_tokens") },
    { name: t("dash.tokens_out"), color: "c3", values: col("completion_tokens") },
  ];
  const cost = [
    { name: t("dash.cost"), color: "c2", values: col("cost_eur") },
    { name: t("dash.saved"), color: "c1", values: col("saved_eur"), dashed: true },
  ];
  const hits = [{ name: t("dash.hit_ratio"), color: "c1", values: col("cache_hit_ratio") }];
  const cards = [
    chartCard("requests", t("dash.c_requests"), (w) => barChart({
      width: w, labels, series: requests, yFormat: int, xFormat,
      summary: t("dash.s_requests", { requests: tn("dash.requests_n", data.totals.requests), errors: tn("dash.errors_n", data.totals.errors) }),
    }), requests),
    chartCard("latency", t("dash.c_latency"), (w) => lineChart({
      width: w, labels, series: latency, yFormat: formatMs, xFormat,
      summary: t("dash.s_latency", { p50: formatMs(data.totals.latency_p50_ms), p95: formatMs(data.totals.latency_p95_ms) }),
    }), latency),
    chartCard("tokens", t("dash.c_tokens"), (w) => barChart({
      width: w, labels, series: tokens, yFormat: int, xFormat,
      summary: t("dash.s_tokens", { input: formatNumber(sum(tokens[0].values)), output: formatNumber(sum(tokens[1].values)) }),
    }), tokens),
    chartCard("cost", t("dash.c_cost"), (w) => lineChart({
      width: w, labels, series: cost, yFormat: money, xFormat,
      summary: t("dash.s_cost", { cost: money(data.totals.cost_eur), saved: money(data.totals.saved_eur) }),
    }), cost),
    chartCard("cache", t("dash.c_cache"), (w) => lineChart({
      width: w, labels, series: hits, yFormat: formatPercent, xFormat, max: 1,
      summary: t("dash.s_cache", { ratio: formatPercent(data.totals.cache_hit_ratio) }),
    }), null),
    chartCard("models", t("dash.c_models"), (w) => hbarChart({
      width: w, format: int,
      items: data.models.map((m, i) => ({ label: m.deployment, value: m.requests, color: `c${(i % 4) + 1}` })),
      summary: data.models.map((m) => `${m.deployment}: ${m.requests}`).join(", ") || t("dash.no_data"),
    }), null),
    chartCard("routes", t("dash.c_routes"), (w) => hbarChart({
      width: w, format: int,
      items: data.routes.map((r) => ({ label: r.decision, value: r.requests, color: "c3" })),
      summary: data.routes.map((r) => `${r.decision}: ${r.requests}`).join(", ") || t("dash.no_data"),
    }), null),
  ];
  for (const c of cards) box.append(c.card);
  const draw = () => {
    for (const c of cards) {
      clear(c.body);
      const width = Math.max(260, Math.floor(c.body.clientWidth || 300));
      const empty = (c.card.dataset.chart === "models" && !data.models.length) || (c.card.dataset.chart === "routes" && !data.routes.length);
      c.body.append(empty ? h("p", { class: "hint" }, t("dash.no_data")) : c.build(width));
    }
  };
  draw();
  state.resize?.disconnect();
  let last = box.clientWidth;
  state.resize = new ResizeObserver(() => {
    if (Math.abs(box.clientWidth - last) > 8) { last = box.clientWidth; draw(); }
  });
  state.resize.observe(box);
}

function table(el, columns, rows) {
  clear(el);
  el.append(
    h("thead", {}, h("tr", {}, columns.map((c, i) => h("th", { scope: "col", class: i ? "num" : null }, c.label)))),
    h("tbody", {}, rows.length
      ? rows.map((row) => h("tr", {}, columns.map((c, i) => (i
        ? h("td", { class: c.className || "num" }, c.value(row))
        : h("th", { scope: "row" }, c.value(row))))))
      : h("tr", {}, h("td", { colspan: columns.length, class: "hint" }, t("dash.no_data")))),
  );
}

function groupColumns(first, currency) {
  return [
    first,
    { label: t("dash.requests"), value: (r) => formatNumber(r.requests) },
    { label: t("dash.errors"), value: (r) => formatNumber(r.errors) },
    { label: t("dash.latency_p95"), value: (r) => formatMs(r.latency_p95_ms) },
    { label: t("dash.tokens"), value: (r) => formatNumber(r.prompt_tokens + r.completion_tokens) },
    { label: t("dash.cost"), value: (r) => formatMoney(r.cost_eur, currency) },
    { label: t("dash.saved"), value: (r) => formatMoney(r.saved_eur, currency) },
    { label: t("dash.hit_ratio"), value: (r) => formatPercent(r.cache_hit_ratio) },
  ];
}

function renderHealth(health) {
  const section = $("#health");
  section.hidden = !health;
  if (!health) return;
  const badge = (s) => h("span", { class: `badge state-${s}` }, t(`dash.state_${s.replace("-", "_")}`));
  table($("#health-table"), [
    { label: t("dash.deployment"), value: (d) => d.deployment },
    { label: t("dash.provider"), value: (d) => `${d.provider} · ${d.model}`, className: "text" },
    { label: t("dash.breaker"), value: (d) => badge(d.state), className: "text" },
    { label: t("dash.failures"), value: (d) => formatNumber(d.failures) },
    { label: t("dash.successes"), value: (d) => formatNumber(d.successes) },
    { label: t("dash.ewma_ttft"), value: (d) => formatMs(d.ewma_ttft_ms) },
    { label: t("dash.panic_tries"), value: (d) => formatNumber(d.panic_tries ?? 0) },
    {
      label: t("dash.probes"),
      value: (d) => (d.probes_ok || d.probes_failed ? `✓ ${formatNumber(d.probes_ok)} · ✗ ${formatNumber(d.probes_failed)}` : "–"),
      className: "text",
    },
    { label: t("dash.last_error"), value: (d) => d.last_error || "–", className: "text" },
  ], health.data || []);
}

function fillFilter(select, values, label) {
  const chosen = select.value;
  while (select.options.length > 1) select.remove(1);
  for (const value of values) select.append(h("option", { value }, label ? label(value) : value));
  if ([...select.options].some((o) => o.value === chosen)) select.value = chosen;
}

function render() {
  const data = state.data;
  if (!data) return;
  renderKpis(data);
  renderCharts(data);
  renderHealth(state.health);
  const scopeCol = (key, label) => ({ label, value: (r) => r[key] });
  table($("#tenant-table"), groupColumns(scopeCol("tenant", t("dash.tenant")), data.currency), data.tenants);
  const keyName = (r) => (r.name ? h("span", { title: r.key_id }, r.name) : r.key_id);
  table($("#key-table"), groupColumns({ label: t("dash.key"), value: keyName }, data.currency), data.keys);
  const names = new Map(data.keys.map((k) => [k.key_id, k.name]));
  if (!$("#dash-key").value) {
    fillFilter($("#dash-key"), data.keys.map((k) => k.key_id), (id) => (names.get(id) ? `${names.get(id)} (${id.slice(0, 8)}…)` : id));
  }
  if (state.me.platform && !$("#dash-tenant").value) fillFilter($("#dash-tenant"), data.tenants.map((r) => r.tenant));
  const notes = [t("dash.note_ttft"), t("dash.note_percentiles", { limit: formatNumber(data.row_limit) })];
  if (data.truncated) notes.push(t("dash.note_truncated", { limit: formatNumber(data.row_limit) }));
  notes.push(t("dash.note_saved"));
  const box = $("#dash-notes");
  clear(box);
  box.append(...notes.map((n) => h("span", { class: "note" }, n)));
}

function bind() {
  if (state.bound) return;
  state.bound = true;
  $("#dash-filters").addEventListener("submit", (e) => {
    e.preventDefault();
    refresh();
  });
  $("#dash-period").addEventListener("change", () => {
    const custom = $("#dash-period").value === "custom";
    $("#dash-from-field").hidden = !custom;
    $("#dash-to-field").hidden = !custom;
    if (custom && !$("#dash-from").value) {
      $("#dash-from").value = localInput(new Date(Date.now() - PERIODS["24h"]));
      $("#dash-to").value = localInput(new Date());
    }
    if (!custom) refresh();
  });
  for (const id of ["#dash-bucket", "#dash-tenant", "#dash-key"]) {
    $(id).addEventListener("change", () => refresh());
  }
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) stopTimer();
    else if (!$("#view-dashboard").hidden) startTimer();
  });
  window.addEventListener("hashchange", () => {
    if (!location.hash.startsWith("#/dashboard")) stopTimer();
  });
}

function startTimer() {
  stopTimer();
  state.timer = setInterval(() => { if (!$("#view-dashboard").hidden) refresh(); else stopTimer(); }, REFRESH_MS);
}

function stopTimer() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

export async function init(me) {
  state.me = me;
  $("#dash-tenant-field").hidden = !me.platform;
  bind();
}

export async function show() {
  startTimer();
  await refresh();
}

export function relabel() {
  if (state.me && state.data && language()) render();
}

export function reset() {
  stopTimer();
  state.me = null;
  state.data = null;
  state.health = null;
  clear($("#kpis"));
  clear($("#charts"));
}
