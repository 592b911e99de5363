// The runs table, one run's page (live curves while it trains) and the comparison of several runs.

import { ago, el, fmt, get, post, showBanner } from "./api.js";
import { LineChart } from "./chart.js";

const selected = new Set();

function statusBadge(status) {
  return el("span", { class: "status status-" + (status || "").replace(/\s+/g, "-") }, status || "?");
}

function mainMetric(final) {
  for (const key of ["eval_exact_match", "eval_accuracy"]) {
    if (final[key] !== undefined) return [key.replace("eval_", ""), final[key]];
  }
  return [null, null];
}

function progress(run) {
  const text = run.total_steps ? `${run.step} / ${run.total_steps}` : String(run.step || 0);
  if (!run.total_steps) return text;
  const bar = el("span", { class: "progress" }, el("span", { style: `width:${Math.min(100, (100 * run.step) / run.total_steps)}%` }));
  return el("span", {}, bar, " ", text);
}

export async function runsView(view, ctx) {
  const table = el("table", { id: "runs-table", class: "grid" });
  const compare = el("button", { id: "compare-button", disabled: true, onclick: () => {
    location.hash = "#/compare/" + [...selected].map(encodeURIComponent).join(",");
  } }, "Compare selected");
  const where = el("span", { class: "muted" });
  view.append(el("section", { class: "card" },
    el("div", { class: "toolbar" }, el("h2", {}, "Runs"), where, el("span", { class: "grow" }), compare,
      el("a", { class: "button", href: "#/new" }, "New run")),
    table));

  async function refresh() {
    const [{ runs }, info] = await Promise.all([get("/ui/api/runs"), ctx.info()]);
    where.textContent = info.runs_dir;
    for (const id of [...selected]) if (!runs.some((r) => r.id === id)) selected.delete(id);
    compare.disabled = selected.size < 2;
    compare.textContent = `Compare selected (${selected.size})`;
    const head = el("thead", {}, el("tr", {}, ["", "Run", "Status", "Method", "Model", "Steps", "Train loss",
      "Eval loss", "Eval metric", "Updated"].map((h) => el("th", {}, h))));
    const body = el("tbody", {});
    if (!runs.length) {
      body.append(el("tr", {}, el("td", { colspan: 10, class: "muted" },
        "No runs yet: start one from “New run”, or `lorakit train CONFIG` with output_dir under this directory.")));
    }
    for (const run of runs) {
      const [metric, value] = mainMetric(run.final);
      const box = el("input", { type: "checkbox", checked: selected.has(run.id), "aria-label": "select " + run.id,
        onchange: (e) => {
          e.target.checked ? selected.add(run.id) : selected.delete(run.id);
          compare.disabled = selected.size < 2;
          compare.textContent = `Compare selected (${selected.size})`;
        } });
      body.append(el("tr", { "data-run": run.id },
        el("td", {}, box),
        el("td", {}, el("a", { href: "#/run/" + encodeURIComponent(run.id) }, run.id)),
        el("td", { class: "status-cell", title: run.error || "" }, statusBadge(run.status)),
        el("td", {}, run.method || ""),
        el("td", { class: "model", title: run.model || "" }, shortModel(run.model)),
        el("td", { class: "steps" }, progress(run)),
        el("td", { class: "num train-loss" }, fmt(run.final.train_loss)),
        el("td", { class: "num eval-loss" }, fmt(run.final.eval_loss)),
        el("td", { class: "num" }, metric ? `${metric} ${fmt(value, 3)}` : ""),
        el("td", { class: "muted" }, ago(run.updated))));
    }
    table.replaceChildren(head, body);
  }
  await refresh();
  ctx.every(2000, refresh);
}

function shortModel(name) {
  if (!name) return "";
  const parts = name.split("/");
  return parts.length > 2 ? "…/" + parts.slice(-2).join("/") : name;
}

// Metrics rows → chart series.
function series(rows) {
  const train = rows.filter((r) => r.split === "train"), evals = rows.filter((r) => r.split === "eval");
  const pick = (list, key) => list.filter((r) => typeof r[key] === "number").map((r) => [r.step, r[key]]);
  const evalKeys = [...new Set(evals.flatMap((r) => Object.keys(r)))]
    .filter((k) => !["split", "step", "loss", "perplexity"].includes(k) && evals.some((r) => typeof r[k] === "number"));
  return {
    loss: [{ name: "train", points: pick(train, "loss") }, { name: "eval", points: pick(evals, "loss"), markers: true }],
    lr: [{ name: "lr", points: pick(train, "lr") }],
    speed: [{ name: "tokens/s", points: pick(train, "tokens_per_s") }],
    evals: evalKeys.map((k) => ({ name: k, points: pick(evals, k), markers: true })),
  };
}

