//! The upstream exchange of HTTP/1.1 calls, off the Python thread: whole
//! answers (`exchange`, and `Client` for the app), and streams read as
//! they arrive (`open`, for the door).
//!
//! Python shapes the request bytes and waits on a future; this module sends
//! them on a pooled kept-alive connection and reads the whole answer on its
//! own thread (a single-threaded Tokio runtime), so the event loop's thread
//! spends no time in socket writes, reads or HTTP parsing. Finished exchanges
//! are queued and announced on a socket pair the event loop watches: one byte
//! when the queue goes from empty to not empty, so under load one wake hands
//! over many answers. No Python here and no GIL on this thread.
//!
//! Every wait is bounded by the job's own limits (connect, head, whole
//! answer), an answer over `max_body` is refused, and the errors read as the
//! Python client's do, so callers cannot tell the two apart. A job its caller
//! gave up on is ended (`cancel`), closing its connection, as the Python
//! client closes one; parked connections the upstream closed are let go.

use crate::announce::Announced;
use crate::connection::{lock, reap, Conn, Origin, Pool};
use crate::trust::Trust;
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::os::unix::net::UnixStream;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::{timeout_at, Instant};

/// One exchange to carry out.
pub struct Job {
    pub token: u64,
    pub origin: Origin,
    /// The whole request: head and body, as Python shaped them.
    pub request: Vec<u8>,
    pub connect: Duration,
    pub head: Duration,
    pub done: Duration,
    pub max_body: usize,
}

#[derive(Debug, PartialEq)]
pub enum Outcome {
    Answer {
        status: u16,
        /// Names lowercased, in the order received (a repeated name: the last wins
        /// when the caller makes a map of them, as the Python client does).
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// `timeout`: a deadline passed (else the connection or the answer failed).
    Failed { timeout: bool, message: String },
}

pub(crate) fn failed(message: String) -> Outcome {
    Outcome::Failed {
        timeout: false,
        message,
    }
}

pub(crate) fn timed_out(message: String) -> Outcome {
    Outcome::Failed {
        timeout: true,
        message,
    }
}

/// The exchanges under way, so one the caller gave up on can be ended.
type Carrying = Arc<Mutex<HashMap<u64, AbortHandle>>>;

enum Order {
    Carry(Vec<Job>),
    Drop(u64),
}

/// The client: a thread with its runtime, its pool and the finished queue.
/// Dropping it ends the thread once the exchanges in flight are dropped.
///
/// Jobs are submitted in two steps, `submit` then `dispatch`: waking the
/// runtime's thread is what a job costs its caller most (a write to the
/// runtime's eventfd and, on a VM, an interrupt to another CPU), so a
/// caller with many jobs at once dispatches them together, one wake.
pub struct Client {
    orders: mpsc::UnboundedSender<Order>,
    submitted: Mutex<Vec<Job>>,
    finished: Arc<Finished>,
}

/// Finished exchanges, announced to the caller's event loop.
type Finished = Announced<(u64, Outcome)>;

impl Client {
    pub fn start(trust: Trust) -> std::io::Result<Client> {
        let finished = Arc::new(Finished::new()?);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Host names are resolved on blocking threads: a resolver that hangs
            // must not grow them to Tokio's default of 512.
            .max_blocking_threads(8)
            .build()?;
        let (orders, mut incoming) = mpsc::unbounded_channel::<Order>();
        let done = finished.clone();
        std::thread::Builder::new()
            .name("upstream".into())
            .spawn(move || {
                let pool = Pool::new(trust);
                let carrying: Carrying = Arc::default();
                runtime.block_on(async move {
                    tokio::spawn(reap(pool.clone()));
                    while let Some(order) = incoming.recv().await {
                        match order {
                            Order::Carry(jobs) => {
                                for job in jobs {
                                    let token = job.token;
                                    let task =
                                        carry(job, pool.clone(), done.clone(), carrying.clone());
                                    let task = tokio::spawn(task).abort_handle();
                                    // One thread: the task cannot end before it is listed.
                                    lock(&carrying).insert(token, task);
                                }
                            }
                            Order::Drop(token) => {
                                if let Some(task) = lock(&carrying).remove(&token) {
                                    task.abort(); // and with it, its connection
                                }
                            }
                        }
                    }
                });
            })?;
        Ok(Client {
            orders,
            submitted: Mutex::default(),
            finished,
        })
    }

