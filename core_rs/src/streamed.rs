//! The streamed chat completion the door serves (docs/data-plane.md, step
//! 4), as the executor streams one (`Executor._stream` and `_forward`):
//! until its first content an attempt's events are held back, so a provider
//! that breaks before it is failed over like one that never answered; from
//! there the stream is the caller's, each read from the upstream written as
//! one frame as it arrives, its events read for accounting (the content's
//! length, the usage, the end) after they are queued for the caller. A
//! failure after the first content ends the stream with an error event; a
//! caller that leaves ends the upstream call.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Frame;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::connection::Pool;
use crate::cost::Tokens;
use crate::failover::Outcome;
use crate::routed::{self, since_ms, Step, Tries};
use crate::sse;
use crate::upstream::{self, Job, Streaming};
use crate::wire;

/// What the caller's client reads when the stream fails after it began.
const ERROR_EVENT: &[u8] =
    b"data: {\"error\":{\"message\":\"the model's stream failed\",\"type\":\"upstream_error\"}}\n\n";

/// A stream whose first content is in, ready to be the caller's.
pub struct Started {
    stream: Streaming,
    chunks: Chunks,
    /// The events read until the first content, held back until now.
    first: Vec<u8>,
    idle: Duration,
}

/// An attempt at a stream, up to its first content, which must come within
/// `first_token` of its head; `idle`: the longest wait between two reads after.
pub(crate) async fn attempt(
    tries: &mut Tries,
    job: Job,
    pool: &Pool,
    first_token: Duration,
    idle: Duration,
) -> Step {
    let max_event = job.max_body;
    let mut stream = match upstream::open(job, pool).await {
        Ok(stream) => stream,
        Err(outcome) => return unanswered(tries, outcome),
    };
    let mut last_data = tokio::time::Instant::now();
    let until = last_data + first_token;
    if stream.status != 200 {
        let (status, headers) = (stream.status, std::mem::take(&mut stream.headers));
        return match stream.rest(until).await {
            Ok(body) => tries.not_ok(status, &headers, body),
            Err(outcome) => unanswered(tries, outcome),
        };
    }
    let (mut chunks, mut first) = (Chunks::new(max_event), Vec::new());
    while !chunks.started && chunks.error.is_none() {
        match stream.next(until).await {
            Ok(Some(data)) => {
                last_data = tokio::time::Instant::now();
                if let Err(malformed) = chunks.feed(&data, &mut first, false) {
                    let outcome = Outcome::Malformed;
                    tries.record(
                        outcome,
                        Some(200),
                        Some(malformed),
                        Tokens::default(),
                        None,
                        true,
                    );
                    return Step::Next;
                }
            }
            Ok(None) => break,
            Err(outcome) => return unanswered(tries, stalled(outcome, until - last_data)),
        }
    }
    if !chunks.started || chunks.error.is_some() {
        let error = chunks.error.take();
        let error = error.unwrap_or_else(|| "stream ended before any content".to_owned());
        let outcome = Outcome::StreamError;
        tries.record(
            outcome,
            Some(200),
            Some(error),
            Tokens::default(),
            None,
            true,
        );
        return Step::Next;
    }
    let (_, _, started, _) = tries.current.as_ref().expect("an attempt under way");
    tries.ttft_ms = Some(since_ms(*started));
    Step::Streaming(Box::new(Started {
        stream,
        chunks,
        first,
        idle,
    }))
}

fn unanswered(tries: &mut Tries, outcome: upstream::Outcome) -> Step {
    if let upstream::Outcome::Failed { timeout, message } = outcome {
        tries.unanswered(timeout, message);
    }
    Step::Next
}

/// A deadline passed while the stream waited for data: said as the app's
/// client says it.
fn stalled(outcome: upstream::Outcome, waited: Duration) -> upstream::Outcome {
    match outcome {
        upstream::Outcome::Failed {
            timeout: true,
            message: _,
        } => upstream::Outcome::Failed {
            timeout: true,
            message: format!("the stream stalled (no data for {} s)", seconds(waited)),
        },
        other => other,
    }
}

