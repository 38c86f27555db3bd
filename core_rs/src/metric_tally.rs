//! The Prometheus samples of the calls the door accounts itself, summed
//! per label values for the app to add to its metrics once per batch
//! (`telemetry/metrics.py`, `MetricBatch.merge`), rather than call by call
//! as the app's accounting (`RequestObserver.account`) samples the calls it
//! accounts. Which metrics, in which order, is `metrics.DOOR_COUNTERS` and
//! `metrics.DOOR_HISTOGRAMS`; their buckets come from there too.

use std::collections::HashMap;

use crate::routed::{CallRecord, ROUTE};

/// Label values: those of one sample of a metric.
pub type Labels = Vec<String>;

/// `DOOR_COUNTERS`, in their order.
pub const ATTEMPTS: usize = 0;
pub const REQUESTS: usize = 1;
pub const DOOR_CALLS: usize = 2;
pub const TOKENS: usize = 3;
pub const COST: usize = 4;
/// `DOOR_HISTOGRAMS`, in their order.
pub const REQUEST_DURATION: usize = 0;
pub const OVERHEAD: usize = 1;
pub const UPSTREAM_DURATION: usize = 2;

pub struct MetricTally {
    /// Each histogram's upper bounds, the last one infinite, as Prometheus keeps them.
    bounds: [Vec<f64>; 3],
    /// Each counter's amount per label values.
    pub counts: [HashMap<Labels, f64>; 5],
    /// Each histogram's count per bucket (not cumulative), then the sum of
    /// what it observed, per label values: `MetricBatch`'s slots.
    pub observed: [HashMap<Labels, Vec<f64>>; 3],
}

impl MetricTally {
    pub fn new(bounds: [Vec<f64>; 3]) -> MetricTally {
        MetricTally {
            bounds,
            counts: Default::default(),
            observed: Default::default(),
        }
    }

    /// The samples of one call, as `RequestObserver.account` takes them.
    pub fn add(&mut self, call: &CallRecord) {
        for a in &call.attempts {
            let labels = [&a.model_id, &a.endpoint_id, a.outcome.label()];
            self.count(ATTEMPTS, labels.map(str::to_owned).into(), 1.0);
        }
        let model = call.model_id.as_deref().filter(|m| !m.is_empty());
        let status = call.status.to_string();
        let requests = vec![model.unwrap_or("none").to_owned(), status.clone()];
        self.count(REQUESTS, requests, 1.0);
        self.count(DOOR_CALLS, vec![status], 1.0);
        self.observe(
            REQUEST_DURATION,
            vec![ROUTE.to_owned()],
            call.latency_ms / 1000.0,
        );
        let overhead = (call.latency_ms - call.upstream_ms).max(0.0) / 1000.0;
        self.observe(OVERHEAD, Vec::new(), overhead);
        if let Some(model) = model {
            let labels = vec![model.to_owned()];
            self.observe(UPSTREAM_DURATION, labels.clone(), call.upstream_ms / 1000.0);
            let (prompt, completion) = (call.tokens.prompt, call.tokens.completion);
            self.count(
                TOKENS,
                vec![model.to_owned(), "prompt".into()],
                prompt as f64,
            );
            self.count(
                TOKENS,
                vec![model.to_owned(), "completion".into()],
                completion as f64,
            );
            self.count(COST, labels, call.cost as f64 / 1e9);
        }
    }

    fn count(&mut self, counter: usize, labels: Labels, amount: f64) {
        *self.counts[counter].entry(labels).or_insert(0.0) += amount;
    }

    fn observe(&mut self, histogram: usize, labels: Labels, value: f64) {
        let bounds = &self.bounds[histogram];
        let slots = self.observed[histogram]
            .entry(labels)
            .or_insert_with(|| vec![0.0; bounds.len() + 1]);
        // Python's bisect_left: the first bucket whose bound is at least the value.
        slots[bounds.partition_point(|b| *b < value)] += 1.0;
        slots[bounds.len()] += value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::Tokens;
    use crate::failover::Outcome;
    use crate::routed::Attempt;

    fn call(model: Option<&str>, status: u16, latency_ms: f64, upstream_ms: f64) -> CallRecord {
        CallRecord {
            request_id: "5e1f".into(),
            workspace_id: None,
            agent_type: "default".into(),
            user_id: None,
            model_id: model.map(str::to_owned),
            endpoint_id: None,
            status,
            outcome: Outcome::Success,
            latency_ms,
            upstream_ms,
            tokens: Tokens {
                prompt: 3,
                completion: 4,
                ..Default::default()
            },
            cost: 500,
            estimated: false,
            attempts: vec![Attempt {
                model_id: "m1".into(),
                endpoint_id: "m1-ep0".into(),
                outcome: Outcome::Success,
                status: Some(status),
                latency_ms: upstream_ms,
                error: None,
                retry_after_ms: None,
            }],
            reply: None,
            ended_ms: 0,
            stream: false,
        }
    }

    #[test]
    fn calls_are_summed_per_label_values_and_bucket() {
        let inf = f64::INFINITY;
        let mut tally = MetricTally::new([vec![0.001, 0.01, inf], vec![0.001, inf], vec![inf]]);
        tally.add(&call(Some("m1"), 200, 2.0, 1.5));
        tally.add(&call(Some("m1"), 200, 0.5, 0.5));
        // A call with no model, as the app counts one: no tokens, cost or upstream time.
        tally.add(&call(None, 503, 20.0, 0.0));
        let labels = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Labels>();
        assert_eq!(tally.counts[REQUESTS][&labels(&["m1", "200"])], 2.0);
        assert_eq!(tally.counts[REQUESTS][&labels(&["none", "503"])], 1.0);
        assert_eq!(tally.counts[DOOR_CALLS][&labels(&["200"])], 2.0);
        assert_eq!(
            tally.counts[ATTEMPTS][&labels(&["m1", "m1-ep0", "success"])],
            3.0
        );
        assert_eq!(tally.counts[TOKENS][&labels(&["m1", "prompt"])], 6.0);
        assert_eq!(tally.counts[TOKENS][&labels(&["m1", "completion"])], 8.0);
        assert_eq!(tally.counts[COST][&labels(&["m1"])], 1e-6);
        assert_eq!(tally.counts[TOKENS].len(), 2);
        // 0.002 s, 0.0005 s and 0.02 s: one in each bucket, then the sum.
        let route = &tally.observed[REQUEST_DURATION][&labels(&[ROUTE])];
        assert_eq!(route, &vec![1.0, 1.0, 1.0, 0.002 + 0.0005 + 0.02]);
        // 0.5 ms, 0 ms and 20 ms over the upstream's time.
        let overhead = vec![2.0, 1.0, 0.0005 + 0.0 + 0.02];
        assert_eq!(tally.observed[OVERHEAD][&labels(&[])], overhead);
        let upstream = &tally.observed[UPSTREAM_DURATION];
        assert_eq!(upstream.len(), 1);
        assert_eq!(upstream[&labels(&["m1"])], vec![2.0, 0.0015 + 0.0005]);
    }
}
