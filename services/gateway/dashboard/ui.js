// Small DOM helpers shared by the pages.

export const $ = (selector, root = document) => root.querySelector(selector);

// element("button", {type: "button", class: "x", onclick: f}, "text", child...)
export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.flat().filter((child) => child !== undefined && child !== null && child !== false));
  return node;
}

// The notice under the header: errors and confirmations for the whole page.
export function notify(message, kind = "error") {
  const notice = $("#notice");
  notice.textContent = message;
  notice.className = `notice ${kind}`;
  notice.hidden = !message;
}

// An API error next to the field it names (param), or in `fallback` when it names none.
// `fields` maps API field names to the id prefix of their input (the error element is `${prefix}-error`).
export function showFieldError(error, fields, fallback) {
  clearFieldErrors(fields, fallback);
  const prefix = error.param && fields[error.param];
  const message = error.describe ? error.describe() : String(error);
  if (prefix) {
    const input = document.getElementById(prefix);
    const place = document.getElementById(`${prefix}-error`);
    if (input) input.setAttribute("aria-invalid", "true");
    if (place) {
      place.textContent = message;
      input?.focus();
      return;
    }
  }
  fallback.textContent = message;
}

export function clearFieldErrors(fields, fallback) {
  for (const prefix of Object.values(fields)) {
    document.getElementById(prefix)?.removeAttribute("aria-invalid");
    const place = document.getElementById(`${prefix}-error`);
    if (place) place.textContent = "";
  }
  fallback.textContent = "";
}

export function when(timestamp) {
  return timestamp ? new Date(timestamp).toLocaleString() : "";
}

export function seconds(value) {
  return `${Number(value || 0).toFixed(1)} s`;
}
