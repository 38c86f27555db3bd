//! The PyO3 layer: the only file that knows Python. Thin on purpose; the logic and
//! its tests live in the pure-Rust modules.

use crate::breaker::{self, CircuitBreaker, Transition};
use crate::chat;
use crate::clients;
use crate::connection::Origin;
use crate::cost::Tokens;
use crate::door;
use crate::door_account::{self, Accounting, OwnAccount};
use crate::engine::{self, DecideInput, Outcome, RollupFacts, Source};
use crate::failover;
use crate::ids;
use crate::key_files;
use crate::keys;
use crate::leases;
use crate::log_line;
use crate::metric_tally;
use crate::rollouts;
use crate::rollup::{self, Drained};
use crate::routed;
use crate::rules::RequestFacts;
use crate::shape;
use crate::snapshot::{MetaValue, Snapshot};
use crate::trust::Trust;
use crate::upstream;
use crate::wire;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Python strings for the snapshot's ids, made once per load so a decision
/// hands out references instead of building strings.
#[derive(Default)]
struct Ids {
    models: Vec<Py<PyString>>,
    endpoints: Vec<Vec<Py<PyString>>>,
}

/// The routing engine of one worker: load a snapshot per config version, then
/// `decide` before and `record` after each upstream attempt. The door shares
/// it (`engine`). `ids` match the engine's snapshot: whoever holds both locks
/// them in that order, ids first.
#[pyclass(frozen, module = "model_router._core")]
struct Engine {
    engine: Arc<Mutex<engine::Engine>>,
    ids: Mutex<Ids>,
}

/// A panic while holding a lock cannot leave a table half-updated in a way
/// later calls trip over, so the guard is recovered.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    fn lock(&self) -> std::sync::MutexGuard<'_, engine::Engine> {
        lock(&self.engine)
    }
}

