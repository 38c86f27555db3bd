// Rollouts and experiments: each canary's step, guardrails and history (with
// its actions for admins), each experiment's variants and result.

import { intervals } from "./charts.js";
import { NONE, badge, esc, int, ms, pValue, pct, ratio, time, usd } from "./format.js";
import { actOnCanary, canaries, experiments, mayActOnCanaries } from "./shapes.js";

export const TITLE = "Rollouts and experiments";

function guardrail(g) {
  const show = g.kind === "rate" ? pct : ratio;
  const ok = g.value == null ? null : g.value <= g.limit;
  return `<tr data-guardrail="${esc(g.name)}"><th scope="row">${esc(g.name)}</th>` +
    `<td class="num" data-field="value" data-value="${g.value ?? ""}">${show(g.value)}</td>` +
    `<td class="num" data-field="limit" data-value="${g.limit}">≤ ${show(g.limit)}</td>` +
    `<td>${ok == null ? NONE : ok ? badge("within") : badge("breached")}</td></tr>`;
}

function canaryCard(c, mayAct) {
  const figure = (field, value, text) => `<td class="num" data-field="${field}" data-value="${value ?? ""}">${text}</td>`;
  const side = (name, f) => `<tr data-side="${name.toLowerCase()}"><th scope="row">${name}</th>` +
    figure("requests", f.requests, int(f.requests)) + figure("errorRate", f.errorRate, pct(f.errorRate)) +
    figure("p95Ms", f.p95Ms, ms(f.p95Ms)) + figure("costPerRequest", f.costPerRequest, usd(f.costPerRequest)) + `</tr>`;
  const steps = c.steps.map((p, i) =>
    `<li${i === c.stepIndex ? ` aria-current="step"` : ""}>${esc(p)}%</li>`).join("");
  const actions = mayAct && c.actions.length
    ? `<div class="actions">${c.actions.map((a) =>
      `<button type="button" data-canary="${esc(c.id)}" data-action="${a.name}">${esc(a.label)}</button>`).join("")}</div>`
    : "";
  const history = c.history.length
    ? `<details><summary>History (${c.history.length})</summary><ol class="history">${c.history.map((h) =>
      `<li>${esc(time(h.at))}: ${esc(h.from)} → ${esc(h.to)}${h.reason ? ` — ${esc(h.reason)}` : ""}</li>`).join("")}</ol></details>`
    : "";
  return `<article class="card" data-canary="${esc(c.id)}" data-state="${esc(c.state)}">` +
    `<h4>${esc(c.modelId)} <small>vs ${esc(c.baselineModelId)}</small> ${badge(c.state)}</h4>` +
    `<p>Scope: ${esc(c.scope)} · ${esc(c.percent)}% of traffic, step ${c.stepIndex + 1} of ${c.steps.length}` +
    ` since ${esc(time(c.stepStartedAt))}</p><ol class="steps" aria-label="Steps">${steps}</ol>` +
    `<table><caption>Now</caption><thead><tr><th scope="col"></th><th scope="col" class="num">Requests</th>` +
    `<th scope="col" class="num">Errors</th><th scope="col" class="num">p95</th><th scope="col" class="num">Cost / request</th></tr></thead>` +
    `<tbody>${side("Canary", c.canary)}${side("Baseline", c.baseline)}</tbody></table>` +
    `<table><caption>Guardrails</caption><thead><tr><th scope="col">Guardrail</th><th scope="col" class="num">Now</th>` +
    `<th scope="col" class="num">Limit</th><th scope="col">State</th></tr></thead><tbody>${c.guardrails.map(guardrail).join("")}</tbody></table>` +
    history + actions + `</article>`;
}

function experimentCard(x) {
  const rows = x.variants.map((v) =>
    `<tr data-variant="${esc(v.modelId)}"><th scope="row">${esc(v.modelId)}</th><td class="num">${esc(v.weight)}</td>` +
    `<td class="num" data-field="n" data-value="${v.n}">${int(v.n)}${v.users == null ? "" : ` <small>(${int(v.users)} users)</small>`}</td>` +
    `<td class="num" data-field="mean" data-value="${v.mean ?? ""}">${v.mean == null ? NONE : esc(v.mean.toPrecision(4))}</td>` +
    `<td class="num">${v.ci ? `[${esc(v.ci[0].toPrecision(4))}, ${esc(v.ci[1].toPrecision(4))}]` : NONE}</td></tr>`).join("");
  const srm = x.srm ? (x.srm.mismatch ? badge("sample ratio mismatch") : "no mismatch") + ` (p ${pValue(x.srm.pValue)})` : NONE;
  return `<article class="card" data-experiment="${esc(x.id)}" data-state="${esc(x.state)}">` +
    `<h4>${esc(x.name)} ${badge(x.state)}</h4>` +
    `<p>Scope: ${esc(x.scope)} · metric ${esc(x.primaryMetric)}</p>` +
    `<table><caption>Variants</caption><thead><tr><th scope="col">Model</th><th scope="col" class="num">Weight</th>` +
    `<th scope="col" class="num">n</th><th scope="col" class="num">Mean</th><th scope="col" class="num">95% CI</th></tr></thead><tbody>${rows}</tbody></table>` +
    intervals(`${x.name}: confidence intervals`, x.variants, (v) => (v == null ? NONE : v.toPrecision(4))) +
    `<dl class="result"><dt>Test</dt><dd>${esc(x.test || NONE)}</dd><dt>p-value</dt><dd>${pValue(x.pValue)}</dd>` +
    `<dt>Always-valid p</dt><dd>${pValue(x.alwaysValidPValue)}</dd><dt>Sample ratio</dt><dd>${srm}</dd>` +
    `<dt>Decision</dt><dd data-field="decision">${esc(x.decision)}` +
    `${x.reason ? ` <small>${esc(x.reason)}</small>` : ""}</dd></dl></article>`;
}

export async function render(ctx) {
  const [rollouts, tests] = await Promise.all([canaries(), experiments()]);
  const mayAct = mayActOnCanaries(ctx.identity);
  const canaryPart = rollouts.length
    ? `<div class="cards">${rollouts.map((c) => canaryCard(c, mayAct)).join("")}</div>`
    : `<p class="empty">No canary rollouts.</p>`;
  const experimentPart = tests.length
    ? `<div class="cards">${tests.map(experimentCard).join("")}</div>`
    : `<p class="empty">No experiments.</p>`;
  return `<h3>Canary rollouts</h3>${canaryPart}<h3>Experiments</h3>${experimentPart}`;
}

export function bind(root, ctx) {
  for (const button of root.querySelectorAll("button[data-action]")) {
    button.addEventListener("click", async () => {
      const { canary, action } = button.dataset;
      if (!window.confirm(`${button.textContent} canary ${canary}?`)) return;
      button.disabled = true;
      try {
        await actOnCanary(canary, action);
      } catch (error) {
        window.alert(`${button.textContent} failed: ${error.message}`);
      }
      ctx.refresh();
    });
  }
}
