//! What the door makes of the calls it finished when the app's loop takes
//! them (`Door.take`): it accounts each `log_line::plain_call` itself, as
//! the app's accounting would (its log line, its record for the store, its
//! metric samples), and leaves every other call to the app, which masks
//! what must be masked.

use std::time::SystemTime;

use crate::log_line;
use crate::metric_tally::MetricTally;
use crate::recent_record;
use crate::routed::{Account, CallRecord};

/// How the door accounts calls itself: the upper bounds of the
/// histograms' buckets (`metric_tally.rs`), and whether it writes their
/// lines (the app's log level shows `info` lines).
pub struct Accounting {
    pub bounds: [Vec<f64>; 3],
    pub lines: bool,
}

/// What the door accounted itself.
pub struct OwnAccount {
    pub lines: Vec<Vec<u8>>,
    pub records: Vec<Vec<u8>>,
    pub tally: MetricTally,
}

impl OwnAccount {
    pub fn new(bounds: [Vec<f64>; 3]) -> OwnAccount {
        OwnAccount {
            lines: Vec::new(),
            records: Vec::new(),
            tally: MetricTally::new(bounds),
        }
    }

    /// Accounts `call`, its line (with `lines`) stamped `now`, its record
    /// under an id from `id`; false, accounting nothing, when the app is to
    /// (a string to mask, or a float JSON cannot hold).
    pub fn add(
        &mut self,
        call: &CallRecord,
        lines: bool,
        id: impl FnOnce() -> String,
        now: SystemTime,
    ) -> bool {
        if !log_line::plain_call(call) {
            return false;
        }
        let line = match lines {
            true => match log_line::request_line(call, now) {
                Some(line) => Some(line),
                None => return false,
            },
            false => None,
        };
        let Some(record) = recent_record::recent_request(call, &id()) else {
            return false;
        };
        self.lines.extend(line);
        self.records.push(record);
        self.tally.add(call);
        true
    }
}

/// A batch the app's loop takes: the calls left to it, the leases to top
/// up (key id, window, limit, now ms), and what the door accounted itself.
pub struct Taken {
    pub calls: Vec<CallRecord>,
    pub top_ups: Vec<(String, i64, i64, i64)>,
    pub own: OwnAccount,
}

/// Splits `accounts` as `Door.take` hands them over: with `accounting`, the
/// door accounts the plain calls itself (records under ids from `id`,
/// lines stamped `now`); without, every call is the app's.
pub fn take(
    accounts: impl IntoIterator<Item = Account>,
    accounting: Option<Accounting>,
    mut id: impl FnMut() -> String,
    now: SystemTime,
) -> Taken {
    let (mut calls, mut top_ups) = (Vec::new(), Vec::new());
    let (bounds, lines) = match accounting {
        Some(a) => (Some(a.bounds), a.lines),
        None => (None, false),
    };
    let accounts_here = bounds.is_some();
    let mut own = OwnAccount::new(bounds.unwrap_or_default());
    for account in accounts {
        match account {
            Account::Call(c) => {
                if !(accounts_here && own.add(&c, lines, &mut id, now)) {
                    calls.push(*c);
                }
            }
            Account::TopUp {
                key_id,
                window,
                limit,
                now_ms,
            } => top_ups.push((key_id, window, limit, now_ms)),
        }
    }
    Taken {
        calls,
        top_ups,
        own,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::Tokens;
    use crate::failover::Outcome;
    use crate::metric_tally::REQUESTS;

    fn call(request_id: &str, user: Option<&str>) -> Account {
        Account::Call(Box::new(CallRecord {
            request_id: request_id.into(),
            workspace_id: None,
            agent_type: "default".into(),
            user_id: user.map(str::to_owned),
            model_id: Some("m1".into()),
            endpoint_id: Some("m1-ep0".into()),
            status: 200,
            outcome: Outcome::Success,
            latency_ms: 2.5,
            upstream_ms: 1.0,
            tokens: Tokens::default(),
            cost: 0,
            estimated: false,
            attempts: Vec::new(),
            reply: None,
            ended_ms: 0,
            stream: false,
        }))
    }

    fn batch() -> Vec<Account> {
        let top_up = Account::TopUp {
            key_id: "k1".into(),
            window: 60,
            limit: 100,
            now_ms: 5,
        };
        vec![
            call("a1", Some("u-7")),
            top_up,
            call("a2", Some("jane@example.com")),
        ]
    }

    fn accounting(lines: bool) -> Option<Accounting> {
        let bounds = [
            vec![f64::INFINITY],
            vec![f64::INFINITY],
            vec![f64::INFINITY],
        ];
        Some(Accounting { bounds, lines })
    }

    #[test]
    fn the_door_accounts_the_plain_calls_and_leaves_the_others() {
        let mut ids = ["b0".to_owned()].into_iter();
        let taken = take(
            batch(),
            accounting(true),
            || ids.next().unwrap(),
            SystemTime::now(),
        );
        // The call with an email in it is the app's, and it mints no id.
        assert_eq!(taken.calls.len(), 1);
        assert_eq!(taken.calls[0].request_id, "a2");
        assert_eq!(taken.top_ups, vec![("k1".to_owned(), 60, 100, 5)]);
        assert_eq!((taken.own.lines.len(), taken.own.records.len()), (1, 1));
        assert!(taken.own.records[0].starts_with(br#"{"id":"b0","requestId":"a1""#));
        let requests: f64 = taken.own.tally.counts[REQUESTS].values().sum();
        assert_eq!(requests, 1.0);
    }

    #[test]
    fn below_info_the_door_writes_no_line_and_still_accounts() {
        let taken = take(
            batch(),
            accounting(false),
            || "b0".into(),
            SystemTime::now(),
        );
        assert_eq!((taken.own.lines.len(), taken.own.records.len()), (0, 1));
        assert_eq!(taken.calls.len(), 1);
    }

    #[test]
    fn without_accounting_every_call_is_the_apps() {
        let taken = take(
            batch(),
            None,
            || unreachable!("no record"),
            SystemTime::now(),
        );
        let ids: Vec<_> = taken.calls.iter().map(|c| c.request_id.as_str()).collect();
        assert_eq!(ids, ["a1", "a2"]);
        assert_eq!(taken.top_ups.len(), 1);
        assert!(taken.own.records.is_empty() && taken.own.tally.counts[REQUESTS].is_empty());
    }
}
