//! Exchanges against real servers on loopback, each scripted per connection.

use super::*;
use crate::trust::Trust;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Instant as StdInstant;

/// A server on loopback: for each connection accepted, `script` gets the
/// stream and the connection's number; returns the port and the count of
/// connections accepted.
pub(crate) fn serve<F>(script: F) -> (u16, Arc<AtomicUsize>)
where
    F: Fn(std::net::TcpStream, usize) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let script = Arc::new(script);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let n = count.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            thread::spawn(move || script(stream, n));
        }
    });
    (port, accepted)
}

/// Reads one request (head and content-length body) off the stream.
fn read_request(reader: &mut BufReader<std::net::TcpStream>) -> Option<String> {
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(head + &String::from_utf8(body).unwrap())
}

/// Reads one request off the connection; the stream to answer on.
fn after_request(stream: std::net::TcpStream) -> std::net::TcpStream {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    read_request(&mut reader);
    stream
}

/// Answers every request on the connection with `answer`.
fn answering(answer: &'static str) -> impl Fn(std::net::TcpStream, usize) + Send + Sync {
    move |stream, _| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut stream = stream;
        while read_request(&mut reader).is_some() {
            if stream.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }
}

fn job(token: u64, port: u16, limit_ms: u64) -> Job {
    let body = "{\"a\":1}";
    let request = format!(
        "POST /v1/x HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    Job {
        token,
        origin: Origin {
            tls: false,
            host: "127.0.0.1".into(),
            port,
        },
        request: request.into_bytes(),
        connect: Duration::from_millis(limit_ms),
        head: Duration::from_millis(limit_ms),
        done: Duration::from_millis(limit_ms),
        max_body: 1024,
    }
}

/// Submits the job and waits for its outcome, as the event loop would: on
/// the wake socket, then `take`.
fn run(client: &Client, job: Job) -> Outcome {
    let token = job.token;
    client.submit(job);
    client.dispatch();
    let started = StdInstant::now();
    loop {
        let mut ready = client.take();
        if let Some(i) = ready.iter().position(|(t, _)| *t == token) {
            return ready.swap_remove(i).1;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no outcome");
        thread::sleep(Duration::from_millis(1));
    }
}

fn answer(status: u16, body: &str) -> Outcome {
    Outcome::Answer {
        status,
        headers: vec![],
        body: body.as_bytes().to_vec(),
    }
}

/// The outcome with its headers dropped, for comparing.
fn bare(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Answer { status, body, .. } => Outcome::Answer {
            status,
            headers: vec![],
            body,
        },
        failed => failed,
    }
}

