// Agents: the template gallery (GET /v1/agent-gallery: shipped templates, applied with one click by admins), the
// tenant's stored templates, and workflow runs with a step timeline (status, latency,
// tokens, cost and each model call's latency, each step's input and output; the run's
// totals above it). Runs refresh every 5 s while the view is shown.

import { api } from "./api.js";
import { $, append, clear, h } from "./dom.js";
import { errorMessage } from "./errors.js";
import { formatDate, t } from "./i18n.js";

const REFRESH_MS = 5_000;
const state = { me: null, timer: null, gallery: [], templates: [], runs: [], open: null, note: "" };

function when(iso) {
  return iso ? formatDate(new Date(iso), { dateStyle: "short", timeStyle: "medium" }) : "–";
}

function json(value) {
  return h("pre", { class: "code" }, JSON.stringify(value ?? null, null, 2));
}

async function applyTemplate(item) {
  try {
    const out = await api("/v1/agents", { method: "POST", body: { content: item.content, source: item.file } });
    state.note = t(out.created ? "agents.applied" : "agents.unchanged", { name: out.name, version: out.version });
  } catch (err) {
    state.note = errorMessage(err);
  }
  await refresh();
}

function galleryTable() {
  const admin = state.me?.role === "admin";
  return h("table", { class: "table", id: "agents-gallery" },
    h("thead", {}, h("tr", {}, ["agents.name", "agents.kind", "agents.description", ""]
      .map((k) => h("th", { scope: "col" }, k ? t(k) : "")))),
    h("tbody", {}, state.gallery.map((item) => h("tr", { dataset: { template: item.name } },
      h("td", {}, item.name),
      h("td", {}, t(`agents.kind_${item.kind}`)),
      h("td", {}, item.description),
      h("td", {}, admin
        ? h("button", { type: "button", class: "btn", onclick: () => applyTemplate(item) }, t("agents.apply"))
        : "")))));
}

function templatesTable() {
  if (!state.templates.length) return h("p", { class: "muted" }, t("agents.no_templates"));
  return h("table", { class: "table", id: "agents-templates" },
    h("thead", {}, h("tr", {}, ["agents.name", "agents.kind", "agents.version", "agents.applied_at"]
      .map((k) => h("th", { scope: "col" }, t(k))))),
    h("tbody", {}, state.templates.map((tpl) => h("tr", {},
      h("td", {}, tpl.name), h("td", {}, t(`agents.kind_${tpl.kind}`)),
      h("td", {}, `v${tpl.version}`), h("td", {}, when(tpl.created_at))))));
}

// A cost in euros: small agent costs need more than two decimals to be seen at all.
function eur(value) {
  if (!value) return "0 EUR";
  return `${value < 0.01 ? value.toFixed(6) : value.toFixed(4)} EUR`;
}

// The run's totals above its timeline: tokens, cost, model and tool calls, wall time.
function totals(run) {
  const u = run.usage || {};
  return h("p", { class: "muted", id: "agents-run-totals" },
    [t("agents.tokens", { n: u.total_tokens ?? 0 }), eur(u.cost_eur),
      `${u.model_calls ?? 0}x LLM`, `${u.tool_calls ?? 0}x tool`,
      `${u.wall_ms ?? 0} ms`].join(" · "));
}

function timeline(run) {
  const steps = run.steps || [];
  const longest = Math.max(1, ...steps.map((s) => s.latency_ms || 0));
  return h("ol", { class: "timeline", id: "agents-timeline", "aria-label": t("agents.timeline") },
    steps.map((step) => {
      const usage = step.usage ? step.usage.prompt_tokens + step.usage.completion_tokens : null;
      const width = `${Math.round(((step.latency_ms || 0) / longest) * 100)}%`;
      return h("li", { class: `step status-${step.status}`, dataset: { step: step.id } },
        h("div", { class: "step-head" },
          h("strong", {}, step.id), " ",
          h("span", { class: "muted" }, t(`agents.step_${step.kind}`)), " — ",
          h("span", {}, t(`agents.status_${step.status}`)),
          step.latency_ms != null ? h("span", { class: "muted" }, ` · ${step.latency_ms} ms`) : null,
          usage != null ? h("span", { class: "muted" }, ` · ${t("agents.tokens", { n: usage })}`) : null,
          step.cost_eur != null ? h("span", { class: "muted step-cost" }, ` · ${eur(step.cost_eur)}`) : null,
          step.calls?.length ? h("span", { class: "muted" }, ` · ${step.calls.map((c) => `${c.latency_ms} ms`).join(" + ")}`) : null),
        h("div", { class: "bar", role: "presentation", style: `width:${width}` }),
        step.error ? h("p", { class: "error" }, step.error) : null,
        step.review_id ? h("p", {}, h("a", { href: "#/reviews" }, t("agents.review", { id: step.review_id }))) : null,
        h("details", {}, h("summary", {}, t("agents.input_output")),
          h("h4", {}, t("agents.input")), json(step.input),
          h("h4", {}, t("agents.output")), json(step.output),
          step.tool_calls?.length ? [h("h4", {}, t("agents.tool_calls")), json(step.tool_calls)] : null));
    }));
}

function runsTable() {
  if (!state.runs.length) return h("p", { class: "muted" }, t("agents.no_runs"));
  return h("table", { class: "table", id: "agents-runs" },
    h("thead", {}, h("tr", {}, ["agents.run", "agents.workflow", "agents.status", "agents.started", "agents.total_tokens"]
      .map((k) => h("th", { scope: "col" }, t(k))))),
    h("tbody", {}, state.runs.map((run) => h("tr", { dataset: { run: run.id } },
      h("td", {}, h("button", { type: "button", class: "link", "aria-expanded": state.open === run.id ? "true" : "false",
        onclick: () => { state.open = state.open === run.id ? null : run.id; render(); } }, run.id)),
      h("td", {}, `${run.template} v${run.template_version}`),
      h("td", { class: `status-${run.status}` }, t(`agents.status_${run.status}`)),
      h("td", {}, when(run.created_at)),
      h("td", {}, String(run.usage?.total_tokens ?? 0))))));
}

function render() {
  const root = $("#view-agents");
  clear(root);
  root.append(h("h1", { id: "agents-title" }, t("agents.title")));
  append(root, [
    state.note ? h("p", { role: "status", id: "agents-note" }, state.note) : null,
    h("h2", {}, t("agents.gallery")), galleryTable(),
    h("h2", {}, t("agents.templates")), templatesTable(),
    h("h2", {}, t("agents.runs")), runsTable()]);
  const open = state.runs.find((r) => r.id === state.open);
  if (open) {
    append(root, [h("h2", {}, t("agents.run_detail", { id: open.id })),
      open.error ? h("p", { class: "error" }, open.error) : null,
      totals(open), timeline(open),
      open.output != null ? [h("h3", {}, t("agents.output")), json(open.output)] : null]);
  }
}

async function refresh() {
  try {
    const [gallery, templates, runs] = await Promise.all([
      api("/v1/agent-gallery"), api("/v1/agents"), api("/v1/runs?limit=50")]);
    state.gallery = gallery.data;
    state.templates = templates.data;
    state.runs = runs.data;
    render();
  } catch (err) {
    clear($("#view-agents")).append(h("p", { class: "error" }, errorMessage(err)));
  }
}

export async function init(me) {
  state.me = me;
}

export function show() {
  refresh();
  clearInterval(state.timer);
  state.timer = setInterval(() => { if (!$("#view-agents").hidden) refresh(); }, REFRESH_MS);
}

export function reset() {
  clearInterval(state.timer);
  state.timer = null;
  state.open = null;
  state.note = "";
}
