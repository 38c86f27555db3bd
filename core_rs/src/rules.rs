//! Does a rule match a request? The agent type and request type were already
//! narrowed by the snapshot's index; this checks the per-request rest.

use crate::snapshot::{MetaValue, Rule};
use std::collections::HashMap;

/// What a request offers to rule conditions.
#[derive(Debug, Default, Clone)]
pub struct RequestFacts<'a> {
    pub agent_type: &'a str,
    pub request_type: &'a str,
    pub workspace_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub content_length: u64,
    pub metadata: HashMap<String, MetaValue>,
}

fn listed(list: &Option<Vec<String>>, value: Option<&str>) -> bool {
    match list.as_deref() {
        None | Some([]) => true,
        Some(values) => value.is_some_and(|v| values.iter().any(|x| x == v)),
    }
}

/// Every condition the rule states holds (agent and request type included,
/// so this is right on its own too, not only after the index).
pub fn matches(rule: &Rule, facts: &RequestFacts<'_>) -> bool {
    let c = &rule.condition;
    if !rule.enabled
        || !listed(&c.agent_type, Some(facts.agent_type))
        || !listed(&c.request_type, Some(facts.request_type))
        || !listed(&c.workspace_id, facts.workspace_id)
        || !listed(&c.user_id, facts.user_id)
    {
        return false;
    }
    if let Some(range) = &c.content_length {
        if range.min.is_some_and(|min| facts.content_length < min)
            || range.max.is_some_and(|max| facts.content_length > max)
        {
            return false;
        }
    }
    c.metadata
        .as_ref()
        .is_none_or(|wanted| wanted.iter().all(|(k, v)| facts.metadata.get(k) == Some(v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(condition: serde_json::Value) -> Rule {
        serde_json::from_value(
            json!({"id": "r", "name": "r", "priority": 0, "enabled": true,
            "condition": condition, "targetModels": [{"modelId": "m", "weight": 1.0}]}),
        )
        .unwrap()
    }

    fn facts() -> RequestFacts<'static> {
        RequestFacts {
            agent_type: "creative",
            request_type: "completion",
            workspace_id: Some("ws-1"),
            user_id: Some("u-1"),
            content_length: 500,
            metadata: HashMap::from([
                ("priority".to_owned(), MetaValue::Str("high".into())),
                ("tier".to_owned(), MetaValue::Float(2.0)),
            ]),
        }
    }

    #[test]
    fn the_spec_rule_matches_its_request() {
        let r = rule(
            json!({"agentType": ["creative"], "requestType": ["completion", "chat"],
                            "contentLength": {"min": 100, "max": 2000}}),
        );
        assert!(matches(&r, &facts()));
        assert!(!matches(
            &r,
            &RequestFacts {
                content_length: 99,
                ..facts()
            }
        ));
        assert!(!matches(
            &r,
            &RequestFacts {
                content_length: 2001,
                ..facts()
            }
        ));
        assert!(matches(
            &r,
            &RequestFacts {
                content_length: 2000,
                ..facts()
            }
        ));
        assert!(!matches(
            &r,
            &RequestFacts {
                agent_type: "research",
                ..facts()
            }
        ));
    }

    #[test]
    fn workspace_user_and_metadata_conditions() {
        assert!(matches(
            &rule(json!({"workspaceId": ["ws-1", "ws-2"]})),
            &facts()
        ));
        assert!(!matches(&rule(json!({"workspaceId": ["ws-2"]})), &facts()));
        assert!(!matches(
            &rule(json!({"workspaceId": ["ws-1"]})),
            &RequestFacts {
                workspace_id: None,
                ..facts()
            }
        ));
        assert!(!matches(&rule(json!({"userId": ["u-2"]})), &facts()));
        assert!(matches(
            &rule(json!({"metadata": {"priority": "high", "tier": 2}})),
            &facts()
        ));
        assert!(!matches(
            &rule(json!({"metadata": {"priority": "low"}})),
            &facts()
        ));
        assert!(!matches(
            &rule(json!({"metadata": {"missing": true}})),
            &facts()
        ));
        assert!(matches(&rule(json!({})), &facts()));
    }
}
