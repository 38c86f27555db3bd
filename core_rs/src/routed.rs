//! The routed calls the door serves itself (docs/data-plane.md, step 3): an
//! OpenAI chat completion, with an API key, to models whose endpoints speak
//! OpenAI's format (over `http://` or `https://`). The door reads the call,
//! spends the key's rate-limit lease, decides, calls the candidates in
//! turn and answers a success, from the tables Python installs at each
//! config load (`Plan`) and shares with its own path (keys, client
//! addresses, leases, the engine).
//!
//! What it cannot serve goes to the app, before anything is spent, as the
//! caller sent it (`Served::ToApp(None)`): a body or header the app would
//! refuse (so every error message stays the app's), a key the door does not
//! know (the app counts failed authentications), an empty lease, a
//! workspace with a budget or per-minute limits, a call a canary or an
//! experiment may take, a config a write on this instance has moved past.
//! A call the door admitted and could not answer (no candidate, every
//! attempt failed, the provider refused it) goes to the app with its
//! verdict (`VERDICT_HEADER`): the app renders the error from what the door
//! tried, and tries nothing again. Every finished call's facts are queued
//! (`Account`) for the app's event loop, which takes them in batches: the
//! door accounts the calls with nothing to mask itself, as the app would
//! (`door_account.rs`), and the app the others.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::announce::Announced;
use crate::chat;
use crate::clients::Clients;
use crate::connection::{Origin, Pool};
use crate::cost::{Nanos, Tokens};
use crate::engine::{DecideInput, Engine, Outcome, RollupFacts};
use crate::failover;
use crate::ids;
use crate::key_files::KEY_FILES;
use crate::keys::{Keys, Permission};
use crate::leases::{Leases, Spent};
use crate::rules::RequestFacts;
use crate::shape;
use crate::streamed;
use crate::upstream::{self, Job};
use crate::wire;

/// The one call the door serves.
pub const ROUTE: &str = "/v1/chat/completions";

/// The door's verdict on a call it admitted and hands to the app (hex of a
/// JSON document): the app trusts it only from the door, which removes any
/// a caller sends.
pub const VERDICT_HEADER: &str = "x-model-router-door-verdict";

/// One endpoint the door may call: where, with which key, how long each
/// wait may last.
pub struct EndpointPlan {
    pub origin: Origin,
    /// The request's target (path and query) and its Host header.
    pub target: String,
    pub authority: String,
    /// The provider key, if it has one.
    pub key: Option<ProviderKey>,
    pub connect: Duration,
    pub first_byte: Duration,
    /// A whole answer's.
    pub attempt: Duration,
    /// A stream's: until its first content, and between two reads.
    pub first_token: Duration,
    pub stream_idle: Duration,
}

/// Where an endpoint's provider key comes from, and the header that carries it.
pub enum ProviderKey {
    /// Read once (an environment variable): the header's whole value.
    Fixed { header: String, value: String },
    /// Read from a file as the app reads it (`key_files.rs`), after `prefix`.
    File {
        header: String,
        prefix: String,
        path: PathBuf,
    },
}

impl ProviderKey {
    /// The header and its value now; None while a key file has no key.
    fn header(&self) -> Option<(&str, String)> {
        match self {
            ProviderKey::Fixed { header, value } => Some((header, value.clone())),
            ProviderKey::File {
                header,
                prefix,
                path,
            } => KEY_FILES
                .read(path)
                .map(|key| (header.as_str(), format!("{prefix}{key}"))),
        }
    }
}

/// One model the door may call: its name upstream, the parameters it drops
/// and its endpoints by id.
pub struct ModelPlan {
    pub version: String,
    pub drop: Vec<String>,
    pub endpoints: HashMap<String, EndpointPlan>,
}

/// The shared count of config writes made on this instance
/// (`engine/write_counter.py`) and the count the plan was made at: once it
/// moved, the app catches up first, and serves the call.
pub struct Writes {
    map: memmap2::Mmap,
    seen: i64,
}

