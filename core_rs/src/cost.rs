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

/// Prices in nano-dollars per 1,000 tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Price {
    pub input_per_1k: Nanos,
    pub output_per_1k: Nanos,
}

impl Price {
    pub fn from_usd(input_per_1k: f64, output_per_1k: f64) -> Price {
        Price {
            input_per_1k: usd_to_nanos(input_per_1k),
            output_per_1k: usd_to_nanos(output_per_1k),
        }
    }

    /// tokens x price / 1000, rounded half away from zero to a whole nano-dollar.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> Nanos {
        let thousandths = prompt_tokens as i128 * self.input_per_1k as i128
            + completion_tokens as i128 * self.output_per_1k as i128;
        ((thousandths + 500) / 1000) as Nanos
    }

    /// The dearer of the two per-token prices, in USD: what `maxCostPerToken` is held to.
    pub fn max_per_token_usd(&self) -> f64 {
        self.input_per_1k.max(self.output_per_1k) as f64 / (NANOS_PER_USD * 1000.0)
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
            *self.pending.entry(ws.to_owned()).or_default() += cost;
        }
        *self.pending_models.entry(model.to_owned()).or_default() += cost;
    }

    pub fn spent(&self, workspace: &str) -> [Nanos; 3] {
        let local = self.in_flight.get(workspace).copied().unwrap_or(0)
            + self.pending.get(workspace).copied().unwrap_or(0);
        let base = self.base.get(workspace).copied().unwrap_or([0; 3]);
        base.map(|b| b + local)
    }

    /// Start a flush: what was pending is now in flight. Returns it (per
    /// workspace, per model) for the caller to add to the store's counters.
    pub fn begin_flush(&mut self) -> (HashMap<String, Nanos>, HashMap<String, Nanos>) {
        for (ws, n) in self.pending.drain() {
            *self.in_flight.entry(ws).or_default() += n;
        }
        for (m, n) in self.pending_models.drain() {
            *self.in_flight_models.entry(m).or_default() += n;
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

    /// The flush failed: keep the amounts for the next one.
    pub fn abort_flush(&mut self) {
        for (ws, n) in self.in_flight.drain() {
            *self.pending.entry(ws).or_default() += n;
        }
        for (m, n) in self.in_flight_models.drain() {
            *self.pending_models.entry(m).or_default() += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cost_of_the_spec_example() {
        // 25 prompt + 100 completion tokens at $0.03 / $0.03 per 1k = $0.00375.
        let price = Price::from_usd(0.03, 0.03);
        assert_eq!(price.cost(25, 100), 3_750_000);
        assert_eq!(nanos_to_usd(price.cost(25, 100)), 0.00375);
        // Cheap models keep their fractions of a cent.
        assert_eq!(Price::from_usd(0.0005, 0.0015).cost(25, 0), 12_500);
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
        l.abort_flush();
        assert_eq!(l.spent("ws"), [115, 215, 315]);
        assert_eq!(l.begin_flush().0["ws"], 5);
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
                let cost = price.cost(*p, *c);
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
