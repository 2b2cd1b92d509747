// Accounts, for operators (a key with the admin scope): every account with its quotas and
// limits, a new account, a key for it (shown once), its monthly quotas, disable and enable,
// and delete with everything it has (after a confirmation).

import { call, getJson, listAll } from "./api.js";
import { copySecret } from "./keys.js";
import { $, clearFieldErrors, element, notify, showFieldError, when } from "./ui.js";

const QUOTAS = { monthly_audio_seconds: "audio seconds", monthly_characters: "characters", monthly_generations: "generations" };
const FIELDS = {
  name: "account-name",
  monthly_audio_seconds: "account-audio",
  monthly_characters: "account-characters",
  monthly_generations: "account-generations",
};

export function setUp() {
  $("#account-form").addEventListener("submit", create);
  $("#account-secret-done").addEventListener("click", () => {
    $("#account-secret-value").value = "";
    $("#account-secret").hidden = true;
  });
  $("#account-secret-copy").addEventListener("click", (event) => copySecret($("#account-secret-value"), event.target));
}

export async function show() {
  await refresh();
}

export function hide() {
  $("#account-secret-value").value = "";
  $("#account-secret").hidden = true;
}

async function refresh() {
  let accounts;
  try {
    accounts = await listAll("/v1/accounts", "accounts");
  } catch (error) {
    notify(`The accounts could not be loaded. ${error.describe()}`);
    return;
  }
  $("#accounts").replaceChildren(...accounts.map(row));
}

function quotaText(account) {
  const set = Object.entries(QUOTAS).filter(([field]) => account[field] !== undefined);
  return set.length ? set.map(([field, unit]) => `${account[field]} ${unit}`).join(", ") + " a month" : "none";
}

function row(account) {
  const errorPlace = element("p", { class: "error", role: "alert" });
  const id = `account-${account.id}`;
  const inputs = Object.fromEntries(
    Object.entries(QUOTAS).map(([field, unit]) => [
      field,
      element("input", { id: `${id}-${field}`, type: "number", min: 0, step: "any", value: account[field] ?? "", placeholder: "no quota" }),
    ]),
  );
  return element("li", { class: `account card${account.disabled ? " disabled" : ""}`, id, dataset: { accountId: account.id, name: account.name } },
    element("div", { class: "sample-head" },
      element("h3", {}, account.name),
      element("span", { class: "meta" }, `id ${account.id}, created ${when(account.create_time)}`),
      account.disabled ? element("span", { class: "badge disabled" }, "disabled") : null),
    element("dl", { class: "facts" },
      element("dt", {}, "Quotas"), element("dd", { dataset: { fact: "quotas" } }, quotaText(account))),
    element("div", { class: "fields" },
      ...Object.entries(QUOTAS).map(([field, unit]) =>
        element("div", { class: "field" }, element("label", { for: `${id}-${field}` }, `Monthly ${unit}`), inputs[field]))),
    element("div", { class: "row" },
      element("button", { type: "button", class: "secondary", onclick: () => setQuotas(account, inputs, errorPlace) }, "Save quotas"),
      element("button", { type: "button", class: "secondary", onclick: () => newKey(account, errorPlace) }, "New key"),
      element("button", { type: "button", class: "secondary", onclick: () => setDisabled(account, !account.disabled, errorPlace) },
        account.disabled ? "Enable" : "Disable"),
      element("button", { type: "button", class: "danger", onclick: () => remove(account, errorPlace) }, "Delete")),
    errorPlace);
}

function quotaValue(text, remove) {
  if (text.trim() === "") return remove ? -1 : undefined; // empty: no quota
  return Number(text);
}

async function create(event) {
  event.preventDefault();
  clearFieldErrors(FIELDS, $("#account-error"));
  const body = { name: $("#account-name").value };
  for (const [field, prefix] of Object.entries(FIELDS)) {
    if (field !== "name") body[field] = quotaValue($(`#${prefix}`).value, false);
  }
  try {
    const made = await getJson("/v1/accounts", { method: "POST", json: body });
    notify(`Created the account ${made.name} (id ${made.id}). Give it a key with New key.`, "ok");
    $("#account-form").reset();
    await refresh();
  } catch (error) {
    showFieldError(error, FIELDS, $("#account-error"));
  }
}

async function setQuotas(account, inputs, errorPlace) {
  errorPlace.textContent = "";
  const body = Object.fromEntries(Object.entries(inputs).map(([field, input]) => [field, quotaValue(input.value, true)]));
  try {
    await call(`/v1/accounts/${account.id}`, { method: "PATCH", json: body });
    notify(`Saved the quotas of ${account.name}.`, "ok");
    await refresh();
  } catch (error) {
    errorPlace.textContent = error.describe();
  }
}

async function setDisabled(account, disabled, errorPlace) {
  try {
    await call(`/v1/accounts/${account.id}`, { method: "PATCH", json: { disabled } });
    notify(`${account.name} is ${disabled ? "disabled: none of its keys works" : "enabled again"}.`, "ok");
    await refresh();
  } catch (error) {
    errorPlace.textContent = error.describe();
  }
}

async function newKey(account, errorPlace) {
  try {
    const made = await getJson(`/v1/accounts/${account.id}/keys`, { method: "POST", json: { name: "from the dashboard" } });
    $("#account-secret-name").textContent = account.name;
    $("#account-secret-value").value = made.secret;
    $("#account-secret").hidden = false;
    $("#account-secret-value").focus();
    $("#account-secret-value").select();
  } catch (error) {
    errorPlace.textContent = error.describe();
  }
}

async function remove(account, errorPlace) {
  if (!confirm(`Delete the account ${account.name} with all its samples, generations, files and keys? This cannot be undone.`)) return;
  try {
    await call(`/v1/accounts/${account.id}`, { method: "DELETE" });
    notify(`Deleted ${account.name} and everything it had.`, "ok");
    await refresh();
  } catch (error) {
    errorPlace.textContent = error.describe();
  }
}
