// Service worker: makes the app installable and lets its shell open offline.
// Only the app's own files are cached (network first, so an upgrade shows at once);
// API calls (/v1, /admin) are never cached: answers may hold patient data.
const CACHE = "iatros-shell-v2";
// Every module app.js imports (directly or not): one missing and the shell cannot open
// offline. tests/web/test_web_api.py checks this list against the static folder.
const SHELL = [
  "/", "/manifest.webmanifest", "/static/css/app.css", "/static/icons/icon.svg",
  "/static/i18n/en.json", "/static/i18n/fr.json",
  "/static/js/agents.js", "/static/js/alerts.js", "/static/js/api.js", "/static/js/app.js",
  "/static/js/charts.js", "/static/js/chat.js", "/static/js/dashboard.js", "/static/js/documents.js",
  "/static/js/dom.js", "/static/js/errors.js", "/static/js/experiments.js", "/static/js/explorer.js",
  "/static/js/feedback.js", "/static/js/i18n.js", "/static/js/markdown.js",
  "/static/js/radiographs-io.js", "/static/js/radiographs.js", "/static/js/reviews.js",
  "/static/js/scribe.js", "/static/js/viewer-layout.js", "/static/js/viewer.js",
];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  const shell = url.origin === self.location.origin && event.request.method === "GET"
    && (url.pathname === "/" || url.pathname.startsWith("/static/") || url.pathname === "/manifest.webmanifest");
  if (!shell) return;
  event.respondWith(
    fetch(event.request)
      .then((response) => {
        if (response.ok) {
          const copy = response.clone();
          caches.open(CACHE).then((cache) => cache.put(event.request, copy));
        }
        return response;
      })
      .catch(() => caches.match(event.request)),
  );
});
