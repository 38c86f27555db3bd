//! The routing engine: one `decide` before a request, one `record` after each
//! upstream attempt. It owns the live snapshot plus the state that outlives a
//! snapshot (breakers, rolling stats, rule match counts, spend), carried over
//! by id when a new snapshot is loaded. No I/O happens here.
//!
//! The semantics are documented, with a worked example, in docs/routing.md.

use crate::breaker::{Admission, BreakerConfig, CircuitBreaker, Transition};
use crate::cost::{nanos_to_usd, usd_to_nanos, Nanos, Price, SpendLedger, Tokens, PERIODS};
use crate::rollup::{self, Rollups};
use crate::rules::{self, RequestFacts};
use crate::select::{self, Rng};
use crate::snapshot::{
    AgentPreferences, Model, PerformanceRequirements, Rule, Snapshot, WorkspaceConfig,
};
use crate::stats::{RollingStats, Summary};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

pub struct DecideInput<'a> {
    pub facts: RequestFacts<'a>,
    /// Capabilities this request needs, on top of the agent's required ones.
    pub capabilities: &'a [String],
    /// A model id or version the caller asked for; None (or "auto") to let the router choose.
    pub model: Option<&'a str>,
    /// Keep at most this many candidates (the executor's attempt budget).
    pub limit: Option<usize>,
    /// Say why every other model was left out. An explained decision is a dry
    /// run: it counts no rule match and takes no half-open probe slot.
    pub explain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Requested,
    Rule(usize),
    Preferences,
    Default,
}

/// Why a candidate holds its place.
#[derive(Debug, Clone, PartialEq)]
pub enum Why {
    Requested,
    RulePick { canary: bool, sticky: bool },
    RuleFallback { order: Option<i64> },
    Preferred(usize),
    Fallback(usize),
    Score(f64),
}

