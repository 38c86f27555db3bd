//! Per-minute outcome buckets: every attempt folds into the bucket of the
//! minute it was sent in and of its key (model, endpoint, workspace, agent type, rule, outcome,
//! rollout, variant) with exact counters and mergeable latency sketches. A worker drains its buckets
//! every beat and the store adds them up, so buckets from all workers and
//! replicas sum to the fleet's figures (docs/operations.md).
//!
//! The sketch is DDSketch's log-bucket mapping written out (no crate): a value
//! x > 0 counts in bucket ceil(log_γ x) with γ = (1 + α) / (1 − α), α = 1%, and
//! a bucket reads back as 2γ^i / (γ + 1), within α of every value it holds.
//! Merging is adding counts per bucket index, which is what the store can do
//! (Redis HINCRBY, an SQLite upsert) without decoding a serialized sketch.

use hashbrown::hash_map::EntryRef;
use hashbrown::{Equivalent, HashMap};
use std::hash::{Hash, Hasher};

/// Relative accuracy of every quantile read from a sketch.
pub const ALPHA: f64 = 0.01;
/// Values below this (ms) count as this: 1 µs is the resolution of the sketch.
pub const MIN_VALUE_MS: f64 = 0.001;
/// Distinct keys one worker holds between two drains; records past it for a
/// new key are counted in `dropped` instead (bounded memory, documented).
pub const DEFAULT_MAX_KEYS: usize = 4096;
pub const MINUTE_MS: u64 = 60_000;

const GAMMA: f64 = (1.0 + ALPHA) / (1.0 - ALPHA);
/// 1 / ln(GAMMA), ln(GAMMA) = ln(1.01 / 0.99) (`ln` is not const).
const INV_LN_GAMMA: f64 = 1.0 / 0.020_000_666_706_669_5;

/// The sketch bucket index of a value.
pub fn index_of(value_ms: f64) -> i32 {
    (value_ms.max(MIN_VALUE_MS).ln() * INV_LN_GAMMA).ceil() as i32
}

/// The value a bucket index stands for (within ALPHA of all it holds).
pub fn value_of(index: i32) -> f64 {
    2.0 * GAMMA.powi(index) / (GAMMA + 1.0)
}

/// Nearest-rank quantiles (q in 0..=1) of sketch bins (index, count), in any
/// order and possibly repeated (merged bins add up). None when empty.
pub fn quantiles(bins: &[(i32, u64)], qs: &[f64]) -> Vec<Option<f64>> {
    let mut sorted: Vec<(i32, u64)> = bins.to_vec();
    sorted.sort_unstable_by_key(|b| b.0);
    let total: u64 = sorted.iter().map(|b| b.1).sum();
    qs.iter()
        .map(|q| {
            if total == 0 {
                return None;
            }
            let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
            let mut seen = 0;
            sorted.iter().find_map(|&(i, n)| {
                seen += n;
                (seen >= rank).then(|| value_of(i))
            })
        })
        .collect()
}

/// A dense run of bucket counts from `offset`: one `ln` and one add per value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sketch {
    offset: i32,
    counts: Vec<u64>,
}

impl Sketch {
    pub fn add(&mut self, value_ms: f64) {
        let i = index_of(value_ms);
        if self.counts.is_empty() {
            self.offset = i;
        } else if i < self.offset {
            let grow = (self.offset - i) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = i;
        }
        let at = (i - self.offset) as usize;
        if at >= self.counts.len() {
            self.counts.resize(at + 1, 0);
        }
        self.counts[at] += 1;
    }

