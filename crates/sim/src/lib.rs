//! taskhook-sim: an in-memory simulator of AceData Cloud's task-retrieval API
//! (`taskhook sim` on the command line).
//!
//! It serves `POST /{service}/tasks` (actions `retrieve` and `retrieve_batch`)
//! with faithful task records whose shape evolves over time, plus control
//! endpoints under `/_sim/` to create tasks, script faults and read statistics.
//! Used by tests, benchmarks and demos (in the spirit of stripe-mock).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Options of the simulator; also the CLI flags of `taskhook sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Seed of the pseudo-random choices (implicit task specs, faults, duplicates).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Require `authorization: Bearer TOKEN` (401 invalid_token otherwise).
    #[arg(long)]
    pub token: Option<String>,
    /// Durations of implicitly created tasks, uniform between these (milliseconds).
    #[arg(long, default_value_t = 2000)]
    pub min_duration_ms: u64,
    /// Upper bound of implicit task durations (milliseconds).
    #[arg(long, default_value_t = 10000)]
    pub max_duration_ms: u64,
    /// Fraction of implicit tasks that fail.
    #[arg(long, default_value_t = 0.2)]
    pub fail_rate: f64,
    /// Fraction of implicit IDs the upstream never knows (always absent from answers).
    #[arg(long, default_value_t = 0.0)]
    pub unknown_rate: f64,
    /// Answer 400 when a batch has more IDs than this.
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// Requests per second allowed (token bucket, 1 s of burst); beyond: 429 with Retry-After: 1.
    #[arg(long)]
    pub rate_limit: Option<f64>,
    /// Requests in flight allowed; beyond: 429.
    #[arg(long)]
    pub max_concurrent: Option<usize>,
    /// Fraction of requests answered with a random fault from --faults.
    #[arg(long, default_value_t = 0.0)]
    pub fault_rate: f64,
    /// Fault kinds to draw from, comma separated (default: all kinds).
    #[arg(long, value_delimiter = ',')]
    pub faults: Vec<FaultKind>,
    /// How long a "slow" fault delays its answer (ms).
    #[arg(long, default_value_t = 30000)]
    pub slow_ms: u64,
    /// Fraction of items repeated twice in a batch answer.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_rate: f64,
}

impl Default for SimArgs {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: 1,
            token: None,
            min_duration_ms: 2000,
            max_duration_ms: 10000,
            fail_rate: 0.2,
            unknown_rate: 0.0,
            max_batch: None,
            rate_limit: None,
            max_concurrent: None,
            fault_rate: 0.0,
            faults: Vec::new(),
            slow_ms: 30000,
            duplicate_rate: 0.0,
        }
    }
}

/// A way the simulated upstream can misbehave on one request.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
pub enum FaultKind {
    /// 429 too_many_requests with `Retry-After: 1`.
    #[serde(rename = "429")]
    #[value(name = "429")]
    RateLimited,
    /// 429 without Retry-After.
    #[serde(rename = "429-no-retry-after")]
    #[value(name = "429-no-retry-after")]
    RateLimitedNoRetryAfter,
    /// 500 with a JSON `api_error` body.
    #[serde(rename = "500")]
    #[value(name = "500")]
    ServerError,
    /// 502 with an HTML page body.
    #[serde(rename = "502-html")]
    #[value(name = "502-html")]
    BadGatewayHtml,
    /// 503 with an HTML page body.
    #[serde(rename = "503-html")]
    #[value(name = "503-html")]
    UnavailableHtml,
    /// 200 with the real JSON body cut off in the middle.
    #[serde(rename = "truncated")]
    #[value(name = "truncated")]
    Truncated,
    /// Wait `slow_ms`, then answer normally.
    #[serde(rename = "slow")]
    #[value(name = "slow")]
    Slow,
    /// The response body fails after the headers, so the connection is dropped.
    #[serde(rename = "reset")]
    #[value(name = "reset")]
    Reset,
    /// 401 invalid_token.
    #[serde(rename = "401")]
    #[value(name = "401")]
    Unauthorized,
}

impl FaultKind {
    /// Every kind, the default pool of random faults.
    const ALL: [FaultKind; 9] = [
        FaultKind::RateLimited,
        FaultKind::RateLimitedNoRetryAfter,
        FaultKind::ServerError,
        FaultKind::BadGatewayHtml,
        FaultKind::UnavailableHtml,
        FaultKind::Truncated,
        FaultKind::Slow,
        FaultKind::Reset,
        FaultKind::Unauthorized,
    ];

    /// The serde / CLI name.
    fn name(self) -> &'static str {
        match self {
            FaultKind::RateLimited => "429",
            FaultKind::RateLimitedNoRetryAfter => "429-no-retry-after",
            FaultKind::ServerError => "500",
            FaultKind::BadGatewayHtml => "502-html",
            FaultKind::UnavailableHtml => "503-html",
            FaultKind::Truncated => "truncated",
            FaultKind::Slow => "slow",
            FaultKind::Reset => "reset",
            FaultKind::Unauthorized => "401",
        }
    }
}

/// Starts serving; resolves when `shutdown` resolves (graceful).
pub async fn serve(
    listener: tokio::net::TcpListener,
    args: SimArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(addr = ?listener.local_addr().ok(), "task API simulator listening");
    axum::serve(listener, router(args))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The router, for embedding.
pub fn router(args: SimArgs) -> Router {
    let shared = Arc::new(Shared {
        state: Mutex::new(SimState::new(&args)),
        args,
    });
    Router::new()
        .route("/_sim/tasks", post(create_tasks))
        .route("/_sim/tasks/{id}", get(task_info))
        .route("/_sim/faults", post(set_faults))
        .route("/_sim/stats", get(stats))
        .route("/_sim/reset", post(reset_stats))
        .route("/{service}/tasks", post(tasks_endpoint))
        .with_state(shared)
}

// ---------------------------------------------------------------------------
// Task specs and state

/// How a task ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Succeeded,
    Failed,
    FailedString,
    ItemError,
    FailedUnfinished,
    Hiccup,
    Never,
}

