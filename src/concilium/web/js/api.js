// The public API over fetch: cookie session + CSRF header, silent refresh, problems as
// ApiError, server-sent events read from a POST's body.

const CSRF_COOKIE = "concilium_csrf";
const REFRESHED_AT = "concilium.refreshedAt";
const EXPIRES_IN = "concilium.expiresIn";
const REFRESHING = "concilium.refreshing";
// Credential calls answer 401 for a reason a refresh cannot fix.
const NO_RETRY = /^\/api\/auth\/(login|refresh|setup)\b/;

export class ApiError extends Error {
  constructor(status, problem = {}) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem.code || (status === 0 ? "offline" : `http_${status}`);
    this.problem = problem;
    this.retryAfter = problem.retry_after ?? null;
  }
}

const listeners = new Set();
let session = false;
/** Whether the page holds a session: losing one is news, never having had one is not. */
export function setSession(value) {
  session = value;
  if (!value) scheduleRefresh(null);
}

/** Called with "expired" when the session cannot be renewed. */
export function onSession(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function csrfToken() {
  const prefix = `${CSRF_COOKIE}=`;
  const found = document.cookie.split("; ").find((c) => c.startsWith(prefix));
  return found ? decodeURIComponent(found.slice(prefix.length)) : "";
}

async function problemOf(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    body = {};
  }
  if (body && body.error && typeof body.error === "object") {
    body = { detail: body.error.message, code: body.error.code };
  }
  const retry = response.headers.get("retry-after");
  if (retry) body.retry_after = Number(retry);
  return new ApiError(response.status, body);
}

function send(path, { method = "GET", json, form, signal, accept } = {}) {
  const headers = { Accept: accept || "application/json" };
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrfToken();
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  return fetch(path, { method, headers, body, signal, credentials: "same-origin" });
}

let refreshing = null;

/** Run ``work`` in one tab at a time: the Web Locks API where the origin is secure, else a
 * lease in localStorage (plain-HTTP addresses on a LAN have no locks). */
async function oneTabAtATime(work) {
  if (navigator.locks) return navigator.locks.request("concilium-refresh", work);
  const me = `${Date.now()}-${Math.random()}`;
  for (let tries = 0; tries < 50; tries++) {
    const [owner, until] = (localStorage.getItem(REFRESHING) || "").split("|");
    if (!owner || Number(until) < Date.now()) {
      localStorage.setItem(REFRESHING, `${me}|${Date.now() + 10000}`);
      await new Promise((r) => setTimeout(r, 30));
      if (localStorage.getItem(REFRESHING)?.startsWith(me)) {
        try {
          return await work();
        } finally {
          localStorage.removeItem(REFRESHING);
        }
      }
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return work();
}

/** New tokens from the refresh cookie; one tab at a time (each refresh token works once). */
export function refresh() {
  if (!refreshing) {
    const run = async () => {
      const last = Number(localStorage.getItem(REFRESHED_AT) || 0);
      if (Date.now() - last < 5000) {
        // Another tab just did it: its cookies are ours; renew when they near their end.
        scheduleRefresh(Number(localStorage.getItem(EXPIRES_IN) || 0) - 5);
        return true;
      }
      const response = await fetch("/api/auth/refresh", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
        body: "{}",
        credentials: "same-origin",
        signal: AbortSignal.timeout(10000),
      });
      if (!response.ok) return false;
      noteTokens((await response.json()).expires_in);
      return true;
    };
    refreshing = oneTabAtATime(run)
      .catch(() => false)
      .finally(() => {
        refreshing = null;
      });
  }
  return refreshing;
}

/** A page opened on an existing session: renew before the token's end, known from the
 * last renewal any tab of this browser made (else the first 401 renews). */
export function resumeSchedule() {
  const at = Number(localStorage.getItem(REFRESHED_AT) || 0);
  const lasts = Number(localStorage.getItem(EXPIRES_IN) || 0);
  const left = (at + lasts * 1000 - Date.now()) / 1000;
  if (at && lasts && left > 0) scheduleRefresh(left);
}

/** Remember a renewal (sign-in included) for the other tabs and later pages. */
export function noteTokens(expiresIn) {
  localStorage.setItem(REFRESHED_AT, String(Date.now()));
  localStorage.setItem(EXPIRES_IN, String(expiresIn));
  scheduleRefresh(expiresIn);
}

let timer = null;
/** Renew before the access token expires, so no request meets a 401. */
export function scheduleRefresh(expiresIn) {
  clearTimeout(timer);
  if (!expiresIn) return;
  timer = setTimeout(refresh, Math.max(10, expiresIn * 0.8) * 1000);
}

/** A request; JSON in and out. Throws ApiError (status 0 when the server is unreachable). */
export async function request(path, options = {}) {
  let response;
  try {
    response = await send(path, options);
    if (response.status === 401 && !NO_RETRY.test(path)) {
      if (await refresh()) response = await send(path, options);
      if (response.status === 401 && session) {
        session = false;
        listeners.forEach((l) => l("expired"));
      }
    }
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, { detail: String(error.message || error) });
  }
  if (!response.ok) throw await problemOf(response);
  if (options.raw) return response;
  const type = response.headers.get("content-type") || "";
  if (response.status === 204 || !type) return null;
  return type.includes("json") ? response.json() : response.text();
}

export const get = (path, options) => request(path, options);
export const post = (path, json, options = {}) => request(path, { ...options, method: "POST", json });
export const patch = (path, json) => request(path, { method: "PATCH", json });
export const put = (path, json) => request(path, { method: "PUT", json });
export const del = (path) => request(path, { method: "DELETE" });

/** POST and read the answer's server-sent events: onEvent(event) for each. Resolves with
 * {ended} (a done or error event came) or {aborted}. */
export async function stream(path, json, onEvent, signal) {
  const response = await request(path, {
    method: "POST",
    json: { ...json, stream: true },
    signal,
    raw: true,
    accept: "text/event-stream",
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let ended = false;
  try {
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (error) {
        if (error.name === "AbortError") return { aborted: true };
        throw new ApiError(0, { detail: String(error.message || error) });
      }
      if (chunk.done) break;
      // Line ends may be CRLF or CR (a CR at a chunk's end waits for what follows).
      buffer = (buffer + chunk.value).replace(/\r\n|\r(?=.)/gs, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;
        const event = JSON.parse(data);
        if (event.type === "done" || event.type === "error") ended = true;
        onEvent(event);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  return { ended };
}

/** Upload with progress (fetch cannot report it): resolves with the JSON answer. An
 * expired session is renewed once. */
export async function upload(path, form, onProgress) {
  try {
    return await uploadOnce(path, form, onProgress);
  } catch (error) {
    if (error.status !== 401 || !(await refresh())) throw error;
    return uploadOnce(path, form, onProgress);
  }
}

function uploadOnce(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("X-CSRF-Token", csrfToken());
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onerror = () => reject(new ApiError(0, {}));
    xhr.onabort = () => reject(new ApiError(0, {}));
    xhr.onload = () => {
      let body = {};
      try {
        body = JSON.parse(xhr.responseText || "{}");
      } catch {
        body = {};
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body));
    };
    xhr.send(form);
  });
}
