// Queue and history: every generation, filtered by status and collection, live while
// something is queued or running; play, download, share.

import { call, getJson, listAll } from "./api.js";
import { $, element, notify, seconds, when } from "./ui.js";

const VISIBILITIES = ["private", "unlisted", "public"];
const LIVE_MS = 1500; // while something is queued or running
const IDLE_MS = 5000; // otherwise, to notice generations started elsewhere
let timer = null;
let visible = false;
let nextToken = "";
let shown = []; // the generations listed, newest first
let library = null; // the ids of the samples in the library, when a generation lacks a voice's name

export function setUp() {
  $("#history-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    refresh();
  });
  $("#filter-status").addEventListener("change", () => refresh());
  $("#history-more").addEventListener("click", () => refresh({ more: true }));
}

export async function show() {
  visible = true;
  await refresh();
}

export function hide() {
  visible = false;
  clearTimeout(timer);
}

function filters() {
  return { status: $("#filter-status").value, collection: $("#filter-collection").value };
}

async function refresh({ more = false } = {}) {
  clearTimeout(timer);
  try {
    if (more) {
      const page = await getJson("/v1/voice/generations", { query: { ...filters(), page_size: 20, page_token: nextToken } });
      shown = shown.concat(page.generations);
      nextToken = page.next_page_token;
    } else {
      // The pages loaded so far, again: statuses change, new ones come first.
      const page = await getJson("/v1/voice/generations", { query: { ...filters(), page_size: Math.max(20, Math.min(100, shown.length)) } });
      shown = page.generations;
      nextToken = page.next_page_token;
    }
  } catch (error) {
    notify(`The history could not be loaded. ${error.describe()}`);
    schedule(IDLE_MS);
    return;
  }
  library = shown.some((generation) => unnamed(generation).length) ? await sampleIds() : null;
  render();
  const busy = shown.some((generation) => generation.status === "queued" || generation.status === "running");
  $("#history-live").textContent = busy ? "Updating live while generations are queued or running…" : "";
  schedule(busy ? LIVE_MS : IDLE_MS);
}

function schedule(delay) {
  clearTimeout(timer);
  if (visible) timer = setTimeout(() => refresh(), delay);
}

function render() {
  const list = $("#generations");
  // Rows are kept (by id) so a playing audio element or a focused control survives an update.
  const existing = new Map([...list.children].map((item) => [item.dataset.generationId, item]));
  const items = shown.map((generation) => {
    const item = existing.get(generation.id);
    if (item && item.dataset.version === version(generation)) return item;
    const fresh = row(generation);
    // A player already loaded (perhaps playing) is kept as it is.
    if (item?.querySelector(".player audio") && generation.status === "succeeded") {
      fresh.querySelector(".player").replaceWith(item.querySelector(".player"));
    }
    return fresh;
  });
  list.replaceChildren(...items);
  $("#history-empty").hidden = shown.length > 0;
  $("#history-more").hidden = !nextToken;
}

function version(generation) {
  return [generation.status, generation.visibility, generation.collection, generation.share_url, voices(generation)].join("|");
}

// The speaker tags whose sample's name the history lacks (generations made before it kept them).
function unnamed(generation) {
  return Object.keys(generation.speakers || {}).filter((tag) => !(generation.speaker_names || {})[tag]);
}

async function sampleIds() {
  try {
    return new Set((await listAll("/v1/voice/samples", "voice_samples")).map((sample) => String(sample.id)));
  } catch {
    return null; // unknown: nothing is said about deleted samples
  }
}

// "S1: Ada, S2: Bob": the names the cloned samples had when the generation was admitted; without
// one, the sample's id, and whether it has been deleted from the library since.
function voices(generation) {
  const names = generation.speaker_names || {};
  return Object.entries(generation.speakers || {})
    .sort(([one], [other]) => one.localeCompare(other, undefined, { numeric: true })) // S1 first, as a map's order is not kept
    .map(([tag, sample]) => {
      if (names[tag]) return `${tag}: ${names[tag]}`;
      const deleted = library && !library.has(String(sample));
      return `${tag}: sample ${sample}${deleted ? " (deleted from your library)" : ""}`;
    })
    .join(", ");
}

function row(generation) {
  const id = `generation-${generation.id}`;
  const parameters = generation.parameters || {};
  const errorPlace = element("p", { class: "error", role: "alert" });
  const took =
    generation.start_time && generation.end_time
      ? `${seconds((new Date(generation.end_time) - new Date(generation.start_time)) / 1000)} to generate`
      : "";
  const speakers = voices(generation);
  const player = element("div", { class: "player" });
  if (generation.status === "succeeded") {
    player.append(
      element("button", { type: "button", "aria-label": `Play ${generation.id}`, onclick: () => play(generation, player, errorPlace) }, "Play"),
      element("button", { type: "button", class: "secondary", "aria-label": `Download ${generation.id}`,
        onclick: () => download(generation) }, "Download"),
    );
  }
  const visibility = element(
    "select",
    { id: `${id}-visibility`, onchange: (event) => update(generation, { visibility: event.target.value }, errorPlace) },
    VISIBILITIES.map((value) => element("option", { value, selected: value === generation.visibility }, value)),
  );
  const share = generation.share_url
    ? element("div", { class: "share" },
        element("label", { for: `${id}-share` }, "Share link"),
        element("input", { id: `${id}-share`, class: "share-url", readonly: true, value: generation.share_url }),
        element("button", { type: "button", class: "secondary", onclick: (event) => copy(generation.share_url, event.target) }, "Copy link"))
    : null;
  return element(
    "li",
    { class: `generation card status-${generation.status}`, id, dataset: { generationId: generation.id, version: version(generation) } },
    element("div", { class: "sample-head" },
      element("span", { class: `badge status` }, generation.status),
      element("code", {}, generation.id),
      element("span", { class: "meta" }, `created ${when(generation.create_time)}`)),
    element("p", { class: "script" }, generation.input),
    element("dl", { class: "facts" },
      fact("Audio", generation.status === "succeeded" ? seconds(generation.audio_duration_seconds) : "—"),
      fact("Time", took || "—"),
      fact("Model", generation.model || "—"),
      fact("Provider", generation.provider || "—"),
      fact("Voices", speakers || "no cloning"),
      fact("Collection", generation.collection || "—"),
      fact("Parameters", Object.entries(parameters).map(([name, value]) => `${name} ${value}`).join(", ")),
      scores(generation.analysis),
      ["failed", "canceled"].includes(generation.status) ? fact("Error", `${generation.error_type}: ${generation.error_message}`) : null),
    player,
    captions(generation),
    element("div", { class: "row" }, element("label", { for: `${id}-visibility` }, "Visibility"), visibility),
    share,
    errorPlace,
  );
}

