//! The engine's semantics, one rule at a time, and its invariants as properties.

use super::*;
use proptest::prelude::{
    any, prop, prop_assert, prop_assert_eq, proptest, ProptestConfig, Strategy,
};
use serde_json::{json, Value};

fn model(id: &str) -> Value {
    json!({"id": id, "version": id, "provider": "openai", "modelType": "chat", "status": "active",
           "capabilities": [{"type": "text-generation"}], "compliance": ["gdpr"],
           "pricing": {"inputPer1k": 0.01, "outputPer1k": 0.03},
           "endpoints": [{"id": format!("{id}-a"), "url": "http://127.0.0.1:1/v1/chat/completions", "type": "primary", "weight": 1.0},
                         {"id": format!("{id}-b"), "url": "http://127.0.0.1:2/v1/chat/completions", "type": "backup", "weight": 1.0}]})
}

fn engine(doc: Value) -> Engine {
    let mut e = Engine::new(1);
    e.load(Snapshot::load(&serde_json::to_vec(&doc).unwrap()).unwrap());
    e
}

fn facts<'a>() -> RequestFacts<'a> {
    RequestFacts {
        agent_type: "creative",
        request_type: "chat",
        ..Default::default()
    }
}

fn input<'a>(
    facts: RequestFacts<'a>,
    model: Option<&'a str>,
    limit: Option<usize>,
    explain: bool,
) -> DecideInput<'a> {
    DecideInput {
        facts,
        capabilities: &[],
        model,
        limit,
        explain,
    }
}

fn decide(e: &mut Engine, facts: RequestFacts<'_>) -> Decision {
    e.decide(&input(facts, None, None, true), 1_000)
}

fn ids(e: &Engine, d: &Decision) -> Vec<String> {
    d.candidates
        .iter()
        .map(|c| e.snapshot().models[c.model].id.clone())
        .collect()
}

fn reason(e: &Engine, d: &Decision, id: &str) -> String {
    let mi = e.snapshot().model_position(id).unwrap();
    d.excluded
        .iter()
        .find(|(m, _)| *m == mi)
        .map(|(_, why)| why.to_string())
        .unwrap_or_default()
}

fn fail(e: &mut Engine, endpoint: &str, times: usize) {
    let model = endpoint.rsplit_once('-').unwrap().0.to_owned();
    for _ in 0..times {
        e.record(
            &Outcome {
                model_id: &model,
                endpoint_id: Some(endpoint),
                workspace_id: None,
                success: Some(false),
                latency_ms: 5.0,
                tokens: Tokens::default(),
                retry_after_ms: None,
                started_ms: 1_000,
                rollup: None,
            },
            1_000,
        );
    }
}

#[test]
fn default_ranking_orders_by_score_and_filters_type() {
    let mut cheap = model("cheap");
    cheap["pricing"] = json!({"inputPer1k": 0.0001, "outputPer1k": 0.0002});
    let mut embed = model("embed");
    embed["modelType"] = json!("embedding");
    let mut degraded = model("degraded");
    degraded["health"] = json!({"status": "degraded"});
    let mut e = engine(json!({"version": 1, "models": [model("pricey"), cheap, embed, degraded]}));
    let d = decide(&mut e, facts());
    assert_eq!(d.source, Source::Default);
    assert_eq!(ids(&e, &d), ["cheap", "pricey", "degraded"]);
    assert_eq!(
        reason(&e, &d, "embed"),
        "a embedding model does not serve chat requests"
    );
    assert!(d.error.is_none());
}

