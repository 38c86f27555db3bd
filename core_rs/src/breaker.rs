//! A circuit breaker per endpoint.
//!
//! Closed: traffic flows; it opens after `failure_threshold` consecutive
//! failures, or when the error rate over the last `window_size` outcomes (once
//! there are at least `min_requests`) exceeds `error_rate_threshold`. Open: no
//! traffic until the cooldown ends; the cooldown doubles on each consecutive
//! open up to `max_cooldown_ms`, and a 429's Retry-After lengthens it. Half-open:
//! up to `half_open_probes` decisions may include the endpoint; the first
//! success closes the breaker, a failure opens it again. A probe that never
//! reports back frees its slot after `probe_timeout_ms`.
//!
//! An outcome of a request that started before the breaker's last change
//! moves nothing: a hung provider's late timeouts must not re-open a breaker
//! that a probe has just closed. Opens and closes are reported as
//! `Transition`s, so other workers and replicas can adopt them.

use serde::Deserialize;
use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub error_rate_threshold: f64,
    pub window_size: u32,
    pub min_requests: u32,
    pub cooldown_ms: u64,
    pub max_cooldown_ms: u64,
    pub half_open_probes: u32,
    pub probe_timeout_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            error_rate_threshold: 0.5,
            window_size: 20,
            min_requests: 10,
            cooldown_ms: 10_000,
            max_cooldown_ms: 300_000,
            half_open_probes: 1,
            probe_timeout_ms: 30_000,
        }
    }
}

/// Overrides, per model or per endpoint; unset fields fall through.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerOverrides {
    #[serde(default)]
    pub failure_threshold: Option<u32>,
    #[serde(default)]
    pub error_rate_threshold: Option<f64>,
    #[serde(default)]
    pub window_size: Option<u32>,
    #[serde(default)]
    pub min_requests: Option<u32>,
    #[serde(default)]
    pub cooldown_ms: Option<u64>,
    #[serde(default)]
    pub max_cooldown_ms: Option<u64>,
    #[serde(default)]
    pub half_open_probes: Option<u32>,
}

impl BreakerConfig {
    pub fn with(self, o: &BreakerOverrides) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: o.failure_threshold.unwrap_or(self.failure_threshold),
            error_rate_threshold: o.error_rate_threshold.unwrap_or(self.error_rate_threshold),
            window_size: o.window_size.unwrap_or(self.window_size),
            min_requests: o.min_requests.unwrap_or(self.min_requests),
            cooldown_ms: o.cooldown_ms.unwrap_or(self.cooldown_ms),
            max_cooldown_ms: o.max_cooldown_ms.unwrap_or(self.max_cooldown_ms),
            half_open_probes: o.half_open_probes.unwrap_or(self.half_open_probes),
            probe_timeout_ms: self.probe_timeout_ms,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open { until_ms: u64 },
    HalfOpen,
}

/// A change of state worth telling other workers: opened until, or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened { until_ms: u64 },
    Closed,
}

/// What a decision may do with an endpoint now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admit,
    /// Half-open: admitted as one of the few probes.
    Probe,
    Refuse {
        until_ms: u64,
    },
}

