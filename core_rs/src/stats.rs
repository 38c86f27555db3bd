//! Rolling performance figures per model and per endpoint: success rate and
//! latency percentiles over the last `capacity` outcomes no older than
//! `max_age_ms`. Recording is O(1); the summary is computed on demand and
//! cached until the next outcome, so a decision that reads it for many models
//! sorts each window at most once per change.

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ms: u64,
    latency_ms: f32,
    success: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub samples: u32,
    pub success_rate: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone)]
pub struct RollingStats {
    capacity: usize,
    max_age_ms: u64,
    samples: VecDeque<Sample>,
    cached: Option<(u64, Summary)>,
}

pub const DEFAULT_CAPACITY: usize = 512;
pub const DEFAULT_MAX_AGE_MS: u64 = 300_000;

impl Default for RollingStats {
    fn default() -> Self {
        RollingStats::new(DEFAULT_CAPACITY, DEFAULT_MAX_AGE_MS)
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

impl RollingStats {
    pub fn new(capacity: usize, max_age_ms: u64) -> RollingStats {
        RollingStats {
            capacity,
            max_age_ms,
            samples: VecDeque::with_capacity(capacity),
            cached: None,
        }
    }

    pub fn record(&mut self, success: bool, latency_ms: f64, now_ms: u64) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at_ms: now_ms,
            latency_ms: latency_ms as f32,
            success,
        });
        self.cached = None;
    }

    /// The figures over the live window. Latency percentiles count successful
    /// outcomes only: a fast failure is not a fast model.
    pub fn summary(&mut self, now_ms: u64) -> Summary {
        let cutoff = now_ms.saturating_sub(self.max_age_ms);
        while self.samples.front().is_some_and(|s| s.at_ms < cutoff) {
            self.samples.pop_front();
            self.cached = None;
        }
        if let Some((_, s)) = self.cached {
            return s;
        }
        let n = self.samples.len();
        let mut latencies: Vec<f32> = self
            .samples
            .iter()
            .filter(|s| s.success)
            .map(|s| s.latency_ms)
            .collect();
        latencies.sort_by(f32::total_cmp);
        let summary = Summary {
            samples: n as u32,
            success_rate: if n == 0 {
                1.0
            } else {
                latencies.len() as f64 / n as f64
            },
            p50_ms: percentile(&latencies, 50.0),
            p95_ms: percentile(&latencies, 95.0),
            p99_ms: percentile(&latencies, 99.0),
        };
        self.cached = Some((now_ms, summary));
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_success_rate() {
        let mut s = RollingStats::default();
        for i in 1..=100 {
            s.record(true, i as f64, 0);
        }
        s.record(false, 0.5, 0);
        let sum = s.summary(0);
        assert_eq!(sum.samples, 101);
        assert_eq!((sum.p50_ms, sum.p95_ms, sum.p99_ms), (50.0, 95.0, 99.0));
        assert!((sum.success_rate - 100.0 / 101.0).abs() < 1e-12);
    }

    #[test]
    fn old_and_overflowing_samples_leave_the_window() {
        let mut s = RollingStats::new(3, 1_000);
        for (i, latency) in [10.0, 20.0, 30.0, 40.0].iter().enumerate() {
            s.record(true, *latency, i as u64 * 400);
        }
        assert_eq!(s.summary(1_200).samples, 3, "capacity 3");
        let later = s.summary(1_700); // samples at 800 and 1200 remain
        assert_eq!(later.samples, 2);
        assert_eq!(later.p50_ms, 30.0);
        assert_eq!(s.summary(10_000).samples, 0);
        assert_eq!(s.summary(10_000).success_rate, 1.0);
    }
}
