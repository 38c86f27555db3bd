//! The door in process: a real listener, a real app on a Unix socket (a
//! thread that answers each request with the head it received), raw clients.

use super::*;
use std::io::{Read, Write};
use std::net::TcpStream as StdStream;
use std::os::unix::net::UnixListener;

/// An app that answers every request with the request's own head as its
/// body, and the number of its connection in `App-Connection`.
fn echo_app(path: &Path) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for (number, mut conn) in listener.incoming().flatten().enumerate() {
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = conn.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = seen.drain(..end + 4).collect();
                        // As the app: asked to, it asks for a body (whose bytes
                        // this app reads as the next head's start), but not one
                        // it answers unread (a 404); one it read may be an error.
                        let lower = String::from_utf8_lossy(&head).to_ascii_lowercase();
                        let (status, asks) = if lower.contains("post /missing") {
                            ("404 Not Found", false)
                        } else if lower.contains("post /invalid") {
                            ("400 Bad Request", true)
                        } else {
                            ("200 OK", true)
                        };
                        let interim = match asks && lower.contains("expect: 100-continue") {
                            true => "HTTP/1.1 100 Continue\r\n\r\n",
                            false => "",
                        };
                        let answer = format!("{interim}HTTP/1.1 {status}\r\nContent-Length: {}\r\nKeep-Alive: timeout=5\r\nApp-Connection: {number}\r\n\r\n", head.len());
                        if conn
                            .write_all(answer.as_bytes())
                            .and_then(|_| conn.write_all(&head))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
}

fn door(app_socket: PathBuf) -> (Door, u16) {
    door_with(app_socket, 1 << 20)
}

fn door_with(app_socket: PathBuf, max_body: u64) -> (Door, u16) {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let door = Door::start(Settings {
        listener,
        app_socket,
        max_connections: 64,
        header_read_timeout: Duration::from_secs(5),
        max_body,
        tls: None,
        routing: Arc::new(crate::routed::Routing::new().unwrap()),
        trust: crate::trust::Trust::default(),
    })
    .unwrap();
    (door, port)
}

/// Sends `raw` and reads until the server closes the connection.
fn exchange(port: u16, raw: &str) -> String {
    let mut client = StdStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.write_all(raw.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = client.read_to_string(&mut answer);
    answer
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("door-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("app.sock")
}

#[test]
fn hands_the_app_the_callers_address_and_not_one_it_claims() {
    let socket = scratch("peer");
    echo_app(&socket);
    let (_door, port) = door(socket);
    let answer = exchange(
        port,
        "GET /v1/x?y=1 HTTP/1.1\r\nHost: h\r\nX-Model-Router-Peer: 10.0.0.9\r\nKeep-Alive: timeout=99\r\nConnection: close\r\n\r\n",
    );
    let lower = answer.to_ascii_lowercase();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(lower.contains("get /v1/x?y=1 http/1.1"), "{answer}");
    assert!(
        lower.contains("x-model-router-peer: 127.0.0.1\r\n"),
        "{answer}"
    );
    assert!(!lower.contains("10.0.0.9"), "{answer}");
    // The caller's connection headers, and the app's, stay on their own hop.
    assert!(
        !lower.contains("timeout=99") && !lower.contains("timeout=5"),
        "{answer}"
    );
}

/// One whole answer (with a content-length) from `client`, lowercased.
fn read_answer(client: &mut StdStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if got.len() >= end + 4 + length {
                return String::from_utf8_lossy(&got).to_ascii_lowercase();
            }
        }
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "closed before a whole answer");
        got.extend_from_slice(&buf[..n]);
    }
}

/// Each answer's `App-Connection`, for requests sent one after another on one connection.
fn app_connections(client: &mut StdStream, requests: usize) -> Vec<String> {
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    (0..requests)
        .map(|_| {
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                .unwrap();
            let answer = read_answer(client);
            let line = answer.lines().find(|l| l.starts_with("app-connection:"));
            line.unwrap_or_else(|| panic!("{answer}")).to_string()
        })
        .collect()
}