/// Why a model is not a candidate.
#[derive(Debug, Clone, PartialEq)]
pub enum Exclusion {
    Status(String),
    Unhealthy,
    Restricted(String),
    MissingCompliance(String),
    MissingCapability(String),
    Latency {
        p95_ms: f64,
        max_ms: f64,
    },
    SuccessRate {
        rate: f64,
        min: f64,
    },
    CostPerToken {
        cost: f64,
        max: f64,
    },
    NoEndpoints,
    BreakersOpen {
        until_ms: u64,
    },
    WrongType {
        model_type: String,
        request_type: String,
    },
    NotTargeted {
        by: String,
    },
    NotRequested,
    OverBudget(BudgetBreach),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BudgetBreach {
    pub period: &'static str,
    pub limit_usd: f64,
    pub spent_usd: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DecisionError {
    OverBudget(BudgetBreach),
    UnknownModel(String),
    NoEligibleModel,
    BreakersOpen { until_ms: u64 },
}

#[derive(Debug, Clone)]
pub struct Candidate {
    pub model: usize,
    pub endpoints: Vec<usize>,
    pub why: Why,
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub source: Source,
    pub candidates: Vec<Candidate>,
    /// Every model that is not a candidate, with why; filled only with `explain`.
    pub excluded: Vec<(usize, Exclusion)>,
    pub error: Option<DecisionError>,
    /// Every breaker was open and the operator chose to route anyway.
    pub failed_open: bool,
}

pub struct Outcome<'a> {
    pub model_id: &'a str,
    pub endpoint_id: Option<&'a str>,
    pub workspace_id: Option<&'a str>,
    /// Whether the endpoint did its job; None: no verdict (its caller left
    /// before the answer), which leaves its breaker and latency stats alone.
    pub success: Option<bool>,
    pub latency_ms: f64,
    pub tokens: Tokens,
    pub retry_after_ms: Option<u64>,
    /// When the attempt was sent (ms since the epoch).
    pub started_ms: u64,
    /// The rollups' view of the attempt; None (the router's own probes): not traffic.
    pub rollup: Option<RollupFacts<'a>>,
}

/// What the outcome rollups key and count an attempt by, beyond the `Outcome`.
#[derive(Default)]
pub struct RollupFacts<'a> {
    /// "success", "timeout", "rate_limited", "malformed", ...
    pub outcome: &'a str,
    pub agent_type: Option<&'a str>,
    pub rule_id: Option<&'a str>,
    /// The canary or experiment the request is in, and its arm's label.
    pub rollout_id: Option<&'a str>,
    pub variant: Option<&'a str>,
    /// The failed attempt this one follows: (model, endpoint, outcome).
    pub failover_from: Option<(&'a str, &'a str, &'a str)>,
    pub ttft_ms: Option<f64>,
}

/// Per-model facts derived once per snapshot.
struct ModelFacts {
    price: Option<Price>,
    breaker: BreakerConfig,
}

pub struct Engine {
    snapshot: Arc<Snapshot>,
    gates: Arc<Gates>,
    facts: Vec<ModelFacts>,
    breakers: Vec<Vec<CircuitBreaker>>,
    endpoint_stats: Vec<Vec<RollingStats>>,
    model_stats: Vec<RollingStats>,
    rule_matches: Vec<u64>,
    pub ledger: SpendLedger,
    pub rollups: Rollups,
    rng: Rng,
    /// Breaker opens and closes since the last `take_transitions`, by endpoint id.
    transitions: Vec<(String, Transition)>,
}

/// Per workspace and per agent type, one byte per model (by position) saying
/// whether the model passes the checks that depend only on the config, so a
/// decision reads a byte instead of comparing lists of strings.
#[derive(Default)]
struct Gates {
    /// 0 pass, 1 restricted, 2 + k missing compliance requirement k.
    workspaces: HashMap<String, Vec<u8>>,
    /// 0 pass, 1 + k missing required capability k.
    agents: HashMap<String, Vec<u8>>,
}

fn gates(snap: &Snapshot) -> Gates {
    let code = |k: usize, base: usize| (base + k).min(u8::MAX as usize) as u8;
    let workspaces = snap
        .workspace_configs
        .iter()
        .map(|(id, cfg)| {
            let allowed = cfg.model_restrictions.as_ref().filter(|a| !a.is_empty());
            let gate = snap
                .models
                .iter()
                .map(|m| {
                    if allowed.is_some_and(|a| !a.contains(&m.id)) {
                        return 1;
                    }
                    let missing = cfg
                        .compliance_requirements
                        .iter()
                        .position(|c| !m.compliance.contains(c));
                    missing.map_or(0, |k| code(k, 2))
                })
                .collect();
            (id.clone(), gate)
        })
        .collect();
    let agents = snap
        .agent_preferences
        .iter()
        .map(|(agent, prefs)| {
            let gate = snap
                .models
                .iter()
                .map(|m| {
                    let missing = prefs
                        .required_capabilities
                        .iter()
                        .position(|c| !m.capabilities.iter().any(|k| k.kind == *c));
                    missing.map_or(0, |k| code(k, 1))
                })
                .collect();
            (agent.clone(), gate)
        })
        .collect();
    Gates { workspaces, agents }
}

/// Everything eligibility looks at besides the model itself.
struct Context<'s> {
    workspace: Option<(&'s str, &'s WorkspaceConfig, &'s [u8])>,
    agent: Option<(&'s AgentPreferences, &'s [u8])>,
    extra_capabilities: &'s [String],
    requirements: [Option<&'s PerformanceRequirements>; 2],
    ignore_breakers: bool,
    explain: bool,
}

impl Context<'_> {
    /// A reason's text, copied only when it will be shown: the hot path
    /// (no explain) allocates nothing for the models it leaves out.
    fn text(&self, s: &str) -> String {
        if self.explain {
            s.to_owned()
        } else {
            String::new()
        }
    }
}

/// Keep an exclusion when it will be shown, or when it may decide the error
/// (an open breaker), and drop it otherwise.
fn exclude(excluded: &mut Vec<(usize, Exclusion)>, ctx: &Context<'_>, mi: usize, why: Exclusion) {
    if ctx.explain || matches!(why, Exclusion::BreakersOpen { .. }) {
        excluded.push((mi, why));
    }
}

impl Engine {
    pub fn new(seed: u64) -> Engine {
        let empty = Snapshot::load(br#"{"version": 0}"#).expect("the empty snapshot loads");
        Engine {
            snapshot: Arc::new(empty),
            gates: Arc::default(),
            facts: Vec::new(),
            breakers: Vec::new(),
            endpoint_stats: Vec::new(),
            model_stats: Vec::new(),
            rule_matches: Vec::new(),
            ledger: SpendLedger::default(),
            rollups: Rollups::default(),
            rng: Rng::new(seed),
            transitions: Vec::new(),
        }
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Swap in a new snapshot; breakers, stats and match counts follow their ids.
    pub fn load(&mut self, snapshot: Snapshot) {
        let old = std::mem::replace(&mut self.snapshot, Arc::new(snapshot));
        let mut breakers: HashMap<&str, CircuitBreaker> = HashMap::new();
        let mut endpoint_stats: HashMap<&str, RollingStats> = HashMap::new();
        let mut model_stats: HashMap<&str, RollingStats> = HashMap::new();
        for (mi, m) in old.models.iter().enumerate() {
            model_stats.insert(&m.id, std::mem::take(&mut self.model_stats[mi]));
            for (ei, e) in m.endpoints.iter().enumerate() {
                breakers.insert(&e.id, self.breakers[mi][ei].clone());
                endpoint_stats.insert(&e.id, std::mem::take(&mut self.endpoint_stats[mi][ei]));
            }
        }
        let matches: HashMap<&str, u64> = old
            .rules
            .iter()
            .zip(&self.rule_matches)
            .map(|(r, n)| (r.id.as_str(), *n))
            .collect();

        let snap = self.snapshot.clone();
        self.gates = Arc::new(gates(&snap));
        self.facts = snap
            .models
            .iter()
            .map(|m| ModelFacts {
                price: m.pricing.as_ref().map(|p| {
                    Price::from_usd(p.input_per1k, p.output_per1k)
                        .with_cache(p.cache_read_per1k, p.cache_write_per1k)
                }),
                breaker: m.breaker.as_ref().map_or(BreakerConfig::default(), |o| {
                    BreakerConfig::default().with(o)
                }),
            })
            .collect();
        self.breakers = snap
            .models
            .iter()
            .zip(&self.facts)
            .map(|(m, f)| {
                m.endpoints
                    .iter()
                    .map(|e| {
                        let config = e.breaker.as_ref().map_or(f.breaker, |o| f.breaker.with(o));
                        let mut b = breakers
                            .remove(e.id.as_str())
                            .unwrap_or_else(|| CircuitBreaker::new(config));
                        b.config = config;
                        b
                    })
                    .collect()
            })
            .collect();
        self.endpoint_stats = snap
            .models
            .iter()
            .map(|m| {
                m.endpoints
                    .iter()
                    .map(|e| endpoint_stats.remove(e.id.as_str()).unwrap_or_default())
                    .collect()
            })
            .collect();
        self.model_stats = snap
            .models
            .iter()
            .map(|m| model_stats.remove(m.id.as_str()).unwrap_or_default())
            .collect();
        self.rule_matches = snap
            .rules
            .iter()
            .map(|r| matches.get(r.id.as_str()).copied().unwrap_or(0))
            .collect();
    }

    pub fn rule_matches(&self) -> impl Iterator<Item = (&Rule, u64)> {
        self.snapshot
            .rules
            .iter()
            .zip(self.rule_matches.iter().copied())
    }

    pub fn model_summary(&mut self, model: usize, now_ms: u64) -> Summary {
        self.model_stats[model].summary(now_ms)
    }

    pub fn endpoint_summary(&mut self, model: usize, endpoint: usize, now_ms: u64) -> Summary {
        self.endpoint_stats[model][endpoint].summary(now_ms)
    }

    pub fn breaker(&self, model: usize, endpoint: usize) -> &CircuitBreaker {
        &self.breakers[model][endpoint]
    }

    /// The breaker transitions recorded since the last call.
    pub fn take_transitions(&mut self) -> Vec<(String, Transition)> {
        std::mem::take(&mut self.transitions)
    }

    /// Adopt a transition made by another worker or replica.
    pub fn adopt_transition(&mut self, endpoint_id: &str, t: Transition, now_ms: u64) -> bool {
        let Some((mi, ei)) = self.snapshot.endpoint_position(endpoint_id) else {
            return false;
        };
        self.breakers[mi][ei].adopt(t, now_ms);
        true
    }

    /// With active probes: the half-open endpoints due for a probe, as
    /// (model id, endpoint id), each with its probe slot taken.
    pub fn due_probes(&mut self, now_ms: u64) -> Vec<(String, String)> {
        let snap = self.snapshot.clone();
        let mut due = Vec::new();
        for (mi, model) in snap.models.iter().enumerate() {
            for (ei, endpoint) in model.endpoints.iter().enumerate() {
                if self.breakers[mi][ei].take_probe(now_ms) {
                    due.push((model.id.clone(), endpoint.id.clone()));
                }
            }
        }
        due
    }

    pub fn decide(&mut self, input: &DecideInput<'_>, now_ms: u64) -> Decision {
        let snap = self.snapshot.clone();
        let facts = &input.facts;
        let workspace = facts
            .workspace_id
            .and_then(|id| snap.workspace_configs.get_key_value(id))
            .map(|(id, cfg)| (id.as_str(), cfg));
        let agent = snap.agent_preferences.get(facts.agent_type);

        if let Some(breach) = workspace.and_then(|(id, cfg)| self.budget_breach(id, cfg)) {
            let excluded = if input.explain {
                (0..snap.models.len())
                    .map(|mi| (mi, Exclusion::OverBudget(breach.clone())))
                    .collect()
            } else {
                Vec::new()
            };
            return Decision {
                source: Source::Default,
                candidates: Vec::new(),
                excluded,
                error: Some(DecisionError::OverBudget(breach)),
                failed_open: false,
            };
        }

        let gates = self.gates.clone();
        let mut ctx = Context {
            workspace: workspace.map(|(id, cfg)| (id, cfg, gates.workspaces[id].as_slice())),
            agent: agent.map(|a| (a, gates.agents[facts.agent_type].as_slice())),
            extra_capabilities: input.capabilities,
            requirements: [
                workspace.and_then(|(_, w)| w.quality_requirements.as_ref()),
                agent.and_then(|a| a.performance_requirements.as_ref()),
            ],
            ignore_breakers: false,
            explain: input.explain,
        };
        let mut decision = self.select(&snap, input, &ctx, now_ms);
        let all_open = decision.candidates.is_empty()
            && matches!(decision.error, Some(DecisionError::BreakersOpen { .. }));
        if all_open && snap.settings.fail_open {
            ctx.ignore_breakers = true;
            decision = self.select(&snap, input, &ctx, now_ms);
            decision.failed_open = true;
        }
        if let Some(limit) = input.limit {
            decision.candidates.truncate(limit);
        }
        let take_probes = !input.explain;
        for c in &mut decision.candidates {
            c.endpoints =
                self.order_endpoints(&snap, c.model, now_ms, ctx.ignore_breakers, take_probes);
        }
        if let (Source::Rule(ri), false) = (decision.source, input.explain) {
            self.rule_matches[ri] += 1;
        }
        decision
    }

    fn budget_breach(
        &self,
        id: &str,
        cfg: &crate::snapshot::WorkspaceConfig,
    ) -> Option<BudgetBreach> {
        let limits = cfg.budget_limits.as_ref()?;
        let spent = self.ledger.spent(id);
        [limits.daily, limits.weekly, limits.monthly]
            .iter()
            .enumerate()
            .find_map(|(i, limit)| {
                let limit = (*limit)?;
                (spent[i] >= usd_to_nanos(limit)).then(|| BudgetBreach {
                    period: PERIODS[i],
                    limit_usd: limit,
                    spent_usd: nanos_to_usd(spent[i]),
                })
            })
    }

    /// The source and its ranked candidates (endpoints not yet ordered).
    fn select(
        &mut self,
        snap: &Snapshot,
        input: &DecideInput<'_>,
        ctx: &Context<'_>,
        now_ms: u64,
    ) -> Decision {
        let facts = &input.facts;
        let mut excluded: Vec<(usize, Exclusion)> = Vec::new();
        let decision = |source, candidates: Vec<Candidate>, excluded| Decision {
            source,
            candidates,
            excluded,
            error: None,
            failed_open: false,
        };

        // 1. A model the caller named.
        if let Some(wanted) = input.model.filter(|m| !m.is_empty() && *m != "auto") {
            let Some(mi) = snap
                .model_position(wanted)
                .or_else(|| snap.models.iter().position(|m| m.version == wanted))
            else {
                let mut d = decision(Source::Requested, Vec::new(), Vec::new());
                d.error = Some(DecisionError::UnknownModel(wanted.to_owned()));
                return d;
            };
            let candidates = match self.eligibility(snap, mi, ctx, now_ms) {
                Ok(()) => vec![Candidate {
                    model: mi,
                    endpoints: Vec::new(),
                    why: Why::Requested,
                }],
                Err(why) => {
                    excluded.push((mi, why));
                    Vec::new()
                }
            };
            let mut d = decision(Source::Requested, candidates, excluded);
            self.finish(snap, ctx, &mut d, || Exclusion::NotRequested, now_ms);
            return d;
        }

        // 2. The first matching rule.
        let matched = snap
            .rule_positions(facts.agent_type, facts.request_type)
            .iter()
            .map(|&ri| ri as usize)
            .find(|&ri| rules::matches(&snap.rules[ri], facts));
        if let Some(ri) = matched {
            let rule = &snap.rules[ri];
            let mut eligible = Vec::new();
            for (ti, target) in rule.target_models.iter().enumerate() {
                let mi = snap
                    .model_position(&target.model_id)
                    .expect("snapshot checked rule targets");
                match self.eligibility(snap, mi, ctx, now_ms) {
                    Ok(()) => eligible.push((ti, mi)),
                    Err(why) => exclude(&mut excluded, ctx, mi, why),
                }
            }
            let candidates = self.rank_rule_targets(rule, &eligible, facts.user_id);
            let mut d = decision(Source::Rule(ri), candidates, excluded);
            self.finish(
                snap,
                ctx,
                &mut d,
                || Exclusion::NotTargeted {
                    by: format!("rule {}", rule.id),
                },
                now_ms,
            );
            return d;
        }

        // 3. The agent's preferences, when they leave anything eligible.
        if let Some(prefs) = snap.agent_preferences.get(facts.agent_type) {
            let listed = prefs
                .preferred_models
                .iter()
                .enumerate()
                .map(|(i, m)| (m, Why::Preferred(i + 1)))
                .chain(
                    prefs
                        .fallback_models
                        .iter()
                        .enumerate()
                        .map(|(i, m)| (m, Why::Fallback(i + 1))),
                );
            let mut candidates: Vec<Candidate> = Vec::new();
            for (id, why) in listed {
                let Some(mi) = snap.model_position(id) else {
                    continue;
                };
                if candidates.iter().any(|c| c.model == mi)
                    || excluded.iter().any(|(m, _)| *m == mi)
                {
                    continue;
                }
                match self.eligibility(snap, mi, ctx, now_ms) {
                    Ok(()) => candidates.push(Candidate {
                        model: mi,
                        endpoints: Vec::new(),
                        why,
                    }),
                    Err(why) => exclude(&mut excluded, ctx, mi, why),
                }
            }
            if !candidates.is_empty() {
                let mut d = decision(Source::Preferences, candidates, excluded);
                let agent = facts.agent_type;
                self.finish(
                    snap,
                    ctx,
                    &mut d,
                    || Exclusion::NotTargeted {
                        by: format!("the preferences of agent {agent}"),
                    },
                    now_ms,
                );
                return d;
            }
            excluded.clear(); // the default ranking reconsiders every model
        }

        // 4. Default: every eligible model serving the request type, best score first.
        let mut scored: Vec<(usize, f64)> = Vec::new();
        for (mi, m) in snap.models.iter().enumerate() {
            if !serves(&m.model_type, facts.request_type) {
                if input.explain {
                    excluded.push((
                        mi,
                        Exclusion::WrongType {
                            model_type: m.model_type.clone(),
                            request_type: facts.request_type.into(),
                        },
                    ));
                }
                continue;
            }
            match self.eligibility(snap, mi, ctx, now_ms) {
                Ok(()) => scored.push((mi, self.score(snap, mi, now_ms))),
                Err(why) => exclude(&mut excluded, ctx, mi, why),
            }
        }
        scored.sort_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then(snap.models[a.0].id.cmp(&snap.models[b.0].id))
        });
        let candidates = scored
            .into_iter()
            .map(|(mi, s)| Candidate {
                model: mi,
                endpoints: Vec::new(),
                why: Why::Score(s),
            })
            .collect();
        let mut d = decision(Source::Default, candidates, excluded);
        self.finish(snap, ctx, &mut d, || Exclusion::NotRequested, now_ms);
        d
    }