fn meta_value(v: &Bound<'_, PyAny>) -> Option<MetaValue> {
    if v.is_instance_of::<PyBool>() {
        v.extract().ok().map(MetaValue::Bool)
    } else if v.is_instance_of::<PyInt>() {
        v.extract().ok().map(MetaValue::Int)
    } else if v.is_instance_of::<PyFloat>() {
        v.extract().ok().map(MetaValue::Float)
    } else if v.is_instance_of::<PyString>() {
        v.extract().ok().map(MetaValue::Str)
    } else {
        None
    }
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (seed=None))]
    fn new(seed: Option<u64>) -> Self {
        let seed = seed.unwrap_or_else(|| now_ms() ^ (std::process::id() as u64) << 32);
        Engine {
            engine: Arc::new(Mutex::new(engine::Engine::new(seed))),
            ids: Mutex::default(),
        }
    }

    /// Deserialize and index a snapshot document (JSON) without the GIL, then
    /// swap it in. Raises ValueError, keeping the current one, if it is invalid.
    fn load(&self, py: Python<'_>, data: &[u8]) -> PyResult<u64> {
        let snapshot = py
            .detach(|| Snapshot::load(data))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let ids = Ids {
            models: snapshot
                .models
                .iter()
                .map(|m| PyString::new(py, &m.id).unbind())
                .collect(),
            endpoints: snapshot
                .models
                .iter()
                .map(|m| {
                    m.endpoints
                        .iter()
                        .map(|e| PyString::new(py, &e.id).unbind())
                        .collect()
                })
                .collect(),
        };
        let version = snapshot.version;
        let mut current = lock(&self.ids);
        self.lock().load(snapshot);
        *current = ids;
        Ok(version)
    }

    #[getter]
    fn version(&self) -> u64 {
        self.lock().snapshot().version
    }

    #[getter]
    fn model_count(&self) -> usize {
        self.lock().snapshot().models.len()
    }

    #[getter]
    fn endpoint_count(&self) -> usize {
        self.lock().snapshot().endpoint_count()
    }

    #[getter]
    fn rule_count(&self) -> usize {
        self.lock().snapshot().rules.len()
    }

    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (agent_type, workspace_id=None, user_id=None, request_type="chat",
                        content_length=0, capabilities=None, model=None, metadata=None, limit=None,
                        explain=false))]
    fn decide(
        &self,
        py: Python<'_>,
        agent_type: &str,
        workspace_id: Option<&str>,
        user_id: Option<&str>,
        request_type: &str,
        content_length: u64,
        capabilities: Option<Vec<String>>,
        model: Option<&str>,
        metadata: Option<&Bound<'_, PyDict>>,
        limit: Option<usize>,
        explain: bool,
    ) -> PyResult<Decision> {
        let ids = lock(&self.ids);
        let mut engine = self.lock();
        let mut facts = RequestFacts {
            agent_type,
            request_type,
            workspace_id,
            user_id,
            content_length,
            ..Default::default()
        };
        if let Some(meta) = metadata {
            for key in &engine.snapshot().metadata_keys {
                if let Some(value) = meta.get_item(key)?.as_ref().and_then(meta_value) {
                    facts.metadata.insert(key.clone(), value);
                }
            }
        }
        let caps = capabilities.unwrap_or_default();
        let d = engine.decide(
            &DecideInput {
                facts,
                capabilities: &caps,
                model,
                limit,
                explain,
            },
            now_ms(),
        );
        let snap = engine.snapshot();
        let candidates = PyList::empty(py);
        for c in &d.candidates {
            let endpoints = PyList::new(
                py,
                c.endpoints
                    .iter()
                    .map(|&ei| ids.endpoints[c.model][ei].clone_ref(py)),
            )?;
            candidates.append(PyTuple::new(
                py,
                [
                    ids.models[c.model].clone_ref(py).into_any(),
                    endpoints.into_any().unbind(),
                ],
            )?)?;
        }
        let rule = match d.source {
            Source::Rule(ri) => Some((snap.rules[ri].id.clone(), snap.rules[ri].name.clone())),
            _ => None,
        };
        Ok(Decision {
            source: match d.source {
                Source::Requested => "requested",
                Source::Rule(_) => "rule",
                Source::Preferences => "preferences",
                Source::Default => "default",
            },
            rule_id: rule.as_ref().map(|r| r.0.clone()),
            rule_name: rule.map(|r| r.1),
            candidates: candidates.unbind(),
            reasons: if explain {
                d.candidates.iter().map(|c| c.why.to_string()).collect()
            } else {
                Vec::new()
            },
            excluded: d
                .excluded
                .iter()
                .map(|(mi, why)| (snap.models[*mi].id.clone(), why.to_string()))
                .collect(),
            error: d.error.as_ref().map(|e| (e.kind(), e.to_string())),
            budget: match &d.error {
                Some(engine::DecisionError::OverBudget(b)) => {
                    Some((b.period, b.limit_usd, b.spent_usd))
                }
                _ => None,
            },
            failed_open: d.failed_open,
        })
    }

    /// Account one upstream attempt; returns its cost in nano-dollars, or
    /// None when the model is no longer configured. With an `outcome` kind the
    /// attempt also folds into the outcome rollups.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (model_id, endpoint_id, success, latency_ms, prompt_tokens=0,
                        completion_tokens=0, workspace_id=None, retry_after_ms=None,
                        cache_read_tokens=0, cache_write_tokens=0, started_ms=None,
                        outcome=None, agent_type=None, rule_id=None, failover_from=None,
                        ttft_ms=None, rollout_id=None, variant=None))]
    fn record(
        &self,
        model_id: &str,
        endpoint_id: Option<&str>,
        success: Option<bool>,
        latency_ms: f64,
        prompt_tokens: u64,
        completion_tokens: u64,
        workspace_id: Option<&str>,
        retry_after_ms: Option<u64>,
        cache_read_tokens: u64,
        cache_write_tokens: u64,
        started_ms: Option<u64>,
        outcome: Option<&str>,
        agent_type: Option<&str>,
        rule_id: Option<&str>,
        failover_from: Option<(PyBackedStr, PyBackedStr, PyBackedStr)>,
        ttft_ms: Option<f64>,
        rollout_id: Option<&str>,
        variant: Option<&str>,
    ) -> Option<i64> {
        let now = now_ms();
        let outcome = Outcome {
            model_id,
            endpoint_id,
            workspace_id,
            success,
            latency_ms,
            tokens: Tokens {
                prompt: prompt_tokens,
                completion: completion_tokens,
                cache_read: cache_read_tokens,
                cache_write: cache_write_tokens,
            },
            retry_after_ms,
            started_ms: started_ms.unwrap_or(now),
            rollup: outcome.map(|outcome| RollupFacts {
                outcome,
                agent_type,
                rule_id,
                rollout_id,
                variant,
                failover_from: failover_from.as_ref().map(|(m, e, o)| (&**m, &**e, &**o)),
                ttft_ms,
            }),
        };
        self.lock().record(&outcome, now)
    }

    /// Drain the outcome rollups (see _core.pyi), and how many attempts the
    /// key bound left uncounted.
    #[allow(clippy::type_complexity)]
    fn take_rollups(&self) -> (Vec<RollupRow>, u64) {
        let mut state = self.lock();
        let dropped = state.rollups.dropped();
        let rows = state.rollups.drain().into_iter().map(row).collect();
        (rows, dropped)
    }

    /// Spend (nano-dollars) recorded since the last flush, per workspace and
    /// per model; it stays counted as in flight until end_flush.
    fn begin_flush(&self) -> (HashMap<String, i64>, HashMap<String, i64>) {
        self.lock().ledger.begin_flush()
    }

    /// The store's totals per workspace: (daily, weekly, monthly) nano-dollars.
    fn end_flush(&self, totals: HashMap<String, (i64, i64, i64)>) {
        let totals = totals
            .into_iter()
            .map(|(ws, (d, w, m))| (ws, [d, w, m]))
            .collect();
        self.lock().ledger.end_flush(totals);
    }

    /// This worker's view of a workspace's spend: (daily, weekly, monthly) nano-dollars.
    fn spent(&self, workspace_id: &str) -> (i64, i64, i64) {
        let [d, w, m] = self.lock().ledger.spent(workspace_id);
        (d, w, m)
    }

    /// (rule id, rule name, decisions it has matched) for every rule.
    fn rule_matches(&self) -> Vec<(String, String, u64)> {
        self.lock()
            .rule_matches()
            .map(|(r, n)| (r.id.clone(), r.name.clone(), n))
            .collect()
    }

    /// Rolling figures of a model: (samples, success rate, p50, p95, p99 ms).
    fn model_stats(&self, model_id: &str) -> Option<(u32, f64, f64, f64, f64)> {
        let mut state = self.lock();
        let mi = state.snapshot().model_position(model_id)?;
        let s = state.model_summary(mi, now_ms());
        Some((s.samples, s.success_rate, s.p50_ms, s.p95_ms, s.p99_ms))
    }

    /// (model id, health score 0..1) for every model (docs/routing.md).
    fn health_scores(&self) -> Vec<(String, f64)> {
        let mut state = self.lock();
        let now = now_ms();
        let ids: Vec<String> = state
            .snapshot()
            .models
            .iter()
            .map(|m| m.id.clone())
            .collect();
        ids.into_iter()
            .enumerate()
            .map(|(mi, id)| (id, state.health_score(mi, now)))
            .collect()
    }

    /// An endpoint's breaker: ("closed" | "open" | "half_open", open until ms or None).
    /// Breaker opens and closes recorded since the last call: (endpoint id,
    /// open until in ms since the epoch, or None for closed).
    fn take_breaker_transitions(&self) -> Vec<(String, Option<u64>)> {
        let mut state = self.lock();
        state
            .take_transitions()
            .into_iter()
            .map(|(id, t)| (id, open_until(t)))
            .collect()
    }

    /// Adopt a transition another worker or replica made; False if the
    /// endpoint is unknown here.
    #[pyo3(signature = (endpoint_id, open_until_ms))]
    fn adopt_breaker_transition(&self, endpoint_id: &str, open_until_ms: Option<u64>) -> bool {
        let t = match open_until_ms {
            Some(until_ms) => Transition::Opened { until_ms },
            None => Transition::Closed,
        };
        self.lock().adopt_transition(endpoint_id, t, now_ms())
    }

    /// Half-open endpoints due for the router's own probe: (model id, endpoint id).
    fn due_probes(&self) -> Vec<(String, String)> {
        self.lock().due_probes(now_ms())
    }

    fn breaker_state(&self, endpoint_id: &str) -> Option<(&'static str, Option<u64>)> {
        let state = self.lock();
        let (mi, ei) = state.snapshot().endpoint_position(endpoint_id)?;
        Some(breaker_view(state.breaker(mi, ei), now_ms()))
    }

    /// Every endpoint's breaker: (model id, endpoint id, state).
    fn breaker_states(&self) -> Vec<(String, String, &'static str)> {
        let state = self.lock();
        let now = now_ms();
        let snap = state.snapshot();
        snap.models
            .iter()
            .enumerate()
            .flat_map(|(mi, m)| {
                m.endpoints
                    .iter()
                    .enumerate()
                    .map(move |(ei, e)| (mi, ei, m, e))
            })
            .map(|(mi, ei, m, e)| {
                let (name, _) = breaker_view(state.breaker(mi, ei), now);
                (m.id.clone(), e.id.clone(), name)
            })
            .collect()
    }
}

