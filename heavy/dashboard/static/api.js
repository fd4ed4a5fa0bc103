// The dashboard's session and its calls to the REST API, with the API key as a Bearer token.

export const KEY_STORAGE = "heavy.apiKey";

// What the views share: the key; the route count (bumped on every route: a view opened by an older route must not
// start a second follower); the open event stream's AbortController; the router (app.js sets it), which a 401 re-runs.
export const session = { apiKey: sessionStorage.getItem(KEY_STORAGE) || "", generation: 0, follower: null,
  route: null };

export class ApiError extends Error {
  constructor(status, body, retryAfter = null) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.retryAfter = retryAfter; // the seconds a 429 or 503 said to wait (Retry-After), else null
  }
}

// `path` is relative (v1/...), as is every URL the page uses: resolved against the page, it stays under the prefix a
// proxy serves the API at (HEAVY_API_ROOT_PATH), and is /v1/... at /.
export async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${session.apiKey}`, ...(options.headers || {}) };
  if (options.body) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { ...options, headers });
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

// A 401 (the key revoked, or never valid): back to signing in, saying why
export function handleAuth(error) {
  if (error.status === 401) {
    session.apiKey = ""; sessionStorage.removeItem(KEY_STORAGE);
    document.getElementById("sign-in-error").textContent = error.message;
    session.route();
  } else console.error(error);
}