/// What `response` looks like before any item has data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RunningShape {
    Missing,
    Null,
    Empty,
    Ack,
}

/// Vocabulary of item states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StateWords {
    Standard,
    Alt,
}

/// Body of `POST /_sim/tasks`: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskSpec {
    id: Option<String>,
    service: Option<String>,
    outcome: Option<Outcome>,
    duration_ms: Option<u64>,
    items: Option<u8>,
    running_shape: Option<RunningShape>,
    state_words: Option<StateWords>,
}

/// One simulated upstream task.
#[derive(Debug, Clone)]
struct Task {
    id: String,
    service: String,
    outcome: Outcome,
    duration_ms: u64,
    items: u8,
    running_shape: RunningShape,
    state_words: StateWords,
    created_ms: u64,
    /// Seed of the task's stable pseudo-random fields.
    key: u64,
    polls: u64,
    hiccup_done: bool,
}

/// Request counters, cleared by `POST /_sim/reset`.
#[derive(Debug, Default)]
struct Stats {
    requests: u64,
    batch_requests: u64,
    single_requests: u64,
    ids_requested: u64,
    max_ids_per_request: u64,
    faults: BTreeMap<&'static str, u64>,
    statuses: BTreeMap<u16, u64>,
    max_in_flight: usize,
}

/// Fault settings, changeable through `POST /_sim/faults`.
#[derive(Debug)]
struct Faults {
    rate: f64,
    kinds: Vec<FaultKind>,
    script: VecDeque<FaultKind>,
    slow_ms: u64,
}

/// Token bucket of `--rate-limit`.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let cap = self.rate.max(1.0);
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(cap);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Everything mutable, behind one mutex.
#[derive(Debug)]
struct SimState {
    tasks: HashMap<String, Task>,
    stats: Stats,
    faults: Faults,
    bucket: Option<Bucket>,
    in_flight: usize,
    rng: StdRng,
}

impl SimState {
    fn new(args: &SimArgs) -> Self {
        Self {
            tasks: HashMap::new(),
            stats: Stats::default(),
            faults: Faults {
                rate: args.fault_rate,
                kinds: args.faults.clone(),
                script: VecDeque::new(),
                slow_ms: args.slow_ms,
            },
            bucket: args.rate_limit.map(|rate| Bucket {
                rate,
                tokens: rate.max(1.0),
                last: Instant::now(),
            }),
            in_flight: 0,
            rng: StdRng::seed_from_u64(args.seed),
        }
    }

    /// Picks the fault for this request: scripted first, then random.
    fn next_fault(&mut self) -> Option<FaultKind> {
        if let Some(kind) = self.faults.script.pop_front() {
            return Some(kind);
        }
        if self.faults.rate > 0.0 && self.rng.r#gen::<f64>() < self.faults.rate {
            let pool: &[FaultKind] = if self.faults.kinds.is_empty() {
                &FaultKind::ALL
            } else {
                &self.faults.kinds
            };
            return Some(pool[self.rng.gen_range(0..pool.len())]);
        }
        None
    }
}

/// Immutable options plus the mutable state.
#[derive(Debug)]
struct Shared {
    args: SimArgs,
    state: Mutex<SimState>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The known task, or one created at first sight from hash(seed, id),
    /// or `None` for IDs the upstream never knows.
    fn lookup<'a>(
        &self,
        st: &'a mut SimState,
        id: &str,
        service: &str,
        now: u64,
    ) -> Option<&'a mut Task> {
        if !st.tasks.contains_key(id) {
            let task = self.implicit_task(id, service, now)?;
            st.tasks.insert(id.to_owned(), task);
        }
        st.tasks.get_mut(id)
    }

    fn implicit_task(&self, id: &str, service: &str, now: u64) -> Option<Task> {
        let a = &self.args;
        let key = hash_str(a.seed, id);
        if id.starts_with("missing-") || unit(mix(key, 1)) < a.unknown_rate {
            return None;
        }
        let (lo, hi) = (
            a.min_duration_ms.min(a.max_duration_ms),
            a.max_duration_ms.max(a.min_duration_ms),
        );
        let outcome = if unit(mix(key, 2)) < a.fail_rate {
            [Outcome::Failed, Outcome::FailedString, Outcome::ItemError][(mix(key, 3) % 3) as usize]
        } else {
            Outcome::Succeeded
        };
        let shapes = [
            RunningShape::Ack,
            RunningShape::Missing,
            RunningShape::Null,
            RunningShape::Empty,
        ];
        Some(Task {
            id: id.to_owned(),
            service: service.to_owned(),
            outcome,
            duration_ms: lo + mix(key, 4) % (hi - lo + 1),
            items: 1 + (mix(key, 5) % 2) as u8,
            running_shape: shapes[(mix(key, 6) % 4) as usize],
            state_words: StateWords::Standard,
            created_ms: now,
            key,
            polls: 0,
            hiccup_done: false,
        })
    }

    fn task_from_spec(&self, spec: TaskSpec, now: u64) -> Task {
        let id = spec.id.unwrap_or_else(random_uuid);
        Task {
            key: hash_str(self.args.seed, &id),
            id,
            service: spec.service.unwrap_or_else(|| "producer".to_owned()),
            outcome: spec.outcome.unwrap_or(Outcome::Succeeded),
            duration_ms: spec.duration_ms.unwrap_or(1000),
            items: spec.items.unwrap_or(1).clamp(1, 4),
            running_shape: spec.running_shape.unwrap_or(RunningShape::Ack),
            state_words: spec.state_words.unwrap_or(StateWords::Standard),
            created_ms: now,
            polls: 0,
            hiccup_done: false,
        }
    }
}

/// Decrements the in-flight count when the request ends (or is cancelled).
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
    }
}

// ---------------------------------------------------------------------------
// The tasks endpoint