/// A breaker as Python sees it: ("closed" | "open" | "half_open", open until ms).
fn breaker_view(b: &CircuitBreaker, now_ms: u64) -> (&'static str, Option<u64>) {
    match b.state(now_ms) {
        breaker::State::Closed => ("closed", None),
        breaker::State::Open { until_ms } => ("open", Some(until_ms)),
        breaker::State::HalfOpen => ("half_open", None),
    }
}

/// A drained bucket as plain tuples: (minute ms, key, counters, latency bins, TTFT bins).
type RollupRow = (
    u64,
    [String; rollup::DIMENSIONS],
    (u64, u64, u64, u64, u64, u64, i64),
    Vec<(i32, u64)>,
    Vec<(i32, u64)>,
);

fn row(d: Drained) -> RollupRow {
    let b = d.bucket;
    (
        d.minute_ms,
        d.dims,
        (
            b.attempts,
            b.requests,
            b.failovers_in,
            b.failovers_out,
            b.tokens_in,
            b.tokens_out,
            b.cost_nanos,
        ),
        b.latency.bins(),
        b.ttft.bins(),
    )
}

/// Plain HTTP/1.1 exchanges on a thread of their own (`upstream.rs`): the
/// event loop submits them, dispatches them once per turn and, when `fileno()`
/// turns readable, takes the finished ones.
#[pyclass(frozen, module = "model_router._core")]
struct Upstream {
    client: upstream::Client,
}

/// Seconds from Python as a Duration, read as asyncio reads a deadline: NaN
/// or past is none, inf (or more) is the longest we allow: 1e7 s, ~115 days.
fn wait(seconds: f64) -> Duration {
    Duration::from_secs_f64(if seconds.is_nan() {
        0.0
    } else {
        seconds.clamp(0.0, 1e7)
    })
}

#[pymethods]
impl Upstream {
    #[new]
    #[pyo3(signature = (trusted_file=None, trusted_dir=None))]
    fn new(trusted_file: Option<PathBuf>, trusted_dir: Option<PathBuf>) -> PyResult<Self> {
        let trust = Trust {
            file: trusted_file,
            dir: trusted_dir,
        };
        let client =
            upstream::Client::start(trust).map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(Upstream { client })
    }

    fn fileno(&self) -> i32 {
        self.client.wake_socket().as_raw_fd()
    }

    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (token, tls, host, port, request, connect_s, head_s, done_s, max_body))]
    fn submit(
        &self,
        token: u64,
        tls: bool,
        host: String,
        port: u16,
        request: &[u8],
        connect_s: f64,
        head_s: f64,
        done_s: f64,
        max_body: usize,
    ) {
        self.client.submit(upstream::Job {
            token,
            origin: Origin { tls, host, port },
            request: request.to_vec(),
            connect: wait(connect_s),
            head: wait(head_s),
            done: wait(done_s),
            max_body,
        });
    }

    fn dispatch(&self) {
        self.client.dispatch();
    }

    /// Ends the exchange and closes its connection; it is not taken.
    fn cancel(&self, token: u64) {
        self.client.cancel(token);
    }

    /// The exchanges finished since the last call: ([(token, status,
    /// headers, body), ...], [(token, timed out, message), ...]).
    #[allow(clippy::type_complexity)]
    fn take<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(
        Vec<(u64, u16, Bound<'py, PyDict>, Bound<'py, PyBytes>)>,
        Vec<(u64, bool, String)>,
    )> {
        let (mut answers, mut failures) = (Vec::new(), Vec::new());
        for (token, outcome) in self.client.take() {
            match outcome {
                upstream::Outcome::Answer {
                    status,
                    headers,
                    body,
                } => {
                    let map = PyDict::new(py);
                    for (name, value) in headers {
                        map.set_item(name, value)?;
                    }
                    answers.push((token, status, map, PyBytes::new(py, &body)));
                }
                upstream::Outcome::Failed { timeout, message } => {
                    failures.push((token, timeout, message))
                }
            }
        }
        Ok((answers, failures))
    }
}

/// Each client address's requests in progress and block (`clients.rs`).
#[pyclass(frozen, module = "model_router._core")]
struct Clients {
    clients: Arc<clients::Clients>,
}

#[pymethods]
impl Clients {
    #[new]
    fn new(max_in_flight: u32) -> Self {
        Clients {
            clients: Arc::new(clients::Clients::new(max_in_flight)),
        }
    }

    /// Counts one more request of `address`; False, counting nothing, at its cap.
    fn enter(&self, address: &str) -> bool {
        self.clients.enter(address)
    }

    fn leave(&self, address: &str) {
        self.clients.leave(address)
    }