    /// Set the error of an empty decision, and with `explain` give every model
    /// neither chosen nor already excluded a reason: the check it fails, else
    /// that the source did not name it.
    fn finish(
        &mut self,
        snap: &Snapshot,
        ctx: &Context<'_>,
        d: &mut Decision,
        unlisted: impl Fn() -> Exclusion,
        now_ms: u64,
    ) {
        if d.candidates.is_empty() && d.error.is_none() {
            let until = d
                .excluded
                .iter()
                .filter_map(|(_, e)| match e {
                    Exclusion::BreakersOpen { until_ms } => Some(*until_ms),
                    _ => None,
                })
                .min();
            d.error = Some(match until {
                Some(until_ms) => DecisionError::BreakersOpen { until_ms },
                None => DecisionError::NoEligibleModel,
            });
        }
        if ctx.explain {
            let mut seen = vec![false; snap.models.len()];
            d.candidates.iter().for_each(|c| seen[c.model] = true);
            d.excluded.iter().for_each(|(mi, _)| seen[*mi] = true);
            for mi in (0..snap.models.len()).filter(|mi| !seen[*mi]) {
                let why = self
                    .eligibility(snap, mi, ctx, now_ms)
                    .err()
                    .unwrap_or_else(&unlisted);
                d.excluded.push((mi, why));
            }
            d.excluded
                .sort_by(|a, b| snap.models[a.0].id.cmp(&snap.models[b.0].id));
        }
    }