#[test]
fn eligibility_reasons() {
    let mut inactive = model("inactive");
    inactive["status"] = json!("inactive");
    let mut sick = model("sick");
    sick["health"] = json!({"status": "unhealthy"});
    let mut no_hipaa = model("no-hipaa");
    no_hipaa["compliance"] = json!(["gdpr"]);
    let mut ok = model("ok");
    ok["compliance"] = json!(["gdpr", "hipaa"]);
    let mut bare = model("bare");
    bare["compliance"] = json!(["gdpr", "hipaa"]);
    bare["capabilities"] = json!([]);
    let mut e = engine(json!({"version": 1,
        "models": [inactive, sick, no_hipaa, ok, bare, model("outsider")],
        "agentPreferences": {"creative": {"requiredCapabilities": ["text-generation"]}},
        "workspaceConfigs": {"ws-1": {"modelRestrictions": ["inactive", "sick", "no-hipaa", "ok", "bare"],
                                      "complianceRequirements": ["hipaa"]}}}));
    let d = decide(
        &mut e,
        RequestFacts {
            workspace_id: Some("ws-1"),
            ..facts()
        },
    );
    assert_eq!(ids(&e, &d), ["ok"]);
    assert_eq!(reason(&e, &d, "inactive"), "status inactive");
    assert_eq!(reason(&e, &d, "sick"), "health unhealthy");
    assert_eq!(reason(&e, &d, "no-hipaa"), "missing compliance hipaa");
    assert_eq!(reason(&e, &d, "bare"), "missing capability text-generation");
    assert_eq!(reason(&e, &d, "outsider"), "restricted by workspace ws-1");
}

#[test]
fn observed_latency_and_success_count_only_past_min_samples() {
    let mut e = engine(
        json!({"version": 1, "models": [model("slow"), model("fast")],
        "settings": {"minSamples": 5},
        "agentPreferences": {"creative": {"performanceRequirements": {"maxLatency": 5000, "minSuccessRate": 0.9}}}}),
    );
    let ok = |latency| Outcome {
        model_id: "slow",
        endpoint_id: Some("slow-a"),
        workspace_id: None,
        success: Some(true),
        latency_ms: latency,
        tokens: Tokens::default(),
        retry_after_ms: None,
        started_ms: 1_000,
        rollup: None,
    };
    for _ in 0..4 {
        e.record(&ok(6200.0), 1_000);
    }
    let d = decide(&mut e, facts());
    assert_eq!(ids(&e, &d).len(), 2, "4 samples do not count yet");
    e.record(&ok(6200.0), 1_000);
    let d = decide(&mut e, facts());
    assert_eq!(ids(&e, &d), ["fast"]);
    assert_eq!(reason(&e, &d, "slow"), "p95 6200 ms > maxLatency 5000");
}

#[test]
fn cost_per_token_requirement() {
    let mut e = engine(json!({"version": 1, "models": [model("m")],
        "workspaceConfigs": {"ws": {"qualityRequirements": {}}},
        "agentPreferences": {"creative": {"performanceRequirements": {"maxCostPerToken": 0.00001}}}}));
    let d = decide(&mut e, facts());
    assert_eq!(
        reason(&e, &d, "m"),
        "cost per token 0.00003 > maxCostPerToken 0.00001"
    );
    assert_eq!(d.error, Some(DecisionError::NoEligibleModel));
}

#[test]
fn rules_win_in_priority_order_and_count_matches() {
    let mut e = engine(
        json!({"version": 1, "models": [model("a"), model("b"), model("c")],
        "rules": [
            {"id": "low", "name": "low", "priority": 1, "enabled": true, "createdAt": "1",
             "targetModels": [{"modelId": "c", "weight": 1.0}]},
            {"id": "high", "name": "high", "priority": 10, "enabled": true, "createdAt": "2",
             "condition": {"contentLength": {"min": 100}},
             "targetModels": [{"modelId": "a", "weight": 1.0, "fallbackOrder": 2},
                              {"modelId": "b", "weight": 0.0, "fallbackOrder": 1}]}]}),
    );
    let d = decide(
        &mut e,
        RequestFacts {
            content_length: 150,
            ..facts()
        },
    );
    assert_eq!(
        e.snapshot().rules[match d.source {
            Source::Rule(r) => r,
            _ => panic!(),
        }]
        .id,
        "high"
    );
    assert_eq!(ids(&e, &d), ["a", "b"]);
    assert_eq!(reason(&e, &d, "c"), "not targeted by rule high");
    let short = decide(
        &mut e,
        RequestFacts {
            content_length: 10,
            ..facts()
        },
    );
    assert_eq!(ids(&e, &short), ["c"]);
    let counts = |e: &Engine| -> HashMap<String, u64> {
        e.rule_matches().map(|(r, n)| (r.id.clone(), n)).collect()
    };
    assert_eq!(
        counts(&e),
        HashMap::from([("high".into(), 0), ("low".into(), 0)]),
        "explained: a dry run"
    );
    for length in [150, 150, 10] {
        let facts = RequestFacts {
            content_length: length,
            ..facts()
        };
        e.decide(&input(facts, None, None, false), 0);
    }
    assert_eq!(
        counts(&e),
        HashMap::from([("high".into(), 2), ("low".into(), 1)])
    );
}

