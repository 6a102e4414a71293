// Service worker: makes the app installable and lets its shell open offline.
// Only the app's own files are cached (network first, so an upgrade shows at once);
// API calls (/v1, /admin) are never cached: answers may hold patient data.
const CACHE = "iatros-shell-v1";
const SHELL = [
  "/", "/static/css/app.css", "/static/js/app.js", "/static/js/api.js", "/static/js/chat.js",
  "/static/js/charts.js", "/static/js/dashboard.js", "/static/js/documents.js", "/static/js/dom.js",
  "/static/js/errors.js", "/static/js/i18n.js", "/static/js/markdown.js", "/static/i18n/en.json",
  "/static/i18n/fr.json", "/static/icons/icon.svg", "/manifest.webmanifest",
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
