//! Connections to upstreams: plain TCP for `http://` origins, TLS over it
//! for `https://` ones (checked as `trust.rs` says), made by a deadline and
//! kept alive in a pool per origin.

use crate::trust::Trust;
use crate::upstream::{failed, timed_out, Outcome};
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Where a job goes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// `https://`: TLS over the connection.
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// A connection to an upstream. The request is written while the answer is
/// read, in turns within one task's poll, so each turn borrows a TLS
/// session only for that poll.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<Mutex<TlsStream<TcpStream>>>),
}

impl Conn {
    /// More bytes into `buf`'s spare capacity: Ok(0) at the connection's end.
    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<io::Result<usize>> {
        match self {
            Conn::Plain(tcp) => loop {
                ready!(tcp.poll_read_ready(cx))?;
                // A read that leaves room drained the socket (epoll reports
                // what comes next): its readiness is cleared now, as Tokio's
                // own reads do, so the next read waits for that report rather
                // than costing a call that finds nothing, which would come
                // before a streamed chunk is written on. (Sound where mio's
                // epoll is edge-triggered: Linux, what the router runs on.)
                let room = buf.capacity() - buf.len();
                let mut drained = None;
                let read = tcp.try_io(Interest::READABLE, || match tcp.try_read_buf(buf) {
                    Ok(n) if n > 0 && n < room => {
                        drained = Some(n);
                        Err(ErrorKind::WouldBlock.into())
                    }
                    read => read,
                });
                match (read, drained) {
                    (_, Some(n)) => return Poll::Ready(Ok(n)),
                    (Err(e), None) if e.kind() == ErrorKind::WouldBlock => {}
                    (read, None) => return Poll::Ready(read),
                }
            },
            Conn::Tls(tls) => {
                // No room would read as the end, for good (tokio-rustls).
                debug_assert!(buf.capacity() > buf.len(), "a read needs room");
                let mut read = ReadBuf::uninit(buf.spare_capacity_mut());
                let polled = Pin::new(&mut *lock(tls)).poll_read(cx, &mut read);
                let n = read.filled().len();
                // SAFETY: the session wrote `n` bytes from the spare capacity's start.
                unsafe { buf.set_len(buf.len() + n) };
                match polled {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(n)),
                    // An end with no close_notify, which many servers send
                    // and Python's `ssl` takes as an end.
                    Poll::Ready(Err(e)) if e.kind() == ErrorKind::UnexpectedEof => {
                        Poll::Ready(Ok(0))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    /// Writes some of `data`, how much it took.
    pub fn poll_write(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Conn::Plain(tcp) => loop {
                ready!(tcp.poll_write_ready(cx))?;
                match tcp.try_write(data) {
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    written => return Poll::Ready(written),
                }
            },
            Conn::Tls(tls) => Pin::new(&mut *lock(tls)).poll_write(cx, data),
        }
    }

    /// Until what was written is on the socket (TLS holds records back).
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Conn::Plain(_) => Poll::Ready(Ok(())),
            Conn::Tls(tls) => Pin::new(&mut *lock(tls)).poll_flush(cx),
        }
    }

    /// Whether a parked connection is as it was left: not closed by the
    /// peer, nothing written to it unasked (for TLS, not even a message of
    /// the session's own: one that comes after the answer is rare, and a
    /// new connection is sure). Asked of the socket itself (Tokio's
    /// readiness is only as fresh as the runtime's last look), and of a TLS
    /// session what it read with the answer: bytes the answer did not
    /// take, or a `close_notify`.
    fn quiet(&self) -> bool {
        let fd = match self {
            Conn::Plain(tcp) => tcp.as_raw_fd(),
            Conn::Tls(tls) => {
                let mut tls = lock(tls);
                let (tcp, session) = tls.get_mut();
                let held = session
                    .process_new_packets()
                    .map(|state| state.plaintext_bytes_to_read() > 0 || state.peer_has_closed());
                if held != Ok(false) {
                    return false;
                }
                tcp.as_raw_fd()
            }
        };
        let mut probe = [0u8; 1];
        // SAFETY: a peek into a buffer of ours, on a descriptor we hold open.
        let peeked = unsafe {
            libc::recv(
                fd,
                probe.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        peeked < 0 && io::Error::last_os_error().kind() == ErrorKind::WouldBlock
    }
}

/// Kept-alive connections, per origin, and how TLS ones are made.
#[derive(Clone, Default)]
pub struct Pool(Arc<Parked>);

#[derive(Default)]
struct Parked {
    idle: Mutex<HashMap<Origin, Vec<Conn>>>,
    trust: Trust,
    /// Made once, at the first `https://` connection, on a blocking thread:
    /// reading the authorities takes milliseconds (more on a cold disk),
    /// which the runtime's other connections must not wait. A failure (no
    /// authority) is kept too: a change to them needs a restart.
    connector: OnceCell<Result<TlsConnector, String>>,
}

impl Pool {
    pub fn new(trust: Trust) -> Pool {
        Pool(Arc::new(Parked {
            trust,
            ..Parked::default()
        }))
    }

    /// A kept-alive connection to `origin`, else a new one by `by`.
    pub async fn connection(&self, origin: &Origin, by: Instant) -> Result<Conn, Outcome> {
        match self.idle(origin) {
            Some(conn) => Ok(conn),
            None => self.connect(origin, by).await,
        }
    }

    /// How many connections are parked.
    #[cfg(test)]
    pub fn parked(&self) -> usize {
        lock(&self.0.idle).values().map(Vec::len).sum()
    }

    /// Keeps a connection that may carry another exchange.
    pub fn park(&self, origin: Origin, conn: Conn) {
        lock(&self.0.idle).entry(origin).or_default().push(conn);
    }

    /// A parked connection still open: one the peer closed since it was
    /// parked is dropped.
    fn idle(&self, origin: &Origin) -> Option<Conn> {
        let mut idle = lock(&self.0.idle);
        let parked = idle.get_mut(origin)?;
        while let Some(conn) = parked.pop() {
            if conn.quiet() {
                return Some(conn);
            }
        }
        None
    }

    async fn tls_connector(self) -> Result<TlsConnector, String> {
        let load = || async {
            let trust = self.0.trust.clone();
            match tokio::task::spawn_blocking(move || trust.connector()).await {
                Ok(made) => made,
                Err(panicked) => Err(panicked.to_string()),
            }
        };
        self.0.connector.get_or_init(load).await.clone()
    }

    async fn connect(&self, origin: &Origin, by: Instant) -> Result<Conn, Outcome> {
        let Origin { tls, host, port } = origin;
        let refused =
            |e: &dyn std::fmt::Display| failed(format!("cannot connect to {host}:{port}: {e}"));
        let late = || timed_out(format!("could not connect to {host}:{port} in time"));
        let tcp = match timeout_at(by, TcpStream::connect((host.as_str(), *port))).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(refused(&e)),
            Err(_) => return Err(late()),
        };
        let _ = tcp.set_nodelay(true);
        if !tls {
            return Ok(Conn::Plain(tcp));
        }
        let connector = match self.0.connector.get() {
            Some(made) => made.clone(),
            // A task of its own: a caller whose wait ends first does not
            // cancel it, and the next callers wait for the same one.
            None => match timeout_at(by, tokio::spawn(self.clone().tls_connector())).await {
                Ok(Ok(made)) => made,
                Ok(Err(panicked)) => Err(panicked.to_string()),
                Err(_) => return Err(late()),
            },
        }
        .map_err(|e| refused(&e))?;
        let name = ServerName::try_from(host.clone()).map_err(|e| refused(&e))?;
        // The handshake is part of connecting, within the same limit.
        match timeout_at(by, connector.connect(name, tcp)).await {
            Ok(Ok(session)) => Ok(Conn::Tls(Box::new(Mutex::new(session)))),
            Ok(Err(e)) => Err(refused(&e)),
            Err(_) => Err(late()),
        }
    }
}

/// How often the pool lets go of connections the upstream closed: else each
/// holds a descriptor (in CLOSE_WAIT) until its origin is called again.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Lets go of the pool's connections the upstream closed, every REAP_EVERY, for ever.
pub async fn reap(pool: Pool) {
    let mut every = tokio::time::interval(REAP_EVERY);
    loop {
        every.tick().await;
        lock(&pool.0.idle).retain(|_, parked| {
            parked.retain(Conn::quiet);
            !parked.is_empty()
        });
    }
}

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
