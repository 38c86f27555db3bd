//! Routed calls served in process: the real tables (keys, clients, leases,
//! an engine with a snapshot) and real upstreams on loopback, scripted.

use super::*;
use crate::keys::{hash_hex, KeyRecord, Role};
use crate::snapshot::Snapshot;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::AtomicUsize;

const KEY: &str = "mr_k1_secret";
const WINDOW_MS: i64 = 1 << 40; // one window for the whole test run

/// An upstream on loopback that answers each request with the next of
/// `answers` (kept alive); returns its port and the count of requests.
fn upstream(answers: Vec<String>) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let answers = Arc::new(Mutex::new(answers.into_iter()));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let (answers, count) = (answers.clone(), count.clone());
            std::thread::spawn(move || {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    count.fetch_add(1, Ordering::SeqCst);
                    let Some(answer) = answers.lock().unwrap().next() else {
                        return; // nothing more to say: hang up
                    };
                    if answer == "hang" {
                        std::thread::sleep(Duration::from_secs(5));
                        return;
                    }
                    let (answer, hang_up) = match answer.strip_suffix(HANG_UP) {
                        Some(answer) => (answer.to_owned(), true),
                        None => (answer, false),
                    };
                    for (i, part) in answer.split(PAUSE).enumerate() {
                        if i > 0 {
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        if stream.write_all(part.as_bytes()).is_err() {
                            return; // the door hung up
                        }
                    }
                    if hang_up {
                        return;
                    }
                }
            });
        }
    });
    (port, served)
}

/// Where a scripted answer waits 100 ms before the rest.
const PAUSE: &str = "<pause>";
/// At a scripted answer's end: the upstream closes the connection.
const HANG_UP: &str = "<hang up>";

fn answer(status: u16, body: &str) -> String {
    format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

const REPLY: &str = r#"{"id":"c1","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#;

/// A model `id` with one endpoint per port, in order.
fn model(id: &str, ports: &[u16]) -> Value {
    let endpoints: Vec<Value> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            json!({"id": format!("{id}-{i}"), "url": format!("http://127.0.0.1:{port}/v1/chat/completions"),
                   "type": if i == 0 { "primary" } else { "backup" }, "weight": 1.0})
        })
        .collect();
    json!({"id": id, "version": format!("{id}-v1"), "provider": "openai", "modelType": "chat",
           "status": "active", "capabilities": [{"type": "text-generation"}],
           "pricing": {"inputPer1k": 1.0, "outputPer1k": 2.0}, "endpoints": endpoints})
}

struct Setup {
    routing: Arc<Routing>,
    pool: Pool,
    engine: Arc<Mutex<Engine>>,
    leases: Arc<Leases>,
    writes_file: tempfile_path::TempPath,
}

