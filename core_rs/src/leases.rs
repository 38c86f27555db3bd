//! One worker's leases of per-key rate-limit windows (docs/data-plane.md,
//! step 2): the admissions in hand, spent here on every request, and how
//! large the next top-up is. Taking a lease from the store stays with the
//! caller (`router_py/model_router/ratelimit.py`, which also says why the
//! leases are sized as they are): it asks `begin_take` how much to reserve
//! and reports what the store answered.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// The smallest lease: a slow key's, and a window's first.
pub const LEASE: i64 = 8;
/// The admission rate is measured over at least this long.
pub const RATE_MS: i64 = 100;
/// A lease holds this long of the measured rate.
pub const AHEAD_MS: i64 = 250;
/// A worker holds at most this fraction of what the window has left.
pub const SHARE: i64 = 16;
/// After the store failed to answer, how long to count alone before asking again.
pub const RETRY_MS: u64 = 1000;
/// Past this many slots, those of windows that ended are let go.
const KEPT_SLOTS: usize = 1024;

/// The most one worker may hold of a window with `room` left: 1/SHARE of
/// it, at least 1 while there is any.
pub fn share(room: i64) -> i64 {
    room.min((room / SHARE).max(1))
}

/// What one admission came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Spent {
    /// From the lease; `top_up`: half of it is gone, top it up now.
    Leased {
        remaining: i64,
        top_up: bool,
    },
    /// On this worker's own count: the store is away.
    Alone {
        remaining: i64,
    },
    /// Nothing in hand: take a lease first, then spend again.
    Take,
    Refused,
}

/// One key's window, as far as this worker knows it.
#[derive(Default)]
struct Slot {
    held: i64,
    /// `held` when a top-up starts: half of what the last one left.
    top_up_at: i64,
    /// Spent from the lease in the window.
    admitted: i64,
    /// (ms, admitted) when the last top-up started.
    since: Option<(i64, i64)>,
    /// What all workers held after this worker's last take.
    taken: i64,
    /// The store was away at the last take.
    alone: bool,
    /// Admitted on this worker's own count, not yet handed to the store.
    offline: i64,
}

impl Slot {
    /// AHEAD_MS of the admissions since the last top-up, as a rate over at
    /// least RATE_MS (a burst's few requests do not make a busy key), and
    /// at least LEASE.
    fn size(&self, now_ms: i64) -> i64 {
        match self.since {
            None => LEASE,
            Some((at, admitted)) => {
                LEASE.max((self.admitted - admitted) * AHEAD_MS / RATE_MS.max(now_ms - at))
            }
        }
    }
}

#[derive(Default)]
struct Table {
    /// Window number -> key id -> slot.
    windows: HashMap<i64, HashMap<String, Slot>>,
    /// Monotonic ms before which the store is not asked.
    ask_again_ms: u64,
}

#[derive(Default)]
pub struct Leases {
    table: Mutex<Table>,
}

impl Leases {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One admission for `key` in `window`, against `limit`. `may_take`:
    /// whether an empty lease may send the caller to the store (`Take`)
    /// rather than be refused; `now_mono_ms` is a monotonic clock.
    pub fn spend(
        &self,
        key: &str,
        window: i64,
        limit: i64,
        may_take: bool,
        now_mono_ms: u64,
    ) -> Spent {
        let mut table = self.table();
        table.forget_before(window);
        let store_waits = now_mono_ms < table.ask_again_ms;
        let slot = table.slot(key, window);
        if slot.held <= 0 && may_take && !store_waits {
            return Spent::Take;
        }
        if slot.held > 0 {
            slot.held -= 1;
            slot.admitted += 1;
            let remaining = (limit - slot.taken + slot.held).max(0);
            return Spent::Leased {
                remaining,
                top_up: slot.held == slot.top_up_at,
            };
        }
        if (slot.alone || store_waits) && slot.offline < limit {
            slot.alone = true;
            slot.offline += 1;
            return Spent::Alone {
                remaining: limit - slot.offline,
            };
        }
        Spent::Refused
    }

    /// How much to reserve from the store for a top-up (0 or less: nothing,
    /// but the take still ends with `take_ended`); None when another top-up
    /// has refilled the lease meanwhile. `now_ms` is the wall clock the
    /// window is counted on.
    pub fn begin_take(&self, key: &str, window: i64, limit: i64, now_ms: i64) -> Option<i64> {
        let mut table = self.table();
        let slot = table.slot(key, window);
        if slot.held > slot.top_up_at {
            return None;
        }
        let amount = slot.size(now_ms).min(share(limit - slot.taken)) - slot.held;
        // Measured from here: what is admitted while the store answers counts.
        slot.since = Some((now_ms, slot.admitted));
        Some(amount)
    }

    /// The store granted `amount`.
    pub fn granted(&self, key: &str, window: i64, amount: i64) {
        let mut table = self.table();
        let slot = table.slot(key, window);
        slot.held += amount;
        slot.taken += amount;
    }

    /// The store refused `amount`, all workers having taken `taken`: the
    /// amount to ask for next (0 or less: stop asking).
    pub fn refused(&self, key: &str, window: i64, limit: i64, amount: i64, taken: i64) -> i64 {
        let mut table = self.table();
        let slot = table.slot(key, window);
        slot.taken = taken;
        (amount - 1).min(share(limit - taken) - slot.held)
    }

