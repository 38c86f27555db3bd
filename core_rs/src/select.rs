//! Weighted choices: a seedable fast RNG, weighted picks and orders, and the
//! stable hash behind sticky routing.

/// SplitMix64: tiny, fast, seedable, and good enough for load spreading.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A hash that is the same in every worker, replica and release (FNV-1a,
/// then mixed): sticky routing must agree everywhere.
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0xff)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    mix(h)
}

/// Map a hash to [0, 1).
pub fn unit(h: u64) -> f64 {
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Index picked with probability proportional to its weight, given a uniform
/// `u` in [0, 1). All-zero weights pick uniformly. None only when empty.
pub fn weighted_index(weights: &[f64], u: f64) -> Option<usize> {
    if weights.is_empty() {
        return None;
    }
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return Some(((u * weights.len() as f64) as usize).min(weights.len() - 1));
    }
    let mut target = u * total;
    for (i, w) in weights.iter().enumerate() {
        if target < *w {
            return Some(i);
        }
        target -= w;
    }
    // Rounding can leave `target` a hair above the last positive weight.
    weights.iter().rposition(|w| *w > 0.0)
}

/// Weighted rendezvous hashing: for one key, the option with the highest
/// score wins, with shares proportional to the weights. Removing one option
/// moves only the keys that had picked it, which keeps sticky users put.
pub fn rendezvous_index(key: &str, options: &[&str], weights: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, (option, w)) in options.iter().zip(weights).enumerate() {
        let h = unit(stable_hash(&[key, option])).max(f64::MIN_POSITIVE);
        let score = if *w > 0.0 { -w / h.ln() } else { 0.0 };
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// A weighted random order (Efraimidis-Spirakis): earlier positions go to
/// heavier items; weight 0 sorts last, in its original order.
pub fn weighted_order(weights: &[f64], rng: &mut Rng) -> Vec<usize> {
    let mut keyed: Vec<(f64, usize)> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let key = if *w > 0.0 {
                rng.next_f64().max(f64::MIN_POSITIVE).ln() / w
            } else {
                f64::NEG_INFINITY
            };
            (key, i)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    keyed.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest};

    /// Pearson's chi-square statistic of observed counts against expected shares.
    fn chi_square(counts: &[u64], shares: &[f64]) -> f64 {
        let n: u64 = counts.iter().sum();
        counts
            .iter()
            .zip(shares)
            .map(|(&c, &p)| {
                let e = p * n as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    // Critical values of chi-square at p = 0.001 for 1..=4 degrees of freedom.
    const PINNED: u64 = 347_861_489_971_316_521;
    const CHI2_P001: [f64; 4] = [10.828, 13.816, 16.266, 18.467];

    #[test]
    fn weighted_index_shares_match_weights() {
        let weights = [0.7, 0.2, 0.1, 0.0];
        let mut rng = Rng::new(42);
        let mut counts = [0u64; 4];
        for _ in 0..100_000 {
            counts[weighted_index(&weights, rng.next_f64()).unwrap()] += 1;
        }
        assert_eq!(counts[3], 0, "a zero weight is never picked");
        let stat = chi_square(&counts[..3], &[0.7, 0.2, 0.1]);
        assert!(stat < CHI2_P001[1], "chi2 {stat} counts {counts:?}");
    }

    #[test]
    fn rendezvous_shares_match_weights_and_are_stable() {
        let options = ["a", "b", "c"];
        let weights = [0.5, 0.3, 0.2];
        let mut counts = [0u64; 3];
        for user in 0..100_000 {
            counts[rendezvous_index(&format!("user-{user}"), &options, &weights).unwrap()] += 1;
        }
        let stat = chi_square(&counts, &weights);
        assert!(stat < CHI2_P001[1], "chi2 {stat} counts {counts:?}");
        // Dropping "c" moves only the users of "c".
        for user in 0..2_000 {
            let key = format!("user-{user}");
            let before = rendezvous_index(&key, &options, &weights).unwrap();
            let after = rendezvous_index(&key, &options[..2], &weights[..2]).unwrap();
            if before != 2 {
                assert_eq!(before, after);
            }
        }
    }

    #[test]
    fn weighted_order_puts_heavier_first_more_often() {
        let mut rng = Rng::new(7);
        let weights = [1.0, 3.0, 0.0];
        let mut first = [0u64; 3];
        for _ in 0..100_000 {
            let order = weighted_order(&weights, &mut rng);
            assert_eq!(order[2], 2, "weight 0 sorts last");
            first[order[0]] += 1;
        }
        let stat = chi_square(&first[..2], &[0.25, 0.75]);
        assert!(stat < CHI2_P001[0], "chi2 {stat} first {first:?}");
    }

    #[test]
    fn stable_hash_is_stable() {
        // Pinned: a change here would move every sticky user.
        assert_eq!(
            stable_hash(&["rule-1", "user-1"]),
            stable_hash(&["rule-1", "user-1"])
        );
        assert_ne!(stable_hash(&["ab", "c"]), stable_hash(&["a", "bc"]));
        assert_eq!(stable_hash(&["rule-1", "user-1"]), PINNED);
    }

    proptest! {
        #[test]
        fn weighted_index_is_in_range(weights in proptest::collection::vec(0.0f64..10.0, 1..10), u in 0.0f64..1.0) {
            let i = weighted_index(&weights, u).unwrap();
            prop_assert!(i < weights.len());
            if weights.iter().sum::<f64>() > 0.0 {
                prop_assert!(weights[i] > 0.0);
            }
        }

        #[test]
        fn weighted_order_is_a_permutation(weights in proptest::collection::vec(0.0f64..10.0, 0..10), seed in any::<u64>()) {
            let mut order = weighted_order(&weights, &mut Rng::new(seed));
            order.sort();
            prop_assert_eq!(order, (0..weights.len()).collect::<Vec<_>>());
        }
    }
}
