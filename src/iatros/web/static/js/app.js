// The app shell: language, sign-in, navigation between chat, documents and dashboard.

import { api, ApiError, session } from "./api.js";
import * as chat from "./chat.js";
import * as dashboard from "./dashboard.js";
import * as documents from "./documents.js";
import * as alerts from "./alerts.js";
import * as explorer from "./explorer.js";
import * as feedback from "./feedback.js";
import * as reviews from "./reviews.js";
import * as scribe from "./scribe.js";
import * as radiographs from "./radiographs.js";
import * as experiments from "./experiments.js";
import * as agents from "./agents.js";
import { $, $$, announce, clearAnnouncements } from "./dom.js";
import { errorMessage } from "./errors.js";
import { applyTranslations, language, loadLanguages, onLanguageChange, setLanguage, t } from "./i18n.js";

const views = { chat, documents, dashboard, requests: explorer, alerts, reviews, feedback, scribe };
views.experiments = experiments; // releases, experiments, rollouts (admins)
views.agents = agents; // templates, gallery, workflow runs
views.radiographs = radiographs; // studies, viewer, annotations, AI findings, report
const state = { me: null, current: null };

/** Which views the caller's role may use (what it may not do is not shown at all). */
function allowedViews(me) {
  const caps = me.capabilities || {};
  const out = [];
  if (caps.chat) out.push("chat");
  if (caps.chat) out.push("scribe"); // the scribe needs the same permission as chat
  if (caps.chat) out.push("radiographs"); // clinical work, like the scribe
  if (caps.documents && me.features?.knowledge) out.push("documents");
  if (caps.dashboard) out.push("dashboard");
  if (caps.dashboard) out.push("requests");
  if (caps.dashboard) out.push("alerts");
  if (caps.reviews) out.push("reviews");
  if (caps.feedback_read) out.push("feedback");
  if (me.platform) out.push("experiments"); // routes serve every tenant
  if (me.permissions?.includes("agents:run")) out.push("agents");
  return out;
}

function showOnly(id) {
  for (const view of $$(".view")) view.hidden = view.id !== id;
  $("#boot").hidden = true;
  document.body.classList.remove("loading");
}

function route() {
  clearAnnouncements();
  if (!state.me) {
    showOnly("view-signin");
    $("#signin-key").focus();
    return;
  }
  const allowed = allowedViews(state.me);
  let name = location.hash.replace(/^#\/?/, "").split("/")[0];
  if (!allowed.includes(name)) name = allowed[0];
  if (!name) {
    showOnly("view-signin");
    const error = $("#signin-error");
    error.textContent = t("signin.nothing_allowed");
    error.hidden = false;
    return;
  }
  for (const link of $$("#nav a")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  showOnly(`view-${name}`);
  if (state.current !== name) {
    state.current = name;
    views[name].show();
  }
}

async function signedIn(me) {
  state.me = me;
  state.current = null;
  $("#who-tenant").textContent = me.tenant;
  $("#who-role").textContent = t(`role.${me.role}`);
  $("#who-role").dataset.role = me.role;
  const allowed = allowedViews(me);
  for (const link of $$("#nav a")) link.hidden = !allowed.includes(link.dataset.view);
  $("#nav").hidden = allowed.length < 2;
  for (const name of allowed) await views[name].init(me);
  route();
  // Shown last: the identity bar means "signed in and the first view is ready" (tests wait on it).
  $("#identity").hidden = false;
}

function signOut() {
  session.key = null;
  state.me = null;
  state.current = null;
  for (const view of Object.values(views)) view.reset?.();
  $("#identity").hidden = true;
  $("#nav").hidden = true;
  $("#signin-key").value = "";
  history.replaceState(null, "", "#/");
  route();
  announce(t("signin.signed_out"));
}

async function trySession() {
  try {
    return await api("/v1/me");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      session.key = null;
      return null;
    }
    throw err;
  }
}

async function boot() {
  await loadLanguages();
  const select = $("#lang-select");
  select.value = language();
  select.addEventListener("change", () => setLanguage(select.value));
  onLanguageChange(() => {
    select.value = language();
    if (state.me) $("#who-role").textContent = t(`role.${state.me.role}`);
    for (const view of Object.values(views)) view.relabel?.();
  });

  $("#signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("#signin-key");
    const error = $("#signin-error");
    const key = input.value.trim();
    error.hidden = true;
    if (!key) {
      error.textContent = t("signin.required");
      error.hidden = false;
      input.setAttribute("aria-invalid", "true");
      input.focus();
      return;
    }
    session.key = key;
    try {
      const me = await trySession();
      if (!me) throw new ApiError(401, { error: { code: "invalid_api_key" } });
      input.value = "";
      input.removeAttribute("aria-invalid");
      await signedIn(me);
    } catch (err) {
      session.key = null;
      error.textContent = errorMessage(err);
      error.hidden = false;
      input.setAttribute("aria-invalid", "true");
      input.focus();
    }
  });
  $("#signout").addEventListener("click", signOut);
  window.addEventListener("hashchange", route);
  window.addEventListener("iatros:unauthorized", () => { if (state.me) signOut(); });

  applyTranslations(document);
  let me = null;
  try {
    me = await trySession();
  } catch (err) {
    announce(errorMessage(err), "error");
  }
  if (me) await signedIn(me);
  else route();

  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("/sw.js").catch(() => {});
  }
}

boot();