/// Seconds as Python's `{:.3g}` writes them, for the times a stall names.
fn seconds(waited: Duration) -> String {
    let s = waited.as_secs_f64();
    if s == 0.0 {
        return "0".to_owned();
    }
    // Three significant digits; the exponent is the rounded value's.
    let scientific = format!("{s:.2e}");
    let (mantissa, exponent) = scientific.split_once('e').expect("an exponent");
    let exponent: i32 = exponent.parse().expect("a number");
    let trimmed = |text: &str| match text.contains('.') {
        true => text.trim_end_matches('0').trim_end_matches('.').to_owned(),
        false => text.to_owned(),
    };
    if !(-4..3).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{}e{sign}{:02}", trimmed(mantissa), exponent.abs());
    }
    let digits = (2 - exponent) as usize;
    trimmed(&format!("{s:.digits$}"))
}

/// The caller's answer: the head now, with the events held back; the rest
/// pumped from the upstream as it comes, on a task of its own that accounts
/// the call when the stream ends.
pub(crate) fn begin(
    tries: Tries,
    started: Box<Started>,
    slot: OwnedSemaphorePermit,
) -> routed::Served {
    let (sender, receiver) = mpsc::channel(1);
    let (model_id, endpoint_id, _, _) = tries.current.clone().expect("an attempt under way");
    // The attempt that streams is recorded when the stream ends.
    let last = routed::Attempt {
        model_id,
        endpoint_id,
        outcome: Outcome::Success,
        status: Some(200),
        latency_ms: 0.0,
        error: None,
        retry_after_ms: None,
    };
    let Started {
        stream,
        chunks,
        first,
        idle,
    } = *started;
    let body = Body {
        first: Some(Bytes::from(first)),
        receiver,
    };
    let attempts = tries.attempts.len() + 1;
    let mut response = routed::answered(&tries, body, "text/event-stream", &last, attempts);
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    tokio::spawn(pump(tries, stream, chunks, idle, sender, slot));
    routed::Served::Stream(response)
}

/// Until the stream ends, fails or its caller leaves; then its record.
async fn pump(
    mut tries: Tries,
    mut stream: Streaming,
    mut chunks: Chunks,
    idle: Duration,
    sender: mpsc::Sender<Bytes>,
    slot: OwnedSemaphorePermit,
) {
    let until = tokio::time::Instant::from_std(tries.call.deadline);
    let mut left = false;
    loop {
        let now = tokio::time::Instant::now();
        let by = (now + idle).min(until);
        let read = tokio::select! {
            biased;
            _ = sender.closed() => {
                // Once the final event went out (an SDK stops reading at
                // `[DONE]`), the stream had ended.
                left = !chunks.done;
                break;
            }
            read = stream.next(by) => read,
        };
        match read {
            Ok(Some(data)) => {
                let mut out = Vec::new();
                if let Err(unreadable) = chunks.feed(&data, &mut out, true) {
                    chunks.error = Some(unreadable);
                }
                if !out.is_empty() && sender.send(Bytes::from(out)).await.is_err() {
                    left = chunks.error.is_none() && !chunks.done;
                    break;
                }
                if chunks.error.is_some() {
                    break;
                }
            }
            Ok(None) => {
                if !chunks.done {
                    chunks.error = Some("stream ended without its final event".to_owned());
                }
                break;
            }
            Err(outcome) => {
                let (kind, message) = match stalled(outcome, by - now) {
                    upstream::Outcome::Failed {
                        timeout: true,
                        message,
                    } => ("UpstreamTimeout", message),
                    upstream::Outcome::Failed { message, .. } => ("UpstreamError", message),
                    upstream::Outcome::Answer { .. } => unreachable!("a read fails or reads"),
                };
                chunks.error = Some(routed::clipped(&format!("{kind}: {message}"), 300));
                break;
            }
        }
    }
    if chunks.error.is_some() {
        let _ = sender.send(Bytes::from_static(ERROR_EVENT)).await;
    }
    drop(stream); // a stream not read to its end closes its connection
    drop(slot);
    let outcome = match (&chunks.error, left) {
        (Some(_), _) => Outcome::StreamError,
        (None, true) => Outcome::Cancelled,
        (None, false) => Outcome::Success,
    };
    let error = chunks.error.take();
    tries.settle(outcome, error, chunks.tokens, chunks.text_chars, None);
}

