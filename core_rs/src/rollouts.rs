//! Which canary or experiment a routed request takes part in, and which of
//! its arms (docs/experiments.md; `experiments/routing.py` compiles the
//! rollouts from the config, keeps what each arm means for the tallies, and
//! puts the arm's model first among the candidates).
//!
//! A request belongs to the rollout on its rule, else on its agent type,
//! else on its workspace. An experiment draws its variant from its weights
//! by a hash of its id and the request id (the user id, when it assigns by
//! user: sticky), or sends everything to its winner once ended on one. A
//! canary takes a request routing sent to its baseline model when a hash of
//! its id and the request id falls under its share; the rest are its
//! baseline arm. The hash is the same on every worker and replica.

use blake2::digest::consts::U8;
use blake2::{Blake2b, Digest};
use std::collections::HashMap;

/// A uniform number in [0, 1) from `parts`: BLAKE2b of them joined by 0x1f,
/// 8 bytes, big-endian, over 2^64.
pub fn unit_hash(parts: &[&str]) -> f64 {
    let mut hasher = Blake2b::<U8>::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hasher.update([0x1f]);
        }
        hasher.update(part.as_bytes());
    }
    let digest: [u8; 8] = hasher.finalize().into();
    u64::from_be_bytes(digest) as f64 / 2f64.powi(64)
}

pub enum Rollout {
    Canary {
        id: String,
        baseline_model: String,
        /// The canary's share of its baseline's requests, 0..=1.
        share: f64,
    },
    Experiment {
        id: String,
        by_user: bool,
        /// The weights' running sums over their total, one per variant.
        cumulative: Vec<f64>,
        /// Ended on a winner (autoEnd): every request goes there.
        ended_on_winner: bool,
    },
}

/// Where a rollout applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Rule,
    AgentType,
    Workspace,
}

/// A request's arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    Canary,
    Baseline,
    Variant(usize),
    Winner,
}

#[derive(Default)]
pub struct Rollouts {
    rollouts: Vec<Rollout>,
    /// By rule id, agent type and workspace id: the index of its rollout.
    scopes: [HashMap<String, usize>; 3],
}

impl Rollouts {
    /// `entries` oldest first: of two on one scope, the later wins.
    pub fn new(entries: Vec<(Scope, String, Rollout)>) -> Rollouts {
        let mut table = Rollouts::default();
        for (scope, value, rollout) in entries {
            table.scopes[scope as usize].insert(value, table.rollouts.len());
            table.rollouts.push(rollout);
        }
        table
    }