#[test]
fn a_matched_rule_with_nothing_eligible_is_an_error_not_a_fallthrough() {
    let mut off = model("off");
    off["status"] = json!("inactive");
    let mut e = engine(json!({"version": 1, "models": [off, model("other")],
        "rules": [{"id": "r", "name": "r", "priority": 1, "enabled": true,
                   "targetModels": [{"modelId": "off", "weight": 1.0}]}]}));
    let d = decide(&mut e, facts());
    assert!(d.candidates.is_empty());
    assert_eq!(d.error, Some(DecisionError::NoEligibleModel));
}

#[test]
fn preferences_when_no_rule_then_default_when_they_leave_nothing() {
    let mut off = model("off");
    off["status"] = json!("inactive");
    let mut e = engine(
        json!({"version": 1, "models": [model("p1"), model("p2"), model("f1"), off],
        "agentPreferences": {"creative": {"preferredModels": ["p2", "p1"], "fallbackModels": ["f1"]},
                             "lonely": {"preferredModels": ["off"]}}}),
    );
    let d = decide(&mut e, facts());
    assert_eq!(d.source, Source::Preferences);
    assert_eq!(ids(&e, &d), ["p2", "p1", "f1"]);
    let lonely = decide(
        &mut e,
        RequestFacts {
            agent_type: "lonely",
            ..facts()
        },
    );
    assert_eq!(lonely.source, Source::Default);
    assert_eq!(ids(&e, &lonely).len(), 3);
}

#[test]
fn requested_model_by_id_or_version() {
    let mut m = model("gpt-4");
    m["version"] = json!("gpt-4-0613");
    let mut e = engine(json!({"version": 1, "models": [m, model("other")]}));
    for wanted in ["gpt-4", "gpt-4-0613"] {
        let d = e.decide(&input(facts(), Some(wanted), None, false), 0);
        assert_eq!(ids(&e, &d), ["gpt-4"]);
        assert_eq!(d.source, Source::Requested);
    }
    let d = e.decide(&input(facts(), Some("nope"), None, false), 0);
    assert_eq!(d.error, Some(DecisionError::UnknownModel("nope".into())));
    let auto = e.decide(&input(facts(), Some("auto"), None, false), 0);
    assert_eq!(auto.source, Source::Default);
}