#[test]
fn a_callers_connection_keeps_its_own_connection_to_the_app() {
    let socket = scratch("affinity");
    echo_app(&socket);
    let (_door, port) = door(socket);
    let mut first = StdStream::connect(("127.0.0.1", port)).unwrap();
    let mut second = StdStream::connect(("127.0.0.1", port)).unwrap();
    let a = app_connections(&mut first, 3);
    let b = app_connections(&mut second, 2);
    let a_again = app_connections(&mut first, 1);
    assert!(
        a.iter().chain(&a_again).all(|c| *c == a[0]),
        "{a:?} {a_again:?}"
    );
    assert!(b.iter().all(|c| *c == b[0]) && b[0] != a[0], "{a:?} {b:?}");
}

/// The answer (the head the app was sent, echoed) to a POST of `path` with
/// a body of `length` bytes, and its `App-Connection`.
fn posted(client: &mut StdStream, path: &str, length: usize) -> (String, String) {
    let head = format!("POST {path} HTTP/1.1\r\nHost: h\r\nContent-Length: {length}\r\n\r\n");
    client.write_all(head.as_bytes()).unwrap();
    client.write_all(&vec![b'x'; length]).unwrap();
    let answer = read_answer(client);
    let line = answer.lines().find(|l| l.starts_with("app-connection:"));
    let connection = line.unwrap_or_else(|| panic!("{answer}")).to_string();
    (answer, connection)
}

#[test]
fn a_body_waits_to_be_asked_for_and_its_connection_is_kept_only_after_a_success() {
    let socket = scratch("unread");
    echo_app(&socket);
    let (_door, port) = door(socket);
    let mut client = StdStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (created, first) = posted(&mut client, "/created", 2);
    // A body still coming from the caller goes once the app asks for it.
    assert!(created.contains("expect: 100-continue"), "{created}");
    // A success comes after the body was read: its connection is kept.
    let (_, invalid) = posted(&mut client, "/invalid", 2);
    assert_eq!(first, invalid);
    // An error may have left a body unread: the next request goes on another.
    let (missing_answer, missing) = posted(&mut client, "/missing", 60_000);
    assert!(
        missing_answer.starts_with("http/1.1 404"),
        "{missing_answer}"
    );
    assert_ne!(missing, invalid);
    // That one the app did not ask for: it was not sent, and the caller's
    // connection, its body read to its end, serves the next request.
    let after = app_connections(&mut client, 1);
    assert_ne!(after[0], missing);
}

#[test]
fn answers_503_to_retry_when_the_app_is_away() {
    let (_door, port) = door(scratch("away"));
    let answer = exchange(
        port,
        "GET /health HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1\r\n"),
        "{answer}"
    );
    assert!(answer.contains(r#"{"error":{"details":null,"message":"the service is starting or stopping","type":"unavailable"}}"#), "{answer}");
}

#[test]
fn a_drained_door_finishes_its_connections_and_accepts_no_more() {
    let socket = scratch("drain");
    echo_app(&socket);
    let (door, port) = door(socket);
    // A kept-alive connection, idle after one answer, is closed by the drain.
    let mut kept = StdStream::connect(("127.0.0.1", port)).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    kept.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    assert!(kept.read(&mut buf).unwrap() > 0);
    door.drain();
    assert!(door.wait(Duration::from_secs(5)), "connections still open");
    // Closed: the read ends (no timeout), with at most the rest of the
    // first answer (its first read may have had part of it only).
    let mut rest = Vec::new();
    kept.read_to_end(&mut rest)
        .expect("the idle connection was closed");
    assert!(!rest.starts_with(b"HTTP/"), "{rest:?}");
    // The listener is the worker's (shared with the others): a drained door
    // leaves what queues on it to them, and serves nothing more itself.
    if let Ok(mut late) = StdStream::connect(("127.0.0.1", port)) {
        late.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let _ = late.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(matches!(late.read(&mut buf), Ok(0) | Err(_)));
    }
}

#[test]
fn a_caller_that_leaves_closes_its_connection_to_the_app() {
    let socket = scratch("leaves");
    // An app that never answers, and says when its connection closes.
    let listener = UnixListener::bind(&socket).unwrap();
    let (closed, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        while conn.read(&mut buf).is_ok_and(|n| n > 0) {}
        let _ = closed.send(());
    });
    let (_door, port) = door(socket);
    let mut caller = StdStream::connect(("127.0.0.1", port)).unwrap();
    caller
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(caller);
    assert!(
        seen.recv_timeout(Duration::from_secs(5)).is_ok(),
        "the app's connection outlived its caller"
    );
}

