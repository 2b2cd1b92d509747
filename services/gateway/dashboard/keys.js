// API keys: the account's keys (name, prefix, scopes, created, last used, expiry), a new key
// (its secret shown once), rename and revoke. Needs the `keys` scope; a new key gets at most the
// scopes of the key signed in.

import { call, caller, getJson } from "./api.js";
import { $, clearFieldErrors, element, notify, showFieldError, when } from "./ui.js";

// Every scope, in the API's order, and what it lets a key do.
export const SCOPES = {
  "library:read": "read the voice library",
  "library:write": "upload, change and delete samples",
  generate: "generate speech and dialogue",
  history: "read, share and delete generations",
  predictions: "the hosted predictor's API",
  "usage:read": "read usage and quotas",
  keys: "manage this account's keys",
  admin: "operators: every account",
};
const FIELDS = { name: "key-name", scopes: "key-scopes", expire_time: "key-expiry" };
let shownKeys = [];

export function setUp() {
  $("#key-form").addEventListener("submit", create);
  $("#key-secret-done").addEventListener("click", () => {
    $("#key-secret-value").value = "";
    $("#key-secret").hidden = true;
  });
  $("#key-secret-copy").addEventListener("click", (event) => copySecret($("#key-secret-value"), event.target));
}

export async function show() {
  renderScopes();
  await refresh();
}

export function hide() {
  $("#key-secret-value").value = ""; // the secret is not kept on screen once the page is left
  $("#key-secret").hidden = true;
}

function renderScopes() {
  const mine = caller().key.scopes;
  const boxes = Object.entries(SCOPES).map(([scope, about]) => {
    const id = `key-scope-${scope.replace(":", "-")}`;
    const own = mine.includes(scope);
    return element("div", { class: "field check" },
      element("input", { id, type: "checkbox", name: "scopes", value: scope, checked: own && scope !== "admin", disabled: !own }),
      element("label", { for: id }, scope, " ", element("span", { class: "meta" }, own ? about : `${about} (this key lacks it)`)));
  });
  $("#key-scopes").replaceChildren(...boxes);
}

async function refresh() {
  try {
    shownKeys = (await getJson("/v1/keys")).keys;
  } catch (error) {
    notify(`The keys could not be loaded. ${error.describe()}`);
    return;
  }
  const current = caller().key.id;
  $("#keys").replaceChildren(...shownKeys.map((key) => row(key, key.id === current)));
}

function row(key, current) {
  const errorPlace = element("p", { class: "error", role: "alert" });
  const nameId = `key-${key.id}-name`;
  const name = element("input", { id: nameId, value: key.name, class: "inline" });
  return element("li", { class: "key card", dataset: { keyId: key.id } },
    element("div", { class: "sample-head" },
      element("h3", {}, key.name || "(no name)"),
      element("code", {}, `${key.prefix}…`),
      current ? element("span", { class: "badge" }, "this key") : null),
    element("dl", { class: "facts" },
      fact("Scopes", key.scopes.join(", ")),
      fact("Created", when(key.create_time)),
      fact("Last used", key.last_used_time ? when(key.last_used_time) : "never"),
      fact("Expires", key.expire_time ? when(key.expire_time) : "never")),
    element("div", { class: "row" },
      element("label", { for: nameId }, "Name"),
      name,
      element("button", { type: "button", class: "secondary", "aria-label": `Rename ${key.prefix}`,
        onclick: () => rename(key, name.value, errorPlace) }, "Rename"),
      element("button", { type: "button", class: "danger", "aria-label": `Revoke ${key.prefix}`,
        onclick: () => revoke(key, current, errorPlace) }, "Revoke")),
    errorPlace);
}

function fact(term, value) {
  return [element("dt", {}, term), element("dd", { dataset: { fact: term.toLowerCase() } }, value)];
}

async function create(event) {
  event.preventDefault();
  clearFieldErrors(FIELDS, $("#key-error"));
  const scopes = [...document.querySelectorAll("#key-scopes input:checked")].map((box) => box.value);
  const days = Number($("#key-expiry").value || 0);
  const body = { name: $("#key-name").value, scopes };
  if (days) body.expire_time = new Date(Date.now() + days * 86400_000).toISOString();
  try {
    const made = await getJson("/v1/keys", { method: "POST", json: body });
    $("#key-secret-value").value = made.secret;
    $("#key-secret").hidden = false;
    $("#key-secret-value").focus();
    $("#key-secret-value").select();
    $("#key-name").value = "";
    notify(`Created the key ${made.key.prefix}… Copy it now: it is not shown again.`, "ok");
    await refresh();
  } catch (error) {
    showFieldError(error, FIELDS, $("#key-error"));
  }
}

async function rename(key, name, errorPlace) {
  errorPlace.textContent = "";
  try {
    await call(`/v1/keys/${key.id}`, { method: "PATCH", json: { name } });
    notify(`Renamed ${key.prefix}….`, "ok");
    await refresh();
  } catch (error) {
    errorPlace.textContent = error.describe();
  }
}

async function revoke(key, current, errorPlace) {
  const warning = current ? " It is the key you are signed in with: you will be signed out." : "";
  if (!confirm(`Revoke the key ${key.name || key.prefix}? It stops working at once.${warning}`)) return;
  try {
    await call(`/v1/keys/${key.id}`, { method: "DELETE" });
    notify(`Revoked ${key.prefix}….`, "ok");
    if (!current) await refresh();
    else await getJson("/v1/me").catch(() => {}); // its 401 signs the page out
  } catch (error) {
    errorPlace.textContent = error.describe();
  }
}

export async function copySecret(input, button) {
  const label = button.textContent;
  try {
    await navigator.clipboard.writeText(input.value);
    button.textContent = "Copied";
  } catch {
    input.select(); // no clipboard permission: selected for Ctrl+C
    button.textContent = "Press Ctrl+C";
  }
  setTimeout(() => (button.textContent = label), 2000);
}