#[test]
fn budgets_stop_a_workspace_and_name_limit_and_spend() {
    let mut e = engine(json!({"version": 1, "models": [model("m")],
        "workspaceConfigs": {"ws-1": {"budgetLimits": {"daily": 100, "monthly": 2000}}}}));
    let spend = |e: &mut Engine, tokens| {
        e.record(
            &Outcome {
                model_id: "m",
                endpoint_id: Some("m-a"),
                workspace_id: Some("ws-1"),
                success: Some(true),
                latency_ms: 1.0,
                tokens: Tokens {
                    completion: tokens,
                    ..Tokens::default()
                },
                retry_after_ms: None,
                started_ms: 0,
                rollup: None,
            },
            0,
        )
    };
    assert_eq!(spend(&mut e, 3_333_333), Some(99_999_990_000));
    assert!(decide(
        &mut e,
        RequestFacts {
            workspace_id: Some("ws-1"),
            ..facts()
        }
    )
    .error
    .is_none());
    spend(&mut e, 14_000);
    let d = decide(
        &mut e,
        RequestFacts {
            workspace_id: Some("ws-1"),
            ..facts()
        },
    );
    let Some(DecisionError::OverBudget(b)) = &d.error else {
        panic!("{:?}", d.error)
    };
    assert_eq!(b.to_string(), "over daily budget 100.00 (spent 100.42)");
    assert_eq!(
        reason(&e, &d, "m"),
        "over daily budget 100.00 (spent 100.42)"
    );
    assert!(decide(
        &mut e,
        RequestFacts {
            workspace_id: Some("ws-2"),
            ..facts()
        }
    )
    .error
    .is_none());
}

#[test]
fn open_breakers_move_traffic_and_say_until_when() {
    let mut e = engine(json!({"version": 1, "models": [model("a"), model("b")],
        "agentPreferences": {"creative": {"preferredModels": ["a", "b"]}}}));
    fail(&mut e, "a-a", 5);
    let d = decide(&mut e, facts());
    assert_eq!(
        d.candidates[0].endpoints,
        [1],
        "a's primary is open: its backup is left"
    );
    fail(&mut e, "a-b", 5);
    let d = decide(&mut e, facts());
    assert_eq!(ids(&e, &d), ["b"]);
    assert_eq!(
        reason(&e, &d, "a"),
        "breaker open until 1970-01-01T00:00:11Z"
    );
    fail(&mut e, "b-a", 5);
    fail(&mut e, "b-b", 5);
    let d = decide(&mut e, facts());
    assert!(d.candidates.is_empty());
    assert_eq!(
        d.error,
        Some(DecisionError::BreakersOpen { until_ms: 11_000 })
    );
}

#[test]
fn an_attempt_with_no_verdict_is_costed_but_moves_no_breaker_or_stats() {
    let mut e = engine(json!({"version": 1, "models": [model("a")]}));
    fail(&mut e, "a-a", 4); // one failure short of opening
    let left = Outcome {
        model_id: "a",
        endpoint_id: Some("a-a"),
        workspace_id: Some("ws"),
        success: None,
        latency_ms: 900.0,
        tokens: Tokens {
            prompt: 1000,
            ..Tokens::default()
        },
        retry_after_ms: None,
        started_ms: 1_000,
        rollup: None,
    };
    let cost = e.record(&left, 1_000).unwrap();
    assert!(cost > 0, "what was sent is costed");
    assert_eq!(e.ledger.spent("ws")[0], cost);
    assert_eq!(e.model_summary(0, 1_000).samples, 4, "no latency sample");
    assert_eq!(e.endpoint_summary(0, 0, 1_000).samples, 4);
    fail(&mut e, "a-a", 1); // the fifth failure in a row: nothing reset the count
    assert_eq!(decide(&mut e, facts()).candidates[0].endpoints, [1]);
}

#[test]
fn with_active_probes_no_caller_is_sent_to_a_half_open_endpoint() {
    let mut e = engine(json!({"version": 1, "models": [model("a")],
                              "settings": {"activeProbes": true}}));
    fail(&mut e, "a-a", 5); // open until 11_000
    let at = |e: &mut Engine, now| e.decide(&input(facts(), None, None, false), now);
    assert_eq!(at(&mut e, 11_000).candidates[0].endpoints, [1]);
    // Half-open now, but only the router's probe may test it, once.
    assert_eq!(e.due_probes(11_000), [("a".to_owned(), "a-a".to_owned())]);
    assert!(e.due_probes(11_001).is_empty());
    let outcome = |started_ms| Outcome {
        model_id: "a",
        endpoint_id: Some("a-a"),
        workspace_id: None,
        success: Some(true),
        latency_ms: 1.0,
        tokens: Tokens::default(),
        retry_after_ms: None,
        started_ms,
        rollup: None,
    };
    e.record(&outcome(11_000), 11_050);
    assert_eq!(at(&mut e, 11_100).candidates[0].endpoints, [0, 1]);
    assert_eq!(
        e.take_transitions(),
        [
            ("a-a".to_owned(), Transition::Opened { until_ms: 11_000 }),
            ("a-a".to_owned(), Transition::Closed)
        ]
    );
}

