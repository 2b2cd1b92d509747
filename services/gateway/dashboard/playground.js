// Playground: a script, two voices, every generation parameter, generate (heard while it is
// made: streamed, played with the Web Audio API), listen again, download.

import { call, getJson, listAll, schema } from "./api.js";
import { StreamedWav, wakeAudio } from "./audio.js";
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
let player = null; // the streamed playback of the latest generation
let voices = new Map(); // sample id -> the sample, for the voice pickers

export async function setUp() {
  $("#generate-form").addEventListener("submit", (event) => {
    event.preventDefault();
    generate();
  });
  $("#gen-reset").addEventListener("click", resetParameters);
  $("#gen-stop").addEventListener("click", stopPlayback);
  // The finished file and the streamed playback would talk over each other.
  $("#gen-audio").addEventListener("play", stopPlayback);
  $("#gen-input").addEventListener("input", countCharacters);
  for (const select of [$("#gen-s1"), $("#gen-s2")]) {
    select.addEventListener("change", () => {
      select.dataset.chosen = "true";
      describeVoice(select);
    });
  }
  await buildParameters();
  countCharacters();
}

async function buildParameters() {
  let properties = {};
  try {
    const request = await schema("voice.gateway.v1.GenerationSpec");
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
  voices = new Map(samples.map((sample) => [String(sample.id), sample]));
  const fallback = samples.find((sample) => sample.is_default);
  for (const [select, preset] of [[$("#gen-s1"), fallback], [$("#gen-s2"), null]]) {
    const current = select.dataset.chosen ? select.value : preset ? String(preset.id) : "";
    select.replaceChildren(
      element("option", { value: "" }, "no cloning (a random voice)"),
      ...samples.map((sample) =>
        element(
          "option",
          { value: String(sample.id) },
          `${sample.speaker_name}${sample.is_default ? " (default)" : ""} — “${excerpt(sample.transcript, 40)}”`,
        ),
      ),
    );
    select.value = samples.some((sample) => String(sample.id) === current) ? current : "";
    describeVoice(select);
  }
}

function excerpt(text, length) {
  return text.length > length ? `${text.slice(0, length).trimEnd()}…` : text;
}

// Under each picker, its choice in full (a long name is cut short in a narrow select).
function describeVoice(select) {
  const sample = voices.get(select.value);
  const about = document.getElementById(`${select.id}-about`);
  if (!sample) {
    about.textContent = "No sample: the model picks a random voice.";
    return;
  }
  const transcript = excerpt(sample.transcript, 160);
  about.textContent = `${sample.speaker_name}${sample.is_default ? " (default)" : ""} · ${seconds(sample.duration_seconds)}` +
    (transcript ? ` · “${transcript}”` : "");
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
  wakeAudio();
  const button = $("#gen-submit");
  button.disabled = true;
  const started = performance.now();
  let status = "sending";
  const progress = $("#gen-progress");
  const tick = () => (progress.textContent = `${status} · ${((performance.now() - started) / 1000).toFixed(1)} s`);
  const clock = setInterval(tick, 100);
  // The generation's id is ours, sent with the request: the history has it from the moment it is
  // admitted, before any audio comes, and says where it is (queued, running) until the end.
  const id = newGenerationId();
  const asked = body.max_new_tokens ?? defaults.max_new_tokens;
  following.reset(id, asked);
  let admitted = false;
  let watcher = setTimeout(async function watch() {
    try {
      const mine = await findGeneration(id, admitted);
      if (mine) {
        admitted = true;
        following.saw(mine);
        const ended = status === "succeeded" || status === "failed"; // the stream's own word is final
        if (generating && !ended) status = mine.status;
      }
    } catch {
      // the progress line is a courtesy; the request itself reports errors
    }
    if (generating) watcher = setTimeout(watch, admitted ? 600 : 250);
  }, 0);
  tick();
  const playback = $("#gen-playback");
  player?.stop();
  player = new StreamedWav();
  $("#gen-stop").hidden = true;
  delete playback.dataset.playback;
  playback.textContent = "";
  let heard = false;
  try {
    // Streamed: the answer comes with the first audio (errors before it are ordinary JSON errors).
    const response = await call("/v1/voice/generations", {
      method: "POST", query: { generation_id: id }, json: { ...body, stream: true },
    });
    admitted = true; // answered: the history has it, so the watcher asks for it by id
    following.admitted(Number(response.headers.get("X-Max-New-Tokens")) || 0);
    const reader = response.body.getReader();
    for (;;) {
      let piece;
      try {
        piece = await reader.read();
      } catch (error) {
        throw new BrokenStream(player.seconds, id, error);
      }
      if (piece.done) break;
      if (await player.push(piece.value)) {
        heard = true;
        playback.dataset.playback = "playing";
        playback.textContent = "Playing while generating…";
        $("#gen-stop").hidden = false;
      }
    }
    status = "succeeded";
    tick();
    if (heard && player.playing) {
      playback.textContent = `Generated (${seconds(player.seconds)}); playing the rest.`;
      playback.dataset.playback = "generated";
      const finishing = player;
      finishing.onIdle = () => finishing === player && playedThrough();
    } else if (player.stopped) playback.textContent = "Streamed playback stopped.";
    else if (heard) playedThrough();
    if (resultUrl) URL.revokeObjectURL(resultUrl);
    resultUrl = URL.createObjectURL(player.wav());
    $("#gen-audio").src = resultUrl;
    $("#gen-download").href = resultUrl;
    $("#gen-download").download = `${id}.wav`;
    $("#gen-result").hidden = false;
    await showFacts(id, asked);
  } catch (error) {
    status = "failed";
    tick();
    playback.dataset.playback = "failed";
    playback.textContent = "";
    if (error instanceof BrokenStream) errorPlace.textContent = await error.describe();
    else showFieldError(error, FIELDS, errorPlace);
    // Refused at the door, it is not in the history; admitted and then failed, it is.
    const mine = await findGeneration(id, admitted).catch(() => null);
    if (mine) following.saw(mine);
  } finally {
    generating = false;
    clearInterval(clock);
    clearTimeout(watcher);
    button.disabled = false;
  }
}

// A new generation's id, chosen here (POST ?generation_id=): "gen_" and 32 random hex digits.
// crypto.getRandomValues, not crypto.randomUUID: that needs a secure context, and a self-hosted
// gateway is often opened over plain http at a LAN address.
function newGenerationId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `gen_${[...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join("")}`;
}

