// Building DOM safely: text always goes in as text nodes, never through innerHTML.

import { t } from "./i18n.js";

/**
 * Create an element. `attrs`: `class`, `text`, `on<Event>` handlers (functions),
 * `dataset` (object), booleans (set when true), anything else via setAttribute.
 * Children: nodes, strings (as text), arrays, null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = tag.startsWith("svg:")
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") el.textContent = String(value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

/**
 * A small status message for screen readers and a visible toast. It can be closed (its ×
 * button, or Escape), pauses while pointed at or focused, and belongs to the view it was
 * shown on: `clearAnnouncements` (called on navigation) removes it, so it never covers
 * another page's controls.
 */
export function announce(message, kind = "info") {
  const region = document.getElementById("toasts");
  if (!region) return;
  const close = h("button", { type: "button", class: "toast-close", "aria-label": t("common.dismiss") }, "×");
  const toast = h("div", { class: `toast toast-${kind}`, role: kind === "error" ? "alert" : "status" },
    h("span", { class: "toast-text" }, message), close);
  const remove = () => toast.remove();
  close.addEventListener("click", remove);
  let timer = setTimeout(remove, kind === "error" ? 6000 : 3000);
  const pause = () => clearTimeout(timer);
  const resume = () => { clearTimeout(timer); timer = setTimeout(remove, 2000); };
  toast.addEventListener("pointerenter", pause);
  toast.addEventListener("pointerleave", resume);
  toast.addEventListener("focusin", pause);
  toast.addEventListener("focusout", resume);
  region.append(toast);
}

/** Remove every toast: a message about one view does not follow the user to the next. */
export function clearAnnouncements() {
  const region = document.getElementById("toasts");
  if (region) clear(region);
}

document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  const last = document.querySelector("#toasts .toast:last-child");
  if (last) last.remove();
});

export function uid() {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

const ICONS = {
  plus: "M12 5v14M5 12h14",
  edit: "M4 20h4L19 9l-4-4L4 16v4zM14 6l4 4",
  refresh: "M20 12a8 8 0 1 1-2.34-5.66M20 4v5h-5",
  trash: "M4 7h16M9 7V4h6v3M6 7l1 13h10l1-13M10 11v6M14 11v6",
  copy: "M9 9h11v11H9zM5 15H4V4h11v1",
  up: "M7 11v9H4v-9h3zm0 0l4-8c1.7 0 2.6 1.2 2.2 3L12 10h6.3c1.2 0 2 1.1 1.7 2.2l-1.8 6.4c-.3.9-1 1.4-1.9 1.4H7",
  down: "M17 13V4h3v9h-3zm0 0l-4 8c-1.7 0-2.6-1.2-2.2-3l1.2-4H5.7c-1.2 0-2-1.1-1.7-2.2l1.8-6.4C6.1 4.5 6.8 4 7.7 4H17",
  stop: "M7 7h10v10H7z",
  send: "M4 12l16-8-6 16-2.5-6.5L4 12z",
  menu: "M4 6h16M4 12h16M4 18h16",
  alert: "M12 3l10 18H2L12 3zM12 10v4M12 17v.5",
  check: "M5 12l5 5 9-10",
  x: "M6 6l12 12M18 6L6 18",
  file: "M6 3h8l4 4v14H6zM14 3v4h4",
  cache: "M4 7c0-2 16-2 16 0v10c0 2-16 2-16 0zM4 7c0 2 16 2 16 0M4 12c0 2 16 2 16 0",
};

/** A decorative SVG icon (hidden from assistive technology; the button carries the label). */
export function icon(name) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "18");
  svg.setAttribute("height", "18");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  svg.classList.add("icon");
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("d", ICONS[name] ?? "");
  svg.append(path);
  return svg;
}
