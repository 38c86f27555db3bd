//! `https://` upstreams: real TLS servers on loopback, with certificates of
//! an authority made here.

use super::*;
use crate::trust::Trust;
use crate::upstream::tests::serve;
use crate::upstream::{exchange, open, Job};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, GeneralSubtree, IsCa, KeyPair,
    NameConstraints,
};
use rustls::pki_types::PrivateKeyDer;
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// An authority, and a server certificate it signed for `names`.
struct Pki {
    ca_pem: String,
    server: Arc<ServerConfig>,
}

fn pki(names: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server: server_config(&cert, &key),
    }
}

fn server_config(cert: &Certificate, key: &KeyPair) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    Arc::new(config)
}

type Tls = StreamOwned<ServerConnection, std::net::TcpStream>;

/// A TLS server on loopback (`upstream_tests::serve`): `script` gets each
/// connection (its handshake done as it is first read) and its number.
fn serve_tls<F>(config: Arc<ServerConfig>, script: F) -> (u16, Arc<AtomicUsize>)
where
    F: Fn(Tls, usize) + Send + Sync + 'static,
{
    serve(move |tcp, n| {
        let session = ServerConnection::new(config.clone()).unwrap();
        script(StreamOwned::new(session, tcp), n)
    })
}

/// One request's head and body, read off `tls`; None at its end.
fn read_request(tls: &mut Tls) -> Option<String> {
    let mut read = Vec::new();
    let mut byte = [0u8; 1];
    while !read.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte) {
            Ok(1) => read.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8(read).unwrap();
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    tls.read_exact(&mut body).ok()?;
    Some(head + &String::from_utf8(body).unwrap())
}

/// A directory of the test's own, removed with it.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let n = MADE.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("mr-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Trust in the authorities of `pem` alone, from a file in `scratch`.
fn trusting(scratch: &Scratch, pem: &str) -> Trust {
    Trust {
        file: Some(scratch.write("ca.pem", pem)),
        dir: None,
    }
}

const REQUEST: &str =
    "POST /v1/x HTTP/1.1\r\nhost: localhost\r\ncontent-length: 7\r\n\r\n{\"a\":1}";