#[test]
fn fail_open_routes_when_every_breaker_is_open() {
    let mut e =
        engine(json!({"version": 1, "models": [model("a")], "settings": {"failOpen": true}}));
    fail(&mut e, "a-a", 5);
    fail(&mut e, "a-b", 5);
    let d = decide(&mut e, facts());
    assert!(d.failed_open);
    assert_eq!(ids(&e, &d), ["a"]);
    assert_eq!(d.candidates[0].endpoints, [0, 1]);
}

#[test]
fn endpoints_primary_first_and_breaker_state_survives_a_reload() {
    let mut e = engine(json!({"version": 1, "models": [model("a")]}));
    assert_eq!(decide(&mut e, facts()).candidates[0].endpoints, [0, 1]);
    fail(&mut e, "a-a", 5);
    e.load(
        Snapshot::load(
            &serde_json::to_vec(&json!({"version": 2, "models": [model("a")]})).unwrap(),
        )
        .unwrap(),
    );
    assert_eq!(decide(&mut e, facts()).candidates[0].endpoints, [1]);
}

#[test]
fn breaker_overrides_per_model_and_endpoint() {
    let mut m = model("a");
    m["breaker"] = json!({"failureThreshold": 2});
    m["endpoints"][1]["breaker"] = json!({"failureThreshold": 3});
    let e = engine(json!({"version": 1, "models": [m]}));
    assert_eq!(e.breaker(0, 0).config.failure_threshold, 2);
    assert_eq!(e.breaker(0, 1).config.failure_threshold, 3);
}

#[test]
fn sticky_users_keep_their_model() {
    let mut e = engine(
        json!({"version": 1, "models": [model("a"), model("b"), model("c")],
        "rules": [{"id": "r", "name": "r", "priority": 1, "enabled": true, "sticky": true,
                   "targetModels": [{"modelId": "a", "weight": 1.0}, {"modelId": "b", "weight": 1.0},
                                    {"modelId": "c", "weight": 1.0}]}]}),
    );
    let mut firsts = std::collections::HashSet::new();
    for user in 0..50 {
        let id = format!("user-{user}");
        let d = decide(
            &mut e,
            RequestFacts {
                user_id: Some(&id),
                ..facts()
            },
        );
        let first = ids(&e, &d)[0].clone();
        for _ in 0..5 {
            let again = decide(
                &mut e,
                RequestFacts {
                    user_id: Some(&id),
                    ..facts()
                },
            );
            assert_eq!(ids(&e, &again)[0], first);
        }
        firsts.insert(first);
    }
    assert_eq!(firsts.len(), 3, "users spread over all targets");
}

/// Chi-square at p = 0.001: 1 degree of freedom 10.828, 2 degrees 13.816.
fn chi_square(counts: &[u64], shares: &[f64]) -> f64 {
    let n: u64 = counts.iter().sum();
    counts
        .iter()
        .zip(shares)
        .map(|(&c, &p)| (c as f64 - p * n as f64).powi(2) / (p * n as f64))
        .sum()
}

#[test]
fn canary_split_and_weights_converge_over_100k_decisions() {
    let mut e = engine(
        json!({"version": 1, "models": [model("p1"), model("p2"), model("canary")],
        "rules": [{"id": "r", "name": "r", "priority": 1, "enabled": true,
                   "trafficSplit": {"primary": 80, "canary": 20},
                   "targetModels": [{"modelId": "p1", "weight": 0.7}, {"modelId": "p2", "weight": 0.3},
                                    {"modelId": "canary", "weight": 1.0, "role": "canary"}]}]}),
    );
    let mut counts = [0u64; 3];
    for _ in 0..100_000 {
        let d = e.decide(&input(facts(), None, None, false), 0);
        counts[d.candidates[0].model] += 1;
    }
    let stat = chi_square(&counts, &[0.8 * 0.7, 0.8 * 0.3, 0.2]);
    assert!(stat < 13.816, "chi2 {stat}, counts {counts:?}");
}