/// An app that keeps a body limit as the router's does: a declared length
/// over `limit` is refused unread, naming the length; a body of no declared
/// length is asked for (`100 Continue`) and its bytes counted into `seen`.
fn limited_app(path: &Path, limit: usize, seen: Arc<std::sync::atomic::AtomicUsize>) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 65536];
                let head_end = loop {
                    if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        break end + 4;
                    }
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
                let declared = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map(|v| v.trim().parse::<usize>().unwrap());
                if let Some(length) = declared.filter(|n| *n > limit) {
                    let body = format!("declared {length}");
                    let answer = format!("HTTP/1.1 413 Payload Too Large\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                    let _ = conn.write_all(answer.as_bytes());
                    return;
                }
                assert!(head.contains("expect: 100-continue\r\n"), "{head}");
                conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
                seen.fetch_add(got.len() - head_end, Ordering::Relaxed);
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    seen.fetch_add(n, Ordering::Relaxed);
                }
            });
        }
    });
}

#[test]
fn a_body_of_no_declared_length_is_cut_off_at_the_limit_and_refused_by_the_app() {
    // A limit over 64 KiB (a read of the body), and one under.
    for limit in [1 << 20, 1000] {
        let socket = scratch(&format!("limit-{limit}"));
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        limited_app(&socket, limit, seen.clone());
        let (_door, port) = door_with(socket, limit as u64);
        let mut client = StdStream::connect(("127.0.0.1", port)).unwrap();
        client
            .write_all(b"POST /v1/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        // 4 MiB in chunks of 64 KiB, while the answer is read.
        let mut writer = client.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = [b"10000\r\n".as_slice(), &[b'x'; 65536], b"\r\n"].concat();
            for _ in 0..64 {
                if writer.write_all(&chunk).is_err() {
                    return; // the door stopped reading: expected
                }
            }
        });
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let answer = read_answer(&mut client);
        assert!(answer.starts_with("http/1.1 413"), "{limit}: {answer}");
        assert!(
            answer.ends_with(&format!("declared {}", limit + 1)),
            "{answer}"
        );
        assert!(answer.contains("connection: close\r\n"), "{answer}");
        // What reached the app: at most the limit (a chunk of 64 KiB past a
        // smaller one), and its chunks' framing.
        let framing = 16 * (limit / 65536 + 2);
        let most = limit.max(65536) + framing;
        assert!(seen.load(Ordering::Relaxed) <= most, "{seen:?}");
    }
}

#[test]
fn cookie_crumbs_of_http2_reach_the_app_as_one_field() {
    let mut headers = HeaderMap::new();
    for crumb in ["a=1", "b=2", "c=3"] {
        headers.append(header::COOKIE, HeaderValue::from_static(crumb));
    }
    join_cookie_crumbs(&mut headers);
    let cookies: Vec<_> = headers.get_all(header::COOKIE).iter().collect();
    assert_eq!(cookies, [HeaderValue::from_static("a=1; b=2; c=3")]);
    let mut one = HeaderMap::new();
    one.insert(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
    join_cookie_crumbs(&mut one);
    assert_eq!(one[header::COOKIE], "a=1; b=2");
}