fn job(host: &str, port: u16, limit_ms: u64) -> Job {
    let limit = Duration::from_millis(limit_ms);
    Job {
        token: 0,
        origin: Origin {
            tls: true,
            host: host.into(),
            port,
        },
        request: REQUEST.as_bytes().to_vec(),
        connect: limit,
        head: limit,
        done: limit,
        max_body: 1024,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn failure(outcome: Outcome) -> (bool, String) {
    match outcome {
        Outcome::Failed { timeout, message } => (timeout, message),
        answer => panic!("not a failure: {answer:?}"),
    }
}

#[test]
fn an_https_origin_is_called_over_tls_and_its_connection_kept_until_the_upstream_closes_it() {
    let pki = pki(&["localhost"]);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let heard = seen.clone();
    // The first connection answers two requests and closes (close_notify);
    // the rules of session tickets apply (rustls sends two after the handshake).
    let (port, accepted) = serve_tls(pki.server.clone(), move |mut tls, n| {
        let mut answered = 0;
        while let Some(request) = read_request(&mut tls) {
            lock(&heard).push(request);
            tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .unwrap();
            answered += 1;
            if n == 0 && answered == 2 {
                tls.conn.send_close_notify();
                let _ = tls.flush();
                return;
            }
        }
    });
    let scratch = Scratch::new();
    let pool = Pool::new(trusting(&scratch, &pki.ca_pem));
    let runtime = runtime();
    let call = || runtime.block_on(exchange(job("localhost", port, 2000), &pool));
    let ok = Outcome::Answer {
        status: 200,
        headers: vec![("content-length".into(), "2".into())],
        body: b"ok".to_vec(),
    };
    assert_eq!(call(), ok);
    assert_eq!(call(), ok);
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "kept alive");
    thread::sleep(Duration::from_millis(100)); // the close arrives
    assert_eq!(call(), ok, "a closed connection is not taken");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    assert_eq!(*lock(&seen), [REQUEST; 3], "sent as shaped");
}

#[test]
fn a_stream_over_tls_comes_read_by_read() {
    let pki = pki(&["localhost"]);
    let (port, _) = serve_tls(pki.server.clone(), |mut tls, _| {
        read_request(&mut tls);
        let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        tls.write_all(format!("{head}3\r\nabc\r\n").as_bytes())
            .unwrap();
        thread::sleep(Duration::from_millis(50));
        tls.write_all(b"2\r\nde\r\n0\r\n\r\n").unwrap();
        thread::sleep(Duration::from_millis(500));
    });
    let scratch = Scratch::new();
    let pool = Pool::new(trusting(&scratch, &pki.ca_pem));
    let reads = runtime().block_on(async {
        let mut stream = open(job("localhost", port, 2000), &pool).await.unwrap();
        let mut reads = Vec::new();
        let by = Instant::now() + Duration::from_secs(2);
        while let Some(data) = stream.next(by).await.unwrap() {
            reads.push(String::from_utf8(data).unwrap());
        }
        reads
    });
    assert_eq!(reads, ["abc", "de"]);
    assert_eq!(
        pool.parked(),
        1,
        "read to its end, its connection went back"
    );
}

#[test]
fn an_upstream_not_trusted_or_not_named_by_its_certificate_is_refused() {
    let pki = pki(&["localhost"]);
    let (port, _) = serve_tls(pki.server.clone(), |mut tls, _| {
        read_request(&mut tls);
    });
    let runtime = runtime();
    let refusal = |trust: Trust, host: &str| {
        failure(runtime.block_on(exchange(job(host, port, 2000), &Pool::new(trust))))
    };
    let stranger = self::pki(&["localhost"]).ca_pem;
    let scratch = Scratch::new();
    let (timeout, message) = refusal(trusting(&scratch, &stranger), "localhost");
    assert!(!timeout);
    assert!(
        message.starts_with(&format!(
            "cannot connect to localhost:{port}: invalid peer certificate"
        )),
        "{message}"
    );
    // A directory is read as OpenSSL reads it: its hash-named files only.
    let dir = Scratch::new();
    dir.write("ca.pem", &pki.ca_pem);
    dir.write("0123abcd.1", "not a certificate");
    let by_dir = || Trust {
        file: None,
        dir: Some(dir.0.clone()),
    };
    let (_, message) = refusal(by_dir(), "localhost");
    assert!(message.contains("no certificate authority"), "{message}");
    dir.write("0123abcd.0", &pki.ca_pem);
    let (_, message) = refusal(by_dir(), "127.0.0.1");
    assert!(
        message.contains("certificate not valid for name"),
        "{message}"
    );
    let (_, message) = refusal(Trust::default(), "localhost");
    assert!(message.contains("no certificate authority"), "{message}");
}

#[test]
fn an_upstream_that_does_not_speak_tls_fails_by_the_connect_limit() {
    let pki = pki(&["localhost"]);
    let scratch = Scratch::new();
    let trust = trusting(&scratch, &pki.ca_pem);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut held = Vec::new();
        for (n, tcp) in listener.incoming().enumerate() {
            let mut tcp = tcp.unwrap();
            if n == 0 {
                let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            }
            held.push(tcp); // the second says nothing at all
        }
    });
    let runtime = runtime();
    let pool = Pool::new(trust);
    let (timeout, message) =
        failure(runtime.block_on(exchange(job("localhost", port, 2000), &pool)));
    assert!(
        !timeout && message.starts_with("cannot connect to localhost:"),
        "{message}"
    );
    let started = std::time::Instant::now();
    let (timeout, message) =
        failure(runtime.block_on(exchange(job("localhost", port, 200), &pool)));
    assert!(timeout, "{message}");
    assert_eq!(
        message,
        format!("could not connect to localhost:{port} in time")
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
}