    fn block(&self, address: &str, until_ms: u64, now_ms: u64) {
        self.clients.block(address, until_ms, now_ms)
    }

    fn blocked_for(&self, address: &str, now_ms: u64) -> Option<u64> {
        self.clients.blocked_for(address, now_ms)
    }

    fn unblock_ended(&self, now_ms: u64) -> usize {
        self.clients.unblock_ended(now_ms)
    }
}

/// One worker's rate-limit leases (`leases.rs`).
#[pyclass(frozen, module = "model_router._core")]
struct Leases {
    leases: Arc<leases::Leases>,
}

/// What `Leases.spend` came to: the first of its tuple.
const SPENT_LEASED: u8 = 0;
const SPENT_ALONE: u8 = 1;
const SPENT_TAKE: u8 = 2;
const SPENT_REFUSED: u8 = 3;

#[pymethods]
impl Leases {
    #[new]
    fn new() -> Self {
        Leases {
            leases: Arc::default(),
        }
    }

    /// (what it came to, remaining, top up now).
    fn spend(
        &self,
        key: &str,
        window: i64,
        limit: i64,
        may_take: bool,
        now_mono_ms: u64,
    ) -> (u8, i64, bool) {
        match self.leases.spend(key, window, limit, may_take, now_mono_ms) {
            leases::Spent::Leased { remaining, top_up } => (SPENT_LEASED, remaining, top_up),
            leases::Spent::Alone { remaining } => (SPENT_ALONE, remaining, false),
            leases::Spent::Take => (SPENT_TAKE, 0, false),
            leases::Spent::Refused => (SPENT_REFUSED, 0, false),
        }
    }

    fn begin_take(&self, key: &str, window: i64, limit: i64, now_ms: i64) -> Option<i64> {
        self.leases.begin_take(key, window, limit, now_ms)
    }

    fn granted(&self, key: &str, window: i64, amount: i64) {
        self.leases.granted(key, window, amount)
    }

    fn refused(&self, key: &str, window: i64, limit: i64, amount: i64, taken: i64) -> i64 {
        self.leases.refused(key, window, limit, amount, taken)
    }

    fn store_away(&self, key: &str, window: i64, now_mono_ms: u64) {
        self.leases.store_away(key, window, now_mono_ms)
    }

    fn take_ended(&self, key: &str, window: i64) {
        self.leases.take_ended(key, window)
    }

    fn offline(&self) -> Vec<(String, i64, i64)> {
        self.leases.offline()
    }

    fn handed_over(&self, key: &str, window: i64, count: i64) {
        self.leases.handed_over(key, window, count)
    }

    fn __len__(&self) -> usize {
        self.leases.len()
    }
}

/// The active canaries and experiments (`rollouts.rs`).
#[pyclass(frozen, module = "model_router._core")]
struct Rollouts {
    rollouts: rollouts::Rollouts,
}

/// An arm `Rollouts.assign` names other than an experiment's variant (>= 0).
const ARM_WINNER: i64 = -1;
const ARM_CANARY: i64 = -2;
const ARM_BASELINE: i64 = -3;

type RolloutEntry = (
    u8,
    String,
    String,
    Option<(String, f64)>,
    Option<(bool, Vec<f64>, bool)>,
);

#[pymethods]
impl Rollouts {
    /// Entries oldest first: (scope: 0 rule, 1 agent type, 2 workspace; its
    /// value; the rollout's id; a canary's (baseline model, share), or an
    /// experiment's (by user, cumulative weights, ended on its winner)).
    #[new]
    fn new(entries: Vec<RolloutEntry>) -> PyResult<Self> {
        let mut table = Vec::with_capacity(entries.len());
        for (scope, value, id, canary, experiment) in entries {
            let scope = match scope {
                0 => rollouts::Scope::Rule,
                1 => rollouts::Scope::AgentType,
                2 => rollouts::Scope::Workspace,
                _ => return Err(PyValueError::new_err(format!("no scope {scope}"))),
            };
            let rollout = match (canary, experiment) {
                (Some((baseline_model, share)), None) => rollouts::Rollout::Canary {
                    id,
                    baseline_model,
                    share,
                },
                (None, Some((by_user, cumulative, ended_on_winner))) => {
                    rollouts::Rollout::Experiment {
                        id,
                        by_user,
                        cumulative,
                        ended_on_winner,
                    }
                }
                _ => {
                    return Err(PyValueError::new_err(
                        "a rollout is a canary or an experiment",
                    ))
                }
            };
            table.push((scope, value, rollout));
        }
        Ok(Rollouts {
            rollouts: rollouts::Rollouts::new(table),
        })
    }

    /// (the rollout's index in the entries, its arm: a variant >= 0, or
    /// ARM_WINNER, ARM_CANARY, ARM_BASELINE), or None.
    fn assign(
        &self,
        rule_id: Option<&str>,
        agent_type: &str,
        workspace_id: Option<&str>,
        first_model: Option<&str>,
        request_id: &str,
        user_id: Option<&str>,
    ) -> Option<(usize, i64)> {
        let (index, arm) = self.rollouts.assign(
            rule_id,
            agent_type,
            workspace_id,
            first_model,
            request_id,
            user_id,
        )?;
        let arm = match arm {
            rollouts::Arm::Variant(i) => i as i64,
            rollouts::Arm::Winner => ARM_WINNER,
            rollouts::Arm::Canary => ARM_CANARY,
            rollouts::Arm::Baseline => ARM_BASELINE,
        };
        Some((index, arm))
    }
}

#[pyfunction]
fn unit_hash(parts: Vec<PyBackedStr>) -> f64 {
    let parts: Vec<&str> = parts.iter().map(|p| &**p).collect();
    rollouts::unit_hash(&parts)
}

/// The API keys a worker accepts (`keys.rs`): the stored ones, and the
/// admin key the service is started with.
#[pyclass(frozen, module = "model_router._core")]
struct Keys {
    keys: Arc<keys::Keys>,
}