/// A stream's events as `OpenAIChunks` reads them: what the caller gets,
/// and what accounting needs.
struct Chunks {
    events: sse::Events,
    started: bool,
    done: bool,
    error: Option<String>,
    tokens: wire::Usage,
    text_chars: u64,
}

impl Chunks {
    fn new(max_event: usize) -> Chunks {
        Chunks {
            events: sse::Events::new(max_event),
            started: false,
            done: false,
            error: None,
            tokens: wire::Usage::default(),
            text_chars: 0,
        }
    }

    /// The events one read completes, onto `out` as the caller gets them;
    /// Err for one that cannot be read (said as the app says it). Once the
    /// stream is the caller's (`begun`), an error event ends what is passed on.
    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>, begun: bool) -> Result<(), String> {
        let events = self.events.feed(data).map_err(|e| match begun {
            true => format!("EventTooLarge: {e}"), // `_forward`'s own words
            false => unreadable("EventTooLarge", &e),
        })?;
        for event in events {
            if event.data == b"[DONE]" {
                self.done = true;
                self.started = true;
                out.extend(event.raw);
            } else {
                let reading = wire::openai_chunk(&event.data, &mut self.tokens)
                    .map_err(|e| unreadable(msgspec_error(&e), &e))?;
                if reading.error {
                    let data = &event.data[..event.data.len().min(300)];
                    self.error = Some(format!("error event in stream: {}", bytes_repr(data)));
                } else {
                    self.started |= reading.started;
                    self.text_chars += reading.text_chars;
                    out.extend(event.raw);
                }
            }
            if begun && self.error.is_some() {
                break;
            }
        }
        Ok(())
    }
}

/// The msgspec error the app's decoder raises for what `malformed` says.
fn msgspec_error(malformed: &wire::Malformed) -> &'static str {
    match malformed.0.starts_with(wire::NOT_JSON) {
        true => "DecodeError",
        false => "ValidationError",
    }
}

/// `_malformed` in executor.py.
fn unreadable(kind: &str, error: &impl std::fmt::Display) -> String {
    routed::clipped(&format!("unreadable answer ({kind}: {error})"), 300)
}

/// Python's `repr` of bytes, as the app's error for an error event shows them.
fn bytes_repr(data: &[u8]) -> String {
    let quote = if data.contains(&b'\'') && !data.contains(&b'"') {
        '"'
    } else {
        '\''
    };
    let mut text = format!("b{quote}");
    for &b in data {
        match b {
            b'\\' => text.push_str("\\\\"),
            b'\t' => text.push_str("\\t"),
            b'\n' => text.push_str("\\n"),
            b'\r' => text.push_str("\\r"),
            _ if b == quote as u8 => text.push_str(&format!("\\{quote}")),
            0x20..=0x7e => text.push(b as char),
            _ => text.push_str(&format!("\\x{b:02x}")),
        }
    }
    text.push(quote);
    text
}

/// A streamed answer's body: the events held back, then what the pump sends.
pub struct Body {
    first: Option<Bytes>,
    receiver: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        self.receiver
            .poll_recv(cx)
            .map(|data| data.map(|data| Ok(Frame::data(data))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_read_as_python_writes_them() {
        let cases = [
            (0.5, "0.5"),
            (30.0, "30"),
            (0.25, "0.25"),
            (1.2345, "1.23"),
            (120.0, "120"),
            (0.001, "0.001"),
            (29.96, "30"),
            (999.4, "999"),
            (999.5, "1e+03"),
            (3600.0, "3.6e+03"),
            (0.00004, "4e-05"),
        ];
        for (s, text) in cases {
            assert_eq!(seconds(Duration::from_secs_f64(s)), text);
        }
    }

    #[test]
    fn bytes_read_as_python_reprs_them() {
        assert_eq!(bytes_repr(b"{\"error\": 1}"), "b'{\"error\": 1}'");
        assert_eq!(bytes_repr(b"it's"), "b\"it's\"");
        assert_eq!(bytes_repr(b"'\"\n\xff"), "b'\\'\"\\n\\xff'");
    }
}
