// The dashboard: sign-in, navigation between the pages (by the URL's #hash), each shown only to a
// key with the scope its API calls need (so that the page never asks what the key may not).

import { ApiError, caller, forgetKey, hasScope, savedKey, saveKey, whenUnauthorized, whoAmI } from "./api.js";
import * as accounts from "./accounts.js";
import * as historyPage from "./history.js";
import * as keys from "./keys.js";
import * as library from "./library.js";
import * as playground from "./playground.js";
import * as usage from "./usage.js";
import { $, notify } from "./ui.js";

const PAGES = { library, playground, history: historyPage, usage, keys, accounts };
// The scope each page needs (the playground lists the library's voices too).
const NEEDS = {
  library: ["library:read"],
  playground: ["generate", "library:read"],
  history: ["history"],
  usage: ["usage:read"],
  keys: ["keys"],
  accounts: ["admin"],
};
let ready = null;

function allowed(page) {
  return NEEDS[page].every(hasScope);
}

async function signIn(event) {
  event.preventDefault();
  const key = $("#signin-key").value.trim();
  const error = $("#signin-error");
  error.textContent = "";
  if (!key) {
    error.textContent = "Enter your API key.";
    return;
  }
  try {
    await whoAmI(key); // any key may ask who it is
  } catch (failure) {
    error.textContent =
      failure instanceof ApiError && failure.status === 401
        ? "That key was not accepted. Check it, or make a new one with make key ACCOUNT=<name>."
        : `Could not sign in: ${failure.describe ? failure.describe() : failure}`;
    $("#signin-key").setAttribute("aria-invalid", "true");
    $("#signin-key").focus();
    return;
  }
  saveKey(key);
  $("#signin-key").value = "";
  $("#signin-key").removeAttribute("aria-invalid");
  await enter();
}

function signOut(message = "") {
  forgetKey();
  for (const page of Object.values(PAGES)) page.hide?.();
  $("#app").hidden = true;
  $("#signin").hidden = false;
  $("#signin-error").textContent = message;
  notify("");
  $("#signin-key").focus();
}

async function enter() {
  try {
    const me = caller() || (await whoAmI());
    $("#whoami").textContent = `${me.account.name} · ${me.key.name || me.key.prefix}`;
  } catch (failure) {
    signOut(failure.describe ? failure.describe() : String(failure));
    return;
  }
  for (const page of Object.keys(PAGES)) $(`nav a[data-page="${page}"]`).hidden = !allowed(page);
  $("#signin").hidden = true;
  $("#app").hidden = false;
  ready ||= Promise.all(Object.values(PAGES).map((page) => page.setUp?.()));
  await ready;
  if (!location.hash) window.history.replaceState(null, "", `#${firstPage()}`);
  await route();
  $("#main").focus(); // the sign-in form is gone: keyboard users go on from the page's start
}

function firstPage() {
  return Object.keys(PAGES).find(allowed) || "usage";
}

async function route() {
  if (!savedKey()) return;
  const asked = location.hash.slice(1);
  const name = asked in PAGES && allowed(asked) ? asked : firstPage();
  notify("");
  for (const [page, module] of Object.entries(PAGES)) {
    const section = $(`#page-${page}`);
    const showing = page === name;
    if (!showing && !section.hidden) module.hide?.();
    section.hidden = !showing;
    const link = $(`nav a[data-page="${page}"]`);
    if (showing) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${$(`#page-${name} h1`).textContent} · voicemesh`;
  await PAGES[name].show();
  document.body.dataset.page = name; // the page is loaded (tests wait for this)
}

document.addEventListener("DOMContentLoaded", () => {
  $("#signin-form").addEventListener("submit", signIn);
  $("#signout").addEventListener("click", () => signOut("Signed out."));
  window.addEventListener("hashchange", () => {
    delete document.body.dataset.page;
    route().then(() => $("#main").focus());
  });
  whenUnauthorized((failure) =>
    signOut(
      failure.type === "account_disabled"
        ? "This account is disabled: ask its operator to enable it."
        : "Your key is no longer accepted: sign in again.",
    ),
  );
  if (savedKey()) enter();
  else $("#signin-key").focus();
});
