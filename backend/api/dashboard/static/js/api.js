// The API client: the session (token, user name, role) kept in sessionStorage, requests with
// the bearer token, and RFC 9457 problem documents turned into ApiError.

const KEY = "finops.session";
const BASE = "/api/v1";
export const ROLES = ["viewer", "operator", "approver", "administrator"];

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export function session() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY));
  } catch {
    return null;
  }
}

function save(value) {
  sessionStorage.setItem(KEY, JSON.stringify(value));
}

export function clearSession() {
  sessionStorage.removeItem(KEY);
}

/** Whether the signed-in user's role is at least `needed` (the API checks it anyway). */
export function can(needed) {
  const current = session();
  return Boolean(current) && ROLES.indexOf(current.role) >= ROLES.indexOf(needed);
}

let onUnauthenticated = () => {};
export function whenSignedOut(callback) {
  onUnauthenticated = callback;
}

/** GET (or `method`) a path under /api/v1; `query` values that are empty are left out. */
export async function api(path, { method = "GET", body, query, auth = true } = {}) {
  const url = new URL(BASE + path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    for (const one of [].concat(value)) {
      if (one !== undefined && one !== null && one !== "") url.searchParams.append(name, one);
    }
  }
  const headers = { Accept: "application/json" };
  const current = session();
  if (auth && current) headers.Authorization = `Bearer ${current.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(0, { detail: `the API cannot be reached (${error.message})` });
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { detail: text };
  }
  if (!response.ok) {
    if (response.status === 401 && auth) {
      clearSession();
      onUnauthenticated("Your session has ended: sign in again.");
    }
    throw new ApiError(response.status, data || {});
  }
  return data;
}

export async function login(username, password) {
  const issued = await api("/auth/login", {
    method: "POST",
    body: { username, password },
    auth: false,
  });
  save({ token: issued.token, username: issued.username, role: null });
  const me = await api("/auth/me");
  save({ token: issued.token, username: me.username, role: me.role });
  return session();
}

export async function logout() {
  try {
    await api("/auth/logout", { method: "POST" });
  } catch {
    // Signed out here whatever the API says: the token is dropped from this tab.
  }
  clearSession();
}
