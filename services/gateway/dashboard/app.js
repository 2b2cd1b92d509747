// The dashboard: sign-in, navigation between the three pages (by the URL's #hash).

import { ApiError, call, forgetKey, savedKey, saveKey, whenUnauthorized } from "./api.js";
import * as historyPage from "./history.js";
import * as library from "./library.js";
import * as playground from "./playground.js";
import { $, notify } from "./ui.js";

const PAGES = { library, playground, history: historyPage };
let ready = null;

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
    await call("/v1/voice/samples", { query: { page_size: 1 }, key }); // any call that needs a key
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
  $("#signin").hidden = true;
  $("#app").hidden = false;
  ready ||= Promise.all(Object.values(PAGES).map((page) => page.setUp?.()));
  await ready;
  if (!location.hash) window.history.replaceState(null, "", "#library");
  await route();
  $("#main").focus(); // the sign-in form is gone: keyboard users go on from the page's start
}

async function route() {
  if (!savedKey()) return;
  const name = location.hash.slice(1) in PAGES ? location.hash.slice(1) : "library";
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
  whenUnauthorized(() => signOut("Your key is no longer accepted: sign in again."));
  if (savedKey()) enter();
  else $("#signin-key").focus();
});
