//! The config snapshot: the whole routing configuration, handed over by Python as
//! JSON bytes whenever the config version changes, deserialized and indexed once so
//! that a routing decision never scans what it can look up.

use crate::breaker::BreakerOverrides;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};

/// USD per 1,000 tokens.
#[derive(Debug, Clone, Deserialize)]
pub struct Pricing {
    #[serde(rename = "inputPer1k")]
    pub input_per1k: f64,
    #[serde(rename = "outputPer1k")]
    pub output_per1k: f64,
    #[serde(rename = "cacheReadPer1k", default)]
    pub cache_read_per1k: Option<f64>,
    #[serde(rename = "cacheWritePer1k", default)]
    pub cache_write_per1k: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capability {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub max_tokens: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub status: String,
    #[serde(default)]
    pub response_time: Option<f64>,
    #[serde(default)]
    pub error_rate: Option<f64>,
    #[serde(default)]
    pub availability: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub weight: f64,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub breaker: Option<BreakerOverrides>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Model {
    pub id: String,
    #[serde(default)]
    pub version: String,
    pub provider: String,
    pub model_type: String,
    pub status: String,
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    #[serde(default)]
    pub compliance: Vec<String>,
    #[serde(default)]
    pub pricing: Option<Pricing>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub health: Option<Health>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub breaker: Option<BreakerOverrides>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LengthRange {
    #[serde(default)]
    pub min: Option<u64>,
    #[serde(default)]
    pub max: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(default)]
    pub agent_type: Option<Vec<String>>,
    #[serde(default)]
    pub request_type: Option<Vec<String>>,
    #[serde(default)]
    pub content_length: Option<LengthRange>,
    #[serde(default)]
    pub workspace_id: Option<Vec<String>>,
    #[serde(default)]
    pub user_id: Option<Vec<String>>,
    #[serde(default)]
    pub metadata: Option<HashMap<String, MetaValue>>,
}

/// A metadata value a rule can match on. Numbers compare by value, so a rule's
/// `1` matches a request's `1.0`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MetaValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl PartialEq for MetaValue {
    fn eq(&self, other: &Self) -> bool {
        use MetaValue::*;
        match (self, other) {
            (Bool(a), Bool(b)) => a == b,
            (Str(a), Str(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (Int(a), Float(b)) | (Float(b), Int(a)) => (*a as f64) == *b,
            (Float(a), Float(b)) => a == b,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub model_id: String,
    pub weight: f64,
    #[serde(default)]
    pub fallback_order: Option<i64>,
    #[serde(default)]
    pub role: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TrafficSplit {
    pub primary: f64,
    pub canary: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub condition: Condition,
    pub target_models: Vec<Target>,
    #[serde(default)]
    pub traffic_split: Option<TrafficSplit>,
    pub priority: i64,
    pub enabled: bool,
    #[serde(default)]
    pub sticky: bool,
    #[serde(default)]
    pub created_at: Option<String>,
    /// Per target: on the canary side of `traffic_split` (set at load).
    #[serde(skip)]
    pub canary: Vec<bool>,
}

impl Rule {
    /// Which targets a traffic split sends its canary share to: those with
    /// `role: "canary"` when any has it; else (the spec's rule, which names no
    /// roles) every target but the first by fallback order, the primary.
    fn canary_targets(&self) -> Vec<bool> {
        let by_role: Vec<bool> = self
            .target_models
            .iter()
            .map(|t| t.role.as_deref() == Some("canary"))
            .collect();
        if by_role.contains(&true) || self.traffic_split.is_none() {
            return by_role;
        }
        let primary = (0..self.target_models.len()).min_by_key(|&ti| {
            (
                self.target_models[ti].fallback_order.unwrap_or(i64::MAX),
                ti,
            )
        });
        (0..self.target_models.len())
            .map(|ti| Some(ti) != primary)
            .collect()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PerformanceRequirements {
    #[serde(default)]
    pub max_latency: Option<f64>,
    #[serde(default)]
    pub min_success_rate: Option<f64>,
    #[serde(default)]
    pub max_cost_per_token: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentPreferences {
    #[serde(default)]
    pub preferred_models: Vec<String>,
    #[serde(default)]
    pub fallback_models: Vec<String>,
    #[serde(default)]
    pub required_capabilities: Vec<String>,
    #[serde(default)]
    pub performance_requirements: Option<PerformanceRequirements>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct BudgetLimits {
    #[serde(default)]
    pub daily: Option<f64>,
    #[serde(default)]
    pub weekly: Option<f64>,
    #[serde(default)]
    pub monthly: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceConfig {
    #[serde(default)]
    pub model_restrictions: Option<Vec<String>>,
    #[serde(default)]
    pub budget_limits: Option<BudgetLimits>,
    #[serde(default)]
    pub quality_requirements: Option<PerformanceRequirements>,
    #[serde(default)]
    pub compliance_requirements: Vec<String>,
}

/// Engine-wide settings, from the service's environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineSettings {
    /// When every endpoint of every eligible model is open, route anyway.
    #[serde(default)]
    pub fail_open: bool,
    /// Observed figures count for eligibility only past this many samples.
    #[serde(default = "default_min_samples")]
    pub min_samples: u32,
    /// Half-open endpoints are tested by the router's own probes
    /// (`Engine::due_probes`), never with a caller's request.
    #[serde(default)]
    pub active_probes: bool,
}

fn default_min_samples() -> u32 {
    20
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            fail_open: false,
            min_samples: default_min_samples(),
            active_probes: false,
        }
    }
}

/// The document Python serializes: `types.ConfigSnapshot` on the Python side.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SnapshotDoc {
    version: u64,
    #[serde(default)]
    settings: EngineSettings,
    #[serde(default)]
    models: Vec<Model>,
    #[serde(default)]
    rules: Vec<Rule>,
    #[serde(default)]
    agent_preferences: HashMap<String, AgentPreferences>,
    #[serde(default)]
    workspace_configs: HashMap<String, WorkspaceConfig>,
}

/// Rule positions (into `Snapshot::rules`, already in evaluation order) for
/// every agent type and request type some rule names, and for any other.
#[derive(Debug, Default)]
struct RuleIndex {
    by_agent: HashMap<String, ByRequest>,
    any_agent: ByRequest,
}

#[derive(Debug, Default)]
struct ByRequest {
    by_request: HashMap<String, Vec<u32>>,
    any_request: Vec<u32>,
}

#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub settings: EngineSettings,
    pub models: Vec<Model>,
    pub rules: Vec<Rule>,
    pub agent_preferences: HashMap<String, AgentPreferences>,
    pub workspace_configs: HashMap<String, WorkspaceConfig>,
    model_index: HashMap<String, usize>,
    endpoint_index: HashMap<String, (usize, usize)>,
    rule_index: RuleIndex,
    /// Every metadata key some rule matches on: all a request needs to pass in.
    pub metadata_keys: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum LoadError {
    Json(String),
    DuplicateModel(String),
    DuplicateEndpoint(String),
    UnknownTarget { rule: String, model: String },
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Json(e) => write!(f, "invalid snapshot: {e}"),
            LoadError::DuplicateModel(id) => write!(f, "invalid snapshot: model {id} twice"),
            LoadError::DuplicateEndpoint(id) => write!(f, "invalid snapshot: endpoint {id} twice"),
            LoadError::UnknownTarget { rule, model } => {
                write!(
                    f,
                    "invalid snapshot: rule {rule} targets unknown model {model}"
                )
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// Does a rule's list condition admit `key`? An absent or empty list admits all.
fn admits(list: &Option<Vec<String>>, key: Option<&str>) -> bool {
    match (list.as_deref(), key) {
        (None, _) | (Some([]), _) => true,
        (Some(values), Some(k)) => values.iter().any(|v| v == k),
        (Some(_), None) => false,
    }
}

impl Snapshot {
    pub fn load(bytes: &[u8]) -> Result<Snapshot, LoadError> {
        let doc: SnapshotDoc =
            serde_json::from_slice(bytes).map_err(|e| LoadError::Json(e.to_string()))?;
        let mut model_index = HashMap::with_capacity(doc.models.len());
        for (i, m) in doc.models.iter().enumerate() {
            if model_index.insert(m.id.clone(), i).is_some() {
                return Err(LoadError::DuplicateModel(m.id.clone()));
            }
        }
        let mut rules = doc.rules;
        for r in &mut rules {
            r.canary = r.canary_targets();
        }
        for r in &rules {
            if let Some(t) = r
                .target_models
                .iter()
                .find(|t| !model_index.contains_key(&t.model_id))
            {
                return Err(LoadError::UnknownTarget {
                    rule: r.id.clone(),
                    model: t.model_id.clone(),
                });
            }
        }
        // Evaluation order: highest priority first, ties to the older rule.
        rules.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.created_at.cmp(&b.created_at))
        });
        let rule_index = index_rules(&rules);
        let mut endpoint_index = HashMap::new();
        for (mi, m) in doc.models.iter().enumerate() {
            for (ei, e) in m.endpoints.iter().enumerate() {
                if endpoint_index.insert(e.id.clone(), (mi, ei)).is_some() {
                    return Err(LoadError::DuplicateEndpoint(e.id.clone()));
                }
            }
        }
        let metadata_keys: BTreeSet<&String> = rules
            .iter()
            .filter_map(|r| r.condition.metadata.as_ref())
            .flat_map(|m| m.keys())
            .collect();
        let metadata_keys = metadata_keys.into_iter().cloned().collect();
        Ok(Snapshot {
            version: doc.version,
            settings: doc.settings,
            models: doc.models,
            rules,
            agent_preferences: doc.agent_preferences,
            workspace_configs: doc.workspace_configs,
            model_index,
            endpoint_index,
            rule_index,
            metadata_keys,
        })
    }

    pub fn model(&self, id: &str) -> Option<&Model> {
        self.model_index.get(id).map(|&i| &self.models[i])
    }

    pub fn model_position(&self, id: &str) -> Option<usize> {
        self.model_index.get(id).copied()
    }

    /// (model position, endpoint position) of an endpoint id.
    pub fn endpoint_position(&self, id: &str) -> Option<(usize, usize)> {
        self.endpoint_index.get(id).copied()
    }

    pub fn endpoint_count(&self) -> usize {
        self.models.iter().map(|m| m.endpoints.len()).sum()
    }

    /// Enabled rules that may apply to this agent and request type, in evaluation
    /// order. The other conditions (content length, workspace, user, metadata) are
    /// per request and left to the matcher.
    pub fn rules_for(&self, agent_type: &str, request_type: &str) -> impl Iterator<Item = &Rule> {
        self.rule_positions(agent_type, request_type)
            .iter()
            .map(move |&i| &self.rules[i as usize])
    }

    /// Positions (into `rules`) of the rules `rules_for` yields.
    pub fn rule_positions(&self, agent_type: &str, request_type: &str) -> &[u32] {
        let by_request = self
            .rule_index
            .by_agent
            .get(agent_type)
            .unwrap_or(&self.rule_index.any_agent);
        by_request
            .by_request
            .get(request_type)
            .unwrap_or(&by_request.any_request)
    }
}

fn index_rules(rules: &[Rule]) -> RuleIndex {
    let names = |pick: fn(&Condition) -> &Option<Vec<String>>| -> BTreeSet<&String> {
        rules
            .iter()
            .filter_map(|r| pick(&r.condition).as_ref())
            .flatten()
            .collect()
    };
    let agents = names(|c| &c.agent_type);
    let requests = names(|c| &c.request_type);
    let positions = |agent: Option<&str>, request: Option<&str>| -> Vec<u32> {
        rules
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.enabled
                    && admits(&r.condition.agent_type, agent)
                    && admits(&r.condition.request_type, request)
            })
            .map(|(i, _)| i as u32)
            .collect()
    };
    let by_request = |agent: Option<&str>| ByRequest {
        by_request: requests
            .iter()
            .map(|r| ((*r).clone(), positions(agent, Some(r))))
            .collect(),
        any_request: positions(agent, None),
    };
    RuleIndex {
        by_agent: agents
            .iter()
            .map(|a| ((*a).clone(), by_request(Some(a))))
            .collect(),
        any_agent: by_request(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn model(id: &str) -> serde_json::Value {
        json!({"id": id, "provider": "openai", "modelType": "chat", "status": "active",
               "endpoints": [{"id": format!("ep-{id}"), "url": "http://127.0.0.1:1/v1/chat/completions",
                              "type": "primary", "weight": 1.0}]})
    }

    fn rule(
        id: &str,
        priority: i64,
        created: &str,
        condition: serde_json::Value,
    ) -> serde_json::Value {
        json!({"id": id, "name": id, "condition": condition, "priority": priority, "enabled": true,
               "createdAt": created, "targetModels": [{"modelId": "m1", "weight": 1.0}]})
    }

    fn load(doc: serde_json::Value) -> Result<Snapshot, LoadError> {
        Snapshot::load(&serde_json::to_vec(&doc).unwrap())
    }

    #[test]
    fn loads_and_indexes_models() {
        let s = load(json!({"version": 7, "models": [model("m1"), model("m2")]})).unwrap();
        assert_eq!(s.version, 7);
        assert_eq!(s.model("m2").unwrap().endpoints[0].id, "ep-m2");
        assert!(s.model("nope").is_none());
        assert_eq!(s.endpoint_count(), 2);
    }

    #[test]
    fn rejects_bad_json_duplicates_and_dangling_targets() {
        assert!(matches!(
            Snapshot::load(b"{not json"),
            Err(LoadError::Json(_))
        ));
        assert!(matches!(Snapshot::load(b"{}"), Err(LoadError::Json(_))));
        assert_eq!(
            load(json!({"version": 1, "models": [model("m1"), model("m1")]})).unwrap_err(),
            LoadError::DuplicateModel("m1".into())
        );
        let mut r = rule("r1", 1, "a", json!({}));
        r["targetModels"][0]["modelId"] = json!("ghost");
        assert_eq!(
            load(json!({"version": 1, "models": [model("m1")], "rules": [r]})).unwrap_err(),
            LoadError::UnknownTarget {
                rule: "r1".into(),
                model: "ghost".into()
            }
        );
    }

    #[test]
    fn rules_come_in_priority_order_ties_to_older() {
        let s = load(json!({"version": 1, "models": [model("m1")], "rules": [
            rule("low", 1, "2024-01-01", json!({})),
            rule("high-new", 9, "2024-03-01", json!({})),
            rule("high-old", 9, "2024-02-01", json!({})),
        ]}))
        .unwrap();
        let ids: Vec<&str> = s.rules_for("any", "chat").map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["high-old", "high-new", "low"]);
    }

    #[test]
    fn index_filters_by_agent_and_request_type() {
        let s = load(json!({"version": 1, "models": [model("m1")], "rules": [
            rule("creative", 5, "a", json!({"agentType": ["creative"]})),
            rule("creative-chat", 4, "b", json!({"agentType": ["creative"], "requestType": ["chat"]})),
            rule("any-embedding", 3, "c", json!({"requestType": ["embedding"]})),
            rule("all", 1, "d", json!({})),
        ]}))
        .unwrap();
        let ids = |a, r| s.rules_for(a, r).map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(
            ids("creative", "chat"),
            ["creative", "creative-chat", "all"]
        );
        assert_eq!(ids("creative", "completion"), ["creative", "all"]);
        assert_eq!(
            ids("creative", "embedding"),
            ["creative", "any-embedding", "all"]
        );
        assert_eq!(ids("research", "embedding"), ["any-embedding", "all"]);
        assert_eq!(ids("research", "chat"), ["all"]);
    }

    #[test]
    fn disabled_rules_are_not_indexed() {
        let mut r = rule("off", 5, "a", json!({}));
        r["enabled"] = json!(false);
        let s = load(json!({"version": 1, "models": [model("m1")], "rules": [r]})).unwrap();
        assert_eq!(s.rules_for("x", "chat").count(), 0);
        assert_eq!(s.rules.len(), 1);
    }

    proptest! {
        /// The index returns exactly what a full scan in evaluation order would.
        #[test]
        fn index_agrees_with_a_scan(
            specs in proptest::collection::vec(
                (0i64..5, proptest::option::of(proptest::sample::subsequence(vec!["a", "b", "c"], 0..3)),
                 proptest::option::of(proptest::sample::subsequence(vec!["chat", "completion"], 0..2)),
                 any::<bool>()), 0..30),
            agent in proptest::sample::select(vec!["a", "b", "c", "z"]),
            request in proptest::sample::select(vec!["chat", "completion", "embedding"]),
        ) {
            let rules: Vec<_> = specs.iter().enumerate().map(|(i, (p, agents, reqs, enabled))| {
                let mut r = rule(&format!("r{i}"), *p, &format!("{i:03}"),
                    json!({"agentType": agents, "requestType": reqs}));
                r["enabled"] = json!(enabled);
                r
            }).collect();
            let s = load(json!({"version": 1, "models": [model("m1")], "rules": rules})).unwrap();
            let got: Vec<&str> = s.rules_for(agent, request).map(|r| r.id.as_str()).collect();
            let want: Vec<&str> = s.rules.iter().filter(|r| r.enabled
                && admits(&r.condition.agent_type, Some(agent))
                && admits(&r.condition.request_type, Some(request))).map(|r| r.id.as_str()).collect();
            prop_assert_eq!(got, want);
        }
    }
}
