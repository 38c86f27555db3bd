//! Money: prices, the cost of one call, and the spend counters that budgets
//! are checked against.
//!
//! Amounts are integer nano-dollars (1e-9 USD): a call's cost is exact to a
//! hundredth of the cent's millionth, and totals add without float drift.
//! (Micro-dollars, the obvious unit, would round a 25-token call on a cheap
//! model to nothing.)

use std::collections::HashMap;

pub type Nanos = i64;

pub const NANOS_PER_USD: f64 = 1e9;

pub fn usd_to_nanos(usd: f64) -> Nanos {
    (usd * NANOS_PER_USD).round() as Nanos
}

pub fn nanos_to_usd(n: Nanos) -> f64 {
    n as f64 / NANOS_PER_USD
}

/// Prices in nano-dollars per 1,000 tokens. Prompt tokens read from or
/// written to a provider's prompt cache have prices of their own; a price
/// that names none charges them as ordinary input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Price {
    pub input_per_1k: Nanos,
    pub output_per_1k: Nanos,
    pub cache_read_per_1k: Nanos,
    pub cache_write_per_1k: Nanos,
}

/// The tokens of one call. `prompt` counts every prompt token, cached ones
/// included (OpenAI's meaning); `cache_read` and `cache_write` are the parts
/// of it that the provider's prompt cache served or stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Price {
    pub fn from_usd(input_per_1k: f64, output_per_1k: f64) -> Price {
        let input = usd_to_nanos(input_per_1k);
        Price {
            input_per_1k: input,
            output_per_1k: usd_to_nanos(output_per_1k),
            cache_read_per_1k: input,
            cache_write_per_1k: input,
        }
    }

    pub fn with_cache(mut self, read_per_1k: Option<f64>, write_per_1k: Option<f64>) -> Price {
        self.cache_read_per_1k = read_per_1k.map_or(self.input_per_1k, usd_to_nanos);
        self.cache_write_per_1k = write_per_1k.map_or(self.input_per_1k, usd_to_nanos);
        self
    }

    /// tokens x price / 1000, rounded half away from zero to a whole
    /// nano-dollar; a total past i64 saturates rather than wrapping.
    pub fn cost(&self, t: &Tokens) -> Nanos {
        let cached = t.cache_read.saturating_add(t.cache_write).min(t.prompt);
        let parts = [
            (t.prompt - cached, self.input_per_1k),
            (t.cache_read.min(t.prompt), self.cache_read_per_1k),
            (cached - t.cache_read.min(t.prompt), self.cache_write_per_1k),
            (t.completion, self.output_per_1k),
        ];
        let thousandths = parts.iter().fold(0i128, |sum, &(n, price)| {
            sum.saturating_add((n as i128).saturating_mul(price as i128))
        });
        Nanos::try_from(thousandths.saturating_add(500) / 1000).unwrap_or(Nanos::MAX)
    }

    /// The dearer of the two per-token prices, in USD: what `maxCostPerToken` is held to.
    pub fn max_per_token_usd(&self) -> f64 {
        self.input_per_1k.max(self.output_per_1k) as f64 / (NANOS_PER_USD * 1000.0)
    }
}

/// Amounts add up saturating: an absurd price stops at the largest amount,
/// it never wraps round to a credit.
fn add_to(total: &mut Nanos, amount: Nanos) {
    *total = total.saturating_add(amount);
}

/// Adds to a key's pending amount, allocating the key only when it is new
/// since the last flush (record() runs on every attempt).
fn add_pending(pending: &mut HashMap<String, Nanos>, key: &str, amount: Nanos) {
    match pending.get_mut(key) {
        Some(total) => add_to(total, amount),
        None => {
            pending.insert(key.to_owned(), amount);
        }
    }
}

/// Budget periods, in the order of `BudgetLimits`' fields.
pub const PERIODS: [&str; 3] = ["daily", "weekly", "monthly"];

/// Spend per workspace and period as this worker sees it: the shared totals
/// last read from the store, plus what this worker recorded since and has not
/// yet flushed (split into in-flight, being written now, and pending).
#[derive(Debug, Default)]
pub struct SpendLedger {
    base: HashMap<String, [Nanos; 3]>,
    in_flight: HashMap<String, Nanos>,
    pending: HashMap<String, Nanos>,
    pending_models: HashMap<String, Nanos>,
    in_flight_models: HashMap<String, Nanos>,
}

impl SpendLedger {
    pub fn add(&mut self, workspace: Option<&str>, model: &str, cost: Nanos) {
        if cost == 0 {
            return;
        }
        if let Some(ws) = workspace {
            add_pending(&mut self.pending, ws, cost);
        }
        add_pending(&mut self.pending_models, model, cost);
    }

    pub fn spent(&self, workspace: &str) -> [Nanos; 3] {
        let local = self
            .in_flight
            .get(workspace)
            .copied()
            .unwrap_or(0)
            .saturating_add(self.pending.get(workspace).copied().unwrap_or(0));
        let base = self.base.get(workspace).copied().unwrap_or([0; 3]);
        base.map(|b| b.saturating_add(local))
    }