/// A self-signed certificate for `localhost`, marked as an authority or
/// not, expired or not, trusted by itself (else another authority is): the
/// answer to a call, or its error.
fn self_signed(authority: bool, expired: bool, host: &str, trusted: bool) -> Result<u16, String> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    // Not the authority's name: a stranger of the same name would be its issuer.
    params
        .distinguished_name
        .push(DnType::CommonName, "upstream");
    if authority {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained); // `openssl req -x509`'s default
    }
    if expired {
        params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    }
    let cert = params.self_signed(&key).unwrap();
    let (port, _) = serve_tls(server_config(&cert, &key), |mut tls, _| {
        read_request(&mut tls);
        let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    });
    let trusted = if trusted {
        cert.pem()
    } else {
        pki(&["localhost"]).ca_pem
    };
    let scratch = Scratch::new();
    let pool = Pool::new(trusting(&scratch, &trusted));
    match runtime().block_on(exchange(job(host, port, 2000), &pool)) {
        Outcome::Answer { status, .. } => Ok(status),
        failed => Err(failure(failed).1),
    }
}

#[test]
fn a_certificate_trusted_as_itself_is_accepted_for_its_names_and_dates_as_pythons_ssl_does() {
    // webpki's words and ours differ in spacing and detail.
    let says = |error: &str, what: &str| error.to_lowercase().replace(' ', "").contains(what);
    for authority in [false, true] {
        assert_eq!(self_signed(authority, false, "localhost", true), Ok(200));
        let wrong_name = self_signed(authority, false, "127.0.0.1", true).unwrap_err();
        assert!(says(&wrong_name, "notvalidforname"), "{wrong_name}");
        let expired = self_signed(authority, true, "localhost", true).unwrap_err();
        assert!(says(&expired, "expired"), "{expired}");
        // Not trusted, it is an unknown issuer to OpenSSL and to the door alike.
        let stranger = self_signed(authority, false, "localhost", false).unwrap_err();
        assert!(
            stranger.ends_with("invalid peer certificate: UnknownIssuer"),
            "{stranger}"
        );
    }
}

#[test]
fn a_connection_whose_session_read_more_than_the_answer_is_not_taken_again() {
    // The first connection sends, after its first answer, a close_notify
    // with TCP kept open (a server waiting for ours), or a stray answer in a
    // record of its own, after an answer that fills the reader's buffer to
    // the byte: the socket is quiet, the session is not.
    for stray in [false, true] {
        let pki = pki(&["localhost"]);
        let (port, accepted) = serve_tls(pki.server.clone(), move |mut tls, n| {
            let mut answered = 0;
            while read_request(&mut tls).is_some() {
                let body_len = 8192 - "HTTP/1.1 200 OK\r\ncontent-length: 8155\r\n\r\n".len();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {body_len}\r\n\r\n{}",
                    "o".repeat(body_len)
                );
                // One flush: all of it in one write, read with the answer.
                tls.conn.writer().write_all(answer.as_bytes()).unwrap();
                if n == 0 && answered == 0 {
                    match stray {
                        true => tls
                            .conn
                            .writer()
                            .write_all(b"HTTP/1.1 500 Stale\r\ncontent-length: 5\r\n\r\nstale")
                            .unwrap(),
                        false => tls.conn.send_close_notify(),
                    }
                }
                tls.flush().unwrap();
                answered += 1;
            }
        });
        let scratch = Scratch::new();
        let pool = Pool::new(trusting(&scratch, &pki.ca_pem));
        let runtime = runtime();
        let call = || {
            let mut job = job("localhost", port, 2000);
            job.max_body = 1 << 20;
            match runtime.block_on(exchange(job, &pool)) {
                Outcome::Answer { status, body, .. } => Ok((status, body.len())),
                failed => Err(failure(failed).1),
            }
        };
        assert_eq!(call(), Ok((200, 8151)));
        thread::sleep(Duration::from_millis(100));
        assert_eq!(call(), Ok((200, 8151)), "stray: {stray}");
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "stray: {stray}");
    }
}