// What speech recognition made of the audio (README: "Generation analysis"): how much of the script
// it heard, how alike the cloned voices sound to their samples, and best_of's candidates.
function scores(analysis) {
  if (!analysis) return null;
  const words = analysis.words || [];
  const heard = words.filter((word) => word.heard).length;
  const facts = [fact("Heard", `${heard} of ${words.length} words, word error rate ${percent(analysis.word_error_rate)}`)];
  const similarity = Object.entries(analysis.voice_similarity || {}).sort(([one], [other]) => one.localeCompare(other));
  if (similarity.length) {
    facts.push(fact("Voice match", similarity.map(([tag, value]) => `${tag} ${Number(value).toFixed(2)}`).join(", ")));
  }
  const candidates = analysis.candidates || [];
  if (candidates.length > 1) {
    const each = candidates.map((candidate) =>
      `seed ${candidate.seed}: ${candidate.unanalyzed ? "not analyzed" : `score ${Number(candidate.score).toFixed(2)}`}${candidate.chosen ? " (chosen)" : ""}`);
    facts.push(fact("Best of", `${candidates.length}: ${each.join("; ")}`));
  }
  return facts.flat(); // each fact is a term and its definition

}

function percent(value) {
  return `${Math.round(Number(value || 0) * 100)}%`;
}

// The script's words under the player, each timed by the analysis; the one being said is highlighted
// as the audio plays (follow()). Words the recognizer did not hear are marked so.
function captions(generation) {
  const words = generation.analysis?.words || [];
  if (!words.length) return null;
  let speaker = "";
  const parts = [];
  for (const word of words) {
    if (word.speaker !== speaker) {
      speaker = word.speaker;
      parts.push(element("strong", { class: "speaker" }, `${speaker} `));
    }
    parts.push(
      word.heard
        ? element("span", { class: "word", dataset: { start: word.start_seconds, end: word.end_seconds } }, word.text)
        : element("span", { class: "word unheard", title: "not heard in the audio" }, word.text),
      " ",
    );
  }
  return element("p", { class: "captions", "aria-label": `Captions of ${generation.id}` }, parts);
}

// Highlight the word being said while `audio` plays (the row's captions, looked up each time: a row
// drawn again keeps its player but gets new captions).
function follow(audio) {
  let shown = null;
  const tick = () => {
    const words = audio.closest("li")?.querySelectorAll(".captions .word[data-start]") || [];
    const now = audio.currentTime;
    const current = [...words].find((word) => Number(word.dataset.start) <= now && now < Number(word.dataset.end)) || null;
    if (current !== shown) {
      shown?.classList.remove("current");
      shown?.removeAttribute("aria-current");
      current?.classList.add("current");
      current?.setAttribute("aria-current", "true");
      shown = current;
    }
    if (!audio.paused && audio.isConnected) requestAnimationFrame(tick);
  };
  audio.addEventListener("play", () => requestAnimationFrame(tick));
  audio.addEventListener("seeked", tick);
  audio.addEventListener("pause", tick);
}

function fact(term, value) {
  return [element("dt", {}, term), element("dd", { dataset: { fact: term.toLowerCase() } }, value)];
}

// The generation's signed audio_url (no key needed) from the latest listing, whose signature is
// fresh, as a path on this origin: the page's CSP allows media from 'self' alone, and
// GATEWAY_PUBLIC_URL may name the gateway by another address than the page was opened at.
function audioSource(generation) {
  const url = new URL((shown.find((item) => item.id === generation.id) || generation).audio_url);
  return url.pathname + url.search;
}

// The browser streams the audio from its URL and seeks with byte ranges.
function play(generation, player, errorPlace) {
  const audio = element("audio", { controls: true, "aria-label": `Audio of ${generation.id}`,
    onerror: () => (errorPlace.textContent = "The audio could not be loaded: refresh the history and play it again.") });
  audio.src = audioSource(generation);
  player.replaceChildren(audio, player.querySelector("button.secondary") || "");
  follow(audio);
  audio.play().catch(() => {}); // autoplay may be refused; the controls are there
  audio.focus();
}

function download(generation) {
  const link = element("a", { href: audioSource(generation), download: `${generation.id}.wav`, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
}

async function update(generation, changes, errorPlace) {
  try {
    await call(`/v1/voice/generations/${generation.id}`, { method: "PATCH", json: changes });
    notify(`${generation.id} is now ${changes.visibility || "updated"}.`, "ok");
    await refresh();
  } catch (error) {
    errorPlace.textContent = error.describe();
  }
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    // no clipboard permission: select the text so the user can copy it
    button.previousElementSibling.select();
    button.textContent = "Press Ctrl+C";
  }
  setTimeout(() => (button.textContent = "Copy link"), 2000);
}
