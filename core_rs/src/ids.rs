//! Ids of requests and records, unique across workers, replicas and
//! restarts without a system call each: a random prefix per process, then a
//! counter. A forked child (Granian forks its workers) draws a prefix of its
//! own the first time it mints one, or every worker would hand out the same
//! ids. One generator per process, for the door and the app alike.

use ring::rand::{SecureRandom, SystemRandom};
use std::sync::Mutex;

struct Minter {
    pid: u32,
    prefix: String,
    counter: u64,
}

static MINTER: Mutex<Minter> = Mutex::new(Minter {
    pid: 0,
    prefix: String::new(),
    counter: 0,
});

/// 12 hex digits of prefix, then 10 of counter.
pub fn new_id() -> String {
    let mut minter = MINTER.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if minter.pid != pid {
        let mut drawn = [0u8; 6];
        SystemRandom::new()
            .fill(&mut drawn)
            .expect("the system's random source works");
        minter.prefix = drawn.iter().map(|b| format!("{b:02x}")).collect();
        minter.pid = pid;
        minter.counter = 0;
    }
    minter.counter += 1;
    format!("{}{:010x}", minter.prefix, minter.counter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_share_a_prefix_and_count_up() {
        let (a, b) = (new_id(), new_id());
        assert_eq!((a.len(), b.len()), (22, 22));
        assert_eq!(a[..12], b[..12]);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert!(
            u64::from_str_radix(&b[12..], 16).unwrap() > u64::from_str_radix(&a[12..], 16).unwrap()
        );
    }
}
