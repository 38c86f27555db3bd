// Everything the page knows of the audit, canary and experiment APIs: their
// paths, who may use them, and how their answers read. Adapting the page to
// a change in those APIs is a change here only.

import { NOT_AVAILABLE, getOptional, post } from "./api.js";

// A list answer, bare or in a page ({data: [...]}).
function items(body) {
  if (body === NOT_AVAILABLE) return NOT_AVAILABLE;
  if (Array.isArray(body)) return body;
  return body.data || body.items || [];
}

// A scope as words: "workspace=ws-1 agentType=creative", or "everything".
function describe(scope) {
  if (scope == null) return "everything";
  if (typeof scope !== "object") return String(scope);
  const parts = Object.entries(scope)
    .filter(([, v]) => v != null && !(Array.isArray(v) && !v.length))
    .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join(",") : v}`);
  return parts.join(" ") || "everything";
}

// --- audit log: GET /api/audit (admins) ---------------------------------------

export const mayReadAudit = (identity) => identity.role === "admin" && !identity.workspaceId;

export async function auditLog(limit) {
  const list = items(await getOptional("/api/audit", { limit }));
  if (list === NOT_AVAILABLE) return list;
  return list.map((e) => ({
    at: e.at,
    keyId: e.keyId,
    method: e.method,
    path: e.path,
    resource: [e.resourceType, e.resourceId].filter(Boolean).join(" "),
    configVersion: e.configVersion,
    before: e.before,
    after: e.after,
  }));
}

// --- canaries: GET /api/canaries, POST /api/canaries/{id}/{action} (admins) -----

export const mayActOnCanaries = (identity) =>
  identity.role === "admin" && !identity.workspaceId;

// The actions each state allows, with their labels.
const ACTIONS = {
  pause: "Pause",
  resume: "Resume",
  promote: "Promote",
  rollback: "Roll back",
};
const ALLOWED = {
  running: ["pause", "promote", "rollback"],
  paused: ["resume", "promote", "rollback"],
  promoted: [],
  rolledBack: [],
};

function figures(side) {
  side = side || {};
  return {
    requests: side.requests ?? null,
    errorRate: side.errorRate ?? null,
    p95Ms: side.p95Ms ?? null,
    costPerRequest: side.costPerRequest ?? null,
  };
}

const ratio = (a, b) => (a == null || b == null || b === 0 ? null : a / b);

export async function canaries() {
  const list = items(await getOptional("/api/canaries"));
  if (list === NOT_AVAILABLE) return list;
  return list.map((c) => {
    const canary = figures(c.current && c.current.canary);
    const baseline = figures(c.current && c.current.baseline);
    const limits = c.guardrails || {};
    const errorIncrease =
      canary.errorRate == null || baseline.errorRate == null
        ? null
        : canary.errorRate - baseline.errorRate;
    return {
      id: c.id,
      modelId: c.modelId,
      baselineModelId: c.baselineModelId,
      scope: describe(c.scope),
      steps: c.steps || [],
      stepIndex: c.stepIndex,
      percent: c.percent,
      state: c.state,
      stepStartedAt: c.stepStartedAt,
      canary,
      baseline,
      guardrails: [
        { name: "Error rate increase", kind: "rate", limit: limits.maxErrorRateIncrease, value: errorIncrease },
        { name: "p95 latency ratio", kind: "ratio", limit: limits.maxP95LatencyRatio, value: ratio(canary.p95Ms, baseline.p95Ms) },
        { name: "Cost ratio", kind: "ratio", limit: limits.maxCostRatio, value: ratio(canary.costPerRequest, baseline.costPerRequest) },
      ].filter((g) => g.limit != null),
      history: (c.history || []).map((h) => ({ at: h.at, from: h.from, to: h.to, reason: h.reason })),
      actions: (ALLOWED[c.state] || []).map((name) => ({ name, label: ACTIONS[name] })),
    };
  });
}

export const actOnCanary = (id, action) =>
  post(`/api/canaries/${encodeURIComponent(id)}/${action}`);

// --- experiments: GET /api/experiments ------------------------------------------

export async function experiments() {
  const list = items(await getOptional("/api/experiments"));
  if (list === NOT_AVAILABLE) return list;
  return list.map((x) => {
    const results = x.results || {};
    const measured = new Map((results.variants || []).map((v) => [v.modelId, v]));
    return {
      id: x.id,
      name: x.name || x.id,
      scope: describe(x.scope),
      state: x.state,
      decision: x.decision,
      primaryMetric: x.primaryMetric,
      test: results.test,
      pValue: results.pValue,
      alwaysValidPValue: results.alwaysValidPValue,
      srm: results.srm || null,
      variants: (x.variants || []).map((v) => {
        const m = measured.get(v.modelId) || {};
        return { modelId: v.modelId, weight: v.weight, n: m.n ?? 0, mean: m.mean ?? null, ci: m.ci || null };
      }),
    };
  });
}
