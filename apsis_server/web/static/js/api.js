// The REST API (docs/api.md) and websocket URLs.

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

export async function api(method, path, body) {
  const init = { method, headers: { accept: "application/json" } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch("/api/v1" + path, init);
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
  const response = await fetch("/api/v1" + path);
  if (!response.ok) throw new ApiError(`HTTP ${response.status}`, response.status);
  return new Uint8Array(await response.arrayBuffer());
}

export function wsUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/api/v1${path}`;
}

// A job id in a URL path: each segment encoded, the slashes kept.
export function jobPath(jobId) {
  return jobId.split("/").map(encodeURIComponent).join("/");
}
