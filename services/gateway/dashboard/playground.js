// Playground: a script, two voices, every generation parameter, generate, listen, download.

import { call, getJson, listAll, schema } from "./api.js";
import { $, clearFieldErrors, element, notify, seconds, showFieldError } from "./ui.js";

// The generation parameters, in the order shown; their bounds, defaults and
// descriptions come from the API's own /openapi.json.
const PARAMETERS = [
  ["cfg_scale", "Guidance (cfg_scale)", 0.1],
  ["temperature", "Temperature", 0.05],
  ["top_p", "Top p", 0.01],
  ["cfg_filter_top_k", "Top k (cfg_filter_top_k)", 1],
  ["speed_factor", "Speed", 0.05],
  ["max_new_tokens", "Max new tokens", 1],
  ["max_audio_prompt_seconds", "Voice prompt length, s", 1],
  ["seed", "Seed (-1: random)", 1],
];
const FIELDS = Object.fromEntries([
  ["input", "gen-input"],
  ["model", "gen-model"],
  ["speakers", "gen-speakers"],
  ["visibility", "gen-visibility"],
  ["collection", "gen-collection"],
  ...PARAMETERS.map(([name]) => [name, `gen-${name}`]),
]);
let defaults = {};
let maxInputChars = 3000;
let resultUrl = "";
let generating = false;

export async function setUp() {
  $("#generate-form").addEventListener("submit", (event) => {
    event.preventDefault();
    generate();
  });
  $("#gen-reset").addEventListener("click", resetParameters);
  $("#gen-input").addEventListener("input", countCharacters);
  for (const select of [$("#gen-s1"), $("#gen-s2")]) {
    select.addEventListener("change", () => (select.dataset.chosen = "true"));
  }
  await buildParameters();
  countCharacters();
}

async function buildParameters() {
  let properties = {};
  try {
    const request = await schema("voice.gateway.v1.CreateGenerationRequest");
    properties = request.properties;
    maxInputChars = properties.input.maxLength || maxInputChars;
  } catch (error) {
    notify("The API's parameter rules (/openapi.json) could not be read; the fields have no bounds.");
  }
  const place = $("#gen-parameters");
  place.replaceChildren(
    ...PARAMETERS.map(([name, label, step]) => {
      const rules = properties[name] || {};
      const id = `gen-${name}`;
      defaults[name] = rules.default ?? "";
      const range =
        rules.maximum !== undefined ? `${rules.minimum}–${rules.maximum}` : rules.minimum !== undefined ? `≥ ${rules.minimum}` : "";
      const hint = [range && `range ${range}`, rules.default !== undefined && `default ${rules.default}`].filter(Boolean).join(", ");
      return element(
        "div",
        { class: "field" },
        element("label", { for: id }, label),
        element("input", {
          id,
          name,
          type: "number",
          step: String(step),
          min: rules.minimum !== undefined ? String(rules.minimum) : null,
          max: rules.maximum !== undefined ? String(rules.maximum) : null,
          value: String(rules.default ?? ""),
          "aria-describedby": `${id}-hint ${id}-error`,
          title: rules.description || "",
        }),
        element("p", { id: `${id}-hint`, class: "hint" }, hint),
        element("p", { id: `${id}-error`, class: "error" }),
      );
    }),
  );
}

function resetParameters() {
  for (const [name] of PARAMETERS) document.getElementById(`gen-${name}`).value = String(defaults[name]);
}

function countCharacters() {
  const length = $("#gen-input").value.length;
  $("#gen-input-count").textContent = `${length} / ${maxInputChars} characters`;
}

export async function show() {
  await Promise.all([loadVoices(), loadModels()]);
}

async function loadVoices() {
  let samples = [];
  try {
    samples = await listAll("/v1/voice/samples", "voice_samples");
  } catch (error) {
    notify(`Your voice samples could not be loaded. ${error.describe()}`);
  }
  const fallback = samples.find((sample) => sample.is_default);
  for (const [select, preset] of [[$("#gen-s1"), fallback], [$("#gen-s2"), null]]) {
    const current = select.dataset.chosen ? select.value : preset ? String(preset.id) : "";
    select.replaceChildren(
      element("option", { value: "" }, "no cloning (a random voice)"),
      ...samples.map((sample) =>
        element(
          "option",
          { value: String(sample.id) },
          `${sample.speaker_name}${sample.is_default ? " (default)" : ""} — “${sample.transcript.slice(0, 40)}”`,
        ),
      ),
    );
    select.value = samples.some((sample) => String(sample.id) === current) ? current : "";
  }
}