    /// The store did not answer: count alone, and ask no more for RETRY_MS.
    pub fn store_away(&self, key: &str, window: i64, now_mono_ms: u64) {
        let mut table = self.table();
        table.ask_again_ms = now_mono_ms + RETRY_MS;
        table.slot(key, window).alone = true;
    }

    /// The store answered (or the window is known to be full): admit from
    /// leases only, and top up again once half of this one is spent.
    pub fn take_ended(&self, key: &str, window: i64) {
        let mut table = self.table();
        let slot = table.slot(key, window);
        slot.alone = false;
        slot.top_up_at = slot.held / 2;
    }

    /// What was admitted on this worker's own count and not yet handed to
    /// the store, by (key, window).
    pub fn offline(&self) -> Vec<(String, i64, i64)> {
        let table = self.table();
        let mut counted = Vec::new();
        for (window, slots) in &table.windows {
            for (key, slot) in slots.iter().filter(|(_, slot)| slot.offline > 0) {
                counted.push((key.clone(), *window, slot.offline));
            }
        }
        counted
    }

    /// `count` of what `offline` gave is now in the store's count for all.
    pub fn handed_over(&self, key: &str, window: i64, count: i64) {
        let mut table = self.table();
        let slot = table.slot(key, window);
        slot.offline -= count;
        slot.taken += count;
    }

    /// The slots held (bounded: those of ended windows go).
    pub fn len(&self) -> usize {
        self.table().windows.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Table {
    fn slot(&mut self, key: &str, window: i64) -> &mut Slot {
        let slots = self.windows.entry(window).or_default();
        // Looked up by the borrowed key first: a known key allocates nothing.
        if !slots.contains_key(key) {
            slots.insert(key.to_owned(), Slot::default());
        }
        slots.get_mut(key).expect("just inserted")
    }

    fn forget_before(&mut self, window: i64) {
        let held: usize = self.windows.values().map(HashMap::len).sum();
        if held > KEPT_SLOTS {
            // Windows that ended: nothing left to spend. What was counted
            // alone in them and not yet handed over goes with them.
            self.windows.retain(|w, _| *w >= window);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: i64 = 7;

    fn take(leases: &Leases, limit: i64, now_ms: i64) {
        if let Some(amount) = leases.begin_take("k", W, limit, now_ms) {
            if amount > 0 {
                leases.granted("k", W, amount);
            }
            leases.take_ended("k", W);
        }
    }

    #[test]
    fn an_empty_lease_sends_the_caller_to_the_store_then_spends_what_it_took() {
        let leases = Leases::default();
        assert_eq!(leases.spend("k", W, 100, true, 0), Spent::Take);
        take(&leases, 100, 0);
        let spent: Vec<Spent> = (0..LEASE)
            .map(|_| leases.spend("k", W, 100, true, 0))
            .collect();
        // LEASE taken; a top-up is due once half of it is spent, once.
        let top_ups = spent
            .iter()
            .filter(|s| matches!(s, Spent::Leased { top_up: true, .. }))
            .count();
        assert_eq!(top_ups, 1);
        assert_eq!(
            spent[0],
            Spent::Leased {
                remaining: 99,
                top_up: false
            }
        );
        assert_eq!(leases.spend("k", W, 100, false, 0), Spent::Refused);
    }

    #[test]
    fn a_lease_grows_with_the_rate_and_stays_within_a_share_of_the_room() {
        let leases = Leases::default();
        take(&leases, 1_000_000, 0);
        for _ in 0..LEASE {
            leases.spend("k", W, 1_000_000, true, 0);
        }
        // 8 admissions in 2 ms count as over RATE_MS: 8 * 250 / 100 = 20.
        assert_eq!(leases.begin_take("k", W, 1_000_000, 2), Some(20));
        // Near the limit: 1/SHARE of the room, at least 1.
        let tight = Leases::default();
        assert_eq!(tight.begin_take("k", W, 40, 0), Some(2));
        // Refused, all workers having taken 39 of 40: ask for 1.
        assert_eq!(tight.refused("k", W, 40, 2, 39), 1);
        assert_eq!(share(1), 1);
        assert_eq!(share(0), 0);
        assert_eq!(share(-3), -3);
    }

    #[test]
    fn while_the_store_is_away_a_worker_counts_alone_up_to_the_limit_then_hands_it_over() {
        let leases = Leases::default();
        assert_eq!(leases.spend("k", W, 3, true, 0), Spent::Take);
        leases.store_away("k", W, 0);
        let spent: Vec<Spent> = (0..4).map(|_| leases.spend("k", W, 3, true, 10)).collect();
        assert_eq!(
            spent,
            [
                Spent::Alone { remaining: 2 },
                Spent::Alone { remaining: 1 },
                Spent::Alone { remaining: 0 },
                Spent::Refused
            ]
        );
        // Past RETRY_MS the store is asked again.
        assert_eq!(leases.spend("k", W, 3, true, RETRY_MS + 1), Spent::Take);
        assert_eq!(leases.offline(), vec![("k".to_owned(), W, 3)]);
        leases.handed_over("k", W, 3);
        assert_eq!(leases.offline(), vec![]);
        // Handed over, it counts against what is left: 3 of 3 taken.
        assert_eq!(leases.begin_take("k", W, 3, 0), Some(0));
    }

    #[test]
    fn slots_of_ended_windows_are_let_go() {
        let leases = Leases::default();
        for window in 0..3000 {
            leases.spend(&format!("k{window}"), window, 10, true, 0);
        }
        assert!(leases.len() <= KEPT_SLOTS + 1, "{}", leases.len());
    }
}
