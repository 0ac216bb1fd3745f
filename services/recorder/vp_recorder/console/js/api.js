// The recorder API as the console uses it: a bearer token the operator typed (kept in
// sessionStorage for this tab), or handed once as ?token= (then removed from the address bar).
const KEY = "vp_console_token";

export class Unauthorized extends Error {}

export function takeTokenFromUrl() {
  const url = new URL(location.href);
  const token = url.searchParams.get("token");
  if (token) {
    sessionStorage.setItem(KEY, token);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
}

export const token = () => sessionStorage.getItem(KEY);
export const setToken = (value) => sessionStorage.setItem(KEY, value);
export const forget = () => sessionStorage.removeItem(KEY);

export async function request(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { ...(options.headers || {}), Authorization: `Bearer ${token() || ""}` },
  });
  if (response.status === 401) {
    throw new Unauthorized((await response.json().catch(() => ({}))).error || "unauthorized");
  }
  return response;
}

// JSON of a GET; {status, error} for an answer that is not 2xx (403 for the read-only role, 404 ...)
export async function getJson(path) {
  const response = await request(path);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) return { status: response.status, error: body.error || response.statusText };
  return body;
}

// server-sent events over fetch (EventSource cannot send a bearer token); calls onEvent(name, data)
export async function followEvents(path, onEvent, signal) {
  const response = await request(path, { signal, headers: { Accept: "text/event-stream" } });
  if (!response.ok) throw new Error(`live events: ${response.status}`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trim());
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}