/// A certificate for `names` in its subjectAltName (none: no such
/// extension) and `common_name` as its subject's, signed by an authority
/// trusted (limited to names under `corp.example` when `constrained`),
/// called as `host`: the answer's status, or the error.
fn named(names: &[&str], common_name: &str, host: &str, constrained: bool) -> Result<u16, String> {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    if constrained {
        ca.name_constraints = Some(NameConstraints {
            permitted_subtrees: vec![GeneralSubtree::DnsName("corp.example".into())],
            excluded_subtrees: vec![],
        });
    }
    ca.distinguished_name.push(DnType::CommonName, "authority");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let (port, _) = serve_tls(server_config(&cert, &key), |mut tls, _| {
        read_request(&mut tls);
        let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    });
    let scratch = Scratch::new();
    let pool = Pool::new(trusting(&scratch, &ca.pem()));
    match runtime().block_on(exchange(job(host, port, 2000), &pool)) {
        Outcome::Answer { status, .. } => Ok(status),
        failed => Err(failure(failed).1),
    }
}

#[test]
fn a_certificate_with_no_dns_name_in_its_alternative_names_is_named_by_its_common_name() {
    // As OpenSSL for Python's client (`hostname_checks_common_name`).
    assert_eq!(named(&[], "localhost", "localhost", false), Ok(200));
    assert_eq!(named(&[], "LocalHost", "localhost", false), Ok(200));
    assert_eq!(
        named(&["127.0.0.1"], "localhost", "localhost", false),
        Ok(200)
    );
    // Not another name; not an address; not when a DNS name is listed.
    for (names, host) in [(&[][..], "127.0.0.1"), (&["other.test"][..], "localhost")] {
        let refused = named(names, "localhost", host, false).unwrap_err();
        assert!(refused.contains("not valid for name"), "{refused}");
    }
    let refused = named(&[], "elsewhere", "localhost", false).unwrap_err();
    assert!(refused.contains("not valid for name"), "{refused}");
    // Nor under an authority with name constraints, which OpenSSL holds a
    // common name to and webpki does not.
    let refused = named(&[], "localhost", "localhost", true).unwrap_err();
    assert!(refused.contains("not valid for name"), "{refused}");
}

#[test]
fn authorities_slow_to_read_are_read_once_whatever_the_first_calls_waited() {
    let pki = pki(&["localhost"]);
    let (port, _) = serve_tls(pki.server.clone(), |mut tls, _| {
        while read_request(&mut tls).is_some() {
            let _ = tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        }
    });
    // A named pipe: its reading waits until something writes it.
    let dir = Scratch::new();
    let pipe = dir.0.join("0123abcd.0");
    let path = std::ffi::CString::new(pipe.to_str().unwrap()).unwrap();
    // SAFETY: a path of ours, NUL-terminated.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let pool = Pool::new(Trust {
        file: None,
        dir: Some(dir.0.clone()),
    });
    let runtime = runtime();
    let call = |limit_ms| runtime.block_on(exchange(job("localhost", port, limit_ms), &pool));
    let first: Vec<bool> = (0..3).map(|_| failure(call(100)).0).collect();
    // The first calls' reading was not given up with them: it takes the
    // authorities now, and the next call has them.
    std::fs::write(&pipe, &pki.ca_pem).unwrap();
    let next = call(2000);
    // Not for ever, should a reading still wait (a panic would).
    runtime.shutdown_timeout(Duration::from_secs(1));
    assert_eq!(first, [true; 3], "timed out");
    assert!(
        matches!(next, Outcome::Answer { status: 200, .. }),
        "{next:?}"
    );
}