#[pymethods]
impl Keys {
    #[new]
    #[pyo3(signature = (records, bootstrap_hash=None))]
    fn new(
        records: Vec<(String, String, String, Option<String>)>,
        bootstrap_hash: Option<&str>,
    ) -> PyResult<Self> {
        let records = records
            .into_iter()
            .map(|(id, role, secret_hash, workspace_id)| {
                let role = keys::Role::parse(&role)
                    .ok_or_else(|| PyValueError::new_err(format!("key {id}: no role {role:?}")))?;
                Ok(keys::KeyRecord {
                    id,
                    role,
                    secret_hash,
                    workspace_id,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Keys {
            keys: Arc::new(keys::Keys::new(bootstrap_hash, records)),
        })
    }

    /// (key id, role, workspace id) of `key`, or None.
    fn verify(&self, key: &str) -> Option<(&str, &'static str, Option<&str>)> {
        self.keys
            .verify(key)
            .map(|p| (p.key_id, p.role.name(), p.workspace_id))
    }
}

/// The roles and what each allows (`keys.rs`): ([(role, [permission, ...])],
/// [the permissions a workspace-scoped key keeps]).
#[pyfunction]
fn permissions() -> (Vec<(&'static str, Vec<&'static str>)>, Vec<&'static str>) {
    let all = keys::Permission::ALL;
    let roles = keys::Role::ALL
        .iter()
        .map(|role| {
            let allowed = all.iter().filter(|p| role.allows(**p)).map(|p| p.name());
            (role.name(), allowed.collect())
        })
        .collect();
    let scoped = all
        .iter()
        .filter(|p| p.within_a_workspace())
        .map(|p| p.name());
    (roles, scoped.collect())
}

/// A new id (`ids.rs`): unique across workers, replicas and restarts.
#[pyfunction]
fn new_id() -> String {
    ids::new_id()
}

/// The SHA-256 of a whole API key, in hex, as the store keeps it.
#[pyfunction]
fn hash_key(key: &str) -> String {
    keys::hash_hex(key)
}

/// The provider key in a file (`key_files.rs`), or None.
#[pyfunction]
fn read_key_file(path: PathBuf) -> Option<String> {
    key_files::KEY_FILES.read(&path)
}

/// The front door (`door.rs`) on the public port `listen_fd`, handing every
/// request it does not serve itself (`routed.rs`) to the app on `app_socket`.
#[pyclass(frozen, module = "model_router._core")]
struct Door {
    door: door::Door,
    routing: Arc<routed::Routing>,
}

/// An endpoint of the door's plan: (id, (host, port, target, authority),
/// (key header, prefix, key or None, key file or None) or None, (connect,
/// first byte, attempt, first token, stream idle) ms).
type PlanEndpoint = (
    String,
    (bool, String, u16, String, String),
    Option<PlanKey>,
    (u64, u64, u64, u64, u64),
);
type PlanKey = (String, String, Option<String>, Option<PathBuf>);

fn provider_key((header, prefix, key, file): PlanKey) -> Option<routed::ProviderKey> {
    match (key, file) {
        (_, Some(path)) => Some(routed::ProviderKey::File {
            header,
            prefix,
            path,
        }),
        (Some(key), None) => Some(routed::ProviderKey::Fixed {
            header,
            value: format!("{prefix}{key}"),
        }),
        (None, None) => None,
    }
}

/// An attempt of a call the door served, as the app's `AttemptReport` has
/// it: (model, endpoint, outcome, status, latency ms, the provider's
/// message, retry after ms).
type DoorAttempt<L> = (
    String,
    String,
    L,
    Option<u16>,
    f64,
    Option<String>,
    Option<u64>,
);

/// A door call's (request id, workspace, agent type, user, model, endpoint).
type DoorNames = (
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// A call the door served (or saw its caller leave), for the app's
/// accounting: ((request id, workspace, agent type, user, model, endpoint),
/// (status, outcome, latency ms, upstream ms, prompt tokens, completion
/// tokens, cost nanos, estimated, ended at ms, stream), attempts, reply).
/// Tuples: a batch is read once, where an object's fields would be made at
/// each read. `L`: an outcome's label.
type DoorCall<L = &'static str> = (
    DoorNames,
    (u16, L, f64, f64, u64, u64, i64, bool, u64, bool),
    Vec<DoorAttempt<L>>,
    Option<String>,
);

/// What the door accounted itself of the calls it took: their log lines
/// (with their newlines), their records for the store, and their metric
/// samples (`metric_tally.rs`): each counter's amount and each histogram's
/// slots, per tuple of label values.
type DoorAccounted<'py> = (
    Vec<Bound<'py, PyBytes>>,
    Vec<Bound<'py, PyBytes>>,
    Vec<Bound<'py, PyDict>>,
    Vec<Bound<'py, PyDict>>,
);

fn door_call(c: routed::CallRecord, replies: bool) -> DoorCall {
    let attempts = c
        .attempts
        .into_iter()
        .map(|a| {
            let label = a.outcome.label();
            let (status, error) = (a.status, a.error);
            let (latency, retry) = (a.latency_ms, a.retry_after_ms);
            (
                a.model_id,
                a.endpoint_id,
                label,
                status,
                latency,
                error,
                retry,
            )
        })
        .collect();
    let names = (
        c.request_id,
        c.workspace_id,
        c.agent_type,
        c.user_id,
        c.model_id,
        c.endpoint_id,
    );
    let figures = (
        c.status,
        c.outcome.label(),
        c.latency_ms,
        c.upstream_ms,
        c.tokens.prompt,
        c.tokens.completion,
        c.cost,
        c.estimated,
        c.ended_ms,
        c.stream,
    );
    (names, figures, attempts, c.reply.filter(|_| replies))
}

/// The call a `DoorCall` tuple of Python's describes (the test layer's way in).
fn call_record(call: DoorCall<String>) -> PyResult<routed::CallRecord> {
    let outcome = |label: &str| {
        failover::Outcome::ALL
            .into_iter()
            .find(|o| o.label() == label)
            .ok_or_else(|| PyValueError::new_err(format!("no outcome {label:?}")))
    };
    let (names, figures, tried, reply) = call;
    let (request_id, workspace_id, agent_type, user_id, model_id, endpoint_id) = names;
    let (
        status,
        label,
        latency_ms,
        upstream_ms,
        prompt,
        completion,
        cost,
        estimated,
        ended_ms,
        stream,
    ) = figures;
    let attempts = tried
        .into_iter()
        .map(
            |(model_id, endpoint_id, label, status, latency_ms, error, retry_after_ms)| {
                Ok(routed::Attempt {
                    model_id,
                    endpoint_id,
                    outcome: outcome(&label)?,
                    status,
                    latency_ms,
                    error,
                    retry_after_ms,
                })
            },
        )
        .collect::<PyResult<_>>()?;
    Ok(routed::CallRecord {
        request_id,
        workspace_id,
        agent_type,
        user_id,
        model_id,
        endpoint_id,
        status,
        outcome: outcome(&label)?,
        latency_ms,
        upstream_ms,
        tokens: Tokens {
            prompt,
            completion,
            ..Tokens::default()
        },
        cost,
        estimated,
        attempts,
        reply,
        ended_ms,
        stream,
    })
}

/// What the door accounted itself, for Python.
fn own_account(py: Python<'_>, own: OwnAccount) -> PyResult<DoorAccounted<'_>> {
    let bytes = |all: Vec<Vec<u8>>| all.iter().map(|b| PyBytes::new(py, b)).collect();
    Ok((
        bytes(own.lines),
        bytes(own.records),
        tally_dicts(py, &own.tally.counts)?,
        tally_dicts(py, &own.tally.observed)?,
    ))
}

/// The tally's maps as Python dicts keyed by tuples of label values.
fn tally_dicts<'py, V: IntoPyObject<'py> + Clone>(
    py: Python<'py>,
    maps: &[HashMap<metric_tally::Labels, V>],
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    maps.iter()
        .map(|map| {
            let dict = PyDict::new(py);
            for (labels, value) in map {
                dict.set_item(PyTuple::new(py, labels)?, value.clone())?;
            }
            Ok(dict)
        })
        .collect()
}

#[pymethods]
impl Door {
    #[new]
    #[pyo3(signature = (listen_fd, app_socket, max_connections, header_read_timeout_ms, max_body_bytes, tls_cert=None, tls_key=None, tls_client_ca=None, trusted_file=None, trusted_dir=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        listen_fd: i32,
        app_socket: PathBuf,
        max_connections: usize,
        header_read_timeout_ms: u64,
        max_body_bytes: u64,
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
        tls_client_ca: Option<PathBuf>,
        trusted_file: Option<PathBuf>,
        trusted_dir: Option<PathBuf>,
    ) -> PyResult<Self> {
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(
                door::tls_config(&cert, &key, tls_client_ca.as_deref())
                    .map_err(PyValueError::new_err)?,
            )),
            _ => None,
        };
        if listen_fd < 0 {
            return Err(PyValueError::new_err("listen_fd is not a descriptor"));
        }
        // The door's own copy: the Python socket keeps (and closes) its own.
        // SAFETY: the descriptor is open for the duration of this call; the
        // caller holds the socket it belongs to.
        let listener = unsafe { BorrowedFd::borrow_raw(listen_fd) }.try_clone_to_owned()?;
        let routing = Arc::new(routed::Routing::new()?);
        let door = door::Door::start(door::Settings {
            listener: std::net::TcpListener::from(listener),
            app_socket,
            max_connections,
            header_read_timeout: Duration::from_millis(header_read_timeout_ms),
            max_body: max_body_bytes,
            tls,
            routing: routing.clone(),
            trust: Trust {
                file: trusted_file,
                dir: trusted_dir,
            },
        })?;
        Ok(Door { door, routing })
    }

