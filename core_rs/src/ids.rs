//! Ids of requests and records, unique across workers, replicas and
//! restarts without a system call each: a random prefix per process, then a
//! counter. A forked child (Granian forks its workers) draws a prefix of its
//! own the first time it mints one, or every worker would hand out the same
//! ids: a fork handler counts forks, where asking the process's id would be
//! a system call per id (glibc keeps no copy of it). One generator per
//! process, for the door and the app alike.

use ring::rand::{SecureRandom, SystemRandom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

struct Minter {
    /// The forks counted when the prefix was drawn; None: none drawn yet.
    forks: Option<u64>,
    prefix: String,
    counter: u64,
}

static MINTER: Mutex<Minter> = Mutex::new(Minter {
    forks: None,
    prefix: String::new(),
    counter: 0,
});

/// How many forks made this process from the one that first minted an id.
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn forked() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// 12 hex digits of prefix, then 10 of counter.
pub fn new_id() -> String {
    static WATCH_FORKS: Once = Once::new();
    // SAFETY: the handler only adds to an atomic, which is safe in a child
    // between fork and exec.
    WATCH_FORKS.call_once(|| unsafe {
        libc::pthread_atfork(None, None, Some(forked));
    });
    let mut minter = MINTER.lock().unwrap_or_else(|e| e.into_inner());
    let forks = FORKS.load(Ordering::Relaxed);
    if minter.forks != Some(forks) {
        let mut drawn = [0u8; 6];
        SystemRandom::new()
            .fill(&mut drawn)
            .expect("the system's random source works");
        minter.prefix = drawn.iter().map(|b| format!("{b:02x}")).collect();
        minter.forks = Some(forks);
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

    #[test]
    fn a_forked_child_draws_a_prefix_of_its_own() {
        let parent = new_id();
        let mut pipe = [0i32; 2];
        // SAFETY: a pipe and a fork; the child only mints, writes and exits.
        unsafe {
            assert_eq!(libc::pipe(pipe.as_mut_ptr()), 0);
            // Held across the fork: no other test's thread holds it in the child.
            let held = MINTER.lock().unwrap();
            let pid = libc::fork();
            drop(held);
            if pid == 0 {
                let id = std::panic::catch_unwind(new_id).unwrap_or_default();
                libc::write(pipe[1], id.as_ptr().cast(), id.len());
                libc::_exit(0);
            }
            libc::close(pipe[1]); // a child that wrote nothing ends the read
            let mut buf = [0u8; 22];
            let read = libc::read(pipe[0], buf.as_mut_ptr().cast(), 22);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            assert_eq!(read, 22, "the child minted an id");
            let child = std::str::from_utf8(&buf).unwrap();
            assert_ne!(child[..12], parent[..12]);
            assert_eq!(&child[12..], "0000000001", "a count of its own");
        }
    }
}