    fn eligibility(
        &mut self,
        snap: &Snapshot,
        mi: usize,
        ctx: &Context<'_>,
        now_ms: u64,
    ) -> Result<(), Exclusion> {
        let m: &Model = &snap.models[mi];
        if m.status != "active" {
            return Err(Exclusion::Status(ctx.text(&m.status)));
        }
        if m.health.as_ref().is_some_and(|h| h.status == "unhealthy") {
            return Err(Exclusion::Unhealthy);
        }
        if let Some((ws, cfg, gate)) = ctx.workspace {
            match gate[mi] {
                0 => {}
                1 => return Err(Exclusion::Restricted(ctx.text(ws))),
                k => {
                    let requirement = &cfg.compliance_requirements[k as usize - 2];
                    return Err(Exclusion::MissingCompliance(ctx.text(requirement)));
                }
            }
        }
        if let Some((prefs, gate)) = ctx.agent {
            if let k @ 1.. = gate[mi] {
                let capability = &prefs.required_capabilities[k as usize - 1];
                return Err(Exclusion::MissingCapability(ctx.text(capability)));
            }
        }
        if let Some(missing) = ctx
            .extra_capabilities
            .iter()
            .find(|c| !m.capabilities.iter().any(|k| k.kind == **c))
        {
            return Err(Exclusion::MissingCapability(ctx.text(missing)));
        }
        for req in ctx.requirements.iter().flatten() {
            if let (Some(max), Some(price)) = (req.max_cost_per_token, self.facts[mi].price) {
                let cost = price.max_per_token_usd();
                if cost > max {
                    return Err(Exclusion::CostPerToken { cost, max });
                }
            }
            if req.max_latency.is_none() && req.min_success_rate.is_none() {
                continue;
            }
            let s = self.model_stats[mi].summary(now_ms);
            if s.samples < snap.settings.min_samples {
                continue;
            }
            if let Some(max) = req.max_latency.filter(|max| s.p95_ms > *max) {
                return Err(Exclusion::Latency {
                    p95_ms: s.p95_ms,
                    max_ms: max,
                });
            }
            if let Some(min) = req.min_success_rate.filter(|min| s.success_rate < *min) {
                return Err(Exclusion::SuccessRate {
                    rate: s.success_rate,
                    min,
                });
            }
        }
        if m.endpoints.is_empty() {
            return Err(Exclusion::NoEndpoints);
        }
        if !ctx.ignore_breakers {
            let mut until = u64::MAX;
            for b in &self.breakers[mi] {
                match b.peek(now_ms) {
                    Admission::Admit => return Ok(()),
                    Admission::Probe if !snap.settings.active_probes => return Ok(()),
                    Admission::Probe => until = until.min(now_ms),
                    Admission::Refuse { until_ms } => until = until.min(until_ms),
                }
            }
            return Err(Exclusion::BreakersOpen { until_ms: until });
        }
        Ok(())
    }