    /// Start a flush: what was pending is now in flight. Returns it (per
    /// workspace, per model) for the caller to add to the store's counters.
    pub fn begin_flush(&mut self) -> (HashMap<String, Nanos>, HashMap<String, Nanos>) {
        for (ws, n) in self.pending.drain() {
            add_to(self.in_flight.entry(ws).or_default(), n);
        }
        for (m, n) in self.pending_models.drain() {
            add_to(self.in_flight_models.entry(m).or_default(), n);
        }
        (self.in_flight.clone(), self.in_flight_models.clone())
    }

    /// The flush landed: the store's totals (which include what was in
    /// flight) become the base.
    pub fn end_flush(&mut self, totals: HashMap<String, [Nanos; 3]>) {
        self.in_flight.clear();
        self.in_flight_models.clear();
        self.base = totals;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tokens(prompt: u64, completion: u64) -> Tokens {
        Tokens {
            prompt,
            completion,
            ..Tokens::default()
        }
    }

    #[test]
    fn cached_prompt_tokens_have_their_own_prices() {
        // 1000 prompt tokens of which 600 read from and 300 written to the cache.
        let t = Tokens {
            prompt: 1000,
            completion: 100,
            cache_read: 600,
            cache_write: 300,
        };
        let price = Price::from_usd(0.003, 0.015).with_cache(Some(0.0003), Some(0.00375));
        // 100 x 0.003 + 600 x 0.0003 + 300 x 0.00375 + 100 x 0.015, per 1k.
        assert_eq!(price.cost(&t), 300_000 + 180_000 + 1_125_000 + 1_500_000);
        // No cache prices: cached tokens are ordinary input.
        let plain = Price::from_usd(0.003, 0.015);
        assert_eq!(plain.cost(&t), plain.cost(&tokens(1000, 100)));
        // Cache counts larger than the prompt cannot make a cost negative.
        let odd = Tokens {
            cache_read: 5000,
            ..t
        };
        assert!(price.cost(&odd) > 0);
    }

    #[test]
    fn absurd_prices_and_counts_saturate_instead_of_wrapping() {
        let price = Price::from_usd(1e308, 1e308);
        assert_eq!(price.cost(&tokens(u64::MAX, u64::MAX)), Nanos::MAX);
        assert_eq!(
            Price::from_usd(0.01, 0.03).cost(&tokens(u64::MAX, 0)),
            Nanos::MAX
        );
        let mut l = SpendLedger::default();
        l.add(Some("ws"), "m", Nanos::MAX);
        l.add(Some("ws"), "m", Nanos::MAX);
        assert_eq!(l.spent("ws"), [Nanos::MAX; 3]);
    }

    #[test]
    fn cost_of_the_spec_example() {
        // 25 prompt + 100 completion tokens at $0.03 / $0.03 per 1k = $0.00375.
        let price = Price::from_usd(0.03, 0.03);
        assert_eq!(price.cost(&tokens(25, 100)), 3_750_000);
        assert_eq!(nanos_to_usd(price.cost(&tokens(25, 100))), 0.00375);
        // Cheap models keep their fractions of a cent.
        assert_eq!(Price::from_usd(0.0005, 0.0015).cost(&tokens(25, 0)), 12_500);
        assert_eq!(Price::from_usd(0.01, 0.03).max_per_token_usd(), 0.00003);
    }

    #[test]
    fn ledger_flush_cycle_never_double_counts_or_loses() {
        let mut l = SpendLedger::default();
        l.add(Some("ws"), "m", 10);
        let (ws, models) = l.begin_flush();
        assert_eq!((ws["ws"], models["m"]), (10, 10));
        l.add(Some("ws"), "m", 5); // arrives while the flush is under way
        assert_eq!(l.spent("ws"), [15; 3]);
        l.end_flush(HashMap::from([("ws".to_owned(), [110, 210, 310])]));
        assert_eq!(l.spent("ws"), [115, 215, 315]);
        let (ws, _) = l.begin_flush();
        assert_eq!(ws["ws"], 5);
        // A flush whose answer is lost stays in flight, counted once, until
        // it is sent again and lands.
        assert_eq!(l.spent("ws"), [115, 215, 315]);
        l.end_flush(HashMap::from([("ws".to_owned(), [115, 215, 315])]));
        assert_eq!(l.spent("ws"), [115, 215, 315]);
    }

    proptest! {
        /// Totals are exact: the sum of per-call costs equals the cost of the
        /// summed tokens to within the half-nano rounding of each call.
        #[test]
        fn totals_are_exact(calls in proptest::collection::vec((0u64..100_000, 0u64..100_000), 1..200),
                            input in 0.0f64..0.2, output in 0.0f64..0.2) {
            let price = Price::from_usd(input, output);
            let mut ledger = SpendLedger::default();
            let mut sum: Nanos = 0;
            for (p, c) in &calls {
                let cost = price.cost(&tokens(*p, *c));
                ledger.add(Some("ws"), "m", cost);
                sum += cost;
            }
            prop_assert_eq!(ledger.spent("ws")[0], sum);
            let exact: i128 = calls.iter().map(|(p, c)| *p as i128 * price.input_per_1k as i128 + *c as i128 * price.output_per_1k as i128).sum();
            let drift = (sum as i128 * 1000 - exact).abs();
            prop_assert!(drift <= 500 * calls.len() as i128);
        }
    }
}