/// Body of `POST /{service}/tasks`.
#[derive(Debug, Deserialize)]
struct TasksRequest {
    action: Option<String>,
    id: Option<String>,
    ids: Option<Vec<String>>,
}

/// A parsed tasks request, or the 400 it deserves.
enum Call {
    Single(String),
    Batch(Vec<String>),
    Invalid(&'static str, String),
}

fn parse_call(body: &[u8]) -> Call {
    let req: TasksRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return Call::Invalid("bad_request", format!("invalid JSON body: {e}")),
    };
    let action = req.action.as_deref().unwrap_or(if req.ids.is_some() {
        "retrieve_batch"
    } else {
        "retrieve"
    });
    match (action, req.id, req.ids) {
        ("retrieve", Some(id), _) => Call::Single(id),
        ("retrieve_batch", _, Some(ids)) => Call::Batch(ids),
        ("retrieve", None, _) => Call::Invalid("bad_request", "missing field `id`".into()),
        ("retrieve_batch", _, None) => Call::Invalid("bad_request", "missing field `ids`".into()),
        (other, _, _) => Call::Invalid(
            "api_not_implemented",
            format!("action `{other}` is not implemented"),
        ),
    }
}

/// What the gatekeeping decided for a request.
enum Gate {
    Reject(Response),
    Fault(FaultKind, u64),
    Normal,
}

async fn tasks_endpoint(
    State(sh): State<Arc<Shared>>,
    Path(service): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = parse_call(&body);
    let authorized = match &sh.args.token {
        None => true,
        Some(t) => headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|v| v == t),
    };
    let (guard, gate) = {
        let mut st = sh.lock();
        st.in_flight += 1;
        st.stats.max_in_flight = st.stats.max_in_flight.max(st.in_flight);
        let s = &mut st.stats;
        s.requests += 1;
        match &call {
            Call::Single(_) => s.single_requests += 1,
            Call::Batch(ids) => {
                s.batch_requests += 1;
                s.ids_requested += ids.len() as u64;
                s.max_ids_per_request = s.max_ids_per_request.max(ids.len() as u64);
            }
            Call::Invalid(..) => {}
        }
        let gate = if !authorized {
            Gate::Reject(invalid_token())
        } else if !st.bucket.as_mut().is_none_or(Bucket::take)
            || sh.args.max_concurrent.is_some_and(|m| st.in_flight > m)
        {
            Gate::Reject(too_many_requests(true))
        } else if let Some(kind) = st.next_fault() {
            *st.stats.faults.entry(kind.name()).or_default() += 1;
            Gate::Fault(kind, st.faults.slow_ms)
        } else {
            Gate::Normal
        };
        (InFlight(sh.clone()), gate)
    };
    let resp = match gate {
        Gate::Reject(resp) => resp,
        Gate::Normal => answer(&sh, &service, call),
        Gate::Fault(kind, slow_ms) => fault(&sh, &service, call, kind, slow_ms).await,
    };
    *sh.lock()
        .stats
        .statuses
        .entry(resp.status().as_u16())
        .or_default() += 1;
    drop(guard);
    resp
}

async fn fault(sh: &Shared, service: &str, call: Call, kind: FaultKind, slow_ms: u64) -> Response {
    match kind {
        FaultKind::RateLimited => too_many_requests(true),
        FaultKind::RateLimitedNoRetryAfter => too_many_requests(false),
        FaultKind::ServerError => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "internal server error",
        ),
        FaultKind::BadGatewayHtml => html(StatusCode::BAD_GATEWAY, "502 Bad Gateway"),
        FaultKind::UnavailableHtml => html(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 Service Temporarily Unavailable",
        ),
        FaultKind::Unauthorized => invalid_token(),
        FaultKind::Slow => {
            tokio::time::sleep(Duration::from_millis(slow_ms)).await;
            answer(sh, service, call)
        }
        FaultKind::Truncated => {
            let (_, mut body) = answer_body(sh, service, call);
            body.truncate(body.len() / 2);
            json_response(StatusCode::OK, body)
        }
        FaultKind::Reset => {
            let (_, body) = answer_body(sh, service, call);
            let half = body.len() / 2;
            let mut body = body;
            body.truncate(half);
            let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from(body)),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "simulated connection reset",
                )),
            ];
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(futures::stream::iter(chunks)))
                .expect("valid response")
        }
    }
}

fn answer(sh: &Shared, service: &str, call: Call) -> Response {
    let (status, body) = answer_body(sh, service, call);
    json_response(status, body)
}

/// The normal answer: status and JSON body.
fn answer_body(sh: &Shared, service: &str, call: Call) -> (StatusCode, Vec<u8>) {
    match call {
        Call::Invalid(code, msg) => (StatusCode::BAD_REQUEST, error_body(code, &msg)),
        Call::Single(id) => {
            let now = now_ms();
            let snap = {
                let mut st = sh.lock();
                sh.lookup(&mut st, &id, service, now).map(|t| poll(t, now))
            };
            match snap {
                Some((task, hiccup)) => (StatusCode::OK, to_json(&record(&task, now, hiccup))),
                None => (
                    StatusCode::NOT_FOUND,
                    error_body("not_found", "task not found"),
                ),
            }
        }
        Call::Batch(ids) => {
            if let Some(max) = sh.args.max_batch.filter(|&max| ids.len() > max) {
                let msg = format!("too many ids in one batch: {} > {max}", ids.len());
                return (StatusCode::BAD_REQUEST, error_body("bad_request", &msg));
            }
            let now = now_ms();
            let mut snaps = Vec::with_capacity(ids.len());
            {
                let mut st = sh.lock();
                for id in &ids {
                    let Some(snap) = sh.lookup(&mut st, id, service, now).map(|t| poll(t, now))
                    else {
                        continue;
                    };
                    let rate = sh.args.duplicate_rate;
                    if rate > 0.0 && st.rng.r#gen::<f64>() < rate {
                        snaps.push(snap.clone());
                    }
                    snaps.push(snap);
                }
            }
            let items: Vec<Value> = snaps.iter().map(|(t, h)| record(t, now, *h)).collect();
            let count = items.len();
            (
                StatusCode::OK,
                to_json(&json!({"items": items, "count": count})),
            )
        }
    }
}

