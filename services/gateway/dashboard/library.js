// Voice library: the samples, uploading a file or a recording, editing, default, delete.

import { call, getJson, listAll } from "./api.js";
import { Recorder, drawWaveform } from "./audio.js";
import { $, clearFieldErrors, element, notify, seconds, showFieldError, when } from "./ui.js";

const UPLOAD_FIELDS = {
  audio: "upload-file",
  speaker_name: "upload-speaker",
  transcript: "upload-transcript",
  collection: "upload-collection",
};
const VISIBILITIES = ["private", "unlisted", "public"];

let chosen = null; // {blob, name}: the audio the form will upload
let recorder = null;
let previewUrl = "";
const audios = new Map(); // sample id -> {blob, url} of its audio (kept while the sample is listed)

export function setUp() {
  const form = $("#upload-form");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    upload();
  });
  $("#upload-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) choose(file, file.name);
  });
  const dropzone = $("#dropzone");
  dropzone.addEventListener("dragover", (event) => {
    event.preventDefault();
    dropzone.classList.add("over");
  });
  dropzone.addEventListener("dragleave", () => dropzone.classList.remove("over"));
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropzone.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) choose(file, file.name);
  });
  $("#record-start").addEventListener("click", startRecording);
  $("#record-stop").addEventListener("click", stopRecording);
  $("#upload-clear").addEventListener("click", () => {
    choose(null);
    $("#record-start").focus();
  });
}

export async function show() {
  await refresh();
}

function choose(blob, name = "") {
  chosen = blob ? { blob, name } : null;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = blob ? URL.createObjectURL(blob) : "";
  $("#upload-preview").src = previewUrl;
  $("#upload-chosen-name").textContent = blob ? `Ready to upload: ${name} (${Math.round(blob.size / 1024)} KB)` : "";
  $("#upload-chosen").hidden = !blob;
  $("#upload-audio-error").textContent = "";
  if (!blob) $("#upload-file").value = "";
}

async function startRecording() {
  choose(null);
  const status = $("#record-status");
  recorder = new Recorder((level) => ($("#record-level").value = level));
  try {
    await recorder.start();
  } catch (error) {
    recorder = null;
    status.textContent = "";
    $("#upload-audio-error").textContent = `The microphone could not be used: ${error.message || error}`;
    return;
  }
  status.textContent = "Recording… speak now, then press Stop.";
  $("#record-start").disabled = true;
  $("#record-stop").disabled = false;
  $("#record-stop").focus();
}

async function stopRecording() {
  if (!recorder) return;
  const blob = await recorder.stop();
  recorder = null;
  $("#record-start").disabled = false;
  $("#record-stop").disabled = true;
  $("#record-status").textContent = "Recorded: listen to it below, then upload it or record again.";
  const extension = blob.type.includes("ogg") ? "ogg" : blob.type.includes("mp4") ? "m4a" : "webm";
  choose(blob, `recording.${extension}`);
}

async function upload() {
  const status = $("#upload-status");
  clearFieldErrors(UPLOAD_FIELDS, $("#upload-audio-error"));
  if (!chosen) {
    $("#upload-audio-error").textContent = "Choose, drop or record some audio first.";
    return;
  }
  const form = new FormData();
  form.append("audio", chosen.blob, chosen.name);
  form.append("speaker_name", $("#upload-speaker").value);
  form.append("transcript", $("#upload-transcript").value);
  form.append("visibility", $("#upload-visibility").value);
  form.append("collection", $("#upload-collection").value);
  form.append("is_default", $("#upload-default").checked ? "true" : "false");
  const button = $("#upload-submit");
  button.disabled = true;
  status.textContent = $("#upload-transcript").value.trim()
    ? "Uploading…"
    : "Uploading… speech recognition is writing the transcript.";
  try {
    const sample = await getJson("/v1/voice/samples", { method: "POST", body: form });
    status.textContent = `Uploaded ${sample.speaker_name}: ${
      sample.transcript_source === "stt" ? "transcript filled in by speech recognition; check it below (Edit corrects it)." : "saved."
    }`;
    choose(null);
    $("#upload-form").reset();
    $("#record-status").textContent = "";
    await refresh();
    document.getElementById(`sample-${sample.id}-edit-button`)?.focus();
  } catch (error) {
    status.textContent = "";
    showFieldError(error, UPLOAD_FIELDS, $("#upload-audio-error"));
  } finally {
    button.disabled = false;
  }
}