    /// The default ranking's score, in (0, 1]: health score x price factor.
    fn score(&mut self, snap: &Snapshot, mi: usize, now_ms: u64) -> f64 {
        let price = self.facts[mi].price.map_or(0.0, |p| {
            nanos_to_usd(p.input_per_1k + p.output_per_1k) / 2.0
        });
        self.model_health(snap, mi, now_ms) * (0.01 / (0.01 + price))
    }

    /// A model's health score, in [0, 1]: reported health x success rate x
    /// latency factor, from observed figures once there are enough samples.
    pub fn health_score(&mut self, mi: usize, now_ms: u64) -> f64 {
        let snap = self.snapshot.clone();
        self.model_health(&snap, mi, now_ms)
    }

    fn model_health(&mut self, snap: &Snapshot, mi: usize, now_ms: u64) -> f64 {
        let m = &snap.models[mi];
        let health = match m.health.as_ref().map(|h| h.status.as_str()) {
            Some("healthy") => 1.0,
            Some("degraded") => 0.5,
            Some("unhealthy") => 0.0,
            _ => 0.8,
        };
        let s = self.model_stats[mi].summary(now_ms);
        let observed = s.samples >= snap.settings.min_samples;
        let success = if observed {
            s.success_rate
        } else {
            1.0 - m.health.as_ref().and_then(|h| h.error_rate).unwrap_or(0.0)
        };
        let latency_ms = if observed {
            s.p95_ms
        } else {
            m.health
                .as_ref()
                .and_then(|h| h.response_time)
                .unwrap_or(1000.0)
        };
        health * success * (1000.0 / (1000.0 + latency_ms))
    }

