// The chat playground: the base model or any adapter (served, or from a run: loaded on demand),
// streamed replies, two models side by side on the same prompt, sampling settings, and the exact
// prompt text the chat template produced for each request.

import { ApiError, el, get, post, showBanner, streamChat } from "./api.js";

const sides = { a: { history: [] }, b: { history: [] } };
let controller = null;

async function waitForBackend(base, status) {
  if (status.state === "ready" && status.base === base) return status;
  if (!status.switchable) {
    throw new Error(`this server serves ${status.base || "no generation model"}; ${base} cannot be loaded here ` +
      "(use lorakit ui to switch base models)");
  }
  if (!(status.state === "loading" && status.base === base)) status = await post("/ui/api/backend", { base });
  while (status.state === "loading") {
    document.getElementById("backend-status").textContent = `loading ${base}…`;
    await new Promise((r) => setTimeout(r, 500));
    status = await get("/ui/api/backend");
  }
  if (status.state !== "ready") throw new Error(`loading ${base} failed: ${status.error}`);
  return status;
}

export async function playgroundView(view, ctx, params) {
  let status = await get("/ui/api/backend");
  let listing = { runs: [], served: [] };
  const baseSelect = el("select", { id: "pg-base" });
  const baseLoad = el("button", { id: "pg-base-load" }, "Load base model");
  const baseInfo = el("span", { id: "pg-base-info" });
  const pickA = el("select", { id: "pg-model-a" }), pickB = el("select", { id: "pg-model-b", disabled: true });
  const compare = el("input", { type: "checkbox", id: "pg-compare" });
  const temperature = el("input", { id: "pg-temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0 });
  const topP = el("input", { id: "pg-top-p", type: "number", min: 0.01, max: 1, step: 0.05, value: 1 });
  const maxTokens = el("input", { id: "pg-max-tokens", type: "number", min: 1, step: 1, value: 128 });
  const seed = el("input", { id: "pg-seed", type: "number", min: 0, step: 1, placeholder: "random" });
  const stop = el("input", { id: "pg-stop", type: "text", placeholder: "e.g. \\n (comma-separated)" });
  const system = el("textarea", { id: "pg-system", rows: 2, placeholder: "System prompt (optional)" });
  const input = el("textarea", { id: "pg-input", rows: 3, placeholder: "Message (Enter to send, Shift+Enter for a new line)" });
  const send = el("button", { id: "pg-send", class: "primary" }, "Send");
  const halt = el("button", { id: "pg-stop-button", disabled: true }, "Stop");
  const clear = el("button", { id: "pg-clear" }, "New chat");
  const columns = el("div", { class: "pg-columns" });
  const panes = {};
  for (const key of ["a", "b"]) {
    panes[key] = {
      title: el("h3", {}), messages: el("div", { class: "messages" }),
      prompt: el("pre", { id: `pg-prompt-${key}`, class: "prompt" }), promptNote: el("summary", {}, "Prompt"),
    };
    panes[key].root = el("div", { class: "pg-side", id: `pg-side-${key}`, hidden: key === "b" },
      panes[key].title, panes[key].messages, el("details", { class: "prompt-box" }, panes[key].promptNote, panes[key].prompt));
    columns.append(panes[key].root);
  }
  view.append(
    el("section", { class: "card" },
      el("div", { class: "toolbar" }, el("h2", {}, "Playground"), el("span", { class: "grow" }),
        el("label", {}, "Base model ", baseSelect), baseLoad, baseInfo)),
    el("section", { class: "card settings" },
      el("div", { class: "row" },
        el("label", {}, "Model ", pickA),
        el("label", {}, compare, " side by side with "), pickB),
      el("div", { class: "row" },
        el("label", {}, "temperature ", temperature), el("label", {}, "top_p ", topP),
        el("label", {}, "max tokens ", maxTokens), el("label", {}, "seed ", seed), el("label", {}, "stop ", stop)),
      system),
    el("section", { class: "card" }, columns,
      el("div", { class: "composer" }, input, el("div", { class: "buttons" }, send, halt, clear))));

  function options() {
    const out = [];
    const base = status.base;
    out.push({ value: "base", label: base ? `base model — ${short(base)}` : "base model", base: base || null, model: null });
    const runIds = new Set(listing.runs.map((a) => a.id));
    for (const s of listing.served) {
      if (s.task === "sft" && !runIds.has(s.id)) out.push({ value: "served:" + s.id, label: `${s.id} (served)`, base, model: s.id });
    }
    for (const a of listing.runs) {
      if (a.task !== "sft") continue;
      out.push({ value: "run:" + a.id, label: a.id + (a.checkpoint ? "" : " (final)"), base: a.base, model: a.id, path: a.path,
        group: a.run });
    }
    return out;
  }

  function fill(select, keep) {
    const previous = keep || select.value;
    const opts = options();
    select.replaceChildren(...opts.map((o) => {
      const other = o.base && status.base && o.base !== status.base;
      const blocked = other && !status.switchable;
      return el("option", { value: o.value, disabled: blocked,
        title: other ? `trained on ${o.base}` : "" }, o.label + (other ? `  [base: ${short(o.base)}]` : ""));
    }));
    if (opts.some((o) => o.value === previous)) select.value = previous;
  }

  function fillBase() {
    baseSelect.replaceChildren(...status.candidates.map((c) => el("option", { value: c }, short(c))));
    if (status.base) baseSelect.value = status.base;
    baseSelect.disabled = baseLoad.disabled = !status.switchable || status.state === "loading";
    baseLoad.hidden = !status.switchable;
    baseInfo.textContent = status.state === "ready" ? "ready" : status.state === "loading" ? "loading…" :
      status.state === "error" ? "error: " + status.error : "not loaded (loads when you send)";
    baseInfo.className = "muted state-" + status.state;
  }

  async function refresh() {
    listing = await get("/ui/api/adapters");
    status = listing.backend;
    fillBase();
    fill(pickA);
    fill(pickB);
    titles();
  }

  function titles() {
    for (const key of ["a", "b"]) {
      const pick = key === "a" ? pickA : pickB;
      panes[key].title.textContent = pick.selectedOptions[0] ? pick.selectedOptions[0].textContent : "";
    }
  }

  baseLoad.addEventListener("click", async () => {
    try {
      status = await waitForBackend(baseSelect.value, status);
      await refresh();
      ctx.refreshBackend();
    } catch (e) { showBanner(e.message); await refresh(); }
  });
  compare.addEventListener("change", () => {
    pickB.disabled = !compare.checked;
    panes.b.root.hidden = !compare.checked;
    columns.classList.toggle("two", compare.checked);
  });
  pickA.addEventListener("change", titles);
  pickB.addEventListener("change", titles);
  clear.addEventListener("click", () => {
    for (const key of ["a", "b"]) { sides[key].history = []; panes[key].messages.replaceChildren(); panes[key].prompt.textContent = ""; }
  });
  halt.addEventListener("click", () => controller && controller.abort());
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send.click(); }
  });

  async function ensureAdapter(option) {
    if (!option.path || listing.served.some((s) => s.id === option.model)) return;
    try {
      await post("/v1/load_lora_adapter", { lora_name: option.model, lora_path: option.path });
    } catch (e) {
      if (!(e instanceof ApiError && /already loaded/.test(e.message))) throw e;
    }
    listing.served.push({ id: option.model, task: "sft" });
  }

  send.addEventListener("click", async () => {
    const text = input.value.trim();
    if (!text || send.disabled) return;
    showBanner("");
    const active = compare.checked ? ["a", "b"] : ["a"];
    const chosen = Object.fromEntries(active.map((k) => [k, options().find((o) => o.value === (k === "a" ? pickA : pickB).value)]));
    send.disabled = true;
    try {
      const bases = [...new Set(active.map((k) => chosen[k].base).filter(Boolean))];
      if (bases.length > 1) throw new Error(`the two models have different bases (${bases.join(", ")}); compare adapters of one base`);
      const base = bases[0] || status.base || status.candidates[0];
      status = await waitForBackend(base, status);
      ctx.refreshBackend();
      for (const k of active) await ensureAdapter(chosen[k]);
      await refresh();
      input.value = "";
      controller = new AbortController();
      halt.disabled = false;
      await Promise.all(active.map((k) => ask(k, chosen[k].model || status.base, text, controller.signal)));
    } catch (e) {
      if (e.name !== "AbortError") showBanner(e.message);
    } finally {
      send.disabled = false;
      halt.disabled = true;
      controller = null;
    }
  });

  function settings() {
    const body = { temperature: Number(temperature.value || 0), top_p: Number(topP.value || 1),
      max_tokens: Number(maxTokens.value || 128) };
    if (seed.value !== "") body.seed = Number(seed.value);
    const stops = stop.value.split(",").map((s) => s.replace(/\\n/g, "\n")).filter((s) => s.length);
    if (stops.length) body.stop = stops.slice(0, 4);
    return body;
  }

  async function ask(key, model, text, signal) {
    const side = sides[key], pane = panes[key];
    side.history.push({ role: "user", content: text });
    const messages = [...(system.value.trim() ? [{ role: "system", content: system.value }] : []), ...side.history];
    pane.messages.append(el("div", { class: "msg user" }, text));
    const reply = el("div", { class: "msg assistant", "data-done": "0" });
    const meta = el("div", { class: "meta muted" });
    pane.messages.append(reply, meta);
    try {
      const rendered = await post("/ui/api/render", { messages });
      pane.prompt.textContent = rendered.text;
      pane.promptNote.textContent = `Prompt: ${rendered.tokens} tokens, as the chat template rendered it`;
    } catch (e) {
      pane.prompt.textContent = "(" + e.message + ")";
    }
    let answer = "";
    const started = performance.now();
    try {
      const { finish, usage } = await streamChat({ model, messages, ...settings() }, (piece) => {
        answer += piece;
        reply.textContent = answer;
        pane.messages.scrollTop = pane.messages.scrollHeight;
      }, signal);
      const seconds = (performance.now() - started) / 1000;
      meta.textContent = `${model} · ${usage ? usage.completion_tokens + " tokens" : ""} · ${seconds.toFixed(1)} s · finish: ${finish}`;
    } catch (e) {
      meta.textContent = e.name === "AbortError" ? "stopped" : "error: " + e.message;
      if (e.name !== "AbortError") throw e;
    } finally {
      side.history.push({ role: "assistant", content: answer });
      reply.dataset.done = "1";
    }
  }

  await refresh();
  if (params.get("a")) {
    const wanted = "run:" + params.get("a");
    if ([...pickA.options].some((o) => o.value === wanted)) pickA.value = wanted;
    titles();
  }
  ctx.every(5000, async () => { if (!send.disabled) await refresh(); });
}

function short(name) {
  if (!name) return "";
  const parts = name.split("/");
  return parts.length > 2 ? "…/" + parts.slice(-2).join("/") : name;
}