    /// The non-empty bins as (index, count).
    pub fn bins(&self) -> Vec<(i32, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(k, &n)| (self.offset + k as i32, n))
            .collect()
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The counters and sketches of one key in one minute.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bucket {
    pub attempts: u64,
    /// First attempts: one per request that reached a provider.
    pub requests: u64,
    /// Attempts that were a failover from an earlier failed attempt.
    pub failovers_in: u64,
    /// Attempts of this key that the request failed over from.
    pub failovers_out: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_nanos: i64,
    pub latency: Sketch,
    pub ttft: Sketch,
}

/// What one attempt contributes.
pub struct Attempt<'a> {
    pub model: &'a str,
    pub endpoint: Option<&'a str>,
    pub workspace: Option<&'a str>,
    pub agent_type: Option<&'a str>,
    pub rule: Option<&'a str>,
    /// "success", "timeout", "rate_limited", "malformed", ...
    pub outcome: &'a str,
    /// The canary or experiment the request is in, and its arm's label.
    pub rollout: Option<&'a str>,
    pub variant: Option<&'a str>,
    /// The attempt this one failed over from: (model, endpoint, outcome).
    pub failover_from: Option<(&'a str, &'a str, &'a str)>,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_nanos: i64,
}

/// model, endpoint, workspace, agent type, rule, outcome, rollout, variant.
/// New dimensions go last: a key stored with fewer reads them as "".
pub const DIMENSIONS: usize = 8;

/// A bucket's key as stored: its minute and dimensions ("" when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    minute_ms: u64,
    dims: [Box<str>; DIMENSIONS],
}

/// A key as a record sees it, borrowed: found without allocating, and
/// hashed like the `Key` it stands for.
#[derive(Hash)]
struct KeyRef<'a> {
    minute_ms: u64,
    dims: [&'a str; DIMENSIONS],
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        KeyRef {
            minute_ms: self.minute_ms,
            dims: self.dims.each_ref().map(|d| &**d),
        }
        .hash(state)
    }
}

impl From<&KeyRef<'_>> for Key {
    fn from(k: &KeyRef<'_>) -> Key {
        Key {
            minute_ms: k.minute_ms,
            dims: k.dims.map(Box::from),
        }
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.minute_ms == key.minute_ms && self.dims.iter().zip(&key.dims).all(|(a, b)| same(a, b))
    }
}

/// String equality without a libc call: ids are short, and `memcmp` made
/// each absent (empty) dimension cost a record ~130 ns (docs/operations.md).
#[inline]
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let (mut x, mut y) = (a.chunks_exact(8), b.chunks_exact(8));
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().expect("8 bytes"));
    (&mut x).zip(&mut y).all(|(p, q)| word(p) == word(q))
        && x.remainder().iter().zip(y.remainder()).all(|(p, q)| p == q)
}

/// One drained bucket: its minute, its key ("" for an absent dimension).
#[derive(Debug, Clone, PartialEq)]
pub struct Drained {
    pub minute_ms: u64,
    pub dims: [String; DIMENSIONS],
    pub bucket: Bucket,
}

/// One worker's buckets since the last drain: one hash of the borrowed key
/// per record, an allocation only for a key new since the drain.
#[derive(Debug, Clone)]
pub struct Rollups {
    buckets: HashMap<Key, Bucket>,
    max_keys: usize,
    dropped: u64,
}

impl Default for Rollups {
    fn default() -> Self {
        Rollups::new(DEFAULT_MAX_KEYS)
    }
}

impl Rollups {
    pub fn new(max_keys: usize) -> Rollups {
        Rollups {
            buckets: HashMap::new(),
            max_keys,
            dropped: 0,
        }
    }

    fn bucket(&mut self, key: KeyRef<'_>) -> Option<&mut Bucket> {
        let room = self.buckets.len() < self.max_keys;
        match self.buckets.entry_ref(&key) {
            EntryRef::Occupied(b) => Some(b.into_mut()),
            EntryRef::Vacant(v) if room => Some(v.insert(Bucket::default())),
            EntryRef::Vacant(_) => {
                self.dropped += 1;
                None
            }
        }
    }

