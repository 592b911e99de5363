// Start a run: pick a config from configs/ or a data file, edit the fields of the run schema
// (validated by the server with the same pydantic schema as `lorakit train`; each error is shown
// beside its field), launch, then watch it on its run page.

import { ApiError, el, get, post, showBanner } from "./api.js";

function display(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export async function newRunView(view, ctx) {
  const [{ sections, method_sections: methodSections }, sources] = await Promise.all([
    get("/ui/api/schema"), get("/ui/api/sources")]);
  const source = el("select", { id: "new-source" },
    el("option", { value: "" }, "— start from —"),
    el("optgroup", { label: "Configs" }, sources.configs.map((c) => el("option", { value: "config:" + c }, c))),
    el("optgroup", { label: "Data files" }, sources.data.map((d) => el("option", { value: "data:" + d }, d))),
    el("optgroup", { label: "Bundled data" }, sources.bundled.map((d) => el("option", { value: "data:" + d }, d))));
  const name = el("input", { id: "new-name", type: "text", placeholder: "run name", autocomplete: "off" });
  const nameError = el("span", { class: "error", "data-error-for": "name" });
  const general = el("div", { class: "banner error", id: "new-general", hidden: true });
  const launch = el("button", { id: "new-launch", class: "primary" }, "Launch");
  const state = el("span", { class: "muted", id: "new-state" });
  const form = el("div", { class: "form" });
  view.append(el("section", { class: "card" },
    el("div", { class: "toolbar" }, el("h2", {}, "New run"), el("span", { class: "grow" }),
      el("label", {}, "Start from ", source)),
    el("div", { class: "row name-row", "data-key": "name" }, el("label", { for: "new-name" }, "Name"), name, nameError,
      el("span", { class: "grow" }), state, launch),
    general, form));

  const inputs = {};  // dotted key → {field, input, error, row, section}
  for (const section of sections) {
    const box = el("fieldset", { "data-section": section.name || "run" },
      el("legend", {}, section.name || "run"), section.description ? el("p", { class: "muted" }, section.description) : null);
    for (const field of section.fields) {
      let input;
      if (field.kind === "choice") {
        input = el("select", {}, [...(field.nullable ? [null] : []), ...field.choices].map((c) =>
          el("option", { value: JSON.stringify(c) }, c === null ? "(none)" : String(c))));
        input.value = JSON.stringify(field.default ?? null);
      } else if (field.kind === "boolean") {
        input = el("input", { type: "checkbox", checked: !!field.default });
      } else {
        input = el("input", { type: "text", placeholder: field.required ? "required" : display(field.default),
          autocomplete: "off", spellcheck: false });
      }
      const error = el("span", { class: "error", "data-error-for": field.key });
      const row = el("div", { class: "field", "data-key": field.key },
        el("label", { title: field.description }, field.key.split(".").pop()), input, error,
        el("small", { class: "muted" }, field.description));
      input.addEventListener(field.kind === "text" || field.kind === "yaml" || field.kind === "integer" || field.kind === "number"
        ? "input" : "change", () => { mark(field.key); schedule(); });
      inputs[field.key] = { field, input, error, row, section: section.name };
      box.append(row);
    }
    form.append(box);
  }

  function valueOf(key) {
    const { field, input } = inputs[key];
    if (field.kind === "choice") return JSON.parse(input.value);
    if (field.kind === "boolean") return input.checked;
    return input.value;
  }

  function changed(key) {
    const { field } = inputs[key];
    const v = valueOf(key);
    if (field.kind === "choice" || field.kind === "boolean") return JSON.stringify(v) !== JSON.stringify(field.default ?? null);
    return v.trim() !== "";
  }

  function mark(key) { inputs[key].row.classList.toggle("changed", changed(key)); }

  function visibleSections() {
    const method = inputs["method"] ? valueOf("method") : null;
    for (const [key, item] of Object.entries(inputs)) {
      item.row.closest("fieldset").hidden = methodSections.includes(item.section) && item.section !== method;
    }
  }

  function values() {
    visibleSections();
    const out = {};
    for (const [key, item] of Object.entries(inputs)) {
      if (item.row.closest("fieldset").hidden) continue;
      const v = valueOf(key);
      if (typeof v === "string" && !v.trim()) continue;
      if ((item.field.kind === "choice" || item.field.kind === "boolean") && !changed(key)) continue;
      out[key] = v;
    }
    return out;
  }

  function showErrors(report) {
    for (const item of Object.values(inputs)) {
      item.error.textContent = "";
      item.row.classList.remove("invalid");
    }
    nameError.textContent = report.errors.name || "";
    const stray = [];
    for (const [key, message] of Object.entries(report.errors)) {
      if (key === "name") continue;
      const item = inputs[key] || inputs[Object.keys(inputs).find((k) => key.startsWith(k + "."))];
      if (item) { item.error.textContent = message; item.row.classList.add("invalid"); }
      else stray.push(`${key}: ${message}`);
    }
    const messages = [...stray, ...(report.general || [])];
    general.hidden = !messages.length;
    general.textContent = messages.join("\n");
    state.textContent = report.ok ? "valid" : `${Object.keys(report.errors).length + (report.general || []).length} problem(s)`;
    state.className = report.ok ? "ok" : "error-text";
    launch.disabled = !report.ok;
  }

  let timer = null, seq = 0;
  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(validate, 300);
  }
  async function validate() {
    const mine = ++seq;
    const report = await post("/ui/api/validate", { name: name.value, values: values() });
    if (mine === seq) showErrors(report);
    return report;
  }
  name.addEventListener("input", schedule);

  source.addEventListener("change", async () => {
    if (!source.value) return;
    const [kind, ...rest] = source.value.split(":");
    const target = rest.join(":");
    const got = await get(`/ui/api/source?${kind}=${encodeURIComponent(target)}`);
    for (const item of Object.values(inputs)) {
      const { field, input } = item;
      if (field.kind === "choice") input.value = JSON.stringify(field.default ?? null);
      else if (field.kind === "boolean") input.checked = !!field.default;
      else input.value = "";
    }
    for (const [key, text] of Object.entries(got.values)) {
      const item = inputs[key];
      if (!item) continue;
      if (item.field.kind === "choice") {
        let parsed = text === "" || text === "null" ? null : text;
        if (typeof item.field.choices[0] === "number") parsed = Number(text);
        item.input.value = JSON.stringify(parsed);
      } else if (item.field.kind === "boolean") item.input.checked = text === "true";
      else item.input.value = text;
    }
    name.value = got.name;
    for (const key of Object.keys(inputs)) mark(key);
    await validate();
  });

  launch.addEventListener("click", async () => {
    launch.disabled = true;
    state.textContent = "checking the config and data…";
    try {
      const { id } = await post("/ui/api/launch", { name: name.value, values: values() });
      location.hash = "#/run/" + encodeURIComponent(id);
    } catch (e) {
      if (e instanceof ApiError && e.body && e.body.errors) showErrors({ ok: false, ...e.body });
      else { showBanner(e.message); launch.disabled = false; }
    }
  });
  inputs["method"] && inputs["method"].input.addEventListener("change", visibleSections);
  visibleSections();
  const wanted = new URLSearchParams(location.hash.split("?")[1] || "").get("from");
  if (wanted) { source.value = wanted; source.dispatchEvent(new Event("change")); }
}