    fn rank_rule_targets(
        &mut self,
        rule: &Rule,
        eligible: &[(usize, usize)],
        user: Option<&str>,
    ) -> Vec<Candidate> {
        if eligible.is_empty() {
            return Vec::new();
        }
        let is_canary = |ti: usize| rule.canary[ti];
        let (canary, primary): (Vec<_>, Vec<_>) =
            eligible.iter().copied().partition(|(ti, _)| is_canary(*ti));
        let sticky_user = user.filter(|_| rule.sticky);
        let canary_share = rule
            .traffic_split
            .as_ref()
            .map_or(0.0, |s| s.canary / 100.0);
        let group = if canary.is_empty() {
            &primary
        } else if primary.is_empty() {
            &canary
        } else {
            let u = match sticky_user {
                Some(user) => select::unit(select::stable_hash(&[&rule.id, user, "canary"])),
                None => self.rng.next_f64(),
            };
            if u < canary_share {
                &canary
            } else {
                &primary
            }
        };
        let weights: Vec<f64> = group
            .iter()
            .map(|(ti, _)| rule.target_models[*ti].weight)
            .collect();
        let pick = match sticky_user {
            Some(user) => {
                let ids: Vec<&str> = group
                    .iter()
                    .map(|(ti, _)| rule.target_models[*ti].model_id.as_str())
                    .collect();
                select::rendezvous_index(&format!("{}\u{0}{user}", rule.id), &ids, &weights)
            }
            None => select::weighted_index(&weights, self.rng.next_f64()),
        }
        .expect("group is not empty");
        let (first_ti, first_mi) = group[pick];
        let mut rest: Vec<(usize, usize)> = eligible
            .iter()
            .copied()
            .filter(|(ti, _)| *ti != first_ti)
            .collect();
        rest.sort_by_key(|(ti, _)| {
            (
                rule.target_models[*ti].fallback_order.unwrap_or(i64::MAX),
                *ti,
            )
        });
        std::iter::once(Candidate {
            model: first_mi,
            endpoints: Vec::new(),
            why: Why::RulePick {
                canary: is_canary(first_ti),
                sticky: sticky_user.is_some(),
            },
        })
        .chain(rest.into_iter().map(|(ti, mi)| Candidate {
            model: mi,
            endpoints: Vec::new(),
            why: Why::RuleFallback {
                order: rule.target_models[ti].fallback_order,
            },
        }))
        .collect()
    }

