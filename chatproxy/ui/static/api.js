// The page's only way to the proxy: the public /v1 API, with the key the user typed.

const KEY = "chatproxy.key";

/** An API error: the HTTP status and OpenAI's error object ({message, code, ...}). */
export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = error?.code || null;
  }
}

/** The proxy key of this tab (kept in sessionStorage: gone when the tab closes). */
export const session = {
  get key() {
    return sessionStorage.getItem(KEY);
  },
  signIn(key) {
    sessionStorage.setItem(KEY, key);
  },
  signOut() {
    sessionStorage.removeItem(KEY);
  },
};

/** `fetch` of `/v1${path}`; answers the Response, or throws ApiError when it is not ok. */
export async function request(path, { method = "GET", body, signal } = {}) {
  const headers = {};
  if (session.key) headers.Authorization = `Bearer ${session.key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(`/v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
  });
  if (!response.ok) {
    let error = null;
    try {
      error = (await response.json()).error;
    } catch {
      // not OpenAI's error shape: the status says enough
    }
    throw new ApiError(response.status, error);
  }
  return response;
}

/** The JSON answer of a request. */
export async function json(path, options) {
  return (await request(path, options)).json();
}

export const chatPath = (id) => `/conversations/${encodeURIComponent(id)}`;

/** Server-sent events of a response body, as `{id, data}`, in order. */
export async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer = (buffer + value).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { id: null, data: [] };
      for (const line of block.split("\n")) {
        const colon = line.indexOf(":");
        if (colon === 0) continue; // a comment
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") event.data.push(text);
        else if (field === "id") event.id = text;
      }
      if (event.data.length) yield { id: event.id, data: event.data.join("\n") };
    }
  }
}