impl Writes {
    pub fn open(path: &Path, seen: i64) -> io::Result<Writes> {
        let file = File::open(path)?;
        // SAFETY: the file is the workers' counter, 8 bytes, only ever
        // resized from 0 to 8 by its creator before any plan is made.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        if map.len() < 8 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "no write count"));
        }
        Ok(Writes { map, seen })
    }

    fn moved(&self) -> bool {
        // SAFETY: the map is 8 bytes and page-aligned; Python writes the
        // count whole (an aligned 8-byte store).
        let count = unsafe { &*(self.map.as_ptr() as *const AtomicI64) };
        count.load(Ordering::Acquire) > self.seen
    }
}

/// Everything the door serves calls from, installed whole by the app.
pub struct Plan {
    /// The engine's snapshot the plan was made with: once the engine has
    /// loaded another, the app serves calls until the plan follows.
    pub version: u64,
    pub keys: Arc<Keys>,
    pub engine: Arc<Mutex<Engine>>,
    pub clients: Arc<Clients>,
    pub leases: Arc<Leases>,
    pub writes: Writes,
    /// A model id or version -> the model's id.
    pub model_names: HashMap<String, String>,
    /// Agent types a call may name as its `model`.
    pub agent_types: HashSet<String>,
    /// Every model a chat call may be routed to, by id.
    pub models: HashMap<String, ModelPlan>,
    /// Workspaces whose calls hold budget or per-minute tokens: the app's.
    pub held_workspaces: HashSet<String>,
    /// A canary or an experiment may take calls that name no model.
    pub rollouts: bool,
    pub rate_limit: i64,
    pub rate_window_ms: i64,
    pub max_attempts: usize,
    pub request_timeout: Duration,
    pub max_upstream_body: usize,
    /// Connections at once to one upstream origin (MODEL_ROUTER_UPSTREAM_POOL).
    pub pool_size: usize,
    /// MODEL_ROUTER_CLIENT_ADDRESS_HEADER, lowercased.
    pub client_address_header: Option<String>,
}

/// One attempt, as the app's records and errors name it.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub model_id: String,
    pub endpoint_id: String,
    pub outcome: failover::Outcome,
    pub status: Option<u16>,
    pub latency_ms: f64,
    pub error: Option<String>,
    pub retry_after_ms: Option<u64>,
}

/// A finished call's facts, for the app's accounting.
#[derive(Debug)]
pub struct CallRecord {
    pub request_id: String,
    pub workspace_id: Option<String>,
    pub agent_type: String,
    pub user_id: Option<String>,
    pub model_id: Option<String>,
    pub endpoint_id: Option<String>,
    pub status: u16,
    pub outcome: failover::Outcome,
    pub latency_ms: f64,
    pub upstream_ms: f64,
    pub tokens: Tokens,
    pub cost: Nanos,
    pub estimated: bool,
    pub attempts: Vec<Attempt>,
    /// The answer's text (the log's DEBUG lines show it).
    pub reply: Option<String>,
    /// When it ended, ms since the epoch.
    pub ended_ms: u64,
    pub stream: bool,
}

/// What the door queues for the app's event loop.
#[derive(Debug)]
pub enum Account {
    Call(Box<CallRecord>),
    /// A key's lease is half spent: the app tops it up from the store.
    TopUp {
        key_id: String,
        window: i64,
        limit: i64,
        now_ms: i64,
    },
}

/// The door's side of routed calls: the installed plan, the accounts, and
/// the connections each upstream origin may still take.
pub struct Routing {
    plan: RwLock<Option<Arc<Plan>>>,
    pub accounts: Announced<Account>,
    slots: Mutex<HashMap<Origin, Arc<Semaphore>>>,
}

impl Routing {
    pub fn new() -> io::Result<Routing> {
        Ok(Routing {
            plan: RwLock::default(),
            accounts: Announced::new()?,
            slots: Mutex::default(),
        })
    }