export async function runView(view, ctx, id) {
  let rows = [], offset = 0;
  const header = el("div", { class: "toolbar" });
  const errorBox = el("div", { class: "banner error", hidden: true });
  const charts = el("div", { class: "charts" });
  const finals = el("table", { class: "kv" });
  const config = el("table", { class: "kv", id: "run-config" });
  const log = el("pre", { class: "log", id: "run-log" });
  const adapters = el("div", {});
  view.append(el("section", { class: "card" }, header, errorBox, charts),
    el("section", { class: "card two" },
      el("div", {}, el("h3", {}, "Final metrics"), finals, el("h3", {}, "Adapters"), adapters),
      el("div", {}, el("h3", {}, "Config"), config)),
    el("section", { class: "card", id: "log-card", hidden: true }, el("h3", {}, "Log (train.log)"), log));
  const boxes = {
    loss: el("div", { class: "chart-box" }), lr: el("div", { class: "chart-box" }),
    evals: el("div", { class: "chart-box" }), speed: el("div", { class: "chart-box" }),
  };
  charts.append(boxes.loss, boxes.evals, boxes.lr, boxes.speed);
  const made = {
    loss: new LineChart(boxes.loss, { title: "Loss", yLabel: "loss", logY: true, name: "loss" }),
    evals: new LineChart(boxes.evals, { title: "Eval metrics", name: "evals" }),
    lr: new LineChart(boxes.lr, { title: "Learning rate", name: "lr" }),
    speed: new LineChart(boxes.speed, { title: "Throughput", yLabel: "tokens/s", name: "speed" }),
  };

  let summary = null;
  async function refreshSummary() {
    summary = await get("/ui/api/run?id=" + encodeURIComponent(id));
    const actions = [];
    if (summary.can_stop) {
      actions.push(el("button", { id: "stop-button", class: "danger", onclick: async (e) => {
        e.target.disabled = true;
        try { await post("/ui/api/stop", { id }); } catch (err) { showBanner(err.message); }
        await refreshSummary();
      } }, "Stop"));
    }
    if (!summary.can_stop && ["stopped", "incomplete", "failed"].includes(summary.status) && summary.adapters.some((a) => a.checkpoint)) {
      actions.push(el("button", { id: "resume-button", onclick: async () => {
        try { await post("/ui/api/resume", { id }); } catch (err) { showBanner(err.message); }
        await refreshSummary();
      } }, "Resume"));
    }
    if (summary.has_adapter) {
      actions.push(el("a", { class: "button", href: "#/playground?a=" + encodeURIComponent(id) }, "Chat with it"));
    }
    header.replaceChildren(el("h2", {}, id), statusBadge(summary.status),
      el("span", { class: "steps" }, progress(summary)), el("span", { class: "grow" }), ...actions);
    errorBox.hidden = !summary.error;
    errorBox.textContent = summary.error ? "Error: " + summary.error : "";
    finals.replaceChildren(...Object.entries(summary.final).map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, fmt(v)))));
    const flat = usedKeys(flatten(summary.config || {}), [summary.config], (await ctx.info()).method_sections);
    config.replaceChildren(...Object.entries(flat).map(([k, v]) => el("tr", { "data-key": k }, el("th", {}, k), el("td", {}, fmt(v)))));
    adapters.replaceChildren(...(summary.adapters.length ? summary.adapters.map((a) =>
      el("div", {}, el("a", { href: "#/playground?a=" + encodeURIComponent(a.id) }, a.checkpoint || "adapter (final)"),
        el("span", { class: "muted" }, ` ${a.peft_type || ""} r=${a.r ?? "?"}`))) : [el("span", { class: "muted" }, "none yet")]));
    document.getElementById("log-card").hidden = !summary.log;
    log.textContent = summary.log;
  }

  async function refreshMetrics() {
    const got = await get(`/ui/api/metrics?id=${encodeURIComponent(id)}&offset=${offset}`);
    if (got.reset) rows = [];
    if (!got.rows.length && !got.reset && offset) return;
    rows = rows.concat(got.rows);
    offset = got.offset;
    const s = series(rows);
    for (const key of Object.keys(made)) made[key].update(s[key]);
    boxes.evals.hidden = !s.evals.length;
  }

  await Promise.all([refreshSummary(), refreshMetrics()]);
  ctx.every(1000, async () => {
    if (summary && (summary.status === "running" || summary.can_stop)) await refreshMetrics();
  });
  ctx.every(2500, async () => {
    const before = summary && summary.status;
    await refreshSummary();
    if (before !== summary.status) await refreshMetrics();
  });
}

