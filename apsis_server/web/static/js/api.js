// The REST API (docs/api.md) and websocket URLs.

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

// API tokens (when the server is configured with them): asked for once, kept in
// this browser, sent as a bearer token and, for websockets (which cannot carry
// headers), in a subprotocol: never in a URL, which logs keep.
const TOKEN_KEY = "apsis-token";

function token() {
  return localStorage.getItem(TOKEN_KEY);
}

async function send(path, init) {
  const attempt = () => {
    const headers = { ...init.headers };
    if (token()) headers.authorization = `Bearer ${token()}`;
    return fetch("/api/v1" + path, { ...init, headers });
  };
  let response = await attempt();
  if (response.status === 401) {
    const given = window.prompt("This Apsis server needs an API token:");
    if (given && given.trim()) {
      localStorage.setItem(TOKEN_KEY, given.trim());
      response = await attempt();
    }
  }
  return response;
}

export async function api(method, path, body) {
  const init = { method, headers: { accept: "application/json" } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await send(path, init);
  } catch (exc) {
    throw new ApiError("cannot reach the server", 0);
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(data.error || `HTTP ${response.status}`, response.status);
  return data;
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body);

export async function getBytes(path) {
  const response = await send(path, {});
  if (!response.ok) throw new ApiError(`HTTP ${response.status}`, response.status);
  return new Uint8Array(await response.arrayBuffer());
}

export function wsUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/api/v1${path}`;
}

// The subprotocols a feed offers: "apsis", which the server picks, and the token.
export function wsProtocols() {
  const given = token();
  if (!given) return ["apsis"];
  const bytes = new TextEncoder().encode(given);
  const base64url = btoa(String.fromCharCode(...bytes))
    .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  return ["apsis", `apsis.token.${base64url}`];
}

// A job id in a URL path: each segment encoded, the slashes kept.
export function jobPath(jobId) {
  return jobId.split("/").map(encodeURIComponent).join("/");
}
