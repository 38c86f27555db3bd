//! Each client address's standing in this worker (docs/data-plane.md, step
//! 2): the requests it has in progress, capped, and whether it is blocked
//! after too many failed authentications. One table for every path a request
//! takes through the worker, so that a client's requests count once,
//! whichever path serves them.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

pub struct Clients {
    /// Requests one address may have in progress here; 0 lifts the cap.
    cap: u32,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    in_flight: HashMap<String, u32>,
    /// Address -> when its block ends (ms since the epoch).
    blocked: HashMap<String, u64>,
}

impl Clients {
    pub fn new(cap: u32) -> Clients {
        Clients {
            cap,
            table: Mutex::default(),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one more request of `address`; false, counting nothing, when
    /// the address is at its cap.
    pub fn enter(&self, address: &str) -> bool {
        let mut table = self.table();
        if let Some(count) = table.in_flight.get_mut(address) {
            if self.cap != 0 && *count >= self.cap {
                return false;
            }
            *count += 1;
        } else {
            table.in_flight.insert(address.to_owned(), 1);
        }
        true
    }

    /// One request of `address` that `enter` counted is over.
    pub fn leave(&self, address: &str) {
        let mut table = self.table();
        if let Some(count) = table.in_flight.get_mut(address) {
            *count -= 1;
            if *count == 0 {
                table.in_flight.remove(address);
            }
        }
    }

    /// Blocks `address` until `until_ms`; blocks ended by `now_ms` go.
    pub fn block(&self, address: &str, until_ms: u64, now_ms: u64) {
        let mut table = self.table();
        table.blocked.retain(|_, until| *until > now_ms);
        table.blocked.insert(address.to_owned(), until_ms);
    }

    /// How long `address` is still blocked (ms), if it is.
    pub fn blocked_for(&self, address: &str, now_ms: u64) -> Option<u64> {
        let mut table = self.table();
        let until = *table.blocked.get(address)?;
        if until <= now_ms {
            table.blocked.remove(address);
            return None;
        }
        Some(until - now_ms)
    }

    /// Forgets the blocks ended by `now_ms`; how many are left.
    pub fn unblock_ended(&self, now_ms: u64) -> usize {
        let mut table = self.table();
        table.blocked.retain(|_, until| *until > now_ms);
        table.blocked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_at_its_cap_is_refused_until_one_of_its_requests_ends() {
        let clients = Clients::new(2);
        assert!(clients.enter("10.0.0.1") && clients.enter("10.0.0.1"));
        assert!(!clients.enter("10.0.0.1"));
        assert!(
            clients.enter("10.0.0.2"),
            "another address has its own count"
        );
        clients.leave("10.0.0.1");
        assert!(clients.enter("10.0.0.1"));
        assert!(!clients.enter("10.0.0.1"));
    }

    #[test]
    fn a_cap_of_zero_refuses_nothing_and_counts_are_forgotten_at_zero() {
        let clients = Clients::new(0);
        for _ in 0..1000 {
            assert!(clients.enter("10.0.0.1"));
        }
        for _ in 0..1000 {
            clients.leave("10.0.0.1");
        }
        assert!(clients.table().in_flight.is_empty());
        clients.leave("10.0.0.1"); // never entered: nothing to take
        assert!(clients.table().in_flight.is_empty());
    }

    #[test]
    fn a_block_lasts_until_it_ends_and_ended_ones_are_forgotten() {
        let clients = Clients::new(0);
        clients.block("10.0.0.1", 60_000, 1_000);
        assert_eq!(clients.blocked_for("10.0.0.1", 1_000), Some(59_000));
        assert_eq!(clients.blocked_for("10.0.0.2", 1_000), None);
        clients.block("10.0.0.2", 120_000, 2_000);
        assert_eq!(clients.unblock_ended(60_000), 1);
        assert_eq!(clients.blocked_for("10.0.0.1", 60_000), None);
        assert_eq!(clients.blocked_for("10.0.0.2", 119_999), Some(1));
        assert_eq!(clients.blocked_for("10.0.0.2", 120_000), None);
        assert_eq!(clients.unblock_ended(0), 0);
    }
}