    /// From now on the door serves the routed calls it can from these tables
    /// (docs/data-plane.md, step 3): `models`: (id, version, dropped
    /// parameters, endpoints), every model a chat call may be routed to.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (keys, engine, clients, leases, writes_path, writes_seen, model_names,
                        agent_types, models, held_workspaces, rollouts, rate_limit,
                        rate_window_ms, max_attempts, request_timeout_ms, max_upstream_body,
                        pool_size, client_address_header=None))]
    fn install(
        &self,
        keys: &Keys,
        engine: &Engine,
        clients: &Clients,
        leases: &Leases,
        writes_path: PathBuf,
        writes_seen: i64,
        model_names: HashMap<String, String>,
        agent_types: Vec<String>,
        models: Vec<(String, String, Vec<String>, Vec<PlanEndpoint>)>,
        held_workspaces: Vec<String>,
        rollouts: bool,
        rate_limit: i64,
        rate_window_ms: i64,
        max_attempts: usize,
        request_timeout_ms: u64,
        max_upstream_body: usize,
        pool_size: usize,
        client_address_header: Option<String>,
    ) -> PyResult<()> {
        if rate_window_ms <= 0 {
            return Err(PyValueError::new_err("rate_window_ms must be positive"));
        }
        let ms = Duration::from_millis;
        let models = models
            .into_iter()
            .map(|(id, version, drop, endpoints)| {
                let endpoints = endpoints
                    .into_iter()
                    .map(
                        |(id, (tls, host, port, target, authority), key, timeouts)| {
                            let (connect, first_byte, attempt, first_token, stream_idle) = timeouts;
                            let endpoint = routed::EndpointPlan {
                                origin: Origin { tls, host, port },
                                target,
                                authority,
                                key: key.and_then(provider_key),
                                connect: ms(connect),
                                first_byte: ms(first_byte),
                                attempt: ms(attempt),
                                first_token: ms(first_token),
                                stream_idle: ms(stream_idle),
                            };
                            (id, endpoint)
                        },
                    )
                    .collect();
                let model = routed::ModelPlan {
                    version,
                    drop,
                    endpoints,
                };
                (id, model)
            })
            .collect();
        let version = engine.lock().snapshot().version;
        self.routing.install(Some(routed::Plan {
            version,
            keys: keys.keys.clone(),
            engine: engine.engine.clone(),
            clients: clients.clients.clone(),
            leases: leases.leases.clone(),
            writes: routed::Writes::open(&writes_path, writes_seen)?,
            model_names,
            agent_types: agent_types.into_iter().collect(),
            models,
            held_workspaces: held_workspaces.into_iter().collect(),
            rollouts,
            rate_limit,
            rate_window_ms,
            max_attempts,
            request_timeout: ms(request_timeout_ms),
            max_upstream_body,
            pool_size,
            client_address_header: client_address_header.map(|h| h.to_ascii_lowercase()),
        }));
        Ok(())
    }

    /// The door serves no routed call from now on: the app serves them all.
    fn withdraw(&self) {
        self.routing.install(None);
    }

    /// The socket that turns readable when `take` has something.
    fn fileno(&self) -> i32 {
        self.routing.accounts.wake_socket().as_raw_fd()
    }

    /// What the door queued since the last call (`door_account.rs`): (the
    /// calls it served or saw cut short that Python is to account, [(key
    /// id, window, limit, now ms) of a lease to top up], what the door
    /// accounted itself). With `bounds` (the upper bounds of
    /// `metrics.DOOR_HISTOGRAMS`' buckets) the door accounts each
    /// `plain_call` itself, its line only with `lines`; without, Python
    /// accounts every call. Each call's reply text only with `replies` (a
    /// DEBUG line shows it; nothing else reads it).
    #[allow(clippy::type_complexity)]
    #[pyo3(signature = (bounds, lines, replies))]
    fn take<'py>(
        &self,
        py: Python<'py>,
        bounds: Option<[Vec<f64>; 3]>,
        lines: bool,
        replies: bool,
    ) -> PyResult<(
        Vec<DoorCall>,
        Vec<(String, i64, i64, i64)>,
        DoorAccounted<'py>,
    )> {
        let accounts = self.routing.accounts.take();
        let accounting = bounds.map(|bounds| Accounting { bounds, lines });
        let taken =
            py.detach(|| door_account::take(accounts, accounting, ids::new_id, SystemTime::now()));
        let calls = taken.calls.into_iter().map(|c| door_call(c, replies));
        Ok((calls.collect(), taken.top_ups, own_account(py, taken.own)?))
    }

    /// Stops accepting; connections close once their requests are answered.
    fn drain(&self) {
        self.door.drain();
    }

    /// Whether every connection ended within `timeout_s` of a `drain`.
    fn wait(&self, py: Python<'_>, timeout_s: f64) -> bool {
        py.detach(|| self.door.wait(wait(timeout_s)))
    }
}

