// Requests: the latest routed requests with their attempts, filterable; the
// config version the router runs and the audit log.

import { get } from "./api.js";
import { NONE, esc, int, ms, time, usd } from "./format.js";
import { auditLog, mayReadAudit } from "./shapes.js";

export const TITLE = "Requests";

const LATEST = 200;
const AUDIT_ENTRIES = 50;

const STATUSES = {
  "": "any status",
  ok: "succeeded (2xx)",
  client: "refused (4xx)",
  failed: "failed (5xx)",
};
const statusMatches = (filter, status) =>
  !filter || (filter === "ok" ? status < 300 : filter === "client" ? status >= 400 && status < 500 : status >= 500);

function select(id, label, options, chosen) {
  return `<label for="${id}">${esc(label)}</label><select id="${id}">` +
    Object.entries(options).map(([value, text]) =>
      `<option value="${esc(value)}"${value === chosen ? " selected" : ""}>${esc(text)}</option>`).join("") +
    `</select>`;
}

function filters(ctx) {
  return (ctx.state.requests ||= { workspace: "", model: "", status: "" });
}

export function controls(ctx) {
  const f = filters(ctx);
  return `<div class="filters" role="group" aria-label="Filter requests">` +
    select("filter-workspace", "Workspace", { "": "all workspaces" }, f.workspace) +
    select("filter-model", "Model", { "": "all models" }, f.model) +
    select("filter-status", "Status", STATUSES, f.status) + `</div>`;
}

export function bindControls(root, ctx) {
  const f = filters(ctx);
  for (const name of ["workspace", "model", "status"]) {
    root.querySelector(`#filter-${name}`).addEventListener("change", (event) => {
      f[name] = event.target.value;
      ctx.refresh();
    });
  }
}

// Offer every workspace and model seen, keeping the choice.
function offer(id, all, values, chosen) {
  const element = document.getElementById(id);
  const wanted = ["", ...[...new Set([...values, chosen].filter(Boolean))].sort()];
  const have = [...element.options].map((o) => o.value);
  if (have.join("\n") === wanted.join("\n")) return;
  element.innerHTML = wanted.map((v) =>
    `<option value="${esc(v)}"${v === chosen ? " selected" : ""}>${esc(v || all)}</option>`).join("");
}

function attempts(r) {
  const list = r.attemptDetails || [];
  if (!list.length) return `${int(r.attempts)}`;
  const items = list.map((a) =>
    `<li data-of="${esc(r.id)}" data-outcome="${esc(a.outcome)}">${esc(a.modelId)} · ${esc(a.endpointId)}: ${esc(a.outcome)}` +
    `${a.status ? ` (${a.status})` : ""}, ${ms(a.latencyMs)}</li>`).join("");
  return `<details><summary>${int(r.attempts)}</summary><ol class="attempts">${items}</ol></details>`;
}

function requestRow(r) {
  return `<tr data-request="${esc(r.id)}" data-status="${r.status}">` +
    `<td>${esc(time(r.timestamp))}</td><th scope="row">${esc(r.requestId)}</th>` +
    `<td>${esc(r.workspaceId || NONE)}</td><td>${esc(r.agentType)}</td>` +
    `<td>${esc(r.modelId || NONE)}${r.endpointId ? ` <small>${esc(r.endpointId)}</small>` : ""}</td>` +
    `<td class="num">${r.status}</td><td>${esc(r.outcome)}</td><td class="num">${ms(r.latencyMs)}</td>` +
    `<td class="num">${int(r.promptTokens + r.completionTokens)}</td><td class="num">${usd(r.cost)}</td>` +
    `<td class="num">${attempts(r)}</td></tr>`;
}

function audit(entries) {
  if (!entries.length) return `<p class="empty">No changes recorded.</p>`;
  const change = (c) => `<li>${esc(c.resource)}<pre>${esc(JSON.stringify({ before: c.before, after: c.after }, null, 1))}</pre></li>`;
  const count = (e) => e.changes.length + e.omittedChanges;
  const omitted = (e) => (e.omittedChanges ? `<li data-omitted="${e.omittedChanges}">${int(e.omittedChanges)} more not listed</li>` : "");
  const rows = entries.map((e) =>
    `<tr data-seq="${esc(e.seq)}"><td>${esc(time(e.at))}</td><td>${esc(e.who)}</td><td>${esc(e.method)} ${esc(e.path)}</td>` +
    `<td>${esc(e.resource)}</td><td class="num">${esc(e.configVersion)}</td>` +
    `<td><details><summary>${count(e)} change${count(e) === 1 ? "" : "s"}</summary>` +
    `<ul class="changes">${e.changes.map(change).join("")}${omitted(e)}</ul></details></td></tr>`).join("");
  return `<div class="scroll"><table class="audit"><caption>The latest ${entries.length} changes</caption>` +
    `<thead><tr><th scope="col">When</th><th scope="col">Who</th><th scope="col">Call</th>` +
    `<th scope="col">Resource</th><th scope="col" class="num">Config version</th><th scope="col">Change</th></tr></thead>` +
    `<tbody>${rows}</tbody></table></div>`;
}

export async function render(ctx) {
  const f = filters(ctx);
  const [page, health, entries] = await Promise.all([
    get("/api/metrics/requests", { limit: LATEST }),
    get("/health/detailed"),
    mayReadAudit(ctx.identity) ? auditLog(AUDIT_ENTRIES) : null,
  ]);
  const all = page.data;
  offer("filter-workspace", "all workspaces", all.map((r) => r.workspaceId), f.workspace);
  offer("filter-model", "all models", all.map((r) => r.modelId), f.model);
  const shown = all.filter((r) =>
    (!f.workspace || r.workspaceId === f.workspace) &&
    (!f.model || r.modelId === f.model) && statusMatches(f.status, r.status));
  const config = health.components.config;
  const table = shown.length
    ? `<div class="scroll"><table class="requests"><caption>${shown.length} of the latest ${all.length} requests</caption>` +
      `<thead><tr><th scope="col">Time (UTC)</th><th scope="col">Request</th><th scope="col">Workspace</th>` +
      `<th scope="col">Agent type</th><th scope="col">Model, endpoint</th><th scope="col" class="num">Status</th>` +
      `<th scope="col">Outcome</th><th scope="col" class="num">Latency</th><th scope="col" class="num">Tokens</th><th scope="col" class="num">Cost</th>` +
      `<th scope="col" class="num">Attempts</th></tr></thead><tbody>${shown.map(requestRow).join("")}</tbody></table></div>`
    : `<p class="empty">No requests match.</p>`;
  const auditPart = entries === null ? `<p class="empty">The audit log is for admins.</p>` : audit(entries);
  return table +
    `<h3>Config</h3><p id="config-version" data-value="${config.version}">Config version <strong>${config.version}</strong>` +
    ` · ${int(config.models)} models, ${int(config.endpoints)} endpoints, ${int(config.rules)} rules</p>` +
    `<h3>Audit log</h3>${auditPart}`;
}