#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    pub config: BreakerConfig,
    state: State,
    consecutive_failures: u32,
    recent: VecDeque<bool>,
    recent_failures: u32,
    consecutive_opens: u32,
    probes: Vec<u64>,
    changed_ms: u64,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> CircuitBreaker {
        CircuitBreaker {
            config,
            state: State::Closed,
            consecutive_failures: 0,
            recent: VecDeque::with_capacity(config.window_size as usize),
            recent_failures: 0,
            consecutive_opens: 0,
            probes: Vec::new(),
            changed_ms: 0,
        }
    }

    pub fn state(&self, now_ms: u64) -> State {
        match self.state {
            State::Open { until_ms } if now_ms >= until_ms => State::HalfOpen,
            s => s,
        }
    }

    /// Would a request be let through now? Does not take a probe slot.
    pub fn peek(&self, now_ms: u64) -> Admission {
        match self.state(now_ms) {
            State::Closed => Admission::Admit,
            State::Open { until_ms } => Admission::Refuse { until_ms },
            State::HalfOpen => {
                let live = self
                    .probes
                    .iter()
                    .filter(|&&t| now_ms < t + self.config.probe_timeout_ms)
                    .count();
                if (live as u32) < self.config.half_open_probes {
                    Admission::Probe
                } else {
                    Admission::Refuse { until_ms: now_ms }
                }
            }
        }
    }

    /// Take a probe slot (half-open only). Returns whether one was free.
    pub fn take_probe(&mut self, now_ms: u64) -> bool {
        if self.peek(now_ms) != Admission::Probe {
            return false;
        }
        self.state = State::HalfOpen;
        let timeout = self.config.probe_timeout_ms;
        self.probes.retain(|&t| now_ms < t + timeout);
        self.probes.push(now_ms);
        true
    }

    /// Account one outcome of a request that started at `started_ms`.
    pub fn record(
        &mut self,
        success: bool,
        now_ms: u64,
        started_ms: u64,
        retry_after_ms: Option<u64>,
    ) -> Option<Transition> {
        if started_ms < self.changed_ms {
            return None; // sent before the last change: says nothing about now
        }
        self.push_outcome(success);
        match (self.state(now_ms), success) {
            (State::HalfOpen, true) => Some(self.close(now_ms)),
            (State::HalfOpen, false) => Some(self.open(now_ms, retry_after_ms)),
            (State::Open { .. }, _) => None,
            (State::Closed, true) => {
                self.consecutive_failures = 0;
                None
            }
            (State::Closed, false) => {
                self.consecutive_failures += 1;
                (retry_after_ms.is_some() || self.tripped())
                    .then(|| self.open(now_ms, retry_after_ms))
            }
        }
    }

    /// An attempt that came to no verdict (its caller left before the
    /// answer) gives back the probe slot it may have held: the next request
    /// may test the endpoint, not wait out `probe_timeout_ms`.
    pub fn no_verdict(&mut self, now_ms: u64) {
        if self.state(now_ms) == State::HalfOpen {
            self.probes.pop();
        }
    }

    /// Take on a transition another worker or replica made.
    pub fn adopt(&mut self, transition: Transition, now_ms: u64) {
        match (transition, self.state) {
            (Transition::Opened { until_ms }, State::Open { until_ms: ours })
                if ours >= until_ms => {}
            (Transition::Opened { until_ms }, _) => {
                self.state = State::Open { until_ms };
                self.consecutive_opens += 1;
                self.probes.clear();
                self.changed_ms = now_ms;
            }
            (Transition::Closed, State::Closed) => {}
            (Transition::Closed, _) => {
                self.close(now_ms);
            }
        }
    }

    fn push_outcome(&mut self, success: bool) {
        if self.recent.len() as u32 >= self.config.window_size.max(1) {
            if let Some(false) = self.recent.pop_front() {
                self.recent_failures -= 1;
            }
        }
        self.recent.push_back(success);
        if !success {
            self.recent_failures += 1;
        }
    }

    fn tripped(&self) -> bool {
        let c = &self.config;
        if self.consecutive_failures >= c.failure_threshold {
            return true;
        }
        let n = self.recent.len() as u32;
        n >= c.min_requests.max(1)
            && (self.recent_failures as f64 / n as f64) > c.error_rate_threshold
    }

    fn open(&mut self, now_ms: u64, retry_after_ms: Option<u64>) -> Transition {
        let c = &self.config;
        let grown = c
            .cooldown_ms
            .saturating_mul(1u64 << self.consecutive_opens.min(20));
        let cooldown = grown
            .min(c.max_cooldown_ms)
            .max(retry_after_ms.unwrap_or(0));
        let until_ms = now_ms + cooldown;
        self.state = State::Open { until_ms };
        self.consecutive_opens += 1;
        self.probes.clear();
        self.changed_ms = now_ms;
        Transition::Opened { until_ms }
    }

    fn close(&mut self, now_ms: u64) -> Transition {
        self.state = State::Closed;
        self.consecutive_failures = 0;
        self.consecutive_opens = 0;
        self.recent.clear();
        self.recent_failures = 0;
        self.probes.clear();
        self.changed_ms = now_ms;
        Transition::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig::default())
    }

    #[test]
    fn opens_after_consecutive_failures_and_recovers_through_a_probe() {
        let mut b = breaker();
        for _ in 0..4 {
            b.record(false, 0, 0, None);
        }
        assert_eq!(b.peek(0), Admission::Admit);
        b.record(false, 100, 100, None);
        assert_eq!(b.peek(100), Admission::Refuse { until_ms: 10_100 });
        assert_eq!(b.peek(10_099), Admission::Refuse { until_ms: 10_100 });
        assert_eq!(b.peek(10_100), Admission::Probe);
        assert!(b.take_probe(10_100));
        assert!(!b.take_probe(10_101), "one probe at a time");
        b.record(true, 10_200, 10_200, None);
        assert_eq!(b.state(10_200), State::Closed);
    }

    #[test]
    fn a_probe_with_no_verdict_gives_its_slot_back() {
        let mut b = breaker();
        for _ in 0..5 {
            b.record(false, 100, 100, None);
        }
        assert!(b.take_probe(10_100));
        assert!(!b.take_probe(10_101));
        b.no_verdict(10_150); // its caller left
        assert_eq!(b.state(10_150), State::HalfOpen, "still to be tested");
        assert!(b.take_probe(10_160), "the next request may test it");
    }

    #[test]
    fn a_failed_probe_reopens_for_longer_up_to_the_cap() {
        let mut b = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 1,
            max_cooldown_ms: 35_000,
            ..Default::default()
        });
        b.record(false, 0, 0, None);
        assert_eq!(b.state(0), State::Open { until_ms: 10_000 });
        assert!(b.take_probe(10_000));
        b.record(false, 10_000, 10_000, None);
        assert_eq!(b.state(10_000), State::Open { until_ms: 30_000 });
        assert!(b.take_probe(30_000));
        b.record(false, 30_000, 30_000, None);
        assert_eq!(
            b.state(30_000),
            State::Open { until_ms: 65_000 },
            "capped at 35 s"
        );
    }

    #[test]
    fn opens_on_error_rate_over_the_window() {
        let mut b = breaker();
        // Alternate: never 5 in a row, but 50% errors; needs > 50%.
        for i in 0..10 {
            b.record(i % 2 == 0, i, i, None);
        }
        assert_eq!(b.peek(10), Admission::Admit);
        b.record(false, 11, 11, None);
        b.record(false, 12, 12, None);
        assert!(matches!(b.peek(12), Admission::Refuse { .. }));
    }

    #[test]
    fn too_few_requests_never_trip_the_rate() {
        let mut b = CircuitBreaker::new(BreakerConfig {
            min_requests: 10,
            failure_threshold: 100,
            ..Default::default()
        });
        for i in 0..9 {
            b.record(false, i, i, None);
        }
        assert_eq!(b.peek(9), Admission::Admit);
        b.record(false, 9, 9, None);
        assert!(matches!(b.peek(9), Admission::Refuse { .. }));
    }

    #[test]
    fn retry_after_opens_at_once_for_at_least_that_long() {
        let mut b = breaker();
        b.record(false, 0, 0, Some(60_000));
        assert_eq!(b.state(0), State::Open { until_ms: 60_000 });
    }

    #[test]
    fn a_lost_probe_frees_its_slot() {
        let mut b = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 1,
            ..Default::default()
        });
        b.record(false, 0, 0, None);
        assert!(b.take_probe(10_000));
        assert!(!b.take_probe(20_000));
        assert!(b.take_probe(40_001));
    }

    #[test]
    fn late_outcomes_of_requests_sent_before_a_change_move_nothing() {
        let mut b = CircuitBreaker::new(BreakerConfig {
            failure_threshold: 1,
            ..Default::default()
        });
        // Sent at 0, fails at 100: opens. A probe at 10_100 closes it.
        assert_eq!(
            b.record(false, 100, 0, None),
            Some(Transition::Opened { until_ms: 10_100 })
        );
        assert!(b.take_probe(10_100));
        assert_eq!(
            b.record(true, 10_200, 10_100, None),
            Some(Transition::Closed)
        );
        // A request sent at 50 times out only now: it says nothing about now.
        assert_eq!(b.record(false, 30_050, 50, None), None);
        assert_eq!(b.state(30_050), State::Closed);
    }

    #[test]
    fn transitions_from_elsewhere_are_adopted() {
        let mut b = breaker();
        b.adopt(Transition::Opened { until_ms: 5_000 }, 1_000);
        assert_eq!(b.peek(1_000), Admission::Refuse { until_ms: 5_000 });
        b.adopt(Transition::Opened { until_ms: 4_000 }, 1_100); // older news
        assert_eq!(b.peek(1_100), Admission::Refuse { until_ms: 5_000 });
        // Outcomes of requests sent before the adopted change are ignored.
        assert_eq!(b.record(false, 1_200, 900, None), None);
        b.adopt(Transition::Closed, 2_000);
        assert_eq!(b.state(2_000), State::Closed);
    }

    #[test]
    fn overrides_fall_through() {
        let o = BreakerOverrides {
            failure_threshold: Some(2),
            ..Default::default()
        };
        let c = BreakerConfig::default().with(&o);
        assert_eq!(c.failure_threshold, 2);
        assert_eq!(c.cooldown_ms, BreakerConfig::default().cooldown_ms);
    }
}
