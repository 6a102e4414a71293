// Interface text in English and French. Every string shown by the app comes from here.

const LANGS = ["en", "fr"];
const dictionaries = {};
let current = "en";
const listeners = new Set();

export async function loadLanguages() {
  await Promise.all(
    LANGS.map(async (lang) => {
      const resp = await fetch(`/static/i18n/${lang}.json`, { cache: "no-cache" });
      dictionaries[lang] = await resp.json();
    }),
  );
  const saved = localStorage.getItem("iatros.lang");
  const browser = (navigator.language || "en").slice(0, 2).toLowerCase();
  setLanguage(LANGS.includes(saved) ? saved : LANGS.includes(browser) ? browser : "en", false);
}

export const languages = () => LANGS;
export const language = () => current;
export const locale = () => (current === "fr" ? "fr-FR" : "en-GB");

export function setLanguage(lang, notify = true) {
  if (!LANGS.includes(lang)) return;
  current = lang;
  localStorage.setItem("iatros.lang", lang);
  document.documentElement.lang = lang;
  applyTranslations(document);
  if (notify) for (const fn of listeners) fn(lang);
}

export function onLanguageChange(fn) {
  listeners.add(fn);
}

/** The text for `key`, with `{name}` placeholders filled from `vars`. */
export function t(key, vars = {}) {
  const text = dictionaries[current]?.[key] ?? dictionaries.en?.[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
}

const pluralRules = {};

/**
 * Plural-aware: `key.<category>` for the language's CLDR plural category of `n`
 * (`Intl.PluralRules`: French counts 0 and 1 as "one", English only 1; other languages
 * have "few", "many"…), falling back to `key.other`.
 */
export function tn(key, n, vars = {}) {
  const rules = (pluralRules[current] ??= new Intl.PluralRules(locale()));
  const specific = `${key}.${rules.select(n)}`;
  const known = (dictionaries[current]?.[specific] ?? dictionaries.en?.[specific]) !== undefined;
  const chosen = known ? specific : `${key}.other`;
  return t(chosen, { n: formatNumber(n), ...vars });
}

export function formatNumber(n, options = {}) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return new Intl.NumberFormat(locale(), options).format(n);
}

export function formatMoney(n, currency = "EUR") {
  if (n === null || n === undefined) return "–";
  const digits = Math.abs(n) < 1 && n !== 0 ? 4 : 2;
  return new Intl.NumberFormat(locale(), {
    style: "currency", currency, minimumFractionDigits: digits, maximumFractionDigits: digits,
  }).format(n);
}

export function formatPercent(ratio) {
  if (ratio === null || ratio === undefined) return "–";
  return new Intl.NumberFormat(locale(), { style: "percent", maximumFractionDigits: 1 }).format(ratio);
}

export function formatMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms >= 1000) return `${formatNumber(ms / 1000, { maximumFractionDigits: 2 })} s`;
  return `${formatNumber(ms, { maximumFractionDigits: 0 })} ms`;
}

export function formatDate(value, options = { dateStyle: "short", timeStyle: "short" }) {
  if (value === null || value === undefined || value === "") return "–";
  const date = typeof value === "number" ? new Date(value < 1e12 ? value * 1000 : value) : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return new Intl.DateTimeFormat(locale(), options).format(date);
}

/** Fill `data-i18n` (text) and `data-i18n-attr` ("attr:key;attr:key") under `root`. */
export function applyTranslations(root) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-attr]")) {
    for (const pair of el.dataset.i18nAttr.split(";")) {
      const [attr, key] = pair.split(":").map((s) => s.trim());
      if (attr && key) el.setAttribute(attr, t(key));
    }
  }
}