    /// Queues a job until the next `dispatch`.
    pub fn submit(&self, job: Job) {
        lock(&self.submitted).push(job);
    }

    /// Hands the jobs submitted so far to the runtime's thread, one wake.
    pub fn dispatch(&self) {
        let jobs = std::mem::take(&mut *lock(&self.submitted));
        if !jobs.is_empty() {
            // The thread lives as long as the sender: a send cannot fail.
            let _ = self.orders.send(Order::Carry(jobs));
        }
    }

    /// Ends the exchange at once, closing its connection (the upstream sees
    /// the caller leave); it will not be among those `take` returns.
    pub fn cancel(&self, token: u64) {
        let mut submitted = lock(&self.submitted);
        let before = submitted.len();
        submitted.retain(|job| job.token != token);
        if submitted.len() == before {
            let _ = self.orders.send(Order::Drop(token)); // it was dispatched
        }
    }

    /// The exchanges finished since the last call, and the wake-up bytes read.
    pub fn take(&self) -> Vec<(u64, Outcome)> {
        self.finished.take()
    }

    /// The socket that becomes readable when `take` has something.
    pub fn wake_socket(&self) -> &UnixStream {
        self.finished.wake_socket()
    }
}

async fn carry(job: Job, pool: Pool, finished: Arc<Finished>, carrying: Carrying) {
    let token = job.token;
    let outcome = exchange(job, &pool).await;
    lock(&carrying).remove(&token);
    finished.push((token, outcome));
}

/// One exchange on a connection of `pool` (or a new one), which goes back
/// to the pool when the answer leaves it reusable.
pub async fn exchange(job: Job, pool: &Pool) -> Outcome {
    let start = Instant::now();
    let (head_by, done_by) = (start + job.head.min(job.done), start + job.done);
    let origin = job.origin;
    let conn = match pool
        .connection(&origin, start + job.connect.min(job.done))
        .await
    {
        Ok(conn) => conn,
        Err(outcome) => return outcome,
    };
    // The answer is read while the request is sent, as the Python client
    // does: an upstream may refuse a request by its head (a 413, a 401) and
    // never read the body. Sending is bounded by the answer's deadlines: one
    // that does not read is one that does not answer.
    let (outcome, reusable) = {
        let mut reader = Reader {
            conn: &conn,
            buf: Vec::with_capacity(8192),
            deadline: head_by,
            phase: "head",
        };
        let mut sending = Sending::new(job.request);
        let mut answering = pin!(reader.answer(done_by, job.max_body));
        let (outcome, reusable) = poll_fn(|cx| {
            let _ = sending.poll(&conn, cx);
            answering.as_mut().poll(cx)
        })
        .await;
        // A request not all sent leaves the connection mid-message.
        (outcome, reusable && sending.done())
    };
    if reusable {
        pool.park(origin, conn);
    }
    outcome
}

/// An answer read as it arrives (a stream's): its head, then its body one
/// read at a time (`next`), or whole (`rest`). Read to its end, its
/// connection goes back to the pool when it may carry another exchange;
/// dropped before (the caller left, a read failed), it is closed.
pub struct Streaming {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    conn: Option<Conn>,
    /// The request, still sent while the answer is read, as the app's client
    /// writes one through its transport.
    sending: Sending,
    buf: Vec<u8>,
    body: Body,
    received: usize,
    max_body: usize,
    /// The head lets the connection carry another exchange.
    keep_alive: bool,
    origin: Origin,
    pool: Pool,
}

/// Where a streamed body's reading is.
enum Body {
    /// Bytes left of a sized body.
    Sized(usize),
    Chunked(Chunk),
    UntilClose,
    Ended,
}

/// Where a chunked body's reading is.
#[derive(Clone, Copy)]
enum Chunk {
    Size,
    /// Bytes left of the chunk's data.
    Data(usize),
    /// The CRLF after a chunk's data.
    End,
    Trailers,
}

/// The answer to `job` up to its head, by the job's `connect` and `head`
/// limits (`done` bounds them both); its body is the caller's to read.
pub async fn open(job: Job, pool: &Pool) -> Result<Streaming, Outcome> {
    let start = Instant::now();
    let head_by = start + job.head.min(job.done);
    let origin = job.origin;
    let conn = pool
        .connection(&origin, start + job.connect.min(job.done))
        .await?;
    // The head is read while the request is sent, as `exchange` does.
    let mut sending = Sending::new(job.request);
    let (head, buf) = {
        let mut reader = Reader {
            conn: &conn,
            buf: Vec::with_capacity(8192),
            deadline: head_by,
            phase: "answer", // as the app's client says it of a stream
        };
        let head = {
            let mut heading = pin!(reader.head());
            poll_fn(|cx| {
                let _ = sending.poll(&conn, cx);
                heading.as_mut().poll(cx)
            })
            .await
        };
        (head, reader.buf)
    };
    let (status, headers, framing, keep_alive) = head?;
    let body = match framing {
        Framing::Length(length) if length > job.max_body => {
            return Err(failed(format!("answer over {} bytes", job.max_body)))
        }
        Framing::Length(length) => Body::Sized(length),
        Framing::Chunked => Body::Chunked(Chunk::Size),
        Framing::UntilClose => Body::UntilClose,
    };
    Ok(Streaming {
        status,
        headers,
        conn: Some(conn),
        sending,
        buf,
        body,
        received: 0,
        max_body: job.max_body,
        keep_alive,
        origin,
        pool: pool.clone(),
    })
}

impl Streaming {
    /// The body's next bytes, all that one read brought (framing taken
    /// off), by `by`; None at its end.
    pub async fn next(&mut self, by: Instant) -> Result<Option<Vec<u8>>, Outcome> {
        let Some(conn) = self.conn.as_ref() else {
            return Ok(None);
        };
        let mut reader = Reader {
            conn,
            buf: std::mem::take(&mut self.buf),
            deadline: by,
            phase: "answer",
        };
        let read = {
            let mut reading = pin!(async {
                match &mut self.body {
                    Body::Sized(left) => sized(&mut reader, left).await,
                    Body::Chunked(chunk) => chunks(&mut reader, chunk).await,
                    Body::UntilClose => until_close(&mut reader).await,
                    Body::Ended => Ok((Vec::new(), true)),
                }
            });
            let sending = &mut self.sending;
            poll_fn(|cx| {
                let _ = sending.poll(conn, cx);
                reading.as_mut().poll(cx)
            })
            .await
        };
        self.buf = reader.buf;
        let (data, ended) = match read {
            // As the app's client: a clean close ends a body not kept alive.
            Err(Outcome::Failed { message, .. }) if message == CLOSED && !self.keep_alive => {
                (Vec::new(), true)
            }
            read => read?,
        };
        if ended {
            if matches!(self.body, Body::UntilClose) {
                self.keep_alive = false; // the close ended it
            }
            self.body = Body::Ended;
        }
        if data.is_empty() && ended {
            self.end();
            return Ok(None);
        }
        self.received += data.len();
        if self.received > self.max_body {
            self.conn = None;
            return Err(failed(format!("answer over {} bytes", self.max_body)));
        }
        Ok(Some(data))
    }

