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

// The "audit" permission once the router names it; an unscoped admin until then.
export const mayReadAudit = (identity) =>
  identity.permissions.includes("audit") || (identity.role === "admin" && !identity.workspaceId);

// What one entry changed: a list of documents, or one before/after pair.
function changes(e) {
  if (Array.isArray(e.changes)) {
    return e.changes.map((c) => ({ resource: `${c.resourceType} ${c.resourceId}`, before: c.before, after: c.after }));
  }
  return [{ resource: [e.resourceType, e.resourceId].filter(Boolean).join(" "), before: e.before, after: e.after }];
}

export async function auditLog(limit) {
  const list = items(await getOptional("/api/audit", { limit }));
  if (list === NOT_AVAILABLE) return list;
  return list.map((e) => ({
    at: e.at,
    who: e.userId || e.keyId,
    method: e.method,
    path: e.path,
    resource: [e.resourceType, e.resourceId].filter(Boolean).join(" ") || `${(e.changes || []).length} documents`,
    configVersion: e.configVersion,
    changes: changes(e),
  }));
}

// --- canaries: GET /api/canaries, POST /api/canaries/{id}/{action} (admins) -----

// The canary actions need the "configure" permission (admins, unscoped).
export const mayActOnCanaries = (identity) => identity.permissions.includes("configure");

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
  promoted: ["rollback"],
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

// A step of the history: "25%", or "25% running" where it names a state too.
const position = (p) => (p != null && typeof p === "object" ? `${p.percent}% ${p.state}` : `${p}%`);

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
      history: (c.history || []).map((h) => ({
        at: h.at,
        from: position(h.from),
        to: position(h.to),
        reason: h.reason,
      })),
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
      reason: x.reason,
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