/// Counts a poll of `t`; decides whether this poll is the hiccup; snapshots the task.
fn poll(t: &mut Task, now: u64) -> (Task, bool) {
    t.polls += 1;
    let hiccup =
        t.outcome == Outcome::Hiccup && !t.hiccup_done && now >= t.created_ms + t.duration_ms / 2;
    t.hiccup_done |= hiccup;
    (t.clone(), hiccup)
}

// ---------------------------------------------------------------------------
// Task records

const MODEL: &str = "FUZZ-2.0 Pro";

/// The record of `t` as seen at `now` (ms since the epoch).
fn record(t: &Task, now: u64, hiccup: bool) -> Value {
    let k = t.key;
    let d = t.duration_ms;
    let e = now.saturating_sub(t.created_ms);
    let start_off = 500.min(d / 5);
    let finished =
        e >= d && !hiccup && !matches!(t.outcome, Outcome::Never | Outcome::FailedUnfinished);
    let kind = if t.service == "producer" {
        "audios"
    } else {
        t.service.as_str()
    };
    let mut r = Map::new();
    r.insert("_id".into(), hex24(k).into());
    r.insert("id".into(), t.id.clone().into());
    r.insert("api_id".into(), uuid(mix(k, 11)).into());
    r.insert("application_id".into(), uuid(mix(k, 12)).into());
    r.insert("user_id".into(), uuid(mix(k, 13)).into());
    r.insert("credential_id".into(), uuid(mix(k, 14)).into());
    r.insert("trace_id".into(), uuid(mix(k, 15)).into());
    r.insert("type".into(), kind.into());
    r.insert(
        "request".into(),
        json!({"action": "generate", "model": MODEL,
               "prompt": format!("a calm song about lighthouse number {}", k % 1000)}),
    );
    r.insert("created_at".into(), secs(t.created_ms).into());
    if e >= start_off {
        r.insert("started_at".into(), secs(t.created_ms + start_off).into());
    }
    if let Some(resp) = response(t, e, hiccup) {
        r.insert("response".into(), resp);
    }
    if finished {
        r.insert("finished_at".into(), secs(t.created_ms + d).into());
        r.insert("elapsed".into(), ((d - start_off) as f64 / 1000.0).into());
        r.insert("duration".into(), (d as f64 / 1000.0).into());
    }
    Value::Object(r)
}

/// The `response` field after `e` ms; `None` when the key is missing.
fn response(t: &Task, e: u64, hiccup: bool) -> Option<Value> {
    let d = t.duration_ms;
    if hiccup {
        let err = json!({"code": "api_error", "message": "upstream temporarily unavailable"});
        return Some(failure(t, err));
    }
    if e >= d && t.outcome != Outcome::Never {
        let generation_failed = || {
            json!({"code": "generation_failed",
                   "message": "generation failed: the model could not complete the request"})
        };
        match t.outcome {
            Outcome::Failed | Outcome::FailedUnfinished => {
                return Some(failure(t, generation_failed()));
            }
            Outcome::FailedString => {
                let err = "generation failed: content policy violation".into();
                return Some(failure(t, err));
            }
            _ => {}
        }
    } else if e * 5 < d {
        return match t.running_shape {
            RunningShape::Missing => None,
            RunningShape::Null => Some(Value::Null),
            RunningShape::Empty => Some(json!({})),
            RunningShape::Ack => Some(json!({"success": true, "task_id": t.id})),
        };
    }
    let items: Vec<Value> = (0..u64::from(t.items)).map(|i| item(t, i, e)).collect();
    Some(json!({"task_id": t.id, "data": items}))
}

fn failure(t: &Task, error: Value) -> Value {
    json!({"success": false, "error": error, "task_id": t.id, "trace_id": uuid(mix(t.key, 16))})
}

/// Item `i` of `t` after `e` ms: pending, running with progress, or finished.
fn item(t: &Task, i: u64, e: u64) -> Value {
    let n = u64::from(t.items);
    let d = t.duration_ms;
    let finish = d * (i + 1) / n;
    let ik = mix(t.key, 100 + i);
    let id = uuid(ik);
    let created_at = iso8601(t.created_ms + 300, ik % 1000);
    let title = format!("Lighthouse {}", ik % 100);
    if t.outcome == Outcome::Never || e < finish {
        if e * 5 < d * 2 {
            return json!({"id": id, "state": "pending", "model": MODEL, "created_at": created_at});
        }
        let pct = (e * 100 / finish.max(1)).clamp(1, 99);
        let progress = if i.is_multiple_of(2) {
            Value::from(format!("{pct}%"))
        } else {
            Value::from(pct)
        };
        return json!({"id": id, "title": title, "state": "running", "progress": progress,
                      "model": MODEL, "created_at": created_at});
    }
    let error = t.outcome == Outcome::ItemError && i == n - 1;
    let state = match (t.state_words, error) {
        (StateWords::Standard, false) => "succeeded",
        (StateWords::Standard, true) => "error",
        (StateWords::Alt, true) => "failed",
        (StateWords::Alt, false) if i.is_multiple_of(2) => "completed",
        (StateWords::Alt, false) => "complete",
    };
    let url = |u: &str| if error { Value::Null } else { u.into() };
    let mut v = json!({
        "id": id,
        "title": title,
        "image_url": url("https://example.invalid/i.jpg"),
        "audio_url": url("https://example.invalid/a.m4a"),
        "video_url": null,
        "model": MODEL,
        "progress": "100%",
        "state": state,
        "duration": format!("{}.{:02}", 60 + ik % 180, (ik >> 8) % 100),
        "created_at": created_at,
    });
    if error {
        v["error_message"] = "generation failed for this item".into();
    }
    v
}

// ---------------------------------------------------------------------------
// Control endpoints