    /// The whole body (an answer that is not a stream), by `by`.
    pub async fn rest(mut self, by: Instant) -> Result<Vec<u8>, Outcome> {
        let mut body = Vec::new();
        while let Some(data) = self.next(by).await? {
            body.extend(data);
        }
        Ok(body)
    }

    /// The body has ended: its connection goes back to the pool if it may
    /// carry another exchange.
    fn end(&mut self) {
        let conn = self.conn.take();
        // A request not all sent leaves the connection mid-message.
        let reusable = self.keep_alive && self.sending.done() && self.buf.is_empty();
        if let (true, Some(conn)) = (reusable, conn) {
            self.pool.park(self.origin.clone(), conn);
        }
    }
}

const CLOSED: &str = "connection closed by the upstream";

/// A body's next bytes, and whether they are its last.
type Read = Result<(Vec<u8>, bool), Outcome>;

/// A sized body's next bytes: what is in, else one read's worth.
async fn sized(reader: &mut Reader<'_>, left: &mut usize) -> Read {
    if *left == 0 {
        return Ok((Vec::new(), true));
    }
    if reader.buf.is_empty() && !reader.fill().await? {
        return Err(failed(CLOSED.into()));
    }
    let taken = (*left).min(reader.buf.len());
    *left -= taken;
    Ok((reader.buf.drain(..taken).collect(), *left == 0))
}

/// A body the connection's close ends: what is in, else one read's worth.
async fn until_close(reader: &mut Reader<'_>) -> Read {
    if reader.buf.is_empty() && !reader.fill().await? {
        return Ok((Vec::new(), true));
    }
    Ok((std::mem::take(&mut reader.buf), false))
}

/// A chunked body's next bytes: the data of every chunk that is in (one
/// read at least), its framing taken off. What was read goes out before a
/// framing error that follows it, as the app's parser hands it over.
async fn chunks(reader: &mut Reader<'_>, chunk: &mut Chunk) -> Read {
    let mut data = Vec::new();
    loop {
        // Waiting for more bytes is for when nothing is in hand.
        let step = match *chunk {
            Chunk::Size => {
                let partial = httparse::parse_chunk_size(&reader.buf).is_ok_and(|s| s.is_partial());
                if partial && !data.is_empty() {
                    return Ok((data, false));
                }
                reader.chunk_size().await.map(|size| match size {
                    0 => Chunk::Trailers,
                    size => Chunk::Data(usize::try_from(size).unwrap_or(usize::MAX)),
                })
            }
            Chunk::Data(left) => {
                if reader.buf.is_empty() {
                    if !data.is_empty() {
                        return Ok((data, false));
                    }
                    if !reader.fill().await? {
                        return Err(failed(CLOSED.into()));
                    }
                }
                let taken = left.min(reader.buf.len());
                data.extend(reader.buf.drain(..taken));
                Ok(if taken == left {
                    Chunk::End
                } else {
                    Chunk::Data(left - taken)
                })
            }
            Chunk::End => {
                // Checked before it is taken (a bad end stays, and says so
                // again), and as soon as a byte of it is in.
                let start = &reader.buf[..reader.buf.len().min(2)];
                if !b"\r\n".starts_with(start) {
                    return match data.is_empty() {
                        true => Err(failed("not an HTTP response: bad chunk end".into())),
                        false => Ok((data, false)),
                    };
                }
                if reader.buf.len() < 2 && !data.is_empty() {
                    return Ok((data, false));
                }
                match reader.at_least(2).await {
                    Ok(()) if reader.buf.starts_with(b"\r\n") => {
                        reader.buf.drain(..2);
                        Ok(Chunk::Size)
                    }
                    Ok(()) => Err(failed("not an HTTP response: bad chunk end".into())),
                    Err(e) => Err(e),
                }
            }
            Chunk::Trailers => {
                if !data.is_empty() {
                    return Ok((data, false));
                }
                return reader.trailers().await.map(|()| (data, true));
            }
        };
        match step {
            Ok(next) => *chunk = next,
            Err(_) if !data.is_empty() => return Ok((data, false)),
            Err(e) => return Err(e),
        }
    }
}

/// A request on its way: how much of it the socket took. A failure is left
/// for the reading side to tell: the answer may be in already.
struct Sending {
    request: Vec<u8>,
    written: usize,
    /// All of it is on the socket (TLS holds records until flushed).
    flushed: bool,
    failed: bool,
}

impl Sending {
    fn new(request: Vec<u8>) -> Sending {
        Sending {
            request,
            written: 0,
            flushed: false,
            failed: false,
        }
    }

