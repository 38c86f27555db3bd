// Traffic and cost over a range, from /api/analytics/*: requests, errors by
// kind, latency percentiles, tokens and cost per model, agent type and
// workspace; each workspace's spend against its budgets.

import { get } from "./api.js";
import { barChart, budgetBar, lineChart } from "./charts.js";
import { count, esc, int, ms, pct, tile, time, usd } from "./format.js";

export const TITLE = "Traffic and cost";

const RANGES = ["1h", "24h", "7d", "30d"];
const TOP_MODELS = 5; // lines per chart; the rest are in the tables

export function controls(ctx) {
  const chosen = ctx.state.range || "1h";
  return `<fieldset class="ranges"><legend>Range</legend>` +
    RANGES.map((r) =>
      `<label><input type="radio" name="range" value="${r}"${r === chosen ? " checked" : ""}> ${r}</label>`).join("") +
    `</fieldset>`;
}

export function bindControls(root, ctx) {
  for (const input of root.querySelectorAll("input[name=range]")) {
    input.addEventListener("change", () => {
      ctx.state.range = input.value;
      ctx.refresh();
    });
  }
}

// Sum a figure over every model at each point of the range, empty points
// as zero: [[ms, value], ...].
function overTime(models, value, range) {
  const sums = new Map();
  const step = range.intervalSeconds * 1000;
  for (let t = Date.parse(range.from); t < Date.parse(range.to); t += step) sums.set(t, 0);
  for (const m of models) {
    for (const p of m.series) {
      const t = Date.parse(p.start);
      sums.set(t, (sums.get(t) || 0) + value(p));
    }
  }
  return [...sums.entries()].sort((a, b) => a[0] - b[0]);
}

function budgets(workspaces) {
  if (!workspaces.length) return `<p class="empty">No workspaces.</p>`;
  const rows = workspaces.flatMap((w) =>
    w.budgets.map((b) => {
      const text = b.limitUsd == null
        ? `${usd(b.spentUsd)} spent, no ${b.period} limit`
        : `${usd(b.spentUsd)} of ${usd(b.limitUsd)} (${pct(b.limitUsd ? b.spentUsd / b.limitUsd : null)})`;
      return `<tr data-workspace="${esc(w.workspaceId)}" data-period="${b.period}" data-spent="${b.spentUsd}" data-limit="${b.limitUsd ?? ""}">` +
        `<th scope="row">${esc(w.workspaceId)}</th><td>${b.period}</td>` +
        `<td class="bar-cell">${budgetBar(b.spentUsd, b.limitUsd)}</td><td class="num">${esc(text)}</td>` +
        `<td><small>resets ${esc(time(b.resetsAt))}</small></td></tr>`;
    }));
  return `<div class="scroll"><table class="budgets"><caption>Workspace spend against budgets</caption>` +
    `<thead><tr><th scope="col">Workspace</th><th scope="col">Period</th><th scope="col">Spend</th>` +
    `<th scope="col">Spent of limit</th><th scope="col">Resets</th></tr></thead><tbody>${rows.join("")}</tbody></table></div>`;
}

function latencyTable(models) {
  const rows = models
    .map((m) => {
      const l = m.totals.latencyMs;
      return `<tr data-model="${esc(m.modelId)}"><th scope="row">${esc(m.modelId)}</th>` +
        `<td class="num" data-field="requests" data-value="${m.totals.requests}">${int(m.totals.requests)}</td>` +
        `<td class="num">${pct(m.totals.successRate)}</td>` +
        `<td class="num" data-field="p50" data-value="${l.p50 ?? ""}">${ms(l.p50)}</td>` +
        `<td class="num" data-field="p95" data-value="${l.p95 ?? ""}">${ms(l.p95)}</td>` +
        `<td class="num" data-field="p99" data-value="${l.p99 ?? ""}">${ms(l.p99)}</td>` +
        `<td class="num">${int(m.totals.tokensIn)} / ${int(m.totals.tokensOut)}</td>` +
        `<td class="num" data-field="cost" data-value="${m.totals.costUsd}">${usd(m.totals.costUsd)}</td></tr>`;
    })
    .join("");
  return `<div class="scroll"><table class="per-model"><caption>Per model over the range</caption>` +
    `<thead><tr><th scope="col">Model</th><th scope="col" class="num">Requests</th><th scope="col" class="num">Success</th>` +
    `<th scope="col" class="num">p50</th><th scope="col" class="num">p95</th><th scope="col" class="num">p99</th>` +
    `<th scope="col" class="num">Tokens in / out</th><th scope="col" class="num">Cost</th></tr></thead><tbody>${rows}</tbody></table></div>`;
}