// The generation `id` as the history has it, or null while it is not admitted yet. Until it is
// seen it is looked for by its id in the newest page of the list rather than asked for by id:
// each 404 of that would be logged as an error in the browser's console.
async function findGeneration(id, seen) {
  if (seen) return getJson(`/v1/voice/generations/${id}`);
  const page = await getJson("/v1/voice/generations", { query: { page_size: 20 } });
  return page.generations.find((generation) => generation.id === id) || null;
}

// max_new_tokens as it was used: the API lowers what does not fit beside the voice prompt.
function tokensUsed(used, asked) {
  return used < asked ? `${used} (of ${asked}: what fit beside the voice prompt)` : String(used);
}

// The line under the progress: the generation's id once it is admitted (with the way to it in
// the history) and the max_new_tokens it runs with once that is known.
const following = {
  reset(id, asked) {
    this.id = id;
    this.asked = Number(asked) || 0;
    this.used = 0;
    $("#gen-id").textContent = id;
    $("#gen-tokens").textContent = "";
    $("#gen-following").hidden = true;
  },

  // The history's word on it: admitted; once sent to a provider (start_time), its parameters are
  // the ones it runs with.
  saw(generation) {
    if (generation.id !== this.id) return;
    this.admitted(generation.start_time ? generation.parameters?.max_new_tokens : 0);
  },

  // Admitted (the request was answered), running with `used` max_new_tokens when known.
  admitted(used) {
    $("#gen-following").hidden = false;
    if (used) this.used = Number(used);
    $("#gen-tokens").textContent = this.used ? `max_new_tokens ${tokensUsed(this.used, this.asked)}` : "";
  },
};

// A stream that broke off after its audio began: the status was already 200, so the
// connection just closes; the history says why the generation failed.
class BrokenStream extends Error {
  constructor(audioSeconds, id, cause) {
    super(String(cause?.message || cause));
    this.audioSeconds = audioSeconds;
    this.id = id;
  }

  async describe() {
    let why = "";
    try {
      const generation = await getJson(`/v1/voice/generations/${this.id}`);
      const message = generation.error_message || "";
      if (generation.error_type) why = ` ${message.charAt(0).toUpperCase()}${message.slice(1)} (${generation.error_type})`;
    } catch {
      // the history is unreachable too: say what we know
    }
    return `The generation stopped after ${seconds(this.audioSeconds)} of audio and did not finish: ` +
      `the connection was closed before the end.${why || ` (${this.message})`}`;
  }
}

function stopPlayback() {
  if (!player || player.stopped) return;
  player.stop();
  $("#gen-stop").hidden = true;
  const playback = $("#gen-playback");
  if (playback.dataset.playback === "playing" || playback.dataset.playback === "generated") {
    playback.dataset.playback = "stopped";
    playback.textContent = generating ? "Streamed playback stopped; the generation goes on." : "Streamed playback stopped.";
  }
}

function playedThrough() {
  $("#gen-stop").hidden = true;
  const playback = $("#gen-playback");
  playback.dataset.playback = "played";
  playback.textContent = "Played while it was generated; play it again below.";
}

async function showFacts(id, asked) {
  const facts = $("#gen-facts");
  facts.replaceChildren();
  const generation = await getJson(`/v1/voice/generations/${id}`);
  const parameters = generation.parameters || {};
  following.admitted(parameters.max_new_tokens);
  const rows = [
    ["Generation", generation.id],
    ["Seed", String(parameters.seed ?? "")],
    ["Duration", seconds(generation.audio_duration_seconds)],
    ["Max new tokens", tokensUsed(parameters.max_new_tokens, Number(asked) || 0)],
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