    /// Writes what the connection takes; Ready once all of it went, or a write failed.
    fn poll(&mut self, conn: &Conn, cx: &mut Context<'_>) -> Poll<()> {
        while !self.failed && self.written < self.request.len() {
            match conn.poll_write(cx, &self.request[self.written..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0) | Err(_)) => self.failed = true,
                Poll::Ready(Ok(n)) => self.written += n,
            }
        }
        if !self.failed && !self.flushed {
            match conn.poll_flush(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => self.failed = true,
                Poll::Ready(Ok(())) => self.flushed = true,
            }
        }
        if self.flushed && self.written > 0 {
            // All of it went: a stream's prompt is not held for the stream's life.
            (self.request, self.written) = (Vec::new(), 0);
        }
        Poll::Ready(())
    }

    /// All of the request went.
    fn done(&self) -> bool {
        self.flushed && !self.failed
    }
}

/// Reads one answer off a connection: the head by one deadline, the rest by
/// another. `buf` holds what was read and not yet consumed.
struct Reader<'a> {
    conn: &'a Conn,
    buf: Vec<u8>,
    deadline: Instant,
    phase: &'static str,
}

const MAX_HEADERS: usize = 100;
const MAX_HEAD: usize = 64 * 1024;

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

impl Reader<'_> {
    /// More bytes into `buf`; Ok(false) at the connection's end.
    async fn fill(&mut self) -> Result<bool, Outcome> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(8192);
        }
        let (conn, buf) = (self.conn, &mut self.buf);
        let read = poll_fn(|cx| conn.poll_read(cx, buf));
        match timeout_at(self.deadline, read).await {
            Ok(Ok(n)) => Ok(n > 0),
            Ok(Err(e)) => Err(failed(format!("connection closed by the upstream: {e}"))),
            Err(_) => Err(timed_out(format!(
                "no {} from the upstream in time",
                self.phase
            ))),
        }
    }

    /// The answer, and whether the connection may carry another exchange.
    async fn answer(&mut self, done_by: Instant, max_body: usize) -> (Outcome, bool) {
        match self.read_answer(done_by, max_body).await {
            Ok((outcome, keep_alive)) => (outcome, keep_alive && self.buf.is_empty()),
            Err(outcome) => (outcome, false),
        }
    }

    async fn read_answer(
        &mut self,
        done_by: Instant,
        max_body: usize,
    ) -> Result<(Outcome, bool), Outcome> {
        let (status, headers, framing, keep_alive) = self.head().await?;
        self.deadline = done_by;
        self.phase = "answer";
        let body = match framing {
            Framing::Length(length) if length > max_body => {
                return Err(failed(format!("answer over {max_body} bytes")))
            }
            Framing::Length(length) => self.exactly(length).await?,
            Framing::Chunked => self.chunked(max_body).await?,
            Framing::UntilClose => self.until_close(max_body).await?,
        };
        let reusable = keep_alive && !matches!(framing, Framing::UntilClose);
        let outcome = Outcome::Answer {
            status,
            headers,
            body,
        };
        Ok((outcome, reusable))
    }

    async fn head(&mut self) -> Result<(u16, Vec<(String, String)>, Framing, bool), Outcome> {
        loop {
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut slots);
            match response.parse(&self.buf) {
                // However fast it came: the limit does not hang on the timing.
                Ok(httparse::Status::Complete(length)) if length > MAX_HEAD => {
                    return Err(failed("not an HTTP response: head too large".into()))
                }
                Ok(httparse::Status::Complete(length)) => {
                    let status = response.code.unwrap_or(0);
                    let http11 = response.version == Some(1);
                    let head = read_head(response.headers, http11);
                    let (headers, framing, keep_alive) = head?;
                    self.buf.drain(..length);
                    if (100..200).contains(&status) {
                        continue; // an interim answer: the real one follows
                    }
                    let framing = if status == 204 || status == 304 {
                        Framing::Length(0)
                    } else {
                        framing
                    };
                    return Ok((status, headers, framing, keep_alive));
                }
                Ok(httparse::Status::Partial) if self.buf.len() > MAX_HEAD => {
                    return Err(failed("not an HTTP response: head too large".into()))
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(failed(format!("not an HTTP response: {e}"))),
            }
            if !self.fill().await? {
                return Err(failed("connection closed by the upstream".into()));
            }
        }
    }

    /// Until `buf` holds `length` bytes.
    async fn at_least(&mut self, length: usize) -> Result<(), Outcome> {
        while self.buf.len() < length {
            if !self.fill().await? {
                return Err(failed(CLOSED.into()));
            }
        }
        Ok(())
    }

    async fn exactly(&mut self, length: usize) -> Result<Vec<u8>, Outcome> {
        self.at_least(length).await?;
        if self.buf.len() == length {
            return Ok(std::mem::take(&mut self.buf)); // the usual case: no copy
        }
        Ok(self.buf.drain(..length).collect())
    }

    async fn until_close(&mut self, max_body: usize) -> Result<Vec<u8>, Outcome> {
        loop {
            if self.buf.len() > max_body {
                return Err(failed(format!("answer over {max_body} bytes")));
            }
            if !self.fill().await? {
                return Ok(std::mem::take(&mut self.buf));
            }
        }
    }

    async fn chunked(&mut self, max_body: usize) -> Result<Vec<u8>, Outcome> {
        let mut body = Vec::new();
        loop {
            let size = self.chunk_size().await?;
            if size == 0 {
                return self.trailers().await.map(|()| body);
            }
            // Against what is left: a size near 2^64 would wrap a sum.
            if size > (max_body - body.len()) as u64 {
                return Err(failed(format!("answer over {max_body} bytes")));
            }
            body.extend(self.exactly(size as usize).await?);
            if self.exactly(2).await? != b"\r\n" {
                return Err(failed("not an HTTP response: bad chunk end".into()));
            }
        }
    }

    /// A chunk's size, its line read.
    async fn chunk_size(&mut self) -> Result<u64, Outcome> {
        loop {
            match httparse::parse_chunk_size(&self.buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    self.buf.drain(..used);
                    return Ok(size);
                }
                // Extensions and padding may run on forever: bounded as a head is.
                Ok(httparse::Status::Partial) if self.buf.len() > MAX_HEAD => {
                    return Err(failed(
                        "not an HTTP response: chunk size line too long".into(),
                    ))
                }
                Ok(httparse::Status::Partial) => {
                    if !self.fill().await? {
                        return Err(failed("connection closed by the upstream".into()));
                    }
                }
                Err(_) => return Err(failed("not an HTTP response: bad chunk size".into())),
            }
        }
    }

    /// Skips the trailer section up to the blank line that ends the body;
    /// like a head, at most `MAX_HEAD` bytes of it.
    async fn trailers(&mut self) -> Result<(), Outcome> {
        let mut skipped = 0;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                self.buf.drain(..end + 2);
                skipped += end + 2;
                if end == 0 {
                    return Ok(());
                }
                continue;
            }
            if skipped + self.buf.len() > MAX_HEAD {
                return Err(failed("not an HTTP response: trailers too large".into()));
            }
            if !self.fill().await? {
                return Err(failed("connection closed by the upstream".into()));
            }
        }
    }
}

