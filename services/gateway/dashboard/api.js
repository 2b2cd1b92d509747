// The public HTTP API, called with the signed-in user's key (kept in sessionStorage:
// this tab's session only). Errors come back as ApiError with the API's own type,
// message and param, plus Retry-After when the API sends one.

const KEY = "voicemesh.key";

export function savedKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function saveKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY);
  signedIn = null;
}

// Who is signed in: the account and the key (its scopes), from GET /v1/me, which any key may call.
let signedIn = null;
export async function whoAmI(key = savedKey()) {
  signedIn = await getJson("/v1/me", { key });
  return signedIn;
}

export function caller() {
  return signedIn;
}

export function hasScope(scope) {
  return Boolean(signedIn && signedIn.key.scopes.includes(scope));
}

export class ApiError extends Error {
  constructor(status, type, message, param, retryAfter) {
    super(message);
    this.status = status;
    this.type = type;
    this.param = param || null;
    this.retryAfter = retryAfter;
  }

  // A sentence for people: what went wrong and what to do, then the API's own words.
  describe() {
    const wait = this.retryAfter ? ` Try again in ${this.retryAfter} s.` : " Try again shortly.";
    const plain = {
      unauthorized: "The API key was not accepted: check it, or sign in with another.",
      account_disabled: "This account is disabled: ask its operator to enable it.",
      insufficient_scope: "This key may not do that: use a key with the scope it needs.",
      quota_exceeded: "This account has used its monthly quota." + wait,
      rate_limited: "This account is over its generation limit." + wait,
      synth_busy: "The voice provider is busy." + wait,
      stt_busy: "Speech recognition is busy." + wait,
      uploads_busy: "Too many uploads at once." + wait,
      no_provider: "No voice-generation provider is online right now.",
      upstream_error: "The generation failed at the voice provider.",
      database_unavailable: "The database is unavailable." + wait,
      unavailable: "A service is unavailable." + wait,
      network: "The gateway could not be reached.",
    }[this.type];
    return plain ? `${plain} (${this.type}: ${this.message})` : `${this.message} (${this.type})`;
  }
}

// Called when the key stops working (a 401 while signed in).
let onUnauthorized = () => {};
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

// fetch() with the key; `json` becomes the JSON body, `query` the query string.
// Returns the Response when it is OK, throws ApiError otherwise.
export async function call(path, { method = "GET", json, body, query, key = savedKey() } = {}) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Authorization: `Bearer ${key}` };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(url, { method, headers, body });
  } catch (error) {
    throw new ApiError(0, "network", String(error.message || error));
  }
  if (response.ok) return response;
  let error = { type: `http_${response.status}`, message: response.statusText };
  try {
    error = (await response.json()).error || error;
  } catch {
    // not JSON: keep the status line
  }
  const failure = new ApiError(response.status, error.type, error.message, error.param, response.headers.get("Retry-After"));
  // A key that stops working (revoked, expired, its account disabled) signs the page out.
  if ((response.status === 401 || failure.type === "account_disabled") && key === savedKey()) onUnauthorized(failure);
  throw failure;
}

export async function getJson(path, options) {
  return (await call(path, options)).json();
}

// Every page of a list endpoint (`field` names the list in each page): it follows
// next_page_token to the last page, however many there are; 100 a page unless `query`
// asks for another page_size. A token the API hands back twice is an error, not a loop.
export async function listAll(path, field, query = {}) {
  const items = [];
  const seen = new Set();
  let token = "";
  do {
    seen.add(token);
    const body = await getJson(path, { query: { page_size: 100, ...query, page_token: token } });
    items.push(...(body[field] || []));
    token = body.next_page_token || "";
    if (seen.has(token) && token) {
      throw new ApiError(0, "pagination", `${path} gave the same next_page_token twice (after ${items.length} items)`);
    }
  } while (token);
  return items;
}

// The API's documented field rules (bounds, defaults, descriptions) from /openapi.json.
let openapi;
export async function schema(name) {
  openapi ||= fetch("/openapi.json").then((response) => response.json());
  return (await openapi).components.schemas[name];
}