    pub fn record(&mut self, a: &Attempt<'_>, sent_ms: u64) {
        let minute_ms = sent_ms - sent_ms % MINUTE_MS;
        let [endpoint, workspace, agent, rule, rollout, variant] = [
            a.endpoint,
            a.workspace,
            a.agent_type,
            a.rule,
            a.rollout,
            a.variant,
        ]
        .map(Option::unwrap_or_default);
        let dims = [
            a.model, endpoint, workspace, agent, rule, a.outcome, rollout, variant,
        ];
        if let Some(b) = self.bucket(KeyRef { minute_ms, dims }) {
            b.attempts += 1;
            b.requests += u64::from(a.failover_from.is_none());
            b.failovers_in += u64::from(a.failover_from.is_some());
            b.tokens_in += a.tokens_in;
            b.tokens_out += a.tokens_out;
            b.cost_nanos += a.cost_nanos;
            b.latency.add(a.latency_ms);
            if let Some(ttft) = a.ttft_ms {
                b.ttft.add(ttft);
            }
        }
        if let Some((model, endpoint, outcome)) = a.failover_from {
            // The request's arm, on the attempt it failed over from.
            let dims = [
                model, endpoint, workspace, agent, rule, outcome, rollout, variant,
            ];
            if let Some(b) = self.bucket(KeyRef { minute_ms, dims }) {
                b.failovers_out += 1;
            }
        }
    }