export async function refresh() {
  let samples;
  try {
    samples = await listAll("/v1/voice/samples", "voice_samples");
  } catch (error) {
    notify(`The samples could not be loaded. ${error.describe()}`);
    return;
  }
  const list = $("#samples");
  list.replaceChildren(...samples.map(card));
  $("#samples-empty").hidden = samples.length > 0;
  const listed = new Set(samples.map((sample) => String(sample.id)));
  for (const [id, audio] of audios) {
    if (!listed.has(id)) {
      URL.revokeObjectURL(audio.url);
      audios.delete(id);
    }
  }
  await Promise.all(samples.map(loadAudio));
}

// What the upload's check found that may make the sample clone poorly (it is stored all the same).
function warnings(sample) {
  if (!sample.warnings?.length) return null;
  return element("ul", { class: "warnings", "aria-label": "Upload warnings" },
    sample.warnings.map((warning) => element("li", { class: "warning", dataset: { code: warning.code } }, warning.message)));
}

// A sample's card: compact (what it is, its waveform and player, its actions); Edit opens
// its form in place, Cancel (or Escape) closes it unchanged, Save closes it saved.
function card(sample) {
  const id = `sample-${sample.id}`;
  const name = sample.speaker_name;
  const errorPlace = element("p", { id: `${id}-error`, class: "error", role: "alert" });
  const fields = {
    speaker_name: `${id}-speaker`,
    transcript: `${id}-transcript`,
    visibility: `${id}-visibility`,
    collection: `${id}-collection`,
  };
  const editButton = element("button", {
    type: "button", class: "secondary", id: `${id}-edit-button`, "aria-label": `Edit ${name}`,
    "aria-expanded": "false", "aria-controls": `${id}-edit`, onclick: () => (editor.hidden ? openEditor() : closeEditor()),
  }, "Edit");
  const editor = element(
    "form",
    {
      id: `${id}-edit`,
      class: "sample-edit",
      novalidate: true,
      hidden: true,
      "aria-label": `Edit ${name}`,
      onsubmit: async (event) => {
        event.preventDefault();
        await save(sample, fields, errorPlace);
      },
      onkeydown: (event) => {
        if (event.key === "Escape") {
          event.preventDefault();
          closeEditor();
        }
      },
    },
    element("div", { class: "field" }, element("label", { for: fields.speaker_name }, "Speaker name"),
      element("input", { id: fields.speaker_name, value: name, required: true, "aria-describedby": `${fields.speaker_name}-error` }),
      element("p", { id: `${fields.speaker_name}-error`, class: "error" })),
    element("div", { class: "field wide" },
      element("label", { for: fields.transcript }, sample.transcript_source === "stt" ? "Transcript (speech recognition; edit to correct)" : "Transcript"),
      element("textarea", { id: fields.transcript, rows: 2, "aria-describedby": `${fields.transcript}-error` }, sample.transcript),
      element("p", { id: `${fields.transcript}-error`, class: "error" })),
    element("div", { class: "field" }, element("label", { for: fields.visibility }, "Visibility"),
      element("select", { id: fields.visibility },
        VISIBILITIES.map((value) => element("option", { value, defaultSelected: value === sample.visibility }, value)))),
    element("div", { class: "field" }, element("label", { for: fields.collection }, "Collection"),
      element("input", { id: fields.collection, value: sample.collection, "aria-describedby": `${fields.collection}-error` }),
      element("p", { id: `${fields.collection}-error`, class: "error" })),
    element("div", { class: "row" },
      element("button", { type: "submit", "aria-label": `Save changes to ${name}` }, "Save changes"),
      element("button", { type: "button", class: "secondary", "aria-label": `Cancel editing ${name}`, onclick: closeEditor }, "Cancel")),
  );

  function openEditor() {
    editor.hidden = false;
    editButton.setAttribute("aria-expanded", "true");
    document.getElementById(fields.speaker_name).focus();
  }

  function closeEditor() {
    editor.reset(); // back to the sample's own values
    clearFieldErrors(fields, errorPlace);
    editor.hidden = true;
    editButton.setAttribute("aria-expanded", "false");
    editButton.focus();
  }

  const facts = [seconds(sample.duration_seconds), sample.original_format || "audio", `added ${when(sample.create_time)}`];
  if (sample.visibility !== "private") facts.push(sample.visibility);
  if (sample.collection) facts.push(`collection ${sample.collection}`);
  if (sample.transcript_source === "stt") facts.push("transcript by speech recognition");
  return element(
    "li",
    { class: "sample card", id, dataset: { sampleId: sample.id } },
    element("div", { class: "sample-head" },
      element("h3", {}, name),
      sample.is_default ? element("span", { class: "badge" }, "Default") : null,
      element("span", { class: "meta" }, facts.join(" · "))),
    sample.transcript
      ? element("p", { class: "transcript" }, sample.transcript)
      : element("p", { class: "hint" }, "No transcript yet: press Edit to add one."),
    warnings(sample),
    element("canvas", { class: "waveform", role: "img", "aria-label": `Waveform of ${name}'s sample` }),
    element("audio", { controls: true, preload: "metadata", "aria-label": `Play ${name}'s sample` }),
    element("div", { class: "row sample-actions" },
      editButton,
      sample.is_default
        ? null
        : element("button", { type: "button", class: "secondary", "aria-label": `Make ${name} the default`,
            onclick: () => makeDefault(sample, errorPlace) }, "Make default"),
      element("button", { type: "button", class: "danger", "aria-label": `Delete ${name}`,
        onclick: () => remove(sample, errorPlace) }, "Delete")),
    editor,
    errorPlace,
  );
}

