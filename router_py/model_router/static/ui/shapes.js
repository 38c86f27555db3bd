// Everything the page knows of the audit, canary and experiment APIs: their
// paths, who may use them, and how their answers read. Adapting the page to
// a change in those APIs is a change here only.

import { get, post } from "./api.js";

// A list answer's items: every list API answers a page ({data: [...], total}).
const items = (page) => page.data;

// A scope as words: "workspaceId=ws-1", or "everything".
function describe(scope) {
  const parts = Object.entries(scope || {})
    .filter(([, v]) => v != null)
    .map(([k, v]) => `${k}=${v}`);
  return parts.join(" ") || "everything";
}

// --- audit log: GET /api/audit (the "audit" permission) ------------------------

export const mayReadAudit = (identity) => identity.permissions.includes("audit");

export async function auditLog(limit) {
  return items(await get("/api/audit", { limit })).map((e) => ({
    seq: e.seq,
    at: e.at,
    who: e.userId || e.keyId,
    method: e.method,
    path: e.path,
    resource: [e.resourceType, e.resourceId].filter(Boolean).join(" ") ||
      `${e.changes.length + e.omittedChanges} documents`,
    configVersion: e.configVersion,
    changes: e.changes.map((c) => ({ resource: `${c.resourceType} ${c.resourceId}`, before: c.before, after: c.after })),
    omittedChanges: e.omittedChanges,
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

// A step of the history: "25% running".
const position = (p) => `${p.percent}% ${p.state}`;

const ratio = (a, b) => (a == null || b == null || b === 0 ? null : a / b);

export async function canaries() {
  return items(await get("/api/canaries")).map((c) => {
    const { canary, baseline } = c.current;
    const limits = c.guardrails;
    const errorIncrease =
      canary.errorRate == null || baseline.errorRate == null
        ? null
        : canary.errorRate - baseline.errorRate;
    return {
      id: c.id,
      modelId: c.modelId,
      baselineModelId: c.baselineModelId,
      scope: describe(c.scope),
      steps: c.steps,
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
      ],
      history: c.history.map((h) => ({
        at: h.at,
        from: position(h.from),
        to: position(h.to),
        reason: h.reason,
      })),
      actions: ALLOWED[c.state].map((name) => ({ name, label: ACTIONS[name] })),
    };
  });
}

export const actOnCanary = (id, action) =>
  post(`/api/canaries/${encodeURIComponent(id)}/${action}`);

// --- experiments: GET /api/experiments ------------------------------------------

export async function experiments() {
  return items(await get("/api/experiments")).map((x) => {
    const results = x.results || {};
    const measured = new Map((results.variants || []).map((v) => [v.modelId, v]));
    return {
      id: x.id,
      name: x.name,
      scope: describe(x.scope),
      state: x.state,
      decision: x.decision,
      reason: x.reason,
      primaryMetric: x.primaryMetric,
      test: results.test,
      pValue: results.pValue,
      alwaysValidPValue: results.alwaysValidPValue,
      srm: results.srm || null,
      variants: x.variants.map((v) => {
        const m = measured.get(v.modelId) || {};
        return { modelId: v.modelId, weight: v.weight, n: m.n ?? 0, users: m.users ?? null, mean: m.mean ?? null, ci: m.ci || null };
      }),
    };
  });
}