export async function render(ctx) {
  const timeRange = ctx.state.range || "1h";
  const [byModel, byWorkspace] = await Promise.all([
    get("/api/analytics/models", { timeRange }),
    get("/api/analytics/workspaces", { timeRange }),
  ]);
  const workspaces = byWorkspace.workspaces;
  const agentTypes = byWorkspace.byAgentType;
  const models = byModel.models;
  const from = Date.parse(byModel.range.from);
  const to = Date.parse(byModel.range.to);
  const total = models.reduce((sum, m) => ({
    requests: sum.requests + m.totals.requests,
    attempts: sum.attempts + m.totals.attempts,
    successes: sum.successes + m.totals.successes,
    tokens: sum.tokens + m.totals.tokensIn + m.totals.tokensOut,
    costUsd: sum.costUsd + m.totals.costUsd,
  }), { requests: 0, attempts: 0, successes: 0, tokens: 0, costUsd: 0 });
  const busiest = [...models].sort((a, b) => b.totals.requests - a.totals.requests).slice(0, TOP_MODELS);
  const kinds = [...new Set(models.flatMap((m) => Object.keys(m.totals.errors)))].sort();

  const tiles = `<div class="tiles">` +
    tile("requests", "Requests", int(total.requests), total.requests) +
    tile("successRate", "Attempts succeeded", pct(total.attempts ? total.successes / total.attempts : null)) +
    tile("errors", "Failed attempts", int(total.attempts - total.successes), total.attempts - total.successes) +
    tile("tokens", "Tokens", int(total.tokens), total.tokens) +
    tile("cost", "Cost", usd(total.costUsd), total.costUsd) +
    `</div>`;
  const interval = `per ${byModel.range.interval}`;
  const charts = `<div class="charts">` +
    lineChart(`Requests ${interval}`, [{ name: "requests", points: overTime(models, (p) => p.requests, byModel.range) }], count, from, to) +
    lineChart(`Failed attempts by kind ${interval}`,
      kinds.map((k) => ({ name: k, points: overTime(models, (p) => p.errors[k] || 0, byModel.range) })), count, from, to) +
    lineChart(`p95 latency ${interval}, busiest models`,
      busiest.map((m) => ({ name: m.modelId, points: m.series.filter((p) => p.latencyMs.p95 != null).map((p) => [Date.parse(p.start), p.latencyMs.p95]) })),
      ms, from, to) +
    lineChart(`Tokens ${interval}`, [
      { name: "in", points: overTime(models, (p) => p.tokensIn, byModel.range) },
      { name: "out", points: overTime(models, (p) => p.tokensOut, byModel.range) },
    ], count, from, to) +
    lineChart(`Cost ${interval}`, [{ name: "cost", points: overTime(models, (p) => p.costUsd, byModel.range) }], usd, from, to) +
    `</div>`;
  const costRows = (entries) => entries
    .map(([name, f]) => ({ name, value: f.costUsd, text: `${usd(f.costUsd)} · ${int(f.requests)} req` }))
    .sort((a, b) => b.value - a.value);
  const breakdowns = `<div class="charts">` +
    barChart("Cost per model", costRows(models.map((m) => [m.modelId, m.totals])), `data-by="model"`) +
    barChart("Cost per agent type", costRows(Object.entries(agentTypes)), `data-by="agentType"`) +
    barChart("Cost per workspace", costRows(workspaces.map((w) => [w.workspaceId, w.totals])), `data-by="workspace"`) +
    `</div>`;
  return tiles + charts + `<h3>Per model</h3>` + latencyTable(models) +
    `<h3>Cost breakdown</h3>` + breakdowns + `<h3>Budgets</h3>` + budgets(workspaces);
}