#[test]
fn the_specs_rule_splits_by_fallback_order_when_it_names_no_roles() {
    // As the spec writes it: no roles, trafficSplit 80/20. The first target by
    // fallbackOrder is the primary; the rest share the canary's 20%.
    let mut e = engine(
        json!({"version": 1, "models": [model("claude-3-sonnet"), model("gpt-4")],
        "rules": [{"id": "r", "name": "r", "priority": 100, "enabled": true,
                   "trafficSplit": {"primary": 80, "canary": 20},
                   "targetModels": [{"modelId": "gpt-4", "weight": 0.3, "fallbackOrder": 2},
                                    {"modelId": "claude-3-sonnet", "weight": 0.7, "fallbackOrder": 1}]}]}),
    );
    let mut counts = [0u64; 2];
    for _ in 0..100_000 {
        let d = e.decide(&input(facts(), None, None, false), 0);
        counts[d.candidates[0].model] += 1;
    }
    let stat = chi_square(&counts, &[0.8, 0.2]);
    assert!(stat < 10.828, "chi2 {stat}, counts {counts:?}");
}

#[test]
fn endpoint_weights_converge() {
    let mut m = model("a");
    m["endpoints"][1]["type"] = json!("primary");
    m["endpoints"][1]["weight"] = json!(3.0);
    let mut e = engine(json!({"version": 1, "models": [m]}));
    let mut counts = [0u64; 2];
    for _ in 0..100_000 {
        let d = e.decide(&input(facts(), None, None, false), 0);
        counts[d.candidates[0].endpoints[0]] += 1;
    }
    let stat = chi_square(&counts, &[0.25, 0.75]);
    assert!(stat < 10.828, "chi2 {stat}, counts {counts:?}");
}

#[test]
fn rfc3339_formats_utc() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_705_314_600_000), "2024-01-15T10:30:00Z");
    assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
}

// --- properties ----------------------------------------------------------------

#[derive(Debug, Clone)]
struct ModelSpec {
    active: bool,
    unhealthy: bool,
    hipaa: bool,
    capable: bool,
    failing: [bool; 2],
}

fn model_spec() -> impl Strategy<Value = ModelSpec> {
    (
        any::<bool>(),
        prop::bool::weighted(0.2),
        any::<bool>(),
        prop::bool::weighted(0.8),
        any::<[bool; 2]>(),
    )
        .prop_map(|(active, unhealthy, hipaa, capable, failing)| ModelSpec {
            active,
            unhealthy,
            hipaa,
            capable,
            failing,
        })
}