    /// A connection slot of the endpoint's origin, waited for `within` at
    /// most, as the app's client waits for one (each origin has its own, so
    /// a hung provider cannot take another's).
    async fn slot(
        &self,
        endpoint: &EndpointPlan,
        size: usize,
        within: Duration,
    ) -> Option<OwnedSemaphorePermit> {
        let slots = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .entry(endpoint.origin.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(size)))
                .clone()
        };
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        tokio::time::timeout(within, slots.acquire_owned())
            .await
            .ok()?
            .ok()
    }

    /// The plan calls are served from from now on; None: the app serves all.
    pub fn install(&self, plan: Option<Plan>) {
        *self.plan.write().unwrap_or_else(|e| e.into_inner()) = plan.map(Arc::new);
    }

    fn plan(&self) -> Option<Arc<Plan>> {
        self.plan.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What became of a call the door was asked.
pub enum Served {
    Answer(Response<Bytes>),
    Stream(Response<streamed::Body>),
    /// The app's to answer; with the door's verdict once it admitted the call.
    ToApp(Option<String>),
}

/// A routed call's request, as the door read it.
pub struct Asked<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// The caller's address, as the door accepted it.
    pub peer: &'a str,
    pub started: Instant,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn since_ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// A header's one value, as text; Err when it is repeated or not visible
/// ASCII (the app reads those its own way).
fn one<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, ()> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(());
    }
    let text = value.to_str().map_err(|_| ())?;
    if text.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(());
    }
    Ok(Some(text))
}

/// The routing headers' checks (`ROUTING_HEADERS` in api/calls.py, which
/// the app answers 400 to): Err for a value the app would refuse.
fn routing_header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, ()> {
    let Some(value) = one(headers, name)?.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let valid = match name {
        "x-agent-type" => value.len() <= 64,
        "x-user-id" => value.len() <= 256,
        "x-workspace-id" => {
            let mut bytes = value.bytes();
            let first = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
            first
                && value.len() <= 128
                && bytes.all(|b| b.is_ascii_alphanumeric() || b".:_@-".contains(&b))
        }
        _ => unreachable!("not a routing header: {name}"),
    };
    if valid {
        Ok(Some(value))
    } else {
        Err(())
    }
}