fn message(outcome: Outcome) -> (bool, String) {
    match outcome {
        Outcome::Failed { timeout, message } => (timeout, message),
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// The failure a call meets when every request is answered with `script`:
/// not a timeout, as what the upstream sent is at fault.
fn refusal(client: &Client, token: u64, script: &'static str) -> String {
    let (port, _) = serve(answering(script));
    let (timeout, text) = message(run(client, job(token, port, 2000)));
    assert!(!timeout, "{text}");
    text
}

#[test]
fn a_sized_answer_arrives_whole_and_its_connection_is_reused() {
    let (port, accepted) = serve(answering(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-A: 1\r\ncontent-length: 2\r\n\r\n{}",
    ));
    let client = Client::start(Trust::default()).unwrap();
    for token in 0..5 {
        let outcome = run(&client, job(token, port, 2000));
        let Outcome::Answer {
            status,
            headers,
            body,
        } = outcome
        else {
            panic!("{outcome:?}")
        };
        assert_eq!((status, body.as_slice()), (200, &b"{}"[..]));
        assert_eq!(
            headers[0],
            ("content-type".into(), "application/json".into())
        );
        assert_eq!(headers[1], ("x-a".into(), "1".into()));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn a_chunked_answer_is_joined_and_its_trailers_skipped() {
    let (port, accepted) = serve(answering(
        "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n\
         3\r\nabc\r\n5;ext=1\r\ndefgh\r\n0\r\nX-Trailer: t\r\n\r\n",
    ));
    let client = Client::start(Trust::default()).unwrap();
    for token in 0..2 {
        assert_eq!(
            bare(run(&client, job(token, port, 2000))),
            answer(201, "abcdefgh")
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "kept alive after a chunked body"
    );
}

#[test]
fn an_answer_delimited_by_the_close_is_read_to_the_end_and_not_reused() {
    let (port, accepted) = serve(|stream, _| {
        let mut stream = after_request(stream);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n\r\npart one ");
        thread::sleep(Duration::from_millis(20));
        let _ = stream.write_all(b"part two");
    });
    let client = Client::start(Trust::default()).unwrap();
    for token in 0..2 {
        assert_eq!(
            bare(run(&client, job(token, port, 2000))),
            answer(200, "part one part two")
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn an_interim_answer_is_skipped() {
    let (port, _) = serve(answering(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx",
    ));
    let client = Client::start(Trust::default()).unwrap();
    assert_eq!(bare(run(&client, job(1, port, 2000))), answer(200, "x"));
}

#[test]
fn the_request_arrives_as_shaped() {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let (port, _) = serve(move |stream, _| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let request = read_request(&mut reader).unwrap();
        tx.lock().unwrap().send(request).unwrap();
        let mut stream = stream;
        let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
    });
    let client = Client::start(Trust::default()).unwrap();
    let sent = job(1, port, 2000);
    let expected = String::from_utf8(sent.request.clone()).unwrap();
    assert_eq!(bare(run(&client, sent)), answer(204, ""));
    assert_eq!(rx.recv().unwrap(), expected);
}

#[test]
fn no_head_in_time_is_a_timeout_within_its_limit() {
    let (port, _) = serve(|stream, _| {
        thread::sleep(Duration::from_secs(3));
        drop(stream);
    });
    let client = Client::start(Trust::default()).unwrap();
    let mut slow = job(1, port, 2000);
    slow.head = Duration::from_millis(150);
    let started = StdInstant::now();
    let (timeout, text) = message(run(&client, slow));
    let waited = started.elapsed();
    assert!(timeout);
    assert_eq!(text, "no head from the upstream in time");
    assert!(waited >= Duration::from_millis(150) && waited < Duration::from_millis(1500));
}

#[test]
fn a_body_that_stalls_past_the_whole_limit_is_a_timeout() {
    let (port, _) = serve(|stream, _| {
        let mut stream = after_request(stream);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc");
        thread::sleep(Duration::from_secs(3));
    });
    let client = Client::start(Trust::default()).unwrap();
    let (timeout, text) = message(run(&client, job(1, port, 200)));
    assert!(timeout);
    assert_eq!(text, "no answer from the upstream in time");
}

#[test]
fn an_answer_over_the_limit_is_refused_sized_chunked_or_open_ended() {
    let big = "x".repeat(2000);
    let sized: &'static str =
        Box::leak(format!("HTTP/1.1 200 OK\r\ncontent-length: 2000\r\n\r\n{big}").into_boxed_str());
    let chunked: &'static str = Box::leak(
        format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n7d0\r\n{big}\r\n0\r\n\r\n")
            .into_boxed_str(),
    );
    let open: &'static str =
        Box::leak(format!("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{big}").into_boxed_str());
    let client = Client::start(Trust::default()).unwrap();
    for (token, script) in [sized, chunked, open].into_iter().enumerate() {
        assert_eq!(
            refusal(&client, token as u64, script),
            "answer over 1024 bytes"
        );
    }
}

#[test]
fn what_is_not_http_is_said_so() {
    let client = Client::start(Trust::default()).unwrap();
    for (token, script) in [
        "SMTP ready\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: many\r\n\r\n",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ]
    .into_iter()
    .enumerate()
    {
        let text = refusal(&client, token as u64, script);
        assert!(text.starts_with("not an HTTP response"), "{text}");
    }
}

#[test]
fn a_connection_closed_mid_answer_fails_and_a_refused_one_names_the_origin() {
    let (port, _) = serve(|stream, _| {
        let mut stream = after_request(stream);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc");
    });
    let client = Client::start(Trust::default()).unwrap();
    let (_, text) = message(run(&client, job(1, port, 2000)));
    assert_eq!(text, "connection closed by the upstream");

    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (timeout, text) = message(run(&client, job(2, port, 2000)));
    assert!(!timeout);
    assert!(
        text.starts_with(&format!("cannot connect to 127.0.0.1:{port}: ")),
        "{text}"
    );
}

#[test]
fn a_pooled_connection_the_upstream_closed_is_not_used_again() {
    // Each connection answers once with keep-alive, then the server closes it.
    let (port, accepted) = serve(|stream, _| {
        let mut stream = after_request(stream);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    });
    let client = Client::start(Trust::default()).unwrap();
    for token in 0..3 {
        assert_eq!(
            bare(run(&client, job(token, port, 2000))),
            answer(200, "ok")
        );
        thread::sleep(Duration::from_millis(50)); // the close reaches the runtime
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[test]
fn many_exchanges_started_at_once_all_finish() {
    let (port, _) = serve(answering("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
    let client = Client::start(Trust::default()).unwrap();
    for token in 0..200 {
        client.submit(job(token, port, 5000));
    }
    client.dispatch();
    let mut seen = std::collections::HashSet::new();
    let started = StdInstant::now();
    while seen.len() < 200 {
        for (token, outcome) in client.take() {
            assert_eq!(bare(outcome), answer(200, "ok"));
            assert!(seen.insert(token));
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        thread::sleep(Duration::from_millis(1));
    }
}

/// Answers the first request with `prefix`, then `flood` bytes of `fill`,
/// then holds the connection open for 3 s.
fn flooding(
    prefix: &'static str,
    fill: u8,
    flood: usize,
) -> impl Fn(std::net::TcpStream, usize) + Send + Sync {
    move |stream, _| {
        let mut stream = after_request(stream);
        let _ = stream.write_all(prefix.as_bytes());
        let _ = stream.write_all(&vec![fill; flood]);
        thread::sleep(Duration::from_secs(3));
    }
}

#[test]
fn a_chunk_size_near_the_top_of_u64_is_refused_not_buffered() {
    // After a first chunk, 2^64-1 plus what was read wraps past the cap's check.
    let (port, _) = serve(flooding(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\nffffffffffffffff\r\n",
        b'x',
        1 << 20,
    ));
    let client = Client::start(Trust::default()).unwrap();
    let (timeout, text) = message(run(&client, job(1, port, 2000)));
    assert!(!timeout, "{text}");
    assert_eq!(text, "answer over 1024 bytes");
}

#[test]
fn an_endless_chunk_size_line_or_trailer_is_refused_not_buffered() {
    let client = Client::start(Trust::default()).unwrap();
    for (token, (prefix, fill)) in [
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1;ext=",
            b'e',
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1",
            b' ',
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\nx-t: ",
            b't',
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let (port, _) = serve(flooding(prefix, fill, 1 << 20));
        let started = StdInstant::now();
        let (timeout, text) = message(run(&client, job(token as u64, port, 2000)));
        assert!(!timeout, "{text}");
        assert!(text.starts_with("not an HTTP response"), "{text}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

#[test]
fn a_length_that_is_not_one_plain_number_is_refused() {
    let client = Client::start(Trust::default()).unwrap();
    for (token, script) in [
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
    ]
    .into_iter()
    .enumerate()
    {
        let text = refusal(&client, token as u64, script);
        assert!(text.starts_with("not an HTTP response"), "{text}");
    }
    // The same length twice says nothing new.
    let (port, _) = serve(answering(
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok",
    ));
    assert_eq!(bare(run(&client, job(9, port, 2000))), answer(200, "ok"));
}

#[test]
fn a_length_beside_chunked_is_ignored_and_the_connection_not_reused() {
    // RFC 9112 6.3: chunked wins, and the connection must close after.
    let (port, accepted) = serve(answering(
        "HTTP/1.1 200 OK\r\ncontent-length: 50\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ));
    let client = Client::start(Trust::default()).unwrap();
    for token in 0..2 {
        assert_eq!(
            bare(run(&client, job(token, port, 2000))),
            answer(200, "ok")
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn a_cancelled_exchange_closes_its_connection_and_is_not_taken() {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let (port, _) = serve(move |stream, _| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        read_request(&mut reader);
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest); // until the client closes
        tx.lock().unwrap().send(StdInstant::now()).unwrap();
    });
    let client = Client::start(Trust::default()).unwrap();
    client.submit(job(1, port, 10_000));
    client.dispatch();
    thread::sleep(Duration::from_millis(100));
    let cancelled = StdInstant::now();
    client.cancel(1);
    client.cancel(2); // nothing of that token: nothing happens
    let closed = rx.recv_timeout(Duration::from_secs(5)).expect("still open");
    assert!(closed.duration_since(cancelled) < Duration::from_secs(1));
    thread::sleep(Duration::from_millis(50));
    assert!(client.take().is_empty());
}

#[test]
fn an_exchange_cancelled_before_its_dispatch_never_goes_out() {
    let (port, accepted) = serve(answering("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"));
    let client = Client::start(Trust::default()).unwrap();
    client.submit(job(1, port, 2000));
    client.submit(job(2, port, 2000));
    client.cancel(1);
    client.dispatch();
    let started = StdInstant::now();
    let mut taken = Vec::new();
    while taken.is_empty() && started.elapsed() < Duration::from_secs(5) {
        taken = client.take();
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(50));
    taken.extend(client.take());
    let tokens: Vec<u64> = taken.iter().map(|(token, _)| *token).collect();
    assert_eq!(tokens, [2]);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn an_answer_split_at_any_byte_arrives_whole_on_a_reused_connection() {
    const ANSWERS: [&str; 3] = [
        "HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4;x=1\r\n{\"ok\r\n7\r\n\":true}\r\n0\r\nx-t: 1\r\n\r\n",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
    ];
    // The n-th request's answer is cut after byte n % its length, the halves 2 ms apart.
    let (port, accepted) = serve(|stream, _| {
        stream.set_nodelay(true).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut stream = stream;
        let mut n = 0;
        while read_request(&mut reader).is_some() {
            let answer = ANSWERS[n / 200].as_bytes();
            let cut = (n % 200) % answer.len();
            let _ = stream.write_all(&answer[..cut]);
            thread::sleep(Duration::from_millis(2));
            let _ = stream.write_all(&answer[cut..]);
            n += 1;
        }
    });
    let client = Client::start(Trust::default()).unwrap();
    for token in 0..(ANSWERS.len() * 200) as u64 {
        let outcome = bare(run(&client, job(token, port, 2000)));
        assert_eq!(outcome, answer(200, "{\"ok\":true}"), "request {token}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn endless_interim_answers_or_a_trickled_body_end_at_their_deadlines() {
    let (interim, _) = serve(|stream, _| {
        let mut stream = after_request(stream);
        while stream.write_all(b"HTTP/1.1 102 Processing\r\n\r\n").is_ok() {
            thread::sleep(Duration::from_millis(5));
        }
    });
    let (trickle, _) = serve(|stream, _| {
        let mut stream = after_request(stream);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n");
        while stream.write_all(b"x").is_ok() {
            thread::sleep(Duration::from_millis(5));
        }
    });
    let client = Client::start(Trust::default()).unwrap();
    for (token, port, phase) in [(1, interim, "head"), (2, trickle, "answer")] {
        let mut slow = job(token, port, 300);
        slow.head = Duration::from_millis(150);
        let started = StdInstant::now();
        let (timeout, text) = message(run(&client, slow));
        assert!(timeout);
        assert_eq!(text, format!("no {phase} from the upstream in time"));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

#[test]
fn a_head_over_64_kib_or_100_fields_is_refused_however_it_arrives() {
    let big: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
            "a".repeat(70_000)
        )
        .into_boxed_str(),
    );
    let many: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\n{}content-length: 2\r\n\r\nok",
            (0..101)
                .map(|i| format!("x-{i}: v\r\n"))
                .collect::<String>()
        )
        .into_boxed_str(),
    );
    let client = Client::start(Trust::default()).unwrap();
    for (token, script) in [big, many].into_iter().enumerate() {
        let text = refusal(&client, token as u64, script); // one write: all in the first read
        assert!(text.starts_with("not an HTTP response"), "{text}");
    }
}

#[test]
fn a_request_the_upstream_does_not_read_ends_at_the_head_deadline() {
    // As with the Python client: until the head, the head's deadline, whatever stalls.
    let (port, _) = serve(|stream, _| {
        thread::sleep(Duration::from_secs(3));
        drop(stream);
    });
    let client = Client::start(Trust::default()).unwrap();
    let mut stuck = job(1, port, 2000);
    stuck.request = vec![b'x'; 64 << 20]; // more than the socket buffers take
    stuck.head = Duration::from_millis(150);
    let started = StdInstant::now();
    let (timeout, text) = message(run(&client, stuck));
    assert!(timeout);
    assert_eq!(text, "no head from the upstream in time");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn an_answer_sent_before_the_request_was_read_is_the_answer() {
    // A provider refusing a request by its head (413, 401) need not read its body.
    let (port, accepted) = serve(|stream, _| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok() && line != "\r\n" {
            line.clear();
        }
        let mut stream = stream;
        let _ = stream
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\n\r\ntoo large");
        thread::sleep(Duration::from_secs(3)); // reading none of the body
    });
    let client = Client::start(Trust::default()).unwrap();
    for token in 0..2 {
        let mut big = job(token, port, 2000);
        big.request = format!(
            "POST /v1/x HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
            64 << 20
        )
        .into_bytes();
        big.request.resize(big.request.len() + (64 << 20), b'x');
        let started = StdInstant::now();
        assert_eq!(bare(run(&client, big)), answer(413, "too large"));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "a request not all sent: not reused"
    );
}

#[test]
fn reuse_follows_the_version_keep_alive_and_leftovers() {
    let client = Client::start(Trust::default()).unwrap();
    for (script, connections) in [
        ("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", 3),
        (
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok",
            1,
        ),
        (
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            3,
        ),
        // A body after a 304 is none of its answer, and not the next one's.
        (
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 2\r\n\r\nok",
            3,
        ),
    ] {
        let (port, accepted) = serve(answering(script));
        for token in 0..3 {
            let Outcome::Answer { status, .. } = run(&client, job(token, port, 2000)) else {
                panic!("{script}")
            };
            assert!(status == 200 || status == 304);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), connections, "{script}");
    }
}

// --- streams read as they arrive (`open`) ---------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What `open` reads of the answer to `job`, read by read (a pool's
/// connections are the runtime's): each read's bytes (as text), then
/// Err(message) if one failed.
fn stream_reads(
    runtime: &tokio::runtime::Runtime,
    job: Job,
    pool: &Pool,
) -> Vec<Result<String, String>> {
    runtime.block_on(async {
        let mut reads = Vec::new();
        let mut stream = match open(job, pool).await {
            Ok(stream) => stream,
            Err(outcome) => return vec![Err(message(outcome).1)],
        };
        loop {
            let by = Instant::now() + Duration::from_millis(500);
            match stream.next(by).await {
                Ok(Some(data)) => reads.push(Ok(String::from_utf8(data).unwrap())),
                Ok(None) => return reads,
                Err(outcome) => {
                    reads.push(Err(message(outcome).1));
                    return reads;
                }
            }
        }
    })
}

#[test]
fn a_streamed_body_comes_read_by_read_and_its_connection_goes_back_once_read_to_its_end() {
    let (port, accepted) = serve(|stream, _| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut stream = stream;
        while read_request(&mut reader).is_some() {
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            stream
                .write_all(format!("{head}3\r\nabc\r\n2\r\nde\r\n").as_bytes())
                .unwrap();
            thread::sleep(Duration::from_millis(50));
            // The terminal chunk's trailers end after a pause: the data is not held for them.
            stream.write_all(b"1\r\nf\r\n0\r\n").unwrap();
            thread::sleep(Duration::from_millis(50));
            stream.write_all(b"\r\n").unwrap();
        }
    });
    let (pool, runtime) = (Pool::default(), runtime());
    for _ in 0..2 {
        let reads = stream_reads(&runtime, job(1, port, 2000), &pool);
        assert_eq!(reads, [Ok("abcde".to_owned()), Ok("f".to_owned())]);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the connection was reused"
    );
}

/// An upstream that answers the request with `head` and `body` at once,
/// then waits a while before it hangs up.
fn answering_once(head: &'static str, body: &'static str) -> u16 {
    let (port, _) = serve(move |stream, _| {
        let mut stream = after_request(stream);
        let _ = stream.write_all(format!("{head}{body}").as_bytes());
        thread::sleep(Duration::from_millis(300));
    });
    port
}

#[test]
fn what_was_read_goes_out_before_a_framing_error_and_a_clean_close_ends_a_body_not_kept_alive() {
    let chunked = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
    let cases = [
        ("5\r\nhello\r\nzz\r\n", "bad chunk size"),
        // A chunk longer than it said: its end is not skipped over, nor waited for.
        ("5\r\nhelloXX\r\n0\r\n\r\n", "bad chunk end"),
        ("5\r\nhelloX", "bad chunk end"),
    ];
    for (body, error) in cases {
        let port = answering_once(chunked, body);
        let reads = stream_reads(&runtime(), job(1, port, 2000), &Pool::default());
        let error = format!("not an HTTP response: {error}");
        assert_eq!(reads, [Ok("hello".to_owned()), Err(error)]);
    }
    // Cut short with `connection: close`: the app's client reads its end there.
    let (closing, _) = serve(|stream, _| {
        let mut stream = after_request(stream);
        let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
        let _ = stream.write_all(format!("{head}5\r\nhello\r\n").as_bytes());
    });
    let reads = stream_reads(&runtime(), job(1, closing, 2000), &Pool::default());
    assert_eq!(reads, [Ok("hello".to_owned())]);
}

#[test]
fn a_stream_whose_head_comes_before_the_request_is_read_gets_all_of_the_request() {
    let (port, _) = serve(|stream, _| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut stream = stream;
        let mut line = String::new();
        // The request line only: the stream begins before the rest is read.
        reader.read_line(&mut line).unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            .unwrap();
        let mut rest = Vec::new();
        let _ = reader.read_until(b'!', &mut rest); // all of the body, to its last byte
        let answer = format!(
            "{:x}\r\n{}\r\n0\r\n\r\n",
            rest.len().to_string().len(),
            rest.len()
        );
        stream.write_all(answer.as_bytes()).unwrap();
    });
    let body = "x".repeat(8 << 20) + "!";
    let mut job = job(1, port, 5000);
    job.request = format!(
        "POST /v1/x HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    let reads = stream_reads(&runtime(), job, &Pool::default());
    assert_eq!(reads.len(), 2, "{reads:?}");
    assert_eq!(reads[0], Ok("first".to_owned()));
    assert!(reads[1].as_ref().unwrap().parse::<usize>().unwrap() > 8 << 20);
}