/// Hands the free pages of every glibc arena back to the system
/// (`malloc_trim`); true when some were. glibc returns only an arena's top by
/// itself, so the door's per-connection buffers, freed between blocks still
/// in use, would stay resident after a burst (3.3 MiB of a worker's arena
/// after 64 connections). Takes 0.2-2.4 ms at c=64, without the GIL.
#[pyfunction]
fn release_free_memory(py: Python<'_>) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes each arena's lock; any thread may call it.
    return py.detach(|| unsafe { libc::malloc_trim(0) } == 1);
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = py;
        false
    }
}

/// Whether masking leaves `text` as it is, for certain (`log_line.rs`).
#[pyfunction]
fn pii_plain(text: &str) -> bool {
    log_line::plain(text)
}

/// What `Door.take` makes of `calls` (tuples as it hands calls over): what
/// it accounts itself, the lines stamped `now_s` seconds after the epoch
/// (with `lines`), the records under the `ids` in turn, the histograms with
/// buckets of `bounds`; and the calls it leaves to Python. What tests hold
/// to the app's accounting.
#[pyfunction]
fn account_door_calls<'py>(
    py: Python<'py>,
    calls: Vec<DoorCall<String>>,
    ids: Vec<String>,
    now_s: f64,
    bounds: [Vec<f64>; 3],
    lines: bool,
) -> PyResult<(DoorAccounted<'py>, Vec<DoorCall>)> {
    let accounts = calls
        .into_iter()
        .map(|call| Ok(routed::Account::Call(Box::new(call_record(call)?))))
        .collect::<PyResult<Vec<_>>>()?;
    let mut ids = ids.into_iter();
    let now = UNIX_EPOCH + Duration::from_secs_f64(now_s);
    let accounting = Some(Accounting { bounds, lines });
    let taken = door_account::take(accounts, accounting, || ids.next().unwrap_or_default(), now);
    let left = taken
        .calls
        .into_iter()
        .map(|c| door_call(c, true))
        .collect();
    Ok((own_account(py, taken.own)?, left))
}

/// The upstream body of a same-format request (`shape.rs`); ValueError when
/// `body` is not one JSON object.
#[pyfunction]
fn same_format_body<'py>(
    py: Python<'py>,
    body: &[u8],
    model: &str,
    drop: Vec<PyBackedStr>,
) -> PyResult<Bound<'py, PyBytes>> {
    let drop: Vec<&str> = drop.iter().map(|d| &**d).collect();
    let shaped = shape::same_format(body, model, &drop)
        .map_err(|e| PyValueError::new_err(format!("invalid body: {e}")))?;
    Ok(PyBytes::new(py, &shaped))
}

/// What accounting reads of a whole answer (`wire.rs`): (prompt, completion,
/// cache_read, cache_write, text, finish_reason); ValueError when it is not
/// of its format's shape.
type AnswerReading = (Option<u64>, Option<u64>, u64, u64, String, Option<String>);

fn answer_reading(read: Result<wire::Reading, wire::Malformed>) -> PyResult<AnswerReading> {
    let r = read.map_err(|e| PyValueError::new_err(e.0))?;
    let t = r.tokens;
    Ok((
        t.prompt,
        t.completion,
        t.cache_read,
        t.cache_write,
        r.text,
        r.finish_reason,
    ))
}

