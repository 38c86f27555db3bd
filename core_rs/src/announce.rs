//! A queue that one thread fills and another empties in batches, announced
//! on a socket pair: one byte when the queue goes from empty to not empty,
//! so under load one wake of the reader (an event loop watching the socket)
//! hands over many items.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

pub struct Announced<T> {
    queue: Mutex<Vec<T>>,
    signal: UnixStream,
    wake: UnixStream,
}

impl<T> Announced<T> {
    pub fn new() -> std::io::Result<Announced<T>> {
        let (wake, signal) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        signal.set_nonblocking(true)?;
        Ok(Announced {
            queue: Mutex::default(),
            signal,
            wake,
        })
    }

    pub fn push(&self, item: T) {
        let was_empty = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.push(item);
            queue.len() == 1
        };
        if was_empty {
            // Full means a wake is pending already; nothing else can fail here
            // that a retry would mend.
            let _ = (&self.signal).write(&[1]);
        }
    }

    /// Everything pushed since the last call, and the wake-up bytes read.
    pub fn take(&self) -> Vec<T> {
        let mut sink = [0u8; 256];
        while matches!((&self.wake).read(&mut sink), Ok(n) if n > 0) {}
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The socket that turns readable when `take` has something.
    pub fn wake_socket(&self) -> &UnixStream {
        &self.wake
    }
}