async fn create_tasks(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let specs: Result<Vec<TaskSpec>, serde_json::Error> = serde_json::from_slice::<Value>(&body)
        .and_then(|v| match v {
            Value::Object(mut m) if m.contains_key("tasks") => {
                serde_json::from_value(m.remove("tasks").unwrap_or_default())
            }
            other => serde_json::from_value(other).map(|s| vec![s]),
        });
    let specs = match specs {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("invalid task spec: {e}");
            return error_response(StatusCode::BAD_REQUEST, "bad_request", &msg);
        }
    };
    let now = now_ms();
    let tasks: Vec<Task> = specs
        .into_iter()
        .map(|s| sh.task_from_spec(s, now))
        .collect();
    let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    {
        let mut st = sh.lock();
        for t in tasks {
            st.tasks.insert(t.id.clone(), t);
        }
    }
    json_response(StatusCode::CREATED, to_json(&json!({ "ids": ids })))
}

async fn task_info(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let Some(t) = sh.lock().tasks.get(&id).cloned() else {
        return error_response(StatusCode::NOT_FOUND, "not_found", "task not found");
    };
    let finishes = (t.outcome != Outcome::Never).then_some(t.created_ms + t.duration_ms);
    let v = json!({
        "id": t.id, "service": t.service, "created_at_ms": t.created_ms,
        "finishes_at_ms": finishes, "duration_ms": t.duration_ms, "items": t.items,
        "outcome": t.outcome, "polls": t.polls,
    });
    json_response(StatusCode::OK, to_json(&v))
}

/// Body of `POST /_sim/faults`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsUpdate {
    rate: Option<f64>,
    kinds: Option<Vec<FaultKind>>,
    script: Option<Vec<FaultKind>>,
    slow_ms: Option<u64>,
}

async fn set_faults(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let update = if body.iter().all(u8::is_ascii_whitespace) {
        Ok(FaultsUpdate::default())
    } else {
        serde_json::from_slice::<FaultsUpdate>(&body)
    };
    let update = match update {
        Ok(u) => u,
        Err(e) => {
            let msg = format!("invalid faults settings: {e}");
            return error_response(StatusCode::BAD_REQUEST, "bad_request", &msg);
        }
    };
    let v = {
        let mut st = sh.lock();
        let f = &mut st.faults;
        if let Some(rate) = update.rate {
            f.rate = rate;
        }
        if let Some(kinds) = update.kinds {
            f.kinds = kinds;
        }
        if let Some(slow_ms) = update.slow_ms {
            f.slow_ms = slow_ms;
        }
        f.script.extend(update.script.unwrap_or_default());
        json!({"rate": f.rate, "kinds": f.kinds, "script": f.script, "slow_ms": f.slow_ms})
    };
    json_response(StatusCode::OK, to_json(&v))
}

async fn stats(State(sh): State<Arc<Shared>>) -> Response {
    let v = {
        let st = sh.lock();
        let s = &st.stats;
        let mean = if s.batch_requests == 0 {
            0.0
        } else {
            s.ids_requested as f64 / s.batch_requests as f64
        };
        json!({
            "requests": s.requests,
            "batch_requests": s.batch_requests,
            "single_requests": s.single_requests,
            "ids_requested": s.ids_requested,
            "max_ids_per_request": s.max_ids_per_request,
            "mean_ids_per_request": mean,
            "faults": s.faults,
            "statuses": s.statuses,
            "max_in_flight": s.max_in_flight,
            "tasks": st.tasks.len(),
        })
    };
    json_response(StatusCode::OK, to_json(&v))
}

async fn reset_stats(State(sh): State<Arc<Shared>>) -> Response {
    sh.lock().stats = Stats::default();
    json_response(StatusCode::OK, to_json(&json!({"reset": true})))
}

// ---------------------------------------------------------------------------
// Responses

