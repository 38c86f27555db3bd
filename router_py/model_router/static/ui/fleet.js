// Fleet: every model and endpoint from /api/health/overview, problems first.

import { get } from "./api.js";
import { NONE, badge, duration, esc, int, ms, pct, perMinute, tile, time, usd } from "./format.js";

export const TITLE = "Fleet";

const BAD = { unhealthy: 3, open: 3, degraded: 2, half_open: 2 };

// An operator's report overrides the observation until it expires; after, it is history.
const reportedNow = (model) => (model.reported && !model.reported.expired ? model.reported.status : null);

// How much a model needs a look: its worst observed, reported or breaker state.
function severity(model) {
  const states = [
    model.observed.status,
    reportedNow(model),
    ...model.endpoints.map((e) => e.observed.status),
    ...model.endpoints.map((e) => e.breaker && e.breaker.state),
  ];
  const worst = Math.max(0, ...states.map((s) => BAD[s] || 0));
  return worst || (model.status === "active" ? 0 : 1);
}

const cell = (field, value, text) =>
  `<td class="num" data-field="${field}" data-value="${value ?? ""}">${esc(text)}</td>`;

function figures(observed) {
  const l = observed.latencyMs;
  return cell("successRate", observed.successRate, pct(observed.successRate)) +
    cell("p50", l.p50, ms(l.p50)) + cell("p95", l.p95, ms(l.p95)) + cell("p99", l.p99, ms(l.p99)) +
    cell("requestsPerMinute", observed.requestsPerMinute, perMinute(observed.requestsPerMinute));
}

function endpointRow(model, e) {
  const b = e.breaker;
  const p = e.lastProbe;
  const probe = p
    ? `<span data-probe="${p.ok ? "ok" : "failed"}">${p.ok ? `ok (${p.statusCode})` : `failed: ${esc(p.error)}`}` +
      `, ${ms(p.latencyMs)}, ${esc(time(p.at))}</span>`
    : NONE;
  return `<tr class="endpoint" data-endpoint="${esc(e.endpointId)}" data-of="${esc(model.modelId)}">` +
    `<th scope="row"><span class="visually-hidden">${esc(model.modelId)} endpoint </span>↳ ${esc(e.endpointId)}</th>` +
    `<td></td><td>${badge(e.observed.status)}</td>${figures(e.observed)}<td></td>` +
    `<td>${b ? badge(b.state) : NONE}${b && b.nextProbeAt ? ` <small>probe ${esc(time(b.nextProbeAt))}</small>` : ""}` +
    ` <small>last probe: ${probe}</small></td></tr>`;
}

function modelRows(model) {
  const sev = severity(model);
  const r = model.reported;
  const reported = !r ? NONE : r.expired
    ? `<small data-expired="true">${esc(r.status)}, expired ${esc(time(r.expiresAt))}</small>`
    : badge(r.status);
  return `<tr class="model" data-model="${esc(model.modelId)}" data-severity="${sev}">` +
    `<th scope="row">${esc(model.modelId)} <small>${esc(model.status)}</small></th>` +
    `<td>${reported}</td><td>${badge(model.observed.status)}</td>${figures(model.observed)}` +
    cell("spendToday", model.spendTodayUsd, usd(model.spendTodayUsd)) +
    `<td>${model.endpoints.length} endpoint${model.endpoints.length === 1 ? "" : "s"}</td></tr>` +
    model.endpoints.map((e) => endpointRow(model, e)).join("");
}

export async function render() {
  const overview = await get("/api/health/overview");
  const models = overview.models
    .map((m) => ({ ...m, severity: severity(m) }))
    .sort((a, b) => b.severity - a.severity || a.modelId.localeCompare(b.modelId));
  const problems = models.filter((m) => m.severity >= 2).length;
  const s = overview.service;
  const rpm = models.reduce((sum, m) => sum + m.observed.requestsPerMinute, 0);
  const spend = models.reduce((sum, m) => sum + m.spendTodayUsd, 0);
  const tiles = `<div class="tiles">` +
    tile("models", "Models", int(models.length)) +
    tile("problems", "Need a look", int(problems)) +
    tile("requestsPerMinute", "Requests (5 min)", perMinute(rpm)) +
    tile("spendToday", "Spend today", usd(spend)) +
    tile("configVersion", "Config version", String(s.configVersion)) +
    tile("store", "Store", `${s.store.backend || ""} ${s.store.status || ""}`) +
    tile("version", "Router", `v${s.version}, ${s.workers} worker${s.workers === 1 ? "" : "s"}`) +
    tile("uptime", "Up for", duration(s.uptimeSeconds)) +
    `</div>`;
  const head = `<thead><tr><th scope="col">Model / endpoint</th><th scope="col">Reported</th>` +
    `<th scope="col">Observed</th><th scope="col" class="num">Success</th><th scope="col" class="num">p50</th>` +
    `<th scope="col" class="num">p95</th><th scope="col" class="num">p99</th><th scope="col" class="num">Requests</th>` +
    `<th scope="col" class="num">Spend today</th><th scope="col">Endpoints, breakers</th></tr></thead>`;
  const table = models.length
    ? `<div class="scroll"><table class="fleet"><caption>Models and endpoints, the last 5 minutes, problems first</caption>` +
      `${head}<tbody>${models.map(modelRows).join("")}</tbody></table></div>`
    : `<p class="empty">No models visible to this key.</p>`;
  return tiles + table;
}