    /// The request's rollout (its index in `new`'s entries) and arm, or
    /// None. `first_model`: the model routing put first.
    pub fn assign(
        &self,
        rule_id: Option<&str>,
        agent_type: &str,
        workspace_id: Option<&str>,
        first_model: Option<&str>,
        request_id: &str,
        user_id: Option<&str>,
    ) -> Option<(usize, Arm)> {
        let [by_rule, by_agent, by_workspace] = &self.scopes;
        let index = *rule_id
            .and_then(|r| by_rule.get(r))
            .or_else(|| by_agent.get(agent_type))
            .or_else(|| workspace_id.and_then(|w| by_workspace.get(w)))?;
        let arm = match &self.rollouts[index] {
            Rollout::Canary {
                id,
                baseline_model,
                share,
            } => {
                if first_model != Some(baseline_model.as_str()) {
                    return None; // routing did not send it to the baseline
                }
                if *share >= 1.0 || unit_hash(&[id, request_id]) < *share {
                    Arm::Canary
                } else {
                    Arm::Baseline
                }
            }
            Rollout::Experiment {
                ended_on_winner: true,
                ..
            } => Arm::Winner,
            Rollout::Experiment {
                id,
                by_user,
                cumulative,
                ..
            } => {
                let unit = match user_id {
                    Some(user) if *by_user && !user.is_empty() => user,
                    _ => request_id,
                };
                let u = unit_hash(&[id, unit]);
                let last = cumulative.len().saturating_sub(1);
                Arm::Variant(cumulative.iter().position(|edge| u < *edge).unwrap_or(last))
            }
        };
        Some((index, arm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(id: &str, share: f64) -> Rollout {
        Rollout::Canary {
            id: id.into(),
            baseline_model: "base".into(),
            share,
        }
    }

    fn experiment(id: &str, weights: &[f64], by_user: bool) -> Rollout {
        let total: f64 = weights.iter().sum();
        let cumulative = weights
            .iter()
            .scan(0.0, |run, w| {
                *run += w;
                Some(*run / total)
            })
            .collect();
        Rollout::Experiment {
            id: id.into(),
            by_user,
            cumulative,
            ended_on_winner: false,
        }
    }

    #[test]
    fn the_hash_is_blake2b_of_the_parts() {
        // hashlib.blake2b(b"c1\x1freq-1", digest_size=8), big-endian / 2**64
        let u = unit_hash(&["c1", "req-1"]);
        assert!((0.0..1.0).contains(&u));
        assert_eq!(u, unit_hash(&["c1", "req-1"]));
        assert_ne!(u, unit_hash(&["c1req-1"]));
    }

    #[test]
    fn a_rule_scope_wins_over_an_agent_scope_and_that_over_a_workspace_scope() {
        let rollouts = Rollouts::new(vec![
            (Scope::Workspace, "w".into(), canary("on-w", 1.0)),
            (Scope::AgentType, "a".into(), canary("on-a", 1.0)),
            (Scope::Rule, "r".into(), canary("on-r", 1.0)),
        ]);
        let at = |rule, agent, ws| {
            rollouts
                .assign(rule, agent, ws, Some("base"), "q", None)
                .map(|a| a.0)
        };
        assert_eq!(at(Some("r"), "a", Some("w")), Some(2));
        assert_eq!(at(Some("x"), "a", Some("w")), Some(1));
        assert_eq!(at(None, "b", Some("w")), Some(0));
        assert_eq!(at(None, "b", None), None);
        // The later of two on one scope wins.
        let later = Rollouts::new(vec![
            (Scope::AgentType, "a".into(), canary("old", 1.0)),
            (Scope::AgentType, "a".into(), canary("new", 1.0)),
        ]);
        assert_eq!(
            later.assign(None, "a", None, Some("base"), "q", None),
            Some((1, Arm::Canary))
        );
    }

    #[test]
    fn a_canary_takes_its_share_of_what_routing_sent_its_baseline() {
        let rollouts = Rollouts::new(vec![(Scope::AgentType, "a".into(), canary("c", 0.25))]);
        assert_eq!(
            rollouts.assign(None, "a", None, Some("other"), "q", None),
            None
        );
        let canaries = (0..4000)
            .filter(|i| {
                let arm = rollouts.assign(None, "a", None, Some("base"), &format!("q{i}"), None);
                arm == Some((0, Arm::Canary))
            })
            .count();
        assert!((900..1100).contains(&canaries), "{canaries}");
    }

    #[test]
    fn an_experiment_splits_by_its_weights_and_by_user_sticks() {
        let rollouts = Rollouts::new(vec![
            (
                Scope::AgentType,
                "a".into(),
                experiment("e", &[1.0, 3.0], false),
            ),
            (
                Scope::AgentType,
                "u".into(),
                experiment("e", &[1.0, 1.0], true),
            ),
        ]);
        let second = (0..4000)
            .filter(|i| {
                rollouts.assign(None, "a", None, None, &format!("q{i}"), None)
                    == Some((0, Arm::Variant(1)))
            })
            .count();
        assert!((2850..3150).contains(&second), "{second}");
        let of_user = |q: &str| rollouts.assign(None, "u", None, None, q, Some("alice"));
        assert!((0..50).all(|i| of_user(&format!("q{i}")) == of_user("q")));
        let winner = Rollouts::new(vec![(
            Scope::Rule,
            "r".into(),
            Rollout::Experiment {
                id: "e".into(),
                by_user: false,
                cumulative: vec![1.0],
                ended_on_winner: true,
            },
        )]);
        assert_eq!(
            winner.assign(Some("r"), "a", None, None, "q", None),
            Some((0, Arm::Winner))
        );
    }
}