mod tempfile_path {
    /// A file removed when dropped.
    pub struct TempPath(pub std::path::PathBuf);
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn setup(ports: &[u16], lease: i64) -> Setup {
    setup_with(ports, lease, 8)
}

fn setup_with(ports: &[u16], lease: i64, pool_size: usize) -> Setup {
    let mut engine = Engine::new(1);
    let doc = json!({"version": 1, "models": [model("m", ports)]});
    engine.load(Snapshot::load(&serde_json::to_vec(&doc).unwrap()).unwrap());
    let engine = Arc::new(Mutex::new(engine));
    let keys = Arc::new(Keys::new(
        None,
        [KeyRecord {
            id: "k1".into(),
            role: Role::Agent,
            secret_hash: hash_hex(KEY),
            workspace_id: None,
        }],
    ));
    let leases = Arc::new(Leases::default());
    let window = now_ms() as i64 / WINDOW_MS;
    if lease > 0 {
        let amount = leases.begin_take("k1", window, 1000, 0).unwrap().min(lease);
        leases.granted("k1", window, amount);
        leases.take_ended("k1", window);
    }
    static FILES: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "routed-test-{}-{}.writes",
        std::process::id(),
        FILES.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&path, 0i64.to_ne_bytes()).unwrap();
    let routing = Arc::new(Routing::new().unwrap());
    let mut names = HashMap::new();
    names.insert("m".to_owned(), "m".to_owned());
    names.insert("m-v1".to_owned(), "m".to_owned());
    names.insert("e".to_owned(), "e".to_owned()); // a model no chat call reaches
    let endpoints = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let plan = EndpointPlan {
                origin: Origin {
                    tls: false,
                    host: "127.0.0.1".into(),
                    port: *port,
                },
                target: "/v1/chat/completions".into(),
                authority: format!("127.0.0.1:{port}"),
                key: Some(ProviderKey::Fixed {
                    header: "authorization".into(),
                    value: "Bearer upstream-key".into(),
                }),
                connect: Duration::from_secs(1),
                first_byte: Duration::from_secs(1),
                attempt: Duration::from_millis(500),
                first_token: Duration::from_millis(500),
                stream_idle: Duration::from_millis(300),
            };
            (format!("m-{i}"), plan)
        })
        .collect();
    let mut models = HashMap::new();
    models.insert(
        "m".to_owned(),
        ModelPlan {
            version: "m-v1".into(),
            drop: vec!["seed".into()],
            endpoints,
        },
    );
    routing.install(Some(Plan {
        version: 1,
        keys,
        engine: engine.clone(),
        clients: Arc::new(Clients::new(0)),
        leases: leases.clone(),
        writes: Writes::open(&path, 0).unwrap(),
        model_names: names,
        agent_types: ["writer".to_owned()].into(),
        models,
        held_workspaces: ["held".to_owned()].into(),
        rollouts: false,
        rate_limit: 1000,
        rate_window_ms: WINDOW_MS,
        max_attempts: 4,
        request_timeout: Duration::from_secs(5),
        max_upstream_body: 1 << 20,
        pool_size,
        client_address_header: None,
    }));
    Setup {
        routing,
        pool: Pool::default(),
        engine,
        leases,
        writes_file: tempfile_path::TempPath(path),
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

const BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"Say hello"}],"seed":7}"#;

fn ask(setup: &Setup, headers: &HeaderMap, body: &str) -> Served {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(serve(
        &setup.routing,
        &setup.pool,
        Asked {
            headers,
            body: body.as_bytes(),
            peer: "10.0.0.1",
            started: Instant::now(),
        },
    ))
}

fn keyed() -> HeaderMap {
    headers(&[("authorization", &format!("Bearer {KEY}"))])
}

fn calls(setup: &Setup) -> Vec<CallRecord> {
    setup
        .routing
        .accounts
        .take()
        .into_iter()
        .filter_map(|a| match a {
            Account::Call(call) => Some(*call),
            Account::TopUp { .. } => None,
        })
        .collect()
}

fn verdict_of(served: Served) -> Value {
    let Served::ToApp(Some(verdict)) = served else {
        panic!("no verdict")
    };
    assert!(
        verdict.bytes().all(|b| (0x20..0x7f).contains(&b)),
        "{verdict}"
    );
    serde_json::from_str(&verdict).unwrap()
}

#[test]
fn a_call_the_door_can_serve_is_answered_as_the_provider_sent_it_and_accounted() {
    let (port, _) = upstream(vec![answer(200, REPLY)]);
    let setup = setup(&[port], 100);
    let mut asked = keyed();
    asked.insert("x-request-id", HeaderValue::from_static("req-1"));
    asked.insert("x-user-id", HeaderValue::from_static("u-9"));
    let Served::Answer(response) = ask(&setup, &asked, BODY) else {
        panic!("not served")
    };
    assert_eq!(response.status(), 200);
    assert_eq!(response.body().as_ref(), REPLY.as_bytes());
    let h = response.headers();
    assert_eq!(h["x-request-id"], "req-1");
    assert_eq!(h["x-model-router-model"], "m");
    assert_eq!(h["x-model-router-endpoint"], "m-0");
    assert_eq!(h["x-model-router-attempts"], "1");
    assert_eq!(h["x-ratelimit-limit"], "1000");
    assert_eq!(h["x-ratelimit-remaining"], "999");
    let calls = calls(&setup);
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(
        (call.status, call.outcome),
        (200, failover::Outcome::Success)
    );
    assert_eq!(call.user_id.as_deref(), Some("u-9"));
    assert_eq!((call.tokens.prompt, call.tokens.completion), (7, 3));
    assert!(!call.estimated);
    // 7 prompt tokens at $1/1k and 3 completion tokens at $2/1k.
    assert_eq!(call.cost, 13_000_000);
    assert_eq!(call.reply.as_deref(), Some("Hello there"));
    let mut engine = setup.engine.lock().unwrap();
    assert_eq!(engine.endpoint_summary(0, 0, now_ms()).samples, 1);
}

