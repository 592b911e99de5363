// The page's router: #/runs, #/run/<id>, #/compare/<id>,<id>..., #/playground, #/new.
// Each view gets a context whose timers stop when the user navigates away.

import { get, showBanner, takeTokenFromUrl } from "./api.js";
import { compareView, runView, runsView } from "./runs.js";
import { playgroundView } from "./playground.js";
import { newRunView } from "./newrun.js";

let current = null;

function context() {
  const timers = [];
  let infoCache = null;
  const ctx = {
    alive: true,
    every(ms, fn) {
      let busy = false;
      const id = setInterval(async () => {
        if (busy || !ctx.alive || document.hidden) return;
        busy = true;
        try { await fn(); } catch (e) { showBanner(e.message); } finally { busy = false; }
      }, ms);
      timers.push(id);
    },
    async info() {
      if (!infoCache) infoCache = await get("/ui/api/info");
      return infoCache;
    },
    refreshBackend,
    close() { ctx.alive = false; timers.forEach(clearInterval); },
  };
  return ctx;
}

async function refreshBackend() {
  const s = await get("/ui/api/backend");
  const node = document.getElementById("backend-status");
  node.textContent = s.state === "ready" ? `model: ${s.base}` : s.state === "loading" ? `loading ${s.base}…` :
    s.state === "error" ? `model error: ${s.error}` : "no model loaded";
  node.title = s.base || "";
}

async function route() {
  if (current) current.close();
  const ctx = (current = context());
  const [path, query] = (location.hash.replace(/^#/, "") || "/runs").split("?");
  const parts = path.split("/").filter(Boolean);
  const params = new URLSearchParams(query || "");
  const view = document.getElementById("view");
  view.replaceChildren();
  showBanner("");
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active",
    a.dataset.nav === parts[0] || (a.dataset.nav === "runs" && ["run", "compare"].includes(parts[0]))));
  try {
    if (parts[0] === "run" && parts[1]) await runView(view, ctx, decodeURIComponent(parts.slice(1).join("/")));
    else if (parts[0] === "compare" && parts[1]) await compareView(view, ctx, parts[1].split(",").map(decodeURIComponent));
    else if (parts[0] === "playground") await playgroundView(view, ctx, params);
    else if (parts[0] === "new") await newRunView(view, ctx);
    else await runsView(view, ctx);
    document.body.dataset.view = parts[0] || "runs";
  } catch (e) {
    if (ctx.alive) showBanner(e.message);
  }
  refreshBackend().catch(() => {});
}

takeTokenFromUrl();
window.addEventListener("hashchange", route);
route();