// Drop the sections of methods none of `configs` uses (every run's config holds them all, at defaults).
function usedKeys(flat, configs, methodSections) {
  const used = new Set(configs.map((c) => c && c.method));
  return Object.fromEntries(Object.entries(flat).filter(([k]) => {
    const section = k.split(".")[0];
    return !methodSections.includes(section) || used.has(section);
  }));
}

export function flatten(obj, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(obj)) {
    if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length) flatten(v, prefix + k + ".", out);
    else out[prefix + k] = v;
  }
  return out;
}

export async function compareView(view, ctx, ids) {
  const charts = el("div", { class: "charts" });
  const diff = el("table", { class: "grid", id: "config-diff" });
  const note = el("p", { class: "muted" });
  const finals = el("table", { class: "grid", id: "compare-finals" });
  view.append(el("section", { class: "card" }, el("div", { class: "toolbar" }, el("h2", {}, "Compare " + ids.join(", "))), charts),
    el("section", { class: "card" }, el("h3", {}, "Final metrics"), finals),
    el("section", { class: "card" }, el("h3", {}, "Config differences"), note, diff));
  const boxes = [0, 1, 2].map(() => el("div", { class: "chart-box" }));
  charts.append(...boxes);
  const trainChart = new LineChart(boxes[0], { title: "Train loss", yLabel: "loss", logY: true, name: "compare-train" });
  const evalChart = new LineChart(boxes[1], { title: "Eval loss", yLabel: "loss", logY: true, name: "compare-eval" });
  const lrChart = new LineChart(boxes[2], { title: "Learning rate", name: "compare-lr" });
  const state = Object.fromEntries(ids.map((id) => [id, { rows: [], offset: 0 }]));

  async function refresh() {
    await Promise.all(ids.map(async (id) => {
      const s = state[id];
      const got = await get(`/ui/api/metrics?id=${encodeURIComponent(id)}&offset=${s.offset}`);
      if (got.reset) s.rows = [];
      s.rows = s.rows.concat(got.rows);
      s.offset = got.offset;
    }));
    const per = ids.map((id) => [id, series(state[id].rows)]);
    trainChart.update(per.map(([id, s]) => ({ ...s.loss[0], name: id })));
    evalChart.update(per.map(([id, s]) => ({ ...s.loss[1], name: id })));
    lrChart.update(per.map(([id, s]) => ({ ...s.lr[0], name: id })));
  }
  const query = ids.map((id) => "id=" + encodeURIComponent(id)).join("&");
  const [result, { runs }, info] = await Promise.all([get("/ui/api/compare?" + query), get("/ui/api/runs"), ctx.info()]);
  const byId = Object.fromEntries(runs.map((r) => [r.id, r]));
  const metricKeys = [...new Set(ids.flatMap((id) => Object.keys((byId[id] || {}).final || {})))];
  const cell = (v) => el("td", {}, v === null || v === undefined ? "—" : fmt(v));
  finals.replaceChildren(el("thead", {}, el("tr", {}, el("th", {}, "metric"), ids.map((id) => el("th", {}, id)))),
    el("tbody", {}, el("tr", { "data-key": "status" }, el("th", {}, "status"), ids.map((id) => el("td", {},
      statusBadge((byId[id] || {}).status)))),
    el("tr", { "data-key": "step" }, el("th", {}, "step"), ids.map((id) => cell((byId[id] || {}).step))),
    metricKeys.map((k) => el("tr", { "data-key": k }, el("th", {}, k), ids.map((id) => cell(((byId[id] || {}).final || {})[k]))))));
  const methods = new Set(ids.map((id) => (byId[id] || {}).method));
  const differ = result.differ.filter((d) => {
    const section = d.key.split(".")[0];
    return !info.method_sections.includes(section) || methods.has(section);
  });
  note.textContent = `${differ.length} keys differ, ${result.same} are the same in every run.`;
  diff.replaceChildren(el("thead", {}, el("tr", {}, el("th", {}, "key"), ids.map((id) => el("th", {}, id)))),
    el("tbody", {}, differ.map((d) => el("tr", { "data-key": d.key }, el("th", {}, d.key), ids.map((id) => cell(d.values[id]))))));
  await refresh();
  ctx.every(2000, refresh);
}