    /// A model's endpoints that admit traffic: primary, then secondary, then
    /// backup; weighted random order within each type. Half-open endpoints
    /// take a probe slot here, so only a few requests test a recovering one.
    fn order_endpoints(
        &mut self,
        snap: &Snapshot,
        mi: usize,
        now_ms: u64,
        ignore_breakers: bool,
        take_probes: bool,
    ) -> Vec<usize> {
        let endpoints = &snap.models[mi].endpoints;
        let mut admitted: Vec<usize> = Vec::with_capacity(endpoints.len());
        for ei in 0..endpoints.len() {
            let b = &mut self.breakers[mi][ei];
            let ok = match b.peek(now_ms) {
                Admission::Admit => true,
                Admission::Probe if snap.settings.active_probes => false,
                Admission::Probe => !take_probes || b.take_probe(now_ms),
                Admission::Refuse { .. } => false,
            };
            if ok || ignore_breakers {
                admitted.push(ei);
            }
        }
        let rank = |kind: &str| match kind {
            "primary" => 0,
            "secondary" => 1,
            "backup" => 2,
            _ => 3,
        };
        admitted.sort_by_key(|&ei| rank(&endpoints[ei].kind));
        let mut ordered = Vec::with_capacity(admitted.len());
        for group in
            admitted.chunk_by(|a, b| rank(&endpoints[*a].kind) == rank(&endpoints[*b].kind))
        {
            let weights: Vec<f64> = group.iter().map(|&ei| endpoints[ei].weight).collect();
            ordered.extend(
                select::weighted_order(&weights, &mut self.rng)
                    .into_iter()
                    .map(|i| group[i]),
            );
        }
        ordered
    }

