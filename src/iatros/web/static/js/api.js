// Talking to the gateway: the key from the browser session, OpenAI errors, SSE streams.

const KEY = "iatros.key";

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set key(value) {
    if (value) sessionStorage.setItem(KEY, value);
    else sessionStorage.removeItem(KEY);
  },
};

export class ApiError extends Error {
  constructor(status, body) {
    const error = body?.error ?? {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code ?? null;
    this.param = error.param ?? null;
    this.type = error.type ?? null;
  }
}

export function authHeaders(extra = {}) {
  const headers = { ...extra };
  if (session.key) headers.authorization = `Bearer ${session.key}`;
  return headers;
}

async function raise(resp) {
  let body = null;
  try { body = await resp.json(); } catch { /* not JSON */ }
  if (resp.status === 401) window.dispatchEvent(new CustomEvent("iatros:unauthorized"));
  throw new ApiError(resp.status, body);
}

export async function api(path, { method = "GET", body, signal, headers } = {}) {
  const init = { method, signal, headers: authHeaders(headers) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["content-type"] = "application/json";
  }
  const resp = await fetch(path, init);
  if (!resp.ok) await raise(resp);
  if (resp.status === 204) return null;
  const type = resp.headers.get("content-type") || "";
  return type.includes("json") ? resp.json() : resp.text();
}

/**
 * POST a chat completion with stream: true and call `on.*` as events arrive:
 * on.open({headers}), on.iatros(obj), on.delta(text), on.usage(obj), on.error(ApiError).
 * Resolves with {finish} once the stream ends; rejects with AbortError when stopped.
 */
export async function streamChat(body, { signal, on }) {
  const resp = await fetch("/v1/chat/completions", {
    method: "POST",
    signal,
    headers: authHeaders({ "content-type": "application/json", accept: "text/event-stream" }),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
  });
  if (!resp.ok) await raise(resp);
  on.open?.({
    requestId: resp.headers.get("x-iatros-request-id"),
    model: resp.headers.get("x-iatros-model"),
    route: resp.headers.get("x-iatros-route"),
    cache: resp.headers.get("x-iatros-cache"),
  });
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let finish = null;
  let done = false;
  while (!done) {
    const chunk = await reader.read();
    if (chunk.done) break;
    buffer += decoder.decode(chunk.value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const raw = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = raw.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") { done = true; break; }
      let event;
      try { event = JSON.parse(data); } catch { continue; }
      if (event.error) throw new ApiError(500, event);
      if (event.iatros) on.iatros?.(event.iatros);
      if (event.usage) on.usage?.(event.usage);
      const choice = event.choices?.[0];
      if (choice?.delta?.content) on.delta?.(choice.delta.content);
      if (choice?.finish_reason) finish = choice.finish_reason;
    }
  }
  if (!done) throw new ApiError(502, { error: { message: "stream_interrupted", code: "stream_interrupted" } });
  return { finish };
}

/** Upload with progress (fetch cannot report upload progress; XMLHttpRequest can). */
export function upload(path, formData, { onProgress, signal } = {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress?.(e.loaded / e.total); };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve(xhr.response);
      else reject(new ApiError(xhr.status, xhr.response));
    };
    xhr.onerror = () => reject(new ApiError(0, { error: { message: "network_error", code: "network_error" } }));
    xhr.onabort = () => reject(new DOMException("aborted", "AbortError"));
    signal?.addEventListener("abort", () => xhr.abort());
    xhr.send(formData);
  });
}