    /// Records lost to the key bound since the last drain.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Every bucket, emptied: the store adds them to what other drains wrote.
    pub fn drain(&mut self) -> Vec<Drained> {
        self.dropped = 0;
        self.buckets
            .drain()
            .map(|(key, bucket)| Drained {
                minute_ms: key.minute_ms,
                dims: key.dims.map(String::from),
                bucket,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn attempt(model: &str, outcome: &str, latency_ms: f64) -> Attempt<'static> {
        Attempt {
            model: Box::leak(model.into()),
            endpoint: Some("ep"),
            workspace: Some("ws"),
            agent_type: Some("agent"),
            rule: None,
            outcome: Box::leak(outcome.into()),
            rollout: None,
            variant: None,
            failover_from: None,
            latency_ms,
            ttft_ms: None,
            tokens_in: 10,
            tokens_out: 20,
            cost_nanos: 7,
        }
    }

    fn exact(values: &mut [f64], q: f64) -> f64 {
        values.sort_by(f64::total_cmp);
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[rank - 1]
    }

    #[test]
    fn counts_are_exact_per_key_and_minute() {
        let mut r = Rollups::default();
        for i in 0..10 {
            r.record(&attempt("m1", "success", 100.0 + i as f64), 60_000 + i);
        }
        r.record(&attempt("m1", "timeout", 5.0), 61_000);
        r.record(&attempt("m1", "success", 5.0), 120_000);
        let mut drained = r.drain();
        drained.sort_by_key(|d| (d.minute_ms, d.dims[5].clone()));
        let counts: Vec<(u64, &str, u64, u64, i64)> = drained
            .iter()
            .map(|d| {
                let b = &d.bucket;
                (
                    d.minute_ms,
                    d.dims[5].as_str(),
                    b.attempts,
                    b.tokens_in,
                    b.cost_nanos,
                )
            })
            .collect();
        assert_eq!(
            counts,
            [
                (60_000, "success", 10, 100, 70),
                (60_000, "timeout", 1, 10, 7),
                (120_000, "success", 1, 10, 7)
            ]
        );
        assert_eq!(drained[0].dims[..5], ["m1", "ep", "ws", "agent", ""]);
        assert_eq!(drained[0].dims[6..], ["", ""], "no rollout, no variant");
        assert!(r.drain().is_empty(), "a drain empties the buckets");
    }

    #[test]
    fn failover_counts_in_on_the_attempt_and_out_on_the_one_it_left() {
        let mut r = Rollups::default();
        r.record(&attempt("a", "timeout", 30.0), 0);
        let mut second = attempt("b", "success", 10.0);
        second.failover_from = Some(("a", "ep", "timeout"));
        r.record(&second, 0);
        let drained = r.drain();
        let of = |m: &str| &drained.iter().find(|d| d.dims[0] == m).unwrap().bucket;
        assert_eq!((of("a").requests, of("a").failovers_out), (1, 1));
        assert_eq!((of("b").requests, of("b").failovers_in), (0, 1));
        assert_eq!(drained.len(), 2);
    }

    #[test]
    fn each_rollout_and_variant_is_its_own_key_failovers_out_included() {
        let mut r = Rollups::default();
        let arm = |mut a: Attempt<'static>, rollout, variant| {
            a.rollout = Some(rollout);
            a.variant = Some(variant);
            a
        };
        r.record(&attempt("a", "success", 1.0), 0);
        r.record(&arm(attempt("a", "success", 1.0), "exp-1", "a"), 0);
        r.record(&arm(attempt("a", "success", 1.0), "exp-1", "a"), 0);
        r.record(&arm(attempt("a", "timeout", 1.0), "exp-1", "b"), 0);
        let mut failover = arm(attempt("b", "success", 1.0), "exp-1", "b");
        failover.failover_from = Some(("a", "ep", "timeout"));
        r.record(&failover, 0);
        let mut drained: Vec<([String; 4], u64, u64, u64)> = r
            .drain()
            .into_iter()
            .map(|d| {
                let [model, _, _, _, _, outcome, rollout, variant] = d.dims;
                let b = d.bucket;
                (
                    [model, outcome, rollout, variant],
                    b.requests,
                    b.failovers_in,
                    b.failovers_out,
                )
            })
            .collect();
        drained.sort();
        let key = |k: [&str; 4]| k.map(String::from);
        assert_eq!(
            drained,
            [
                (key(["a", "success", "", ""]), 1, 0, 0),
                (key(["a", "success", "exp-1", "a"]), 2, 0, 0),
                (key(["a", "timeout", "exp-1", "b"]), 1, 0, 1),
                (key(["b", "success", "exp-1", "b"]), 0, 1, 0),
            ]
        );
    }

    #[test]
    fn new_keys_past_the_bound_are_dropped_and_counted() {
        let mut r = Rollups::new(2);
        for m in ["a", "b", "c", "a"] {
            r.record(&attempt(m, "success", 1.0), 0);
        }
        assert_eq!(r.dropped(), 1);
        assert_eq!(r.drain().len(), 2);
    }

    #[test]
    fn the_log_gamma_constant_is_right() {
        assert!((INV_LN_GAMMA * GAMMA.ln() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn tiny_and_zero_values_read_back_as_the_resolution() {
        let mut s = Sketch::default();
        s.add(0.0);
        let q = quantiles(&s.bins(), &[0.5])[0].unwrap();
        assert!((q - MIN_VALUE_MS).abs() <= MIN_VALUE_MS * ALPHA);
        assert_eq!(quantiles(&[], &[0.5]), [None]);
    }

    proptest! {
        #[test]
        fn same_is_string_equality(a in "[a-c]{0,20}", b in "[a-c]{0,20}") {
            prop_assert_eq!(same(&a, &b), a == b);
            prop_assert!(same(&a, &a.clone()));
        }

        #[test]
        fn quantiles_are_within_alpha_of_the_exact_ones(
            mut values in prop::collection::vec(0.01f64..600_000.0, 1..400),
            q in 0.0f64..=1.0,
        ) {
            let mut s = Sketch::default();
            for v in &values {
                s.add(*v);
            }
            prop_assert_eq!(s.count(), values.len() as u64);
            let estimate = quantiles(&s.bins(), &[q])[0].unwrap();
            let truth = exact(&mut values, q);
            prop_assert!((estimate - truth).abs() <= truth * ALPHA * 1.000_001,
                "estimate {} truth {}", estimate, truth);
        }

        #[test]
        fn merging_is_associative_and_equals_one_sketch_of_everything(
            parts in prop::collection::vec(prop::collection::vec(0.5f64..10_000.0, 0..50), 3),
        ) {
            let sketch = |vs: &[f64]| {
                let mut s = Sketch::default();
                vs.iter().for_each(|v| s.add(*v));
                s.bins()
            };
            let [a, b, c] = [sketch(&parts[0]), sketch(&parts[1]), sketch(&parts[2])];
            let merge = |x: &[(i32, u64)], y: &[(i32, u64)]| {
                let mut m: HashMap<i32, u64> = HashMap::new();
                x.iter().chain(y).for_each(|&(i, n)| *m.entry(i).or_default() += n);
                let mut v: Vec<(i32, u64)> = m.into_iter().collect();
                v.sort_unstable();
                v
            };
            let left = merge(&merge(&a, &b), &c);
            let right = merge(&a, &merge(&b, &c));
            prop_assert_eq!(&left, &right);
            prop_assert_eq!(left, sketch(&parts.concat()));
        }
    }
}
