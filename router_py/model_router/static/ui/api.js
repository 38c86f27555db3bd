// The router's API as the page calls it: this origin only, the user's token
// as a bearer, kept in this tab's sessionStorage.

const STORAGE_KEY = "model-router-token";

export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

export function token() {
  return sessionStorage.getItem(STORAGE_KEY);
}

export function remember(value) {
  sessionStorage.setItem(STORAGE_KEY, value);
}

export function forget() {
  sessionStorage.removeItem(STORAGE_KEY);
}

async function call(method, path, params, body) {
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const response = await fetch(url, {
    method,
    headers: {
      Authorization: `Bearer ${token()}`,
      Accept: "application/json",
      ...(body === undefined ? {} : { "Content-Type": "application/json" }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const answer = await response.json().catch(() => null);
  if (!response.ok) {
    const error = (answer && answer.error) || {};
    throw new ApiError(response.status, error.type || "error", error.message || response.statusText);
  }
  return answer;
}

export const get = (path, params) => call("GET", path, params);
export const post = (path, body = {}) => call("POST", path, null, body);