/// The bearer token a call presents (`Authorization`, or Anthropic's
/// `x-api-key`), if it is well formed.
fn token(headers: &HeaderMap) -> Option<&str> {
    let authorization = match one(headers, "authorization").ok()? {
        Some(value) => value,
        None => return one(headers, "x-api-key").ok()?.map(str::trim),
    };
    let (scheme, token) = authorization.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// `App.client_address`: the peer, or the last entry of the configured header.
fn client_address(plan: &Plan, headers: &HeaderMap, peer: &str) -> Option<String> {
    let forwarded = match &plan.client_address_header {
        Some(name) => one(headers, name).ok()?,
        None => None,
    };
    match forwarded.filter(|v| !v.is_empty()) {
        Some(value) => {
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            Some(last.chars().take(64).collect())
        }
        None => Some(peer.to_owned()),
    }
}

/// What the caller gets for a rough token count of `chars` characters
/// (`estimate_tokens` in the executor).
fn estimate_tokens(chars: u64) -> u64 {
    if chars == 0 {
        0
    } else {
        chars.div_ceil(4).max(1)
    }
}

/// The first `chars` characters of `text`.
pub(crate) fn clipped(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

/// The routing inputs of an admitted call.
pub(crate) struct Call {
    request_id: String,
    agent_type: String,
    workspace_id: Option<String>,
    user_id: Option<String>,
    model: Option<String>,
    content_chars: u64,
    stream: bool,
    started: Instant,
    pub(crate) deadline: Instant,
}

/// An admitted call's attempts so far. Dropped unsettled (the caller left
/// mid-attempt: hyper drops the call), it accounts the attempt cut short as
/// the app does (`CallCancelled`): no verdict on the endpoint, the prompt's
/// estimate charged, a 499. Either way it gives the address's slot back.
pub(crate) struct Tries {
    plan: Arc<Plan>,
    routing: Arc<Routing>,
    pub(crate) call: Call,
    address: String,
    rule_id: Option<String>,
    pub(crate) attempts: Vec<Attempt>,
    upstream_ms: f64,
    retry_after: Vec<u64>,
    /// The attempt under way: (model, endpoint, started, started at epoch ms).
    pub(crate) current: Option<(String, String, Instant, u64)>,
    /// The key's rate limit, once an admission is spent.
    limits: Option<Limits>,
    /// The streaming attempt's time to its first content.
    pub(crate) ttft_ms: Option<f64>,
}

impl Tries {
    /// Account an attempt in the engine; its cost (with `tokens`).
    pub(crate) fn record(
        &mut self,
        outcome: failover::Outcome,
        status: Option<u16>,
        error: Option<String>,
        tokens: Tokens,
        retry_after_ms: Option<u64>,
        judged: bool,
    ) -> Nanos {
        let (model_id, endpoint_id, started, started_ms) =
            self.current.take().expect("an attempt under way");
        let latency_ms = since_ms(started);
        let cost = {
            let failed = self.attempts.last();
            let mut engine = self.plan.engine.lock().unwrap_or_else(|e| e.into_inner());
            engine.record(
                &Outcome {
                    model_id: &model_id,
                    endpoint_id: Some(&endpoint_id),
                    workspace_id: self.call.workspace_id.as_deref(),
                    success: judged.then(|| outcome.healthy()),
                    latency_ms,
                    tokens,
                    retry_after_ms,
                    started_ms,
                    rollup: Some(RollupFacts {
                        outcome: outcome.label(),
                        agent_type: Some(&self.call.agent_type),
                        rule_id: self.rule_id.as_deref(),
                        rollout_id: None,
                        variant: None,
                        failover_from: failed.map(|a| {
                            (
                                a.model_id.as_str(),
                                a.endpoint_id.as_str(),
                                a.outcome.label(),
                            )
                        }),
                        ttft_ms: self.ttft_ms,
                    }),
                },
                now_ms(),
            )
        };
        if let Some(wait) = retry_after_ms {
            self.retry_after.push(wait);
        }
        self.upstream_ms += latency_ms;
        self.attempts.push(Attempt {
            model_id,
            endpoint_id,
            outcome,
            status,
            latency_ms: (latency_ms * 1000.0).round() / 1000.0,
            error,
            retry_after_ms,
        });
        cost.unwrap_or(0)
    }

    /// The usage of an answer's `tokens` (`Executor._usage`): as reported,
    /// else estimated from the prompt's and the reply's characters.
    fn usage(&self, tokens: wire::Usage, reply_chars: u64) -> (Tokens, bool) {
        let estimated = tokens.prompt.is_none() || tokens.completion.is_none();
        let tokens = Tokens {
            prompt: tokens
                .prompt
                .unwrap_or_else(|| estimate_tokens(self.call.content_chars)),
            completion: tokens
                .completion
                .unwrap_or_else(|| estimate_tokens(reply_chars)),
            cache_read: tokens.cache_read,
            cache_write: tokens.cache_write,
        };
        (tokens, estimated)
    }

    /// The answering attempt's end (its `outcome`, a 200's): recorded with
    /// the answer's usage (estimated from `reply_chars` where it says
    /// none), and the call queued for the app's accounting.
    pub(crate) fn settle(
        &mut self,
        outcome: failover::Outcome,
        error: Option<String>,
        usage: wire::Usage,
        reply_chars: u64,
        reply: Option<String>,
    ) {
        let (tokens, estimated) = self.usage(usage, reply_chars);
        let cost = self.record(outcome, Some(200), error, tokens, None, true);
        self.account(Answered {
            status: 200,
            outcome,
            tokens,
            cost,
            estimated,
            reply,
        });
    }

    fn account(&self, answered: Answered) {
        let last = self.attempts.last();
        self.routing
            .accounts
            .push(Account::Call(Box::new(CallRecord {
                request_id: self.call.request_id.clone(),
                workspace_id: self.call.workspace_id.clone(),
                agent_type: self.call.agent_type.clone(),
                user_id: self.call.user_id.clone(),
                model_id: last.map(|a| a.model_id.clone()),
                endpoint_id: last.map(|a| a.endpoint_id.clone()),
                status: answered.status,
                outcome: answered.outcome,
                latency_ms: (since_ms(self.call.started) * 1000.0).round() / 1000.0,
                upstream_ms: (self.upstream_ms * 1000.0).round() / 1000.0,
                tokens: answered.tokens,
                cost: answered.cost,
                estimated: answered.estimated,
                attempts: self.attempts.clone(),
                reply: answered.reply,
                ended_ms: now_ms(),
                stream: self.call.stream,
            })));
    }

    /// The call, for the app, with the door's verdict: how long the door
    /// had it, the key's rate limit it spent, and what it tried (None:
    /// nothing, the app routes it), as `Executor._failed` reads it.
    fn handover(&self, tried: Tried<'_>) -> Served {
        let client_error = match tried {
            Tried::Nothing => None,
            Tried::AllFailed => Some(None),
            Tried::Refused { status, body } => Some(Some((status, body))),
        };
        let tries = client_error.map(|client_error| {
            let attempts: Vec<_> = self
                .attempts
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "modelId": a.model_id,
                        "endpointId": a.endpoint_id,
                        "outcome": a.outcome.label(),
                        "status": a.status,
                        "latencyMs": a.latency_ms,
                        "error": a.error,
                        "retryAfterMs": a.retry_after_ms,
                    })
                })
                .collect();
            let client_error = client_error.map(|(status, body)| {
                let body = &body[..body.len().min(MAX_RELAYED)];
                serde_json::json!({"status": status, "body": hex(body)})
            });
            serde_json::json!({
                "attempts": attempts,
                "upstreamMs": self.upstream_ms,
                "retryAfterMs": self.retry_after,
                "deadlinePassed": Instant::now() >= self.call.deadline,
                "clientError": client_error,
            })
        });
        let limits = self
            .limits
            .as_ref()
            .map(|l| [l.limit, l.remaining, l.reset_s]);
        let doc = serde_json::json!({
            "elapsedMs": since_ms(self.call.started),
            "rateLimit": limits,
            "tries": tries,
        });
        Served::ToApp(Some(ascii_json(&doc)))
    }
}