    /// Account one upstream attempt: breaker, stats, cost, rollups. Returns
    /// the cost, or None when the model is no longer in the snapshot.
    pub fn record(&mut self, o: &Outcome<'_>, now_ms: u64) -> Option<Nanos> {
        let snap = self.snapshot.clone();
        let mi = snap.model_position(o.model_id)?;
        if let Some((emi, ei)) = o.endpoint_id.and_then(|id| snap.endpoint_position(id)) {
            if emi == mi {
                let breaker = &mut self.breakers[mi][ei];
                match o.success {
                    Some(success) => {
                        if let Some(t) =
                            breaker.record(success, now_ms, o.started_ms, o.retry_after_ms)
                        {
                            self.transitions
                                .push((snap.models[mi].endpoints[ei].id.clone(), t));
                        }
                        self.endpoint_stats[mi][ei].record(success, o.latency_ms, now_ms);
                    }
                    None => breaker.no_verdict(now_ms),
                }
            }
        }
        if let Some(success) = o.success {
            self.model_stats[mi].record(success, o.latency_ms, now_ms);
        }
        let cost = self.facts[mi].price.map_or(0, |p| p.cost(&o.tokens));
        self.ledger.add(o.workspace_id, o.model_id, cost);
        if let Some(r) = &o.rollup {
            let attempt = rollup::Attempt {
                model: o.model_id,
                endpoint: o.endpoint_id,
                workspace: o.workspace_id,
                agent_type: r.agent_type,
                rule: r.rule_id,
                outcome: r.outcome,
                rollout: r.rollout_id,
                variant: r.variant,
                failover_from: r.failover_from,
                latency_ms: o.latency_ms,
                ttft_ms: r.ttft_ms,
                tokens_in: o.tokens.prompt,
                tokens_out: o.tokens.completion,
                cost_nanos: cost,
            };
            // The minute it was sent in: a replayed or slow attempt lands where it began.
            self.rollups.record(&attempt, o.started_ms);
        }
        Some(cost)
    }
}

/// Does a model of this type serve this request type (the default ranking's filter)?
pub fn serves(model_type: &str, request_type: &str) -> bool {
    match request_type {
        "chat" => matches!(model_type, "chat" | "multimodal"),
        "completion" => matches!(model_type, "completion" | "chat" | "multimodal"),
        "image" => matches!(model_type, "image" | "multimodal"),
        "audio" => matches!(model_type, "audio" | "multimodal"),
        other => model_type == other,
    }
}

/// The proleptic Gregorian (year, month, day) `days` after 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// RFC 3339 UTC, to the second, from Unix milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::Status(s) => write!(f, "status {s}"),
            Exclusion::Unhealthy => write!(f, "health unhealthy"),
            Exclusion::Restricted(ws) => write!(f, "restricted by workspace {ws}"),
            Exclusion::MissingCompliance(c) => write!(f, "missing compliance {c}"),
            Exclusion::MissingCapability(c) => write!(f, "missing capability {c}"),
            Exclusion::Latency { p95_ms, max_ms } => {
                write!(f, "p95 {p95_ms:.0} ms > maxLatency {max_ms:.0}")
            }
            Exclusion::SuccessRate { rate, min } => {
                write!(f, "success rate {rate:.3} < minSuccessRate {min}")
            }
            Exclusion::CostPerToken { cost, max } => {
                write!(f, "cost per token {cost} > maxCostPerToken {max}")
            }
            Exclusion::NoEndpoints => write!(f, "no endpoints"),
            Exclusion::BreakersOpen { until_ms } => {
                write!(f, "breaker open until {}", rfc3339(*until_ms))
            }
            Exclusion::WrongType {
                model_type,
                request_type,
            } => {
                write!(
                    f,
                    "a {model_type} model does not serve {request_type} requests"
                )
            }
            Exclusion::NotTargeted { by } => write!(f, "not targeted by {by}"),
            Exclusion::NotRequested => write!(f, "not the requested model"),
            Exclusion::OverBudget(b) => write!(f, "{b}"),
        }
    }
}

impl fmt::Display for BudgetBreach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "over {} budget {:.2} (spent {:.2})",
            self.period, self.limit_usd, self.spent_usd
        )
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Requested => write!(f, "requested model"),
            Why::RulePick { canary, sticky } => write!(
                f,
                "{} pick from the {} targets",
                if *sticky { "sticky" } else { "weighted" },
                if *canary { "canary" } else { "primary" }
            ),
            Why::RuleFallback { order: Some(o) } => write!(f, "rule fallback, fallbackOrder {o}"),
            Why::RuleFallback { order: None } => write!(f, "rule fallback"),
            Why::Preferred(i) => write!(f, "preferred model #{i}"),
            Why::Fallback(i) => write!(f, "fallback model #{i}"),
            Why::Score(s) => write!(f, "default ranking, score {s:.4}"),
        }
    }
}

impl fmt::Display for DecisionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecisionError::OverBudget(b) => write!(f, "{b}"),
            DecisionError::UnknownModel(m) => write!(f, "unknown model {m}"),
            DecisionError::NoEligibleModel => write!(f, "no eligible model"),
            DecisionError::BreakersOpen { until_ms } => {
                write!(
                    f,
                    "every eligible endpoint's breaker is open (first closes {})",
                    rfc3339(*until_ms)
                )
            }
        }
    }
}

impl DecisionError {
    pub fn kind(&self) -> &'static str {
        match self {
            DecisionError::OverBudget(_) => "budget_exceeded",
            DecisionError::UnknownModel(_) => "unknown_model",
            DecisionError::NoEligibleModel => "no_eligible_model",
            DecisionError::BreakersOpen { .. } => "breakers_open",
        }
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
