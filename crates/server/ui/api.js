// Calls to the server's API with the user's key (kept in this browser's localStorage, sent as
// `Authorization: Bearer`). A server run with --no-auth needs none and never answers 401, so
// the page never asks for one there.

const STORE = 'autoglm.apiKey';

export function getKey() {
  try {
    return localStorage.getItem(STORE) || '';
  } catch {
    return '';
  }
}

export function setKey(key) {
  if (key) localStorage.setItem(STORE, key);
  else localStorage.removeItem(STORE);
}

export function authHeaders() {
  const key = getKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.code = body?.error?.code ?? null;
    this.param = body?.error?.param ?? null;
  }
}

/** Tells the page a key is needed (or the one given was refused). */
export function needKey(message) {
  window.dispatchEvent(new CustomEvent('autoglm:need-key', { detail: { message } }));
}

export async function api(path, { method = 'GET', body, signal } = {}) {
  const headers = { Accept: 'application/json', ...authHeaders() };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: 'no-store',
  });
  const text = await resp.text();
  let value = null;
  try {
    value = text ? JSON.parse(text) : null;
  } catch {
    value = null;
  }
  if (!resp.ok) {
    const message = value?.error?.message || text || resp.statusText;
    if (resp.status === 401) needKey(getKey() ? 'The server refused this key.' : null);
    throw new ApiError(resp.status, message, value);
  }
  return value;
}
