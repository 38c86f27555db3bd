// The page: sign-in, the four views, and the refresh loop (every few seconds,
// paused while the tab is hidden).

import { ApiError, forget, get, remember, token } from "./api.js";
import { esc } from "./format.js";
import * as fleet from "./fleet.js";
import * as requests from "./requests.js";
import * as rollouts from "./rollouts.js";
import * as traffic from "./traffic.js";

const VIEWS = { fleet, traffic, rollouts, requests };
const REFRESH_MS = 5000;

const $ = (id) => document.getElementById(id);

// What every view is given: who is signed in, what each view remembers
// between refreshes (range, filters), and a way to redraw now.
const ctx = { identity: null, state: {}, refresh: () => refresh() };
let current = null;
let timer = null;
let generation = 0; // a newer refresh supersedes an older one still loading

function viewName() {
  const name = location.hash.slice(1);
  return name in VIEWS ? name : "fleet";
}

function showSignIn(message) {
  forget();
  ctx.identity = null;
  ctx.state = {}; // the next user starts from the defaults
  current = null;
  stop();
  $("console").hidden = true;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message || "";
  $("token").focus();
}

async function signIn() {
  try {
    ctx.identity = await get("/api/me");
  } catch (error) {
    showSignIn(error instanceof ApiError && error.status === 401
      ? "That key or token was not accepted."
      : `Sign-in failed: ${error.message}`);
    return;
  }
  const id = ctx.identity;
  $("sign-in").hidden = true;
  $("console").hidden = false;
  $("sign-out").hidden = false;
  $("who").innerHTML = `<span class="role" data-role="${esc(id.role)}">${esc(id.role)}</span> ` +
    `${esc(id.userId || id.keyId)}` +
    (id.workspaceId ? ` · workspace <strong id="scope">${esc(id.workspaceId)}</strong>` : "");
  document.body.dataset.role = id.role;
  show();
}

function show() {
  const name = viewName();
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const selected = tab.id === `tab-${name}`;
    tab.setAttribute("aria-selected", String(selected));
    if (selected) $("view").setAttribute("aria-labelledby", tab.id);
  }
  if (current !== name) {
    current = name;
    const view = VIEWS[name];
    $("view").dataset.view = name;
    $("view").innerHTML = `<h2>${esc(view.TITLE)}</h2>` +
      `<div class="controls">${view.controls ? view.controls(ctx) : ""}</div><div id="view-data"></div>`;
    if (view.bindControls) view.bindControls($("view"), ctx);
  }
  refresh();
}

async function refresh() {
  stop();
  if (!ctx.identity) return;
  const mine = ++generation;
  const name = current;
  const view = VIEWS[name];
  $("view").setAttribute("aria-busy", "true");
  try {
    const html = await view.render(ctx);
    if (mine !== generation) return;
    $("view-data").innerHTML = html;
    if (view.bind) view.bind($("view-data"), ctx);
    $("status").textContent = `Updated ${new Date().toISOString().slice(11, 19)} UTC`;
    $("status").classList.remove("error");
    $("view").dataset.loaded = name;
    // When each view was first shown, in ms since the page was asked for.
    if (!performance.getEntriesByName(`${name}-shown`).length) performance.mark(`${name}-shown`);
  } catch (error) {
    if (mine !== generation) return;
    if (error instanceof ApiError && error.status === 401) {
      showSignIn("The key or token is no longer accepted: sign in again.");
      return;
    }
    $("status").textContent = `Could not refresh: ${error.message}`;
    $("status").classList.add("error");
  } finally {
    if (mine === generation) {
      $("view").setAttribute("aria-busy", "false");
      if (!document.hidden && ctx.identity) timer = setTimeout(refresh, REFRESH_MS);
    }
  }
}

function stop() {
  clearTimeout(timer);
  timer = null;
}

document.addEventListener("visibilitychange", () => {
  if (document.hidden) stop();
  else if (ctx.identity) refresh();
});
window.addEventListener("hashchange", () => ctx.identity && show());

$("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("token").value.trim();
  if (!value) return;
  remember(value);
  $("token").value = "";
  signIn();
});
$("sign-out").addEventListener("click", () => showSignIn("Signed out."));

if (token()) signIn();
else showSignIn();