fn world(specs: &[ModelSpec], restricted: &[bool], use_rule: bool) -> Engine {
    let models: Vec<Value> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut m = model(&format!("m{i}"));
            m["status"] = json!(if s.active { "active" } else { "inactive" });
            if s.unhealthy {
                m["health"] = json!({"status": "unhealthy"});
            }
            m["compliance"] = json!(if s.hipaa { vec!["hipaa"] } else { vec![] });
            if !s.capable {
                m["capabilities"] = json!([]);
            }
            m
        })
        .collect();
    let allowed: Vec<String> = restricted
        .iter()
        .enumerate()
        .filter(|(_, r)| !**r)
        .map(|(i, _)| format!("m{i}"))
        .collect();
    let rules = if use_rule {
        json!([{"id": "r", "name": "r", "priority": 1, "enabled": true,
                "targetModels": (0..specs.len()).map(|i| json!({"modelId": format!("m{i}"), "weight": 1.0})).collect::<Vec<_>>()}])
    } else {
        json!([])
    };
    let mut e = engine(json!({"version": 1, "models": models, "rules": rules,
        "agentPreferences": {"creative": {"requiredCapabilities": ["text-generation"]}},
        "workspaceConfigs": {"ws": {"modelRestrictions": allowed, "complianceRequirements": ["hipaa"]}}}));
    for (i, s) in specs.iter().enumerate() {
        for (ei, failing) in s.failing.iter().enumerate() {
            if *failing {
                fail(&mut e, &format!("m{i}-{}", ["a", "b"][ei]), 5);
            }
        }
    }
    e
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn no_ineligible_model_and_no_open_endpoint_is_ever_returned(
        specs in prop::collection::vec(model_spec(), 1..8),
        restricted in prop::collection::vec(prop::bool::weighted(0.2), 8),
        use_rule in any::<bool>(),
    ) {
        let mut e = world(&specs, &restricted, use_rule);
        let d = decide(&mut e, RequestFacts { workspace_id: Some("ws"), ..facts() });
        for c in &d.candidates {
            let s = &specs[c.model];
            prop_assert!(s.active && !s.unhealthy && s.hipaa && s.capable && !restricted[c.model], "{:?}", s);
            prop_assert!(!c.endpoints.is_empty());
            for &ei in &c.endpoints {
                prop_assert!(!s.failing[ei], "endpoint {} of m{} is open", ei, c.model);
            }
        }
        // Every model that passes all checks is a candidate (a rule targets all).
        let eligible = specs.iter().enumerate().filter(|(i, s)| s.active && !s.unhealthy && s.hipaa && s.capable
            && !restricted[*i] && s.failing.iter().any(|f| !f)).count();
        prop_assert_eq!(d.candidates.len(), eligible);
        prop_assert_eq!(d.error.is_some(), eligible == 0);
    }
}

#[test]
fn limit_keeps_the_best_candidates() {
    let mut e = engine(
        json!({"version": 1, "models": [model("a"), model("b"), model("c")],
        "agentPreferences": {"creative": {"preferredModels": ["c", "a", "b"]}}}),
    );
    let input = input(facts(), None, Some(2), false);
    let d = e.decide(&input, 0);
    assert_eq!(ids(&e, &d), ["c", "a"]);
}

#[test]
fn record_folds_traffic_into_the_rollups_with_its_cost_and_skips_probes() {
    let mut e = engine(json!({"version": 1, "models": [model("m")]}));
    let outcome = |rollup| Outcome {
        model_id: "m",
        endpoint_id: Some("m-a"),
        workspace_id: Some("ws"),
        success: Some(true),
        latency_ms: 250.0,
        tokens: Tokens {
            prompt: 1000,
            completion: 1000,
            ..Tokens::default()
        },
        retry_after_ms: None,
        started_ms: 119_500,
        rollup,
    };
    let facts = || RollupFacts {
        outcome: "success",
        agent_type: Some("creative"),
        rule_id: Some("r1"),
        rollout_id: Some("experiment-1"),
        variant: Some("m"),
        ..Default::default()
    };
    e.record(&outcome(Some(facts())), 120_500);
    e.record(&outcome(Some(facts())), 130_000);
    e.record(&outcome(None), 130_000); // a probe: breaker and stats only
    let drained = e.rollups.drain();
    assert_eq!(drained.len(), 1);
    let d = &drained[0];
    assert_eq!(d.minute_ms, 60_000, "the minute the attempt was sent in");
    assert_eq!(
        d.dims,
        [
            "m",
            "m-a",
            "ws",
            "creative",
            "r1",
            "success",
            "experiment-1",
            "m"
        ]
        .map(String::from)
    );
    assert_eq!((d.bucket.attempts, d.bucket.requests), (2, 2));
    assert_eq!(
        d.bucket.cost_nanos,
        2 * 40_000_000,
        "0.01 + 0.03 USD per attempt"
    );
}