async function loadAudio(sample) {
  const item = document.getElementById(`sample-${sample.id}`);
  try {
    let audio = audios.get(String(sample.id));
    if (!audio) {
      const blob = await (await call(`/v1/voice/samples/${sample.id}/audio`)).blob();
      audio = { blob, url: URL.createObjectURL(blob) };
      audios.set(String(sample.id), audio);
    }
    item.querySelector("audio").src = audio.url;
    await drawWaveform(item.querySelector("canvas"), audio.blob);
  } catch (error) {
    item.querySelector(".error").textContent = `Its audio could not be loaded: ${error.describe ? error.describe() : error}`;
  }
}

async function save(sample, fields, errorPlace) {
  const changes = {};
  const speaker = document.getElementById(fields.speaker_name).value;
  const transcript = document.getElementById(fields.transcript).value;
  const visibility = document.getElementById(fields.visibility).value;
  const collection = document.getElementById(fields.collection).value;
  if (speaker !== sample.speaker_name) changes.speaker_name = speaker;
  if (transcript !== sample.transcript) changes.transcript = transcript;
  if (visibility !== sample.visibility) changes.visibility = visibility;
  if (collection !== sample.collection) changes.collection = collection;
  clearFieldErrors(fields, errorPlace);
  if (!Object.keys(changes).length) {
    errorPlace.textContent = "Nothing changed.";
    return;
  }
  try {
    await call(`/v1/voice/samples/${sample.id}`, { method: "PATCH", json: changes });
    notify(`Saved ${speaker}.`, "ok");
    await refresh();
  } catch (error) {
    showFieldError(error, fields, errorPlace);
  }
}

async function makeDefault(sample, errorPlace) {
  try {
    await call(`/v1/voice/samples/${sample.id}`, { method: "PATCH", json: { is_default: true } });
    notify(`${sample.speaker_name} is now the default sample.`, "ok");
    await refresh();
  } catch (error) {
    errorPlace.textContent = error.describe();
  }
}

async function remove(sample, errorPlace) {
  if (!confirm(`Delete the sample "${sample.speaker_name}"? This cannot be undone.`)) return;
  try {
    await call(`/v1/voice/samples/${sample.id}`, { method: "DELETE" });
    notify(`Deleted ${sample.speaker_name}.`, "ok");
    await refresh();
  } catch (error) {
    errorPlace.textContent = error.describe();
  }
}