type Head = (Vec<(String, String)>, Framing, bool);

fn read_head(fields: &[httparse::Header<'_>], http11: bool) -> Result<Head, Outcome> {
    let mut headers = Vec::with_capacity(fields.len());
    let mut length = None;
    let mut chunked = None; // once a transfer-encoding is seen: is its last coding chunked
    let mut keep_alive = http11;
    for field in fields {
        let name = field.name.to_ascii_lowercase();
        // latin-1, as the Python client decodes: every byte is a char.
        let value: String = field.value.iter().map(|&b| b as char).collect();
        match name.as_str() {
            "content-length" => {
                // Digits only, and a repeat must agree (RFC 9112 6.3): two
                // readings of where the answer ends would desync the connection.
                let digits = value.trim();
                let parsed = digits
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| digits.parse());
                match parsed {
                    Some(Ok(n)) if length.is_none_or(|seen| seen == n) => length = Some(n),
                    _ => return Err(failed("not an HTTP response: bad content-length".into())),
                }
            }
            "transfer-encoding" => {
                let last = value.rsplit(',').next().unwrap_or_default().trim();
                chunked = Some(last.eq_ignore_ascii_case("chunked"));
            }
            "connection" => {
                let value = value.to_ascii_lowercase();
                if value.contains("close") {
                    keep_alive = false;
                } else if value.contains("keep-alive") {
                    keep_alive = true;
                }
            }
            _ => {}
        }
        headers.push((name, value));
    }
    let framing = match (chunked, length) {
        (Some(true), _) => Framing::Chunked,
        (None, Some(length)) => Framing::Length(length),
        // No length, or a coding that is not chunked last: the close ends it.
        _ => Framing::UntilClose,
    };
    if chunked.is_some() && length.is_some() {
        keep_alive = false; // the RFC's rule for an answer framed two ways
    }
    Ok((headers, framing, keep_alive))
}

#[cfg(test)]
#[path = "upstream_tests.rs"]
pub(crate) mod tests; // its scripted servers serve connection_tests.rs too