async function loadModels() {
  const select = $("#gen-model");
  const current = select.value;
  try {
    const models = (await getJson("/v1/models")).data.filter((model) => model.features.includes("voice-cloning"));
    select.replaceChildren(
      element("option", { value: "" }, models.length ? "auto-select" : "auto-select (no provider online now)"),
      ...models.map((model) => element("option", { value: model.id }, model.id)),
    );
    select.value = current;
  } catch (error) {
    notify(`The models could not be loaded. ${error.describe()}`);
  }
}

function request() {
  const body = { input: $("#gen-input").value };
  const model = $("#gen-model").value;
  if (model) body.model = model;
  const speakers = {};
  if ($("#gen-s1").value) speakers.S1 = Number($("#gen-s1").value);
  if ($("#gen-s2").value) speakers.S2 = Number($("#gen-s2").value);
  if (Object.keys(speakers).length) body.speakers = speakers;
  for (const [name] of PARAMETERS) {
    const text = document.getElementById(`gen-${name}`).value.trim();
    if (text !== "") body[name] = Number(text);
  }
  body.visibility = $("#gen-visibility").value;
  if ($("#gen-collection").value) body.collection = $("#gen-collection").value;
  return body;
}

async function generate() {
  if (generating) return;
  const errorPlace = $("#gen-error");
  clearFieldErrors(FIELDS, errorPlace);
  const body = request();
  for (const [name] of PARAMETERS) {
    if (Number.isNaN(body[name])) {
      showFieldError(new Error(`${name} must be a number`), FIELDS, errorPlace);
      return;
    }
  }
  generating = true;
  const button = $("#gen-submit");
  button.disabled = true;
  const started = performance.now();
  const since = new Date(Date.now() - 5000).toISOString();
  let status = "sending";
  const progress = $("#gen-progress");
  const tick = () => (progress.textContent = `${status} · ${((performance.now() - started) / 1000).toFixed(1)} s`);
  const clock = setInterval(tick, 100);
  // The request answers only when the audio is ready; meanwhile the history says where it is.
  let watcher = setTimeout(async function watch() {
    try {
      const page = await getJson("/v1/voice/generations", { query: { page_size: 5 } });
      const mine = page.generations.find((item) => item.input === body.input && item.create_time >= since);
      if (mine && generating) status = mine.status;
    } catch {
      // the progress line is a courtesy; the request itself reports errors
    }
    if (generating) watcher = setTimeout(watch, 600);
  }, 250);
  tick();
  try {
    const response = await call("/v1/voice/generations", { method: "POST", json: body });
    const blob = await response.blob();
    const id = response.headers.get("X-Generation-Id");
    status = "succeeded";
    tick();
    if (resultUrl) URL.revokeObjectURL(resultUrl);
    resultUrl = URL.createObjectURL(blob);
    $("#gen-audio").src = resultUrl;
    $("#gen-download").href = resultUrl;
    $("#gen-download").download = `${id || "generation"}.wav`;
    $("#gen-result").hidden = false;
    await showFacts(id);
  } catch (error) {
    status = "failed";
    tick();
    showFieldError(error, FIELDS, errorPlace);
  } finally {
    generating = false;
    clearInterval(clock);
    clearTimeout(watcher);
    button.disabled = false;
  }
}

async function showFacts(id) {
  const facts = $("#gen-facts");
  facts.replaceChildren();
  if (!id) return;
  const generation = await getJson(`/v1/voice/generations/${id}`);
  const parameters = generation.parameters || {};
  const rows = [
    ["Generation", generation.id],
    ["Seed", String(parameters.seed ?? "")],
    ["Duration", seconds(generation.audio_duration_seconds)],
    ["Model", generation.model],
    ["Provider", generation.provider],
  ];
  facts.replaceChildren(...rows.flatMap(([term, value]) => [element("dt", {}, term), element("dd", { dataset: { fact: term.toLowerCase() } }, value)]));
  // The same seed and inputs repeat the result.
  facts.append(
    element("dt", {}, ""),
    element("dd", {}, element("button", { type: "button", class: "secondary",
      onclick: () => (document.getElementById("gen-seed").value = String(parameters.seed ?? -1)) }, "Use this seed")),
  );
}