fn to_json(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a Value always serializes")
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_body(code: &str, message: &str) -> Vec<u8> {
    to_json(&json!({
        "success": false,
        "error": {"code": code, "message": message},
        "trace_id": random_uuid(),
    }))
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    json_response(status, error_body(code, message))
}

fn invalid_token() -> Response {
    error_response(
        StatusCode::UNAUTHORIZED,
        "invalid_token",
        "invalid or missing bearer token",
    )
}

fn too_many_requests(retry_after: bool) -> Response {
    let mut resp = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        "too many requests, please slow down",
    );
    if retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

fn html(status: StatusCode, title: &str) -> Response {
    let page = format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n\
         <center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    );
    let mut resp = Response::new(Body::from(page));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

// ---------------------------------------------------------------------------
// Time, hashing and identifiers

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds since the epoch as float seconds (e.g. 1767119745.524).
fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` of `ms`, with `us` extra microseconds (< 1000).
fn iso8601(ms: u64, us: u64) -> String {
    let at = UNIX_EPOCH + std::time::Duration::from_micros(ms * 1000 + us % 1000);
    humantime::format_rfc3339_micros(at).to_string()
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Stable hash of (seed, s): FNV-1a finished with splitmix.
fn hash_str(seed: u64, s: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ splitmix(seed);
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix(h)
}

/// Derives the `n`th independent value from `key`.
fn mix(key: u64, n: u64) -> u64 {
    splitmix(key ^ splitmix(n))
}

/// Uniform in [0, 1).
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn uuid_of(a: u64, b: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

fn uuid(k: u64) -> String {
    uuid_of(k, splitmix(k))
}

fn random_uuid() -> String {
    let mut rng = rand::thread_rng();
    uuid_of(rng.r#gen(), rng.r#gen())
}

/// A 24-hex-digit Mongo-like `_id`.
fn hex24(k: u64) -> String {
    format!("{k:016x}{:08x}", splitmix(k) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use tokio::sync::oneshot;

    /// A running simulator; dropping it shuts the server down.
    struct TestSim {
        base: String,
        client: reqwest::Client,
        _stop: oneshot::Sender<()>,
    }

    async fn start(args: SimArgs) -> TestSim {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, args, async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        TestSim {
            base,
            client,
            _stop: stop,
        }
    }

    impl TestSim {
        async fn post(&self, path: &str, body: Value) -> reqwest::Response {
            let url = format!("{}{path}", self.base);
            self.client.post(url).json(&body).send().await.unwrap()
        }

        async fn get_json(&self, path: &str) -> Value {
            let url = format!("{}{path}", self.base);
            self.client
                .get(url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        }

        async fn create(&self, spec: Value) {
            let resp = self.post("/_sim/tasks", spec).await;
            assert_eq!(resp.status(), 201);
        }

        async fn retrieve(&self, id: &str) -> reqwest::Response {
            self.post("/producer/tasks", json!({"id": id, "action": "retrieve"}))
                .await
        }

        async fn record(&self, id: &str) -> Value {
            let resp = self.retrieve(id).await;
            assert_eq!(resp.status(), 200);
            resp.json().await.unwrap()
        }

        async fn batch(&self, ids: &[&str]) -> Value {
            let body = json!({"ids": ids, "action": "retrieve_batch"});
            let resp = self.post("/producer/tasks", body).await;
            assert_eq!(resp.status(), 200);
            resp.json().await.unwrap()
        }

        /// Polls `id` every 5 ms until `done` holds; returns every record seen.
        async fn poll_until(&self, id: &str, done: impl Fn(&Value) -> bool) -> Vec<Value> {
            let deadline = Instant::now() + Duration::from_secs(4);
            let mut seen = Vec::new();
            loop {
                let r = self.record(id).await;
                let stop = done(&r);
                seen.push(r);
                if stop {
                    return seen;
                }
                assert!(Instant::now() < deadline, "deadline passed polling {id}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    fn finished(r: &Value) -> bool {
        r.get("finished_at").is_some()
    }

    fn states(r: &Value) -> Vec<String> {
        r["response"]["data"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|i| i["state"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn assert_error_shape(v: &Value, code: &str) {
        assert_eq!(v["success"], false, "{v}");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"].is_string(), "{v}");
        assert_eq!(v["trace_id"].as_str().unwrap().len(), 36, "{v}");
    }

    #[tokio::test]
    async fn batch_omits_unknown_and_keeps_duplicates() {
        let sim = start(SimArgs::default()).await;
        sim.create(json!({"id": "a", "duration_ms": 5000})).await;
        let v = sim.batch(&["a", "missing-x", "a", "implicit-1"]).await;
        let ids: Vec<&str> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a", "a", "implicit-1"]);
        assert_eq!(v["count"], 3);
        let resp = sim.retrieve("missing-y").await;
        assert_eq!(resp.status(), 404);
        assert_error_shape(&resp.json().await.unwrap(), "not_found");
        let info = sim.get_json("/_sim/tasks/a").await;
        assert_eq!(info["polls"], 2);

        let never_known = start(SimArgs {
            unknown_rate: 1.0,
            duplicate_rate: 1.0,
            ..SimArgs::default()
        })
        .await;
        assert_eq!(never_known.batch(&["x", "y"]).await["count"], 0);
        never_known.create(json!({"id": "x"})).await;
        assert_eq!(never_known.batch(&["x"]).await["count"], 2);
    }

    #[tokio::test]
    async fn succeeded_task_evolves_and_finishes_on_time() {
        let sim = start(SimArgs::default()).await;
        sim.create(json!({"id": "s", "duration_ms": 400})).await;
        let first = sim.record("s").await;
        assert_eq!(first["response"], json!({"success": true, "task_id": "s"}));
        assert!(!finished(&first));
        let seen = sim.poll_until("s", finished).await;
        let all: BTreeSet<String> = seen.iter().flat_map(states).collect();
        assert!(
            all.contains("pending") && all.contains("running"),
            "{all:?}"
        );
        let last = seen.last().unwrap();
        assert_eq!(states(last), ["succeeded"]);
        assert_eq!(last["response"]["task_id"], "s");
        let item = &last["response"]["data"][0];
        assert_eq!(item["progress"], "100%");
        assert_eq!(item["audio_url"], "https://example.invalid/a.m4a");
        assert!(item["video_url"].is_null());
        assert_eq!(item["created_at"].as_str().unwrap().len(), 27);
        assert_eq!(last["_id"].as_str().unwrap().len(), 24);
        assert_eq!(last["type"], "audios");
        for k in [
            "api_id",
            "application_id",
            "user_id",
            "credential_id",
            "trace_id",
        ] {
            assert_eq!(last[k].as_str().unwrap().len(), 36, "{k}");
        }
        let info = sim.get_json("/_sim/tasks/s").await;
        let created = info["created_at_ms"].as_u64().unwrap();
        assert_eq!(info["finishes_at_ms"].as_u64().unwrap(), created + 400);
        let fin = last["finished_at"].as_f64().unwrap();
        assert!((fin * 1000.0 - (created + 400) as f64).abs() < 0.5);
        assert!((last["created_at"].as_f64().unwrap() * 1000.0 - created as f64).abs() < 0.5);
        assert!(last["started_at"].is_f64());
        assert_eq!(last["duration"], 0.4);
        assert!(last["elapsed"].is_f64());
    }

    #[tokio::test]
    async fn running_shapes_and_service_type() {
        let sim = start(SimArgs::default()).await;
        let specs: Vec<Value> = ["missing", "null", "empty"]
            .iter()
            .map(|s| json!({"id": s, "running_shape": s, "duration_ms": 60000}))
            .collect();
        sim.create(json!({"tasks": specs})).await;
        assert!(sim.record("missing").await.get("response").is_none());
        assert!(sim.record("null").await["response"].is_null());
        assert_eq!(sim.record("empty").await["response"], json!({}));
        sim.create(json!({"id": "v", "service": "veo"})).await;
        assert_eq!(sim.record("v").await["type"], "veo");
        assert_eq!(sim.record("empty").await.get("started_at"), None);
    }

    #[tokio::test]
    async fn failure_outcomes() {
        let sim = start(SimArgs::default()).await;
        let specs: Vec<Value> = [
            "failed",
            "failed_string",
            "item_error",
            "failed_unfinished",
            "never",
        ]
        .iter()
        .map(|o| json!({"id": o, "outcome": o, "duration_ms": 150, "items": 2}))
        .collect();
        sim.create(json!({"tasks": specs})).await;
        sim.poll_until("failed", finished).await;
        sim.poll_until("failed_unfinished", |r| r["response"]["success"] == false)
            .await;
        let ids = [
            "failed",
            "failed_string",
            "item_error",
            "failed_unfinished",
            "never",
        ];
        let v = sim.batch(&ids).await;
        let items = v["items"].as_array().unwrap();
        let [failed, failed_string, item_error, unfinished, never] = &items[..] else {
            panic!("{v}");
        };
        assert!(finished(failed));
        assert_eq!(failed["response"]["error"]["code"], "generation_failed");
        assert_eq!(failed["response"]["task_id"], "failed");
        assert!(failed["response"]["trace_id"].is_string());
        assert!(finished(failed_string));
        assert_eq!(failed_string["response"]["success"], false);
        assert!(failed_string["response"]["error"].is_string());
        assert!(finished(item_error));
        assert_eq!(states(item_error), ["succeeded", "error"]);
        assert!(!finished(unfinished));
        assert!(unfinished["response"]["error"]["message"].is_string());
        assert!(!finished(never));
        assert_eq!(states(never), ["running", "running"]);
        let info = sim.get_json("/_sim/tasks/never").await;
        assert!(info["finishes_at_ms"].is_null());
        assert_eq!(info["outcome"], "never");
        let info = sim.get_json("/_sim/tasks/failed_unfinished").await;
        assert!(info["finishes_at_ms"].is_u64());
    }

    #[tokio::test]
    async fn hiccup_appears_exactly_once() {
        let sim = start(SimArgs::default()).await;
        sim.create(json!({"id": "h", "outcome": "hiccup", "duration_ms": 300}))
            .await;
        let seen = sim.poll_until("h", finished).await;
        let hiccups: Vec<&Value> = seen
            .iter()
            .filter(|r| r["response"]["success"] == false)
            .collect();
        assert_eq!(hiccups.len(), 1, "{seen:?}");
        assert!(!finished(hiccups[0]));
        assert!(hiccups[0]["response"]["error"]["code"].is_string());
        assert_eq!(states(seen.last().unwrap()), ["succeeded"]);
        assert_ne!(seen.last().unwrap()["response"]["success"], false);
    }

    #[tokio::test]
    async fn items_finish_staggered() {
        let sim = start(SimArgs::default()).await;
        sim.create(json!({"id": "two", "items": 2, "duration_ms": 1000}))
            .await;
        let seen = sim
            .poll_until("two", |r| states(r) == ["succeeded", "running"])
            .await;
        let last = seen.last().unwrap();
        assert!(!finished(last));
        assert!(last["response"]["data"][1]["progress"].is_u64());
        let running_even = seen
            .iter()
            .find(|r| states(r).first().is_some_and(|s| s == "running"))
            .expect("item 0 seen running");
        let p = running_even["response"]["data"][0]["progress"]
            .as_str()
            .unwrap();
        assert!(p.ends_with('%'));

        sim.create(json!({"id": "alt", "items": 2, "duration_ms": 50, "state_words": "alt"}))
            .await;
        let seen = sim.poll_until("alt", finished).await;
        assert_eq!(states(seen.last().unwrap()), ["completed", "complete"]);
    }

    #[tokio::test]
    async fn scripted_faults_in_order() {
        let sim = start(SimArgs::default()).await;
        sim.create(json!({"id": "t"})).await;
        let script = [
            "429",
            "429-no-retry-after",
            "500",
            "502-html",
            "503-html",
            "truncated",
            "reset",
            "401",
        ];
        let settings: Value = sim
            .post("/_sim/faults", json!({"script": script}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(settings["script"].as_array().unwrap().len(), script.len());

        let r = sim.retrieve("t").await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_error_shape(&r.json().await.unwrap(), "too_many_requests");
        let r = sim.retrieve("t").await;
        assert_eq!(r.status(), 429);
        assert!(r.headers().get("retry-after").is_none());
        let r = sim.retrieve("t").await;
        assert_eq!(r.status(), 500);
        assert_error_shape(&r.json().await.unwrap(), "api_error");
        for status in [502, 503] {
            let r = sim.retrieve("t").await;
            assert_eq!(r.status(), status);
            let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
            assert!(ct.starts_with("text/html"));
            assert!(r.text().await.unwrap().contains("<html>"));
        }
        let r = sim.retrieve("t").await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        let body = r.bytes().await.unwrap();
        assert!(!body.is_empty());
        assert!(serde_json::from_slice::<Value>(&body).is_err());
        let url = format!("{}/producer/tasks", sim.base);
        let reset = match sim.client.post(url).json(&json!({"id": "t"})).send().await {
            Ok(r) => r.bytes().await.is_err(),
            Err(_) => true,
        };
        assert!(reset, "reset must surface as a client error");
        let r = sim.retrieve("t").await;
        assert_eq!(r.status(), 401);
        assert_error_shape(&r.json().await.unwrap(), "invalid_token");
        assert_eq!(sim.record("t").await["id"], "t");

        let stats = sim.get_json("/_sim/stats").await;
        for name in script {
            assert_eq!(stats["faults"][name], 1, "{name}: {stats}");
        }
        assert_eq!(stats["statuses"]["429"], 2);
        assert_eq!(stats["statuses"]["200"], 3);
    }

    #[tokio::test]
    async fn random_and_slow_faults() {
        let sim = start(SimArgs {
            fault_rate: 1.0,
            faults: vec![FaultKind::ServerError],
            ..SimArgs::default()
        })
        .await;
        assert_eq!(sim.retrieve("x").await.status(), 500);
        let v: Value = sim
            .post(
                "/_sim/faults",
                json!({"rate": 0.0, "script": ["slow"], "slow_ms": 150}),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(v["slow_ms"], 150);
        let t0 = Instant::now();
        assert_eq!(sim.retrieve("x").await.status(), 200);
        assert!(t0.elapsed() >= Duration::from_millis(150));
        assert_eq!(sim.retrieve("x").await.status(), 200);
    }

    #[tokio::test]
    async fn auth_batch_limit_and_rate_limit() {
        let sim = start(SimArgs {
            token: Some("s3cret".into()),
            max_batch: Some(2),
            ..SimArgs::default()
        })
        .await;
        let r = sim.retrieve("x").await;
        assert_eq!(r.status(), 401);
        assert_error_shape(&r.json().await.unwrap(), "invalid_token");
        let url = format!("{}/producer/tasks", sim.base);
        let send = |token: &'static str, ids: Vec<&'static str>| {
            sim.client
                .post(&url)
                .header("authorization", format!("Bearer {token}"))
                .json(&json!({"ids": ids, "action": "retrieve_batch"}))
                .send()
        };
        assert_eq!(send("wrong", vec!["x"]).await.unwrap().status(), 401);
        assert_eq!(send("s3cret", vec!["x", "y"]).await.unwrap().status(), 200);
        let r = send("s3cret", vec!["x", "y", "z"]).await.unwrap();
        assert_eq!(r.status(), 400);
        assert_error_shape(&r.json().await.unwrap(), "bad_request");

        let limited = start(SimArgs {
            rate_limit: Some(2.0),
            ..SimArgs::default()
        })
        .await;
        assert_eq!(limited.retrieve("a").await.status(), 200);
        assert_eq!(limited.retrieve("a").await.status(), 200);
        let r = limited.retrieve("a").await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_error_shape(&r.json().await.unwrap(), "too_many_requests");
    }

    #[tokio::test]
    async fn bad_requests_and_stats() {
        let sim = start(SimArgs::default()).await;
        sim.record("one").await;
        sim.batch(&["a", "b", "c"]).await;
        sim.batch(&["a", "b", "c", "d", "e"]).await;
        let r = sim
            .post("/producer/tasks", json!({"id": "a", "action": "delete"}))
            .await;
        assert_eq!(r.status(), 400);
        assert_error_shape(&r.json().await.unwrap(), "api_not_implemented");
        let url = format!("{}/producer/tasks", sim.base);
        let r = sim.client.post(url).body("not json").send().await.unwrap();
        assert_eq!(r.status(), 400);
        assert_error_shape(&r.json().await.unwrap(), "bad_request");

        let s = sim.get_json("/_sim/stats").await;
        assert_eq!(s["requests"], 5);
        assert_eq!(s["single_requests"], 1);
        assert_eq!(s["batch_requests"], 2);
        assert_eq!(s["ids_requested"], 8);
        assert_eq!(s["max_ids_per_request"], 5);
        assert_eq!(s["mean_ids_per_request"], 4.0);
        assert_eq!(s["statuses"], json!({"200": 3, "400": 2}));
        assert_eq!(s["tasks"], 6);
        assert_eq!(s["max_in_flight"], 1);
        assert_eq!(s["faults"], json!({}));

        let r = sim.post("/_sim/reset", json!({})).await;
        assert_eq!(r.status(), 200);
        let s = sim.get_json("/_sim/stats").await;
        assert_eq!(s["requests"], 0);
        assert_eq!(s["tasks"], 6);
    }

    #[tokio::test]
    async fn implicit_tasks_are_deterministic() {
        let args = SimArgs {
            seed: 7,
            fail_rate: 1.0,
            min_duration_ms: 100,
            max_duration_ms: 200,
            ..SimArgs::default()
        };
        let (a, b) = (start(args.clone()).await, start(args).await);
        let ids: Vec<String> = (0..20).map(|i| format!("id-{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        a.batch(&refs).await;
        b.batch(&refs).await;
        let mut outcomes = BTreeSet::new();
        for id in &ids {
            let (ia, ib) = (
                a.get_json(&format!("/_sim/tasks/{id}")).await,
                b.get_json(&format!("/_sim/tasks/{id}")).await,
            );
            assert_eq!(ia["duration_ms"], ib["duration_ms"]);
            assert_eq!(ia["outcome"], ib["outcome"]);
            assert_eq!(ia["items"], ib["items"]);
            let d = ia["duration_ms"].as_u64().unwrap();
            assert!((100..=200).contains(&d));
            outcomes.insert(ia["outcome"].as_str().unwrap().to_owned());
        }
        let expected = ["failed", "failed_string", "item_error"].map(String::from);
        assert_eq!(outcomes, BTreeSet::from(expected));
        let r = a
            .client
            .get(format!("{}/_sim/tasks/nope", a.base))
            .send()
            .await;
        assert_eq!(r.unwrap().status(), 404);
    }

    #[test]
    fn names_cli_and_dates() {
        use clap::{Parser, ValueEnum};
        for kind in FaultKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
            assert_eq!(FaultKind::from_str(kind.name(), false), Ok(kind));
        }
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            sim: SimArgs,
        }
        let cli = Cli::parse_from(["sim", "--faults", "429,502-html,reset", "--max-batch", "50"]);
        assert_eq!(
            cli.sim.faults,
            [
                FaultKind::RateLimited,
                FaultKind::BadGatewayHtml,
                FaultKind::Reset
            ]
        );
        assert_eq!(cli.sim.max_batch, Some(50));
        assert_eq!(cli.sim.listen.port(), 8090);
        assert_eq!(cli.sim.fail_rate, 0.2);
        assert_eq!(
            iso8601(1_767_119_760_994, 141),
            "2025-12-30T18:36:00.994141Z"
        );
        assert_eq!(iso8601(951_782_400_000, 0), "2000-02-29T00:00:00.000000Z");
        assert_eq!(secs(1_767_119_745_524).to_string(), "1767119745.524");
    }
}