#[test]
fn the_upstream_gets_the_callers_body_with_the_models_name_and_its_dropped_parameters_cut() {
    let endpoint = EndpointPlan {
        origin: Origin {
            tls: false,
            host: "h".into(),
            port: 1,
        },
        target: "/v1/chat/completions?x=1".into(),
        authority: "h:1".into(),
        key: Some(ProviderKey::Fixed {
            header: "api-key".into(),
            value: "k".into(),
        }),
        connect: Duration::ZERO,
        first_byte: Duration::ZERO,
        attempt: Duration::ZERO,
        first_token: Duration::ZERO,
        stream_idle: Duration::ZERO,
    };
    let shaped = shape::same_format(BODY.as_bytes(), "m-v1", &["seed"]).unwrap();
    let bytes = String::from_utf8(request_bytes(&endpoint, &shaped)).unwrap();
    let (head, body) = bytes.split_once("\r\n\r\n").unwrap();
    assert_eq!(
        head,
        format!(
            "POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: h:1\r\ncontent-length: {}\r\n\
             content-type: application/json\r\napi-key: k",
            body.len()
        )
    );
    assert_eq!(
        body,
        r#"{"model":"m-v1","messages":[{"role":"user","content":"Say hello"}]}"#
    );
}

#[test]
fn a_failed_attempt_fails_over_to_the_next_endpoint_and_both_are_recorded() {
    let (port, _) = upstream(vec![answer(503, r#"{"error":"busy"}"#), answer(200, REPLY)]);
    // Both endpoints on one upstream: its first answer fails, its second serves.
    let setup = setup(&[port, port], 100);
    let Served::Answer(response) = ask(&setup, &keyed(), BODY) else {
        panic!("not served")
    };
    assert_eq!(response.headers()["x-model-router-attempts"], "2");
    assert_eq!(response.headers()["x-model-router-endpoint"], "m-1");
    let call = calls(&setup).pop().unwrap();
    let outcomes: Vec<_> = call.attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes,
        [failover::Outcome::UpstreamError, failover::Outcome::Success]
    );
    assert_eq!(call.attempts[0].status, Some(503));
    assert_eq!(
        call.attempts[0].error.as_deref(),
        Some(r#"{"error":"busy"}"#)
    );
}

#[test]
fn when_every_attempt_fails_the_app_gets_the_verdict_and_nothing_is_accounted_here() {
    let (port, _) = upstream(vec![
        answer(500, "{}"),
        answer(200, r#"{"not":"a completion"}"#),
    ]);
    let setup = setup(&[port, port], 100);
    let verdict = verdict_of(ask(&setup, &keyed(), BODY));
    let tries = &verdict["tries"];
    let outcomes: Vec<_> = tries["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(outcomes, ["upstream_error", "malformed"]);
    assert!(tries["attempts"][1]["error"]
        .as_str()
        .unwrap()
        .starts_with("unreadable answer (ValueError: "));
    assert_eq!(tries["clientError"], Value::Null);
    assert_eq!(tries["deadlinePassed"], false);
    assert!(calls(&setup).is_empty(), "the app accounts a failure");
}

#[test]
fn a_provider_refusing_the_callers_request_goes_back_through_the_app_without_failover() {
    let (port, served) = upstream(vec![answer(400, r#"{"error":{"message":"bad"}}"#)]);
    let setup = setup(&[port, port], 100);
    let verdict = verdict_of(ask(&setup, &keyed(), BODY));
    let refusal = &verdict["tries"]["clientError"];
    assert_eq!(refusal["status"], 400);
    assert_eq!(refusal["body"], hex(br#"{"error":{"message":"bad"}}"#));
    assert_eq!(served.load(Ordering::SeqCst), 1, "no second attempt");
}

#[test]
fn calls_the_door_cannot_serve_go_to_the_app_untouched_and_spend_nothing() {
    let (port, served) = upstream(vec![answer(200, REPLY)]);
    let setup = setup(&[port], 100);
    let unknown_model = r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#;
    let bad_body = r#"{"model":"m","messages":[]}"#;
    let embedding = r#"{"model":"e","messages":[{"role":"user","content":"x"}]}"#;
    let cases: Vec<(HeaderMap, &str)> = vec![
        (headers(&[]), BODY),
        (headers(&[("authorization", "Bearer mr_k1_wrong")]), BODY),
        (headers(&[("authorization", "Basic abc")]), BODY),
        (keyed(), unknown_model),
        (keyed(), bad_body),
        (keyed(), embedding),
        (
            {
                let mut h = keyed();
                h.insert("x-workspace-id", HeaderValue::from_static("held"));
                h
            },
            BODY,
        ),
        (
            {
                let mut h = keyed();
                h.insert("x-workspace-id", HeaderValue::from_static("-bad"));
                h
            },
            BODY,
        ),
        (
            {
                let mut h = keyed();
                h.append("x-agent-type", HeaderValue::from_static("a"));
                h.append("x-agent-type", HeaderValue::from_static("b"));
                h
            },
            BODY,
        ),
    ];
    for (asked, body) in &cases {
        assert!(
            matches!(ask(&setup, asked, body), Served::ToApp(None)),
            "{asked:?} {body}"
        );
    }
    assert_eq!(served.load(Ordering::SeqCst), 0);
    let window = now_ms() as i64 / WINDOW_MS;
    let spent = setup.leases.spend("k1", window, 1000, false, 0);
    assert_eq!(
        spent,
        Spent::Leased {
            remaining: 999,
            top_up: false
        },
        "the lease is whole"
    );
}

#[test]
fn an_empty_lease_and_a_config_write_send_the_call_to_the_app() {
    let (port, _) = upstream(vec![answer(200, REPLY)]);
    let empty = setup(&[port], 0);
    assert!(matches!(ask(&empty, &keyed(), BODY), Served::ToApp(None)));
    let moved = setup(&[port], 100);
    std::fs::write(&moved.writes_file.0, 1i64.to_ne_bytes()).unwrap();
    assert!(matches!(ask(&moved, &keyed(), BODY), Served::ToApp(None)));
}

#[test]
fn an_agent_type_named_as_the_model_routes_for_that_agent() {
    let (port, _) = upstream(vec![answer(200, REPLY)]);
    let setup = setup(&[port], 100);
    let body = r#"{"model":"writer","messages":[{"role":"user","content":"x"}]}"#;
    assert!(matches!(ask(&setup, &keyed(), body), Served::Answer(_)));
    assert_eq!(calls(&setup).pop().unwrap().agent_type, "writer");
}

#[test]
fn a_caller_that_leaves_mid_attempt_is_accounted_499_with_no_verdict_on_the_endpoint() {
    let (port, _) = upstream(vec!["hang".into()]);
    let setup = setup(&[port], 100);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let asked = keyed();
    runtime.block_on(async {
        let call = serve(
            &setup.routing,
            &setup.pool,
            Asked {
                headers: &asked,
                body: BODY.as_bytes(),
                peer: "10.0.0.1",
                started: Instant::now(),
            },
        );
        // The caller leaves: hyper drops its call.
        let left = tokio::time::timeout(Duration::from_millis(100), call).await;
        assert!(left.is_err());
    });
    let call = calls(&setup).pop().unwrap();
    assert_eq!(
        (call.status, call.outcome),
        (499, failover::Outcome::Cancelled)
    );
    assert_eq!(call.attempts.len(), 1);
    assert_eq!(call.attempts[0].outcome, failover::Outcome::Cancelled);
    assert_eq!(call.tokens.prompt, 3, "the prompt's estimate is charged");
    assert!(call.estimated);
    let mut engine = setup.engine.lock().unwrap();
    let stats = engine.endpoint_summary(0, 0, now_ms());
    assert_eq!(stats.samples, 0, "no verdict on the endpoint");
}

#[test]
fn routing_headers_are_held_to_the_apps_rules() {
    let ok = |name: &str, value: &str| routing_header(&headers(&[(name, value)]), name).is_ok();
    assert!(ok("x-workspace-id", "team-a.b:c@d_e"));
    assert!(!ok("x-workspace-id", "-team"));
    assert!(!ok("x-workspace-id", &"a".repeat(129)));
    assert!(ok("x-workspace-id", &"a".repeat(128)));
    assert!(ok("x-agent-type", &"a".repeat(64)));
    assert!(!ok("x-agent-type", &"a".repeat(65)));
    assert!(ok("x-user-id", "someone@example.com"));
    assert!(!ok("x-user-id", &"u".repeat(257)));
    let empty = headers(&[("x-user-id", "")]);
    assert_eq!(routing_header(&empty, "x-user-id"), Ok(None));
}

#[test]
fn a_token_is_a_bearer_or_anthropics_key_header() {
    assert_eq!(
        token(&headers(&[("authorization", "bearer  abc ")])),
        Some("abc")
    );
    assert_eq!(token(&headers(&[("x-api-key", "abc")])), Some("abc"));
    assert_eq!(token(&headers(&[("authorization", "Basic abc")])), None);
    assert_eq!(token(&headers(&[("authorization", "Bearer")])), None);
}

#[test]
fn an_origin_with_no_free_connection_times_the_attempt_out_within_its_time() {
    let (port, served) = upstream(vec![answer(200, REPLY)]);
    let setup = setup_with(&[port], 100, 0);
    let started = Instant::now();
    let verdict = verdict_of(ask(&setup, &keyed(), BODY));
    let attempt = &verdict["tries"]["attempts"][0];
    assert_eq!(attempt["outcome"], "timeout");
    assert_eq!(
        attempt["error"],
        "no free connection to the upstream in time"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the attempt's 500 ms, not more"
    );
    assert_eq!(served.load(Ordering::SeqCst), 0);
}

#[test]
fn a_verdict_is_one_header_of_ascii_json_with_the_limit_the_door_spent() {
    let (port, _) = upstream(vec![answer(404, r#"{"error":"modèle inconnu"}"#)]);
    let setup = setup(&[port], 100);
    let verdict = verdict_of(ask(&setup, &keyed(), BODY));
    assert_eq!(
        verdict["rateLimit"],
        json!([1000, 999, verdict["rateLimit"][2]])
    );
    let refusal = &verdict["tries"]["clientError"];
    assert_eq!(
        refusal["body"],
        hex(r#"{"error":"modèle inconnu"}"#.as_bytes())
    );
    let failed = verdict_of(Served::ToApp(Some(ascii_json(&json!({"e": "é😀"})))));
    assert_eq!(failed["e"], "é😀");
}

#[test]
fn a_plan_older_than_the_engines_config_hands_the_call_over_admitted() {
    let (port, served) = upstream(vec![answer(200, REPLY)]);
    let setup = setup(&[port], 100);
    let doc = json!({"version": 2, "models": [model("m", &[port])]});
    let snapshot = Snapshot::load(&serde_json::to_vec(&doc).unwrap()).unwrap();
    setup.engine.lock().unwrap().load(snapshot);
    let verdict = verdict_of(ask(&setup, &keyed(), BODY));
    assert_eq!(
        verdict["tries"],
        Value::Null,
        "nothing tried: the app routes it"
    );
    assert_eq!(verdict["rateLimit"][1], 999, "the admission it spent");
    assert_eq!(served.load(Ordering::SeqCst), 0);
}

// --- streams -------------------------------------------------------------

const STREAM: &str =
    r#"{"model":"m","messages":[{"role":"user","content":"Say hello"}],"stream":true}"#;

/// An event stream's answer, chunked: each part one chunk.
fn streamed(parts: &[&str]) -> String {
    let mut text =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_owned();
    for part in parts {
        if *part == PAUSE {
            text.push_str(PAUSE);
        } else {
            text.push_str(&format!("{:x}\r\n{part}\r\n", part.len()));
        }
    }
    text + "0\r\n\r\n"
}

fn event(delta: &str) -> String {
    format!("data: {{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{delta}}}]}}\n\n")
}

const ROLE: &str = r#"{"role":"assistant"}"#;
const DONE: &str = "data: [DONE]\n\n";
const USAGE: &str = "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n";

/// A streamed call as the caller gets it: the head, each frame of the body,
/// and the call's record (made once the stream ended), all within `leave_after`
/// frames if set (the caller then leaves).
fn stream_call(
    setup: &Setup,
    body: &str,
    leave_after: Option<usize>,
) -> (Response<()>, Vec<String>, Vec<CallRecord>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let served = serve(
            &setup.routing,
            &setup.pool,
            Asked {
                headers: &keyed(),
                body: body.as_bytes(),
                peer: "10.0.0.1",
                started: Instant::now(),
            },
        )
        .await;
        let Served::Stream(response) = served else {
            panic!("not streamed")
        };
        let (head, mut body) = response.into_parts();
        let mut frames = Vec::new();
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            let data = frame.unwrap().into_data().unwrap();
            frames.push(String::from_utf8(data.to_vec()).unwrap());
            if leave_after == Some(frames.len()) {
                drop(body);
                // The pump sees the caller gone, and accounts the call.
                for _ in 0..100 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    if !calls_peek(setup) {
                        continue;
                    }
                    break;
                }
                return (Response::from_parts(head, ()), frames, calls(setup));
            }
        }
        (Response::from_parts(head, ()), frames, calls(setup))
    })
}

fn calls_peek(setup: &Setup) -> bool {
    let taken = setup.routing.accounts.take();
    let any = !taken.is_empty();
    for account in taken {
        setup.routing.accounts.push(account);
    }
    any
}

#[test]
fn a_stream_is_relayed_read_by_read_from_its_first_content_and_accounted_at_its_end() {
    let hello = event(r#"{"content":"Hello"}"#);
    let there = event(r#"{"content":" there"}"#);
    let (port, _) = upstream(vec![streamed(&[
        &event(ROLE),
        PAUSE,
        &hello,
        PAUSE,
        &(there.clone() + USAGE),
        DONE,
    ])]);
    let setup = setup(&[port], 100);
    let (head, frames, calls) = stream_call(&setup, STREAM, None);
    assert_eq!(head.status(), 200);
    let h = head.headers();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-model-router-model"], "m");
    assert_eq!(h["x-model-router-endpoint"], "m-0");
    assert_eq!(h["x-model-router-attempts"], "1");
    assert_eq!(h["x-ratelimit-remaining"], "999");
    // Held back until the first content, then one frame per read.
    let role = event(ROLE);
    assert_eq!(frames[0], role + &hello);
    assert_eq!(frames[1..].concat(), there + USAGE + DONE);
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert!(call.stream);
    assert_eq!(
        (call.status, call.outcome),
        (200, failover::Outcome::Success)
    );
    assert_eq!((call.tokens.prompt, call.tokens.completion), (5, 2));
    assert!(!call.estimated);
    assert_eq!(call.cost, 9_000_000); // 5 at $1/1k, 2 at $2/1k
    assert_eq!(call.attempts.len(), 1);
}

#[test]
fn a_stream_that_breaks_before_its_first_content_fails_over_and_the_caller_sees_none_of_it() {
    use failover::Outcome::*;
    let error = "data: {\"error\":{\"message\":\"overloaded\"}}\n\n";
    let cases = [
        (
            error,
            StreamError,
            r#"error event in stream: b'{"error":{"message":"overloaded"}}'"#,
        ),
        (
            "data: {\"choices\":7}\n\n",
            Malformed,
            "unreadable answer (ValidationError: Expected `array`, got `int` - at `$.choices`)",
        ),
        ("", StreamError, "stream ended before any content"),
    ];
    for (bad, outcome, error) in cases {
        let (broken, _) = upstream(vec![streamed(&[&event(ROLE), bad])]);
        let (good, _) = upstream(vec![streamed(&[&event(r#"{"content":"Hi"}"#), DONE])]);
        let setup = setup(&[broken, good], 100);
        let (head, frames, calls) = stream_call(&setup, STREAM, None);
        assert_eq!(head.headers()["x-model-router-endpoint"], "m-1");
        assert_eq!(head.headers()["x-model-router-attempts"], "2");
        assert_eq!(frames.concat(), event(r#"{"content":"Hi"}"#) + DONE);
        let attempts = &calls[0].attempts;
        assert_eq!(
            (attempts[0].outcome, attempts[1].outcome),
            (outcome, Success)
        );
        assert_eq!(attempts[0].error.as_deref(), Some(error));
        // No usage came: the tokens are estimated ("Hi": 1; the prompt's 9 characters: 3).
        assert!(calls[0].estimated);
        assert_eq!((calls[0].tokens.prompt, calls[0].tokens.completion), (3, 1));
    }
}

#[test]
fn a_stream_that_fails_after_its_first_content_ends_with_an_error_event() {
    let hello = event(r#"{"content":"Hello"}"#);
    // One upstream stalls past the idle limit (300 ms), one hangs up mid-stream.
    let stalls = streamed(&[&hello, PAUSE, PAUSE, PAUSE, PAUSE, DONE]);
    let cut = streamed(&[&hello]).replace("0\r\n\r\n", HANG_UP);
    for (answer, error) in [
        (
            stalls,
            "UpstreamTimeout: the stream stalled (no data for 0.3 s)",
        ),
        (cut, "UpstreamError: connection closed by the upstream"),
    ] {
        let (port, _) = upstream(vec![answer]);
        let setup = setup(&[port], 100);
        let (_, frames, calls) = stream_call(&setup, STREAM, None);
        assert_eq!(frames[0], hello);
        assert_eq!(
            frames.last().unwrap(),
            "data: {\"error\":{\"message\":\"the model's stream failed\",\"type\":\"upstream_error\"}}\n\n"
        );
        let call = &calls[0];
        assert_eq!(
            (call.status, call.outcome),
            (200, failover::Outcome::StreamError)
        );
        assert_eq!(
            call.attempts.len(),
            1,
            "no failover once the caller has content"
        );
        assert_eq!(call.attempts[0].error.as_deref(), Some(error));
        assert_eq!(call.tokens.completion, 2); // "Hello", estimated
    }
}

#[test]
fn a_caller_that_leaves_mid_stream_ends_the_upstream_call_and_is_accounted_cancelled() {
    let hello = event(r#"{"content":"Hello"}"#);
    let (port, _) = upstream(vec![streamed(&[
        &hello, PAUSE, &hello, PAUSE, &hello, PAUSE, DONE,
    ])]);
    let setup = setup(&[port], 100);
    let (_, frames, calls) = stream_call(&setup, STREAM, Some(1));
    assert_eq!(frames, [hello]);
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].status, calls[0].outcome),
        (200, failover::Outcome::Cancelled)
    );
    // Its connection was closed, not parked for another call.
    assert_eq!(setup.pool.parked(), 0);
}

#[test]
fn a_stream_refused_by_status_fails_over_or_goes_back_through_the_app() {
    let (busy, _) = upstream(vec![answer(429, r#"{"error":"slow down"}"#)]);
    let (good, _) = upstream(vec![streamed(&[&event(r#"{"content":"Hi"}"#), DONE])]);
    let setup = setup(&[busy, good], 100);
    let (head, _, calls) = stream_call(&setup, STREAM, None);
    assert_eq!(head.headers()["x-model-router-attempts"], "2");
    assert_eq!(calls[0].attempts[0].outcome, failover::Outcome::RateLimited);
    let (refusing, _) = upstream(vec![answer(400, r#"{"error":"bad"}"#)]);
    let setup = setup_with(&[refusing], 100, 8);
    let verdict = verdict_of(ask(&setup, &keyed(), STREAM));
    assert_eq!(verdict["tries"]["clientError"]["status"], 400);
}