impl Drop for Tries {
    fn drop(&mut self) {
        if self.current.is_some() {
            let prompt = estimate_tokens(self.call.content_chars);
            let tokens = Tokens {
                prompt,
                ..Tokens::default()
            };
            let cost = self.record(
                failover::Outcome::Cancelled,
                None,
                None,
                tokens,
                None,
                false,
            );
            self.account(Answered {
                status: CALLER_LEFT,
                outcome: failover::Outcome::Cancelled,
                tokens,
                cost,
                estimated: true,
                reply: None,
            });
        }
        self.plan.clients.leave(&self.address);
    }
}

/// What the door's attempts at a call it hands to the app came to.
enum Tried<'a> {
    /// None made: the app routes the call.
    Nothing,
    /// Every attempt failed.
    AllFailed,
    /// The provider refused the caller's request: its answer goes back.
    Refused { status: u16, body: &'a [u8] },
}

/// What a call was answered with, for its record.
struct Answered {
    status: u16,
    outcome: failover::Outcome,
    tokens: Tokens,
    cost: Nanos,
    estimated: bool,
    reply: Option<String>,
}

/// nginx's "client closed request": a call whose caller left.
const CALLER_LEFT: u16 = 499;

/// A provider's refusal is relayed to the app up to this much (in hex, in a
/// header): the app shows it decoded (JSON) or its first 500 characters.
const MAX_RELAYED: usize = 32 * 1024;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `doc` as JSON in visible ASCII, a header's value: every character past
/// ASCII written as its `\u` escape (outside strings JSON has none).
fn ascii_json(doc: &serde_json::Value) -> String {
    let text = doc.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Serve the chat completion `asked`, or say it is the app's.
pub async fn serve(routing: &Arc<Routing>, pool: &Pool, asked: Asked<'_>) -> Served {
    let Some(plan) = routing.plan() else {
        return Served::ToApp(None);
    };
    let Some((call, key_id, address)) = admissible(&plan, &asked) else {
        return Served::ToApp(None);
    };
    // From here the call counts: against its address, then its key's limit.
    if !plan.clients.enter(&address) {
        return Served::ToApp(None);
    }
    let mut tries = Tries {
        plan: plan.clone(),
        routing: routing.clone(),
        call,
        address,
        rule_id: None,
        attempts: Vec::new(),
        upstream_ms: 0.0,
        retry_after: Vec::new(),
        current: None,
        limits: None,
        ttft_ms: None,
    };
    tries.limits = spend(&plan, routing, &key_id);
    if tries.limits.is_none() {
        return Served::ToApp(None);
    }
    let Some(candidates) = decide(&plan, &mut tries) else {
        return tries.handover(Tried::Nothing);
    };
    let mut tried = 0;
    for (model_id, endpoint_ids) in candidates {
        let Some(model) = plan.models.get(&model_id) else {
            continue; // not the door's: only a plan made wrong would list it
        };
        let drop: Vec<&str> = model.drop.iter().map(String::as_str).collect();
        let Ok(body) = shape::same_format(asked.body, &model.version, &drop) else {
            continue; // the app says why, if no other model answers
        };
        for endpoint_id in endpoint_ids {
            let now = Instant::now();
            if tried == plan.max_attempts || now >= tries.call.deadline {
                return failed(tries);
            }
            let Some(endpoint) = model.endpoints.get(&endpoint_id) else {
                continue;
            };
            tried += 1;
            let left = tries.call.deadline - now;
            let limit = match tries.call.stream {
                true => endpoint.first_token.min(left),
                false => endpoint.attempt.min(left),
            };
            tries.current = Some((model_id.clone(), endpoint_id, now, now_ms()));
            let slot = routing.slot(endpoint, plan.pool_size, limit);
            let Some(slot) = slot.await else {
                let error = "no free connection to the upstream in time".to_owned();
                let zero = Tokens::default();
                tries.record(
                    failover::Outcome::Timeout,
                    None,
                    Some(error),
                    zero,
                    None,
                    true,
                );
                continue;
            };
            // The attempt's waits run from its start: a wait for the slot counts.
            let job = Job {
                token: 0,
                origin: endpoint.origin.clone(),
                request: request_bytes(endpoint, &body),
                connect: endpoint.connect,
                head: endpoint.first_byte,
                done: (now + limit).saturating_duration_since(Instant::now()),
                max_body: plan.max_upstream_body,
            };
            let step = match tries.call.stream {
                true => {
                    let idle = endpoint.stream_idle;
                    streamed::attempt(&mut tries, job, pool, limit, idle).await
                }
                false => whole(&mut tries, job, pool).await,
            };
            match step {
                Step::Next => {}
                Step::Answered(served) => return served,
                Step::Streaming(stream) => return streamed::begin(tries, stream, slot),
            }
        }
    }
    failed(tries)
}

/// What an attempt came to.
pub(crate) enum Step {
    /// On to the next candidate.
    Next,
    Answered(Served),
    /// A stream's first content is in: the stream is the caller's.
    Streaming(Box<streamed::Started>),
}

/// An attempt at a whole answer.
async fn whole(tries: &mut Tries, job: Job, pool: &Pool) -> Step {
    let (status, headers, answer) = match upstream::exchange(job, pool).await {
        upstream::Outcome::Failed { timeout, message } => {
            tries.unanswered(timeout, message);
            return Step::Next;
        }
        upstream::Outcome::Answer {
            status,
            headers,
            body,
        } => (status, headers, body),
    };
    if status != 200 {
        return tries.not_ok(status, &headers, answer);
    }
    let zero = Tokens::default();
    let reading = match wire::openai_chat(&answer) {
        Ok(reading) => reading,
        Err(malformed) => {
            let error = unreadable(&malformed);
            let outcome = failover::Outcome::Malformed;
            tries.record(outcome, Some(200), Some(error), zero, None, true);
            return Step::Next;
        }
    };
    let reply_chars = reading.text.chars().count() as u64;
    let outcome = failover::Outcome::Success;
    tries.settle(
        outcome,
        None,
        reading.tokens,
        reply_chars,
        Some(reading.text),
    );
    let last = tries
        .attempts
        .last()
        .expect("an answer came from an attempt");
    let attempts = tries.attempts.len();
    let body = Bytes::from(answer);
    let response = answered(tries, body, "application/json", last, attempts);
    Step::Answered(Served::Answer(response))
}

/// `_malformed` in executor.py: why an answer could not be read.
pub(crate) fn unreadable(malformed: &impl std::fmt::Display) -> String {
    clipped(&format!("unreadable answer (ValueError: {malformed})"), 300)
}

impl Tries {
    /// The attempt got no answer: a deadline passed, or the connection failed.
    pub(crate) fn unanswered(&mut self, timeout: bool, message: String) {
        let (outcome, error) = match timeout {
            true => (failover::Outcome::Timeout, message),
            false => (failover::Outcome::ConnectError, clipped(&message, 200)),
        };
        self.record(outcome, None, Some(error), Tokens::default(), None, true);
    }

    /// An answer that is not a 200: the provider's refusal of the caller's
    /// request goes back (through the app), any other failure moves on.
    pub(crate) fn not_ok(
        &mut self,
        status: u16,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Step {
        let zero = Tokens::default();
        let outcome = failover::Outcome::of_status(status);
        if !outcome.fails_over() {
            let outcome = failover::Outcome::ClientError;
            self.record(outcome, Some(status), None, zero, None, true);
            return Step::Answered(self.handover(Tried::Refused {
                status,
                body: &body,
            }));
        }
        let error = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        let retry_after = headers
            .iter()
            .rev()
            .find(|(name, _)| name == "retry-after")
            .and_then(|(_, v)| failover::retry_after_ms(v, SystemTime::now()));
        self.record(outcome, Some(status), Some(error), zero, retry_after, true);
        Step::Next
    }
}

/// Every candidate tried and none answered: the app renders why; with no
/// attempt at all (every candidate refused the body), the app routes it.
fn failed(tries: Tries) -> Served {
    if tries.attempts.is_empty() {
        return tries.handover(Tried::Nothing);
    }
    tries.handover(Tried::AllFailed)
}

/// The call's routing inputs, its key's id and its address, if the door may
/// serve it; nothing is spent.
fn admissible(plan: &Plan, asked: &Asked<'_>) -> Option<(Call, String, String)> {
    if plan.writes.moved() {
        return None;
    }
    let headers = asked.headers;
    let address = client_address(plan, headers, asked.peer)?;
    if plan.clients.blocked_for(&address, now_ms()).is_some() {
        return None;
    }
    let principal = plan.keys.verify(token(headers)?)?;
    let scoped = principal.workspace_id.is_some();
    if !principal.role.allows(Permission::Route)
        || (scoped && !Permission::Route.within_a_workspace())
    {
        return None; // the app's 403
    }
    let facts = chat::read(asked.body)?;
    let agent_header = routing_header(headers, "x-agent-type").ok()?;
    let workspace_header = routing_header(headers, "x-workspace-id").ok()?;
    let user_header = routing_header(headers, "x-user-id").ok()?;
    let workspace_id = match (principal.workspace_id, workspace_header) {
        (Some(own), Some(asked)) if own != asked => return None, // the app's 403
        (own, asked) => asked.or(own).map(str::to_owned),
    };
    if workspace_id
        .as_ref()
        .is_some_and(|w| plan.held_workspaces.contains(w))
    {
        return None;
    }
    let mut agent_type = agent_header.unwrap_or("default").to_owned();
    let model = match plan.model_names.get(&facts.model) {
        Some(id) => Some(id.clone()),
        None if facts.model == "auto" => None,
        None if plan.agent_types.contains(&facts.model) => {
            agent_type = facts.model.clone();
            None
        }
        None => return None, // the app's 404
    };
    match &model {
        None if plan.rollouts => return None,
        Some(id) if !plan.models.contains_key(id) => return None, // not a chat model
        _ => {}
    }
    let request_id = match one(headers, "x-request-id").ok()? {
        Some(id) if !id.is_empty() => clipped(id, 128),
        _ => ids::new_id(),
    };
    let user_id = user_header
        .map(str::to_owned)
        .or(facts.user.filter(|u| !u.is_empty()));
    let call = Call {
        request_id,
        agent_type,
        workspace_id,
        user_id,
        model,
        content_chars: facts.content_chars,
        stream: facts.stream,
        started: asked.started,
        // From the body's end, as the app's handler sets it.
        deadline: Instant::now() + plan.request_timeout,
    };
    Some((call, principal.key_id.to_owned(), address))
}

/// A key's rate limit as its `X-RateLimit-*` headers say it.
struct Limits {
    limit: i64,
    remaining: i64,
    /// Whole seconds until the window ends, at least 1 (`retry_after` in ratelimit.py).
    reset_s: i64,
}

/// One admission of the key from this worker's lease, as the app spends
/// one (`RateLimiter.admit`); None when the app must take a lease from the
/// store first (nothing is spent) or the key is over its limit (the app
/// answers the 429).
fn spend(plan: &Plan, routing: &Routing, key_id: &str) -> Option<Limits> {
    let now = now_ms() as i64;
    let window = now / plan.rate_window_ms;
    let spent = plan
        .leases
        .spend(key_id, window, plan.rate_limit, true, monotonic_ms());
    let remaining = match spent {
        Spent::Leased { remaining, top_up } => {
            if top_up {
                routing.accounts.push(Account::TopUp {
                    key_id: key_id.to_owned(),
                    window,
                    limit: plan.rate_limit,
                    now_ms: now,
                });
            }
            remaining
        }
        Spent::Alone { remaining } => remaining,
        Spent::Take | Spent::Refused => return None,
    };
    let reset_ms = (window + 1) * plan.rate_window_ms - now;
    Some(Limits {
        limit: plan.rate_limit,
        remaining,
        reset_s: ((reset_ms + 999) / 1000).max(1),
    })
}

/// Milliseconds on the monotonic clock the leases keep their pace by:
/// Python's `time.monotonic` (CLOCK_MONOTONIC), which the app's path reads.
fn monotonic_ms() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1000 + now.tv_nsec as u64 / 1_000_000
}

/// The engine's candidates for the call, as ids, up to the attempts it may
/// make; None when it has none (the app decides again, and says why).
fn decide(plan: &Plan, tries: &mut Tries) -> Option<Vec<(String, Vec<String>)>> {
    let call = &tries.call;
    let mut engine = plan.engine.lock().unwrap_or_else(|e| e.into_inner());
    if engine.snapshot().version != plan.version {
        return None; // the config moved on: the app serves the call
    }
    let decision = engine.decide(
        &DecideInput {
            facts: RequestFacts {
                agent_type: &call.agent_type,
                request_type: "chat",
                workspace_id: call.workspace_id.as_deref(),
                user_id: call.user_id.as_deref(),
                content_length: call.content_chars,
                metadata: HashMap::new(),
            },
            capabilities: &[],
            model: call.model.as_deref(),
            limit: Some(plan.max_attempts),
            explain: false,
        },
        now_ms(),
    );
    if decision.error.is_some() {
        return None;
    }
    let snapshot = engine.snapshot();
    tries.rule_id = match decision.source {
        crate::engine::Source::Rule(ri) => Some(snapshot.rules[ri].id.clone()),
        _ => None,
    };
    let candidates = decision
        .candidates
        .iter()
        .map(|c| {
            let model = &snapshot.models[c.model];
            let endpoints = c.endpoints.iter().map(|&ei| model.endpoints[ei].id.clone());
            (model.id.clone(), endpoints.collect())
        })
        .collect();
    Some(candidates)
}

/// The upstream request, as the app's client frames it (`_head` in
/// engine/upstream.py, the adapter's headers).
fn request_bytes(endpoint: &EndpointPlan, body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\ncontent-type: application/json\r\n",
        endpoint.target,
        endpoint.authority,
        body.len()
    );
    if let Some((name, value)) = endpoint.key.as_ref().and_then(ProviderKey::header) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

/// The success the caller gets: the provider's answer as sent, with the
/// router's headers (`router_headers` in api/calls.py) and the key's limits;
/// `last` is the attempt that answers, the `attempts`-th.
pub(crate) fn answered<B>(
    tries: &Tries,
    body: B,
    content_type: &'static str,
    last: &Attempt,
    attempts: usize,
) -> Response<B> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    // The upstreams' time: the attempts made, and a stream's wait so far for
    // its first content (its attempt is recorded when it ends).
    let waiting = tries
        .current
        .as_ref()
        .map_or(0.0, |(_, _, started, _)| since_ms(*started));
    let overhead = (since_ms(tries.call.started) - tries.upstream_ms - waiting).max(0.0);
    let text = |value: &str| HeaderValue::from_str(value).ok();
    let headers = response.headers_mut();
    let ours = [
        ("content-type", Some(HeaderValue::from_static(content_type))),
        ("x-request-id", text(&tries.call.request_id)),
        ("x-model-router-model", text(&last.model_id)),
        ("x-model-router-endpoint", text(&last.endpoint_id)),
        ("x-model-router-attempts", Some(attempts.into())),
        (
            "x-model-router-overhead-ms",
            text(&format!("{overhead:.3}")),
        ),
    ];
    for (name, value) in ours {
        if let Some(value) = value {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    if let Some(l) = &tries.limits {
        let limits = [
            ("x-ratelimit-limit", l.limit),
            ("x-ratelimit-remaining", l.remaining),
            ("x-ratelimit-reset", l.reset_s),
        ];
        for (name, value) in limits {
            headers.insert(HeaderName::from_static(name), value.into());
        }
    }
    response
}

#[cfg(test)]
#[path = "routed_tests.rs"]
mod tests;
