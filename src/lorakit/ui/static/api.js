// Requests to the dashboard API (/ui/api) and the OpenAI-compatible routes (/v1) of the same server.
// An API key, when the server needs one, comes from the URL (#token=...) or the key dialog and is kept
// for this tab only (sessionStorage).

const KEY = "lorakit-key";

export function takeTokenFromUrl() {
  const m = location.hash.match(/[#&?]token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + "#/runs");
  }
}

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

function headers(json) {
  const h = {};
  const key = sessionStorage.getItem(KEY);
  if (key) h["Authorization"] = "Bearer " + key;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

let asking = null;
function askKey() {
  if (!asking) {
    asking = new Promise((resolve) => {
      const dialog = document.getElementById("key-dialog");
      const input = document.getElementById("key-input");
      dialog.addEventListener("close", () => {
        if (input.value) sessionStorage.setItem(KEY, input.value);
        input.value = "";
        asking = null;
        resolve();
      }, { once: true });
      dialog.showModal();
    });
  }
  return asking;
}

// fetch(path) with the key; JSON in and out; errors become ApiError with the server's message.
export async function call(path, { method = "GET", body, signal, raw = false } = {}) {
  for (let attempt = 0; ; attempt++) {
    const response = await fetch(path, {
      method, signal, headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401 && attempt < 3) {
      await askKey();
      continue;
    }
    if (raw && response.ok) return response;
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      const message = (data && data.error && data.error.message) || `${response.status} ${response.statusText}`;
      throw new ApiError(response.status, message, data);
    }
    return data;
  }
}

export const get = (path, options) => call(path, options);
export const post = (path, body, options = {}) => call(path, { ...options, method: "POST", body });

// Stream a chat completion: onText(piece) for each delta; resolves with {finish, usage} at [DONE].
export async function streamChat(request, onText, signal) {
  const response = await call("/v1/chat/completions", {
    method: "POST", raw: true, signal,
    body: { ...request, stream: true, stream_options: { include_usage: true } },
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", finish = null, usage = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return { finish, usage };
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(chunk.error.code || 500, chunk.error.message, chunk);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) onText(choice.delta.content);
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
  }
  return { finish, usage };
}

// Small DOM helper: el("div", {class: "x", onclick: f}, child, "text", ...). Text is never parsed as HTML.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;  // CSSOM, allowed by the page's CSP (attributes are not)
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function fmt(value, digits = 4) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") {
    if (Number.isInteger(value)) return String(value);
    const a = Math.abs(value);
    return a !== 0 && (a < 1e-3 || a >= 1e5) ? value.toExponential(2) : value.toPrecision(digits).replace(/\.?0+$/, "");
  }
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export function ago(seconds) {
  if (!seconds) return "";
  const d = Date.now() / 1000 - seconds;
  if (d < 5) return "just now";
  if (d < 60) return `${Math.round(d)} s ago`;
  if (d < 3600) return `${Math.round(d / 60)} min ago`;
  if (d < 86400) return `${Math.round(d / 3600)} h ago`;
  return new Date(seconds * 1000).toLocaleDateString();
}

export function showBanner(message, kind = "error") {
  const banner = document.getElementById("banner");
  banner.className = "banner " + kind;
  banner.textContent = message;
  banner.hidden = !message;
}