#[pyfunction]
fn read_openai_chat(body: &[u8]) -> PyResult<AnswerReading> {
    answer_reading(wire::openai_chat(body))
}

#[pyfunction]
fn read_anthropic_message(body: &[u8]) -> PyResult<AnswerReading> {
    answer_reading(wire::anthropic_message(body))
}

/// What the door reads of one event of an OpenAI chat stream (`wire.rs`):
/// (error, started, content chars, (prompt, completion, cache_read,
/// cache_write) after it); ValueError when it is not a chunk.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn read_openai_chunk(
    data: &[u8],
) -> PyResult<(bool, bool, u64, (Option<u64>, Option<u64>, u64, u64))> {
    let mut t = wire::Usage::default();
    let r = wire::openai_chunk(data, &mut t).map_err(|e| PyValueError::new_err(e.0))?;
    let tokens = (t.prompt, t.completion, t.cache_read, t.cache_write);
    Ok((r.error, r.started, r.text_chars, tokens))
}

/// The door's reading of a chat completions body (`chat.rs`): (model,
/// stream, user, content chars), or None when it is Python's to read.
#[pyfunction]
fn read_chat_call(body: &[u8]) -> Option<(String, bool, Option<String>, u64)> {
    chat::read(body).map(|c| (c.model, c.stream, c.user, c.content_chars))
}

/// What an answer's status makes of an attempt (`failover.rs`): its outcome's label.
#[pyfunction]
fn answer_outcome(status: u16) -> &'static str {
    failover::Outcome::of_status(status).label()
}

/// The wait (ms) a `Retry-After` value asks for, at `now_ms`; None when it
/// is not one.
#[pyfunction]
fn retry_after_ms(value: &str, now_ms: u64) -> Option<u64> {
    failover::retry_after_ms(value, UNIX_EPOCH + Duration::from_millis(now_ms))
}

/// Nearest-rank quantiles (0..1) of merged sketch bins, within 1%.
#[pyfunction]
fn sketch_quantiles(bins: Vec<(i32, u64)>, quantiles: Vec<f64>) -> Vec<Option<f64>> {
    rollup::quantiles(&bins, &quantiles)
}

fn open_until(t: Transition) -> Option<u64> {
    match t {
        Transition::Opened { until_ms } => Some(until_ms),
        Transition::Closed => None,
    }
}

/// The outcome of one `decide`.
#[pyclass(frozen, get_all, module = "model_router._core")]
struct Decision {
    /// "requested", "rule", "preferences" or "default".
    source: &'static str,
    rule_id: Option<String>,
    rule_name: Option<String>,
    /// Ranked [(model id, [endpoint id, ...]), ...].
    candidates: Py<PyList>,
    /// Why each candidate holds its place (with explain).
    reasons: Vec<String>,
    /// [(model id, why it is not a candidate), ...] (with explain).
    excluded: Vec<(String, String)>,
    /// (kind, message) when there is no candidate.
    error: Option<(&'static str, String)>,
    /// (period, limit USD, spent USD) when a budget stopped the request.
    budget: Option<(&'static str, f64, f64)>,
    failed_open: bool,
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add_class::<Decision>()?;
    m.add_class::<Upstream>()?;
    m.add_class::<Door>()?;
    m.add_class::<Keys>()?;
    m.add_class::<Clients>()?;
    m.add_class::<Leases>()?;
    m.add_class::<Rollouts>()?;
    m.add_function(wrap_pyfunction!(unit_hash, m)?)?;
    m.add("ARM_WINNER", ARM_WINNER)?;
    m.add("ARM_CANARY", ARM_CANARY)?;
    m.add("ARM_BASELINE", ARM_BASELINE)?;
    m.add("SPENT_LEASED", SPENT_LEASED)?;
    m.add("SPENT_ALONE", SPENT_ALONE)?;
    m.add("SPENT_TAKE", SPENT_TAKE)?;
    m.add("SPENT_REFUSED", SPENT_REFUSED)?;
    m.add("LEASE", leases::LEASE)?;
    m.add("RATE_MS", leases::RATE_MS)?;
    m.add("AHEAD_MS", leases::AHEAD_MS)?;
    m.add("SHARE", leases::SHARE)?;
    m.add("RETRY_MS", leases::RETRY_MS)?;
    m.add_function(wrap_pyfunction!(hash_key, m)?)?;
    m.add_function(wrap_pyfunction!(read_key_file, m)?)?;
    m.add_function(wrap_pyfunction!(permissions, m)?)?;
    m.add_function(wrap_pyfunction!(new_id, m)?)?;
    m.add("DOOR_PEER_HEADER", door::PEER_HEADER)?;
    m.add("DOOR_VERDICT_HEADER", routed::VERDICT_HEADER)?;
    m.add_function(wrap_pyfunction!(sketch_quantiles, m)?)?;
    m.add_function(wrap_pyfunction!(same_format_body, m)?)?;
    m.add_function(wrap_pyfunction!(pii_plain, m)?)?;
    m.add_function(wrap_pyfunction!(release_free_memory, m)?)?;
    m.add_function(wrap_pyfunction!(account_door_calls, m)?)?;
    m.add_function(wrap_pyfunction!(answer_outcome, m)?)?;
    m.add_function(wrap_pyfunction!(read_chat_call, m)?)?;
    m.add_function(wrap_pyfunction!(retry_after_ms, m)?)?;
    let labels = |keep: fn(&failover::Outcome) -> bool| {
        let kept = failover::Outcome::ALL
            .iter()
            .filter(|o| keep(o))
            .map(|o| o.label());
        pyo3::types::PyFrozenSet::new(m.py(), kept)
    };
    m.add("FAILOVER_OUTCOMES", labels(|o| o.fails_over())?)?;
    m.add("HEALTHY_OUTCOMES", labels(|o| o.healthy())?)?;
    m.add_function(wrap_pyfunction!(read_openai_chat, m)?)?;
    m.add_function(wrap_pyfunction!(read_openai_chunk, m)?)?;
    m.add_function(wrap_pyfunction!(read_anthropic_message, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
