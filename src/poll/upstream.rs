//! The upstream client: `retrieve_batch` against `/{service}/tasks`, paced
//! by a rate limiter, capped in concurrency, backing off on 429 and 5xx.
//! Every failure is an error value for that batch; none loses an ID.
//!
//! May call: `poll::pacer`, `clock`, `config`, `http`, `limit`, `metrics`,
//! `profile`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::{Secret, UpstreamConfig};
use crate::http::parse_retry_after;
use crate::poll::schedule::upstream_backoff;
use crate::profile::{Profile, RequestMode};

/// Why a request produced no records. Each class is handled differently:
/// see the poller.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpstreamError {
    /// 429: the whole client slows down and pauses.
    #[error("429 too many requests")]
    RateLimited { retry_after: Option<Duration> },
    /// 401, or a 403 that says `invalid_token`: polling pauses until the
    /// token is fixed.
    #[error("{status} the upstream refuses the token ({code})")]
    Unauthorized { status: u16, code: String },
    /// 413, a 400 that says the batch is too big, or an answer over
    /// `upstream.max_response_bytes`: that service's batches halve.
    #[error("{status} the batch is too large ({code}: {message})")]
    TooLarge {
        status: u16,
        code: String,
        message: String,
    },
    /// Any other 4xx (404, 405, `api_not_implemented`, `token_mismatched`,
    /// a 403 from a firewall...): this service cannot be polled as
    /// configured; it backs off on its own, other services carry on.
    #[error("{status} the upstream refuses this service ({code}: {message})")]
    ServiceRefused {
        status: u16,
        code: String,
        message: String,
    },
    /// 5xx: the whole client backs off.
    #[error("HTTP {status} from the upstream")]
    Server {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("request failed: {0}")]
    Transport(String),
    #[error("unreadable answer: {0}")]
    Malformed(String),
}

impl UpstreamError {
    /// The `outcome` label of `taskhook_upstream_requests_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            UpstreamError::RateLimited { .. } => "rate_limited",
            UpstreamError::Unauthorized { .. } => "unauthorized",
            UpstreamError::TooLarge { .. } => "too_large",
            UpstreamError::ServiceRefused { .. } => "service_refused",
            UpstreamError::Server { .. } => "server_error",
            UpstreamError::Transport(_) => "transport_error",
            UpstreamError::Malformed(_) => "malformed",
        }
    }
}

/// Sorts a non-2xx answer into its class. `body` is the (capped) body.
pub fn classify_status(status: u16, retry_after: Option<Duration>, body: &[u8]) -> UpstreamError {
    let (code, message) = error_code(body);
    let says = |words: &[&str]| {
        let text = format!("{code} {message}").to_ascii_lowercase();
        words.iter().any(|w| text.contains(w))
    };
    match status {
        401 => UpstreamError::Unauthorized { status, code },
        403 if code == "invalid_token" => UpstreamError::Unauthorized { status, code },
        429 => UpstreamError::RateLimited { retry_after },
        413 => UpstreamError::TooLarge {
            status,
            code,
            message,
        },
        400 if says(&[
            "too many",
            "too large",
            "too long",
            "exceed",
            "maximum",
            "batch",
        ]) =>
        {
            UpstreamError::TooLarge {
                status,
                code,
                message,
            }
        }
        400..=499 => UpstreamError::ServiceRefused {
            status,
            code,
            message,
        },
        _ => UpstreamError::Server {
            status,
            retry_after,
        },
    }
}

/// One record of an answer: the parsed JSON for the terminal rule, and the
/// exact bytes to forward.
#[derive(Debug)]
pub struct Record {
    pub value: serde_json::Value,
    pub raw: Box<RawValue>,
}

/// A parsed answer, keyed by task ID. Records without an ID are counted,
/// not used; of two records for one ID the later wins unless only the
/// earlier is settled.
#[derive(Debug, Default)]
pub struct BatchAnswer {
    pub records: HashMap<String, Record>,
    /// IDs whose record could not be read (invalid JSON inside it): each is
    /// retried on its own schedule, and the rest of the answer is used.
    pub unreadable: Vec<String>,
    /// Items that could not be attributed to any task (no ID at all).
    pub unattributed: usize,
    /// Items the answer carried.
    pub items: usize,
    /// The answer's own total (`count`, or the profile's count field).
    pub count: Option<u64>,
    /// The answer was an empty object: it says nothing about any ID.
    pub empty: bool,
}

impl BatchAnswer {
    /// True when every item is attributed and the answer's total says none
    /// was left out: only then is an absent ID a miss.
    pub fn complete(&self) -> bool {
        !self.empty && self.unattributed == 0 && self.count.is_none_or(|c| c <= self.items as u64)
    }
}

/// Just the ID of a record that does not parse as a whole. Unknown fields
/// are skipped without checking their strings, so an invalid escape
/// elsewhere in the record does not hide whose it is.
#[derive(Deserialize)]
struct IdOnly {
    id: Option<String>,
    task_id: Option<String>,
    task: Option<Box<RawValue>>,
}

fn id_of_unreadable(raw: &RawValue, profile: &Profile) -> Option<String> {
    let r: IdOnly = serde_json::from_str(raw.get()).ok()?;
    if !profile.unwrap.is_empty()
        && let Some(inner) = &r.task
        && let Some(id) = id_of_unreadable(inner, profile)
    {
        return Some(id);
    }
    r.id.or(r.task_id)
}

/// The upstream's error shape.
#[derive(Deserialize)]
struct ErrorBody {
    error: Option<serde_json::Value>,
}

/// Parses a `retrieve_batch` answer under `profile`. Items are parsed one by
/// one so a bad item never spoils the rest.
pub fn parse_batch(body: &[u8], profile: &Profile) -> Result<BatchAnswer, UpstreamError> {
    let top: HashMap<String, Box<RawValue>> = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Malformed(format!("batch answer: {e}")))?;
    if top.is_empty() {
        // Some services answer `{}` when nothing matched.
        return Ok(BatchAnswer {
            empty: true,
            ..BatchAnswer::default()
        });
    }
    let items: Vec<Box<RawValue>> = match top.get("items") {
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|e| UpstreamError::Malformed(format!("batch answer: items: {e}")))?,
        None => return Err(UpstreamError::Malformed("batch answer: no `items`".into())),
    };
    let mut answer = BatchAnswer {
        items: items.len(),
        count: top
            .get(&profile.count_field)
            .and_then(|c| serde_json::from_str::<u64>(c.get()).ok()),
        ..BatchAnswer::default()
    };
    for raw in items {
        let value: serde_json::Value = match serde_json::from_str(raw.get()) {
            Ok(v) => v,
            Err(_) => {
                match id_of_unreadable(&raw, profile) {
                    Some(id) if !answer.unreadable.contains(&id) => answer.unreadable.push(id),
                    Some(_) => {}
                    None => answer.unattributed += 1,
                }
                continue;
            }
        };
        let Some(id) = profile.record_id(&value).map(str::to_owned) else {
            answer.unattributed += 1;
            continue;
        };
        answer.insert(profile, id, Record { value, raw });
    }
    Ok(answer)
}

/// True when `body` is a JSON object that names task `id` (`task_id` or
/// `id`): a task record, not an error about the request.
fn names_task(body: &[u8], id: &str) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| {
        ["task_id", "id"]
            .iter()
            .any(|k| v.get(*k).and_then(|x| x.as_str()) == Some(id))
    })
}

/// Parses the answer to a single `retrieve` of task `id`: the body is the
/// record. An empty object means the upstream knows no such task.
pub fn parse_single(body: &[u8], id: &str) -> Result<BatchAnswer, UpstreamError> {
    let raw: Box<RawValue> = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Malformed(format!("answer: {e}")))?;
    let value: serde_json::Value = serde_json::from_str(raw.get())
        .map_err(|e| UpstreamError::Malformed(format!("answer: {e}")))?;
    let mut answer = BatchAnswer::default();
    if value.as_object().is_some_and(|o| !o.is_empty()) {
        answer.items = 1;
        answer.records.insert(id.to_owned(), Record { value, raw });
    }
    Ok(answer)
}

impl BatchAnswer {
    fn insert(&mut self, profile: &Profile, id: String, record: Record) {
        let settled = |v: &serde_json::Value| {
            profile
                .record(v)
                .get("finished_at")
                .is_some_and(|f| !f.is_null())
        };
        if let Some(prev) = self.records.get(&id)
            && settled(&prev.value)
            && !settled(&record.value)
        {
            return;
        }
        self.records.insert(id, record);
    }
}

fn error_code(body: &[u8]) -> (String, String) {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    match parsed.and_then(|b| b.error) {
        Some(serde_json::Value::Object(o)) => (
            o.get("code")
                .and_then(|c| c.as_str())
                .unwrap_or("unknown")
                .to_string(),
            o.get("message")
                .and_then(|c| c.as_str())
                .unwrap_or("")
                .to_string(),
        ),
        // `{"error": "invalid_token"}`: a bare code.
        Some(serde_json::Value::String(s))
            if !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') =>
        {
            (s.clone(), s)
        }
        Some(serde_json::Value::String(s)) => ("unknown".into(), s),
        _ => ("unknown".into(), String::new()),
    }
}

use super::pacer::Pacer;
pub use super::pacer::{MIN_RATE, RATE_STEP};

/// What the daemon knows about the upstream's health, for `/readyz` and
/// `/v1/stats`.
#[derive(Debug, Clone, Serialize, Default, utoipa::ToSchema)]
pub struct UpstreamHealth {
    /// False after a 401: polling pauses until the token is fixed.
    pub token_accepted: bool,
    /// The request rate in force now (lowered after 429s).
    pub requests_per_second: f64,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    #[serde(serialize_with = "crate::clock::ser_opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_success_at: Option<i64>,
    pub requests: u64,
    pub failures: u64,
    /// Services the upstream refuses (404, 405, ...), each backing off on
    /// its own schedule.
    pub broken_services: Vec<ServiceHealth>,
}

/// A service the upstream refuses: since when, why, and when it is asked
/// again. Other services are not affected.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ServiceHealth {
    pub service: String,
    #[serde(serialize_with = "crate::clock::ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub broken_since: i64,
    pub status: u16,
    pub code: String,
    pub message: String,
    /// Refused requests in a row.
    pub failures: u32,
    #[serde(serialize_with = "crate::clock::ser_time")]
    #[schema(value_type = String, format = DateTime)]
    pub retry_at: i64,
}

/// One service's standing: its health, and the instant before which its
/// tasks are not polled.
#[derive(Debug)]
struct ServiceState {
    health: ServiceHealth,
    paused_until: Instant,
}

/// The client. One per daemon; shared by the poller's batch tasks.
pub struct UpstreamClient {
    http: reqwest::Client,
    cfg: UpstreamConfig,
    /// The token, replaceable by a config reload.
    token: std::sync::RwLock<Option<Secret>>,
    pacer: Mutex<Pacer>,
    /// Requests in flight at once: `max_concurrent_requests`, or this
    /// instance's share of it when several share the store.
    slots: crate::limit::Limit,
    health: Mutex<UpstreamHealth>,
    /// Services the upstream refuses, by name.
    broken: Mutex<HashMap<String, ServiceState>>,
    /// How long a refused service waits before it is asked again.
    broken_retry: std::sync::RwLock<Duration>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl UpstreamClient {
    pub fn new(
        cfg: UpstreamConfig,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.request_timeout.min(Duration::from_secs(10)))
            .user_agent(crate::http::user_agent())
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(cfg.max_concurrent_requests)
            .build()?;
        let now = Instant::now();
        Ok(UpstreamClient {
            http,
            pacer: Mutex::new(Pacer::new(cfg.max_requests_per_second, now)),
            slots: crate::limit::Limit::new(cfg.max_concurrent_requests),
            health: Mutex::new(UpstreamHealth {
                token_accepted: true,
                requests_per_second: cfg.max_requests_per_second,
                ..Default::default()
            }),
            broken: Mutex::default(),
            broken_retry: std::sync::RwLock::new(cfg.broken_service_retry),
            token: std::sync::RwLock::new(cfg.token.clone()),
            metrics,
            cfg,
        })
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    pub fn health(&self) -> UpstreamHealth {
        let mut h = self.health.lock().expect("health lock").clone();
        h.requests_per_second = self.pacer.lock().expect("pacer lock").rate();
        h.broken_services = self.broken_services();
        h
    }

    /// The services the upstream refuses now, by name.
    pub fn broken_services(&self) -> Vec<ServiceHealth> {
        let mut v: Vec<ServiceHealth> = self
            .broken
            .lock()
            .expect("broken lock")
            .values()
            .map(|s| s.health.clone())
            .collect();
        v.sort_by(|a, b| a.service.cmp(&b.service));
        v
    }

    /// Services whose tasks must wait, with how long until they may be
    /// polled again.
    pub fn paused_services(&self) -> Vec<(String, Duration)> {
        let now = Instant::now();
        self.broken
            .lock()
            .expect("broken lock")
            .iter()
            .filter(|(_, s)| s.paused_until > now)
            .map(|(k, s)| (k.clone(), s.paused_until - now))
            .collect()
    }

    /// True after the upstream refused the token (401), until a new one is set.
    pub fn token_refused(&self) -> bool {
        !self.health.lock().expect("health lock").token_accepted
    }

    /// Installs a new token (config reload): polling resumes at once.
    pub fn set_token(&self, token: Option<Secret>) {
        *self.token.write().expect("token lock") = token;
        self.health.lock().expect("health lock").token_accepted = true;
        self.pacer
            .lock()
            .expect("pacer lock")
            .resume(Instant::now());
    }

    /// Applies a reloaded `upstream.broken_service_retry`.
    pub fn set_broken_service_retry(&self, d: Duration) {
        *self.broken_retry.write().expect("retry lock") = d;
    }

    /// Reserves the next request start with the rate limiter: the poll
    /// loop does, as it hands a batch to its round, so the next claim
    /// already sees the budget spent. The round waits with
    /// [`wait_for`](Self::wait_for).
    pub fn reserve(&self) -> Instant {
        self.pacer
            .lock()
            .expect("pacer lock")
            .reserve(Instant::now())
    }

    /// Waits for a start reserved with [`reserve`](Self::reserve), and out
    /// any pause the upstream asked for since (however often it grows
    /// meanwhile), then for a new place in line after it, so the requests
    /// a pause held do not all leave the moment it ends. Returns how long
    /// it waited.
    pub async fn wait_for(&self, at: Instant) -> Duration {
        let start = Instant::now();
        let mut at = at;
        loop {
            tokio::time::sleep_until(at.into()).await;
            let pause = self.pause_remaining();
            if pause.is_zero() {
                break;
            }
            tokio::time::sleep(pause).await;
            at = self.reserve();
        }
        let waited = start.elapsed();
        self.metrics.rate_limiter_wait.inc_by(waited.as_secs_f64());
        waited
    }

    /// How long from now until requests may flow again.
    pub fn pause_remaining(&self) -> Duration {
        let p = self.pacer.lock().expect("pacer lock");
        p.pause_remaining(Instant::now())
    }

    /// How long from now until a request may start within `ahead`, and
    /// how many may start by then: the poll loop claims only what can leave
    /// by the time its claim is written.
    pub fn ready(&self, ahead: Duration) -> (Duration, usize) {
        let now = Instant::now();
        let p = self.pacer.lock().expect("pacer lock");
        let at = p.ready_at(now);
        let wait = at.saturating_duration_since(now).saturating_sub(ahead);
        (wait, p.ready_now(at.max(now + ahead)).max(1))
    }

    /// How long `requests` more requests take at the rate in force, after
    /// any pause: what a claim's lease must cover.
    pub fn time_for(&self, requests: usize) -> Duration {
        let p = self.pacer.lock().expect("pacer lock");
        p.time_for(Instant::now(), requests)
    }

    /// Waits for a request slot: the caller holds it while its request is
    /// in flight.
    pub async fn slot(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.slots.acquire().await
    }

    /// Request slots free now (besides any the caller holds).
    pub fn free_slots(&self) -> usize {
        self.slots.available()
    }

    /// This instance's share of the request budget when `instances` daemons
    /// share the store and it is the `rank`-th oldest: the rate divided
    /// evenly, the concurrent requests divided with the remainder going to
    /// the oldest (an instance beyond `max_concurrent_requests` gets none
    /// and polls nothing until one leaves).
    pub fn set_share(&self, instances: usize, rank: usize) {
        let n = instances.max(1);
        let total = self.cfg.max_concurrent_requests;
        let concurrency = total / n + usize::from(rank < total % n);
        if concurrency != self.slots.size() {
            self.slots.resize(concurrency);
        }
        let rate = self.cfg.max_requests_per_second / n as f64;
        self.pacer.lock().expect("pacer lock").set_max_rate(rate);
    }

    /// The concurrent requests and the rate this instance may use now.
    pub fn share(&self) -> (usize, f64) {
        (
            self.slots.size(),
            self.pacer.lock().expect("pacer lock").max_rate(),
        )
    }

    /// Asks about `ids` of `service` (one `retrieve_batch`, or one
    /// `retrieve` for a single-task profile). The caller holds a [`slot`](Self::slot).
    pub async fn retrieve(
        &self,
        service: &str,
        profile: &Profile,
        ids: &[&str],
    ) -> Result<BatchAnswer, UpstreamError> {
        let started = Instant::now();
        let result = self.request(service, profile, ids).await;
        self.metrics
            .upstream_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.ids_per_request.observe(ids.len() as f64);
        self.metrics.upstream_request(match &result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        });
        self.observe(service, &result);
        result
    }

    async fn request(
        &self,
        service: &str,
        profile: &Profile,
        ids: &[&str],
    ) -> Result<BatchAnswer, UpstreamError> {
        let single = match (profile.request, ids) {
            (RequestMode::Single, [id]) => Some(*id),
            _ => None,
        };
        let body = match single {
            Some(id) => {
                let mut b = serde_json::Map::new();
                b.insert(profile.id_key.clone(), id.into());
                if !profile.action.is_empty() {
                    b.insert("action".into(), profile.action.clone().into());
                }
                serde_json::Value::Object(b)
            }
            None => {
                serde_json::json!({"ids": ids, "action": "retrieve_batch", "limit": ids.len()})
            }
        };
        let base = self.cfg.base_url.as_str().trim_end_matches('/');
        let mut req = self
            .http
            .post(format!("{base}{}", profile.tasks_path(service)))
            .header("accept", "application/json")
            .json(&body);
        let token = self.token.read().expect("token lock").clone();
        if let Some(token) = token {
            req = req.bearer_auth(token.expose());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| UpstreamError::Transport(crate::http::describe_reqwest_error(&e)))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let cap = self.cfg.max_response_bytes;
        let body = match crate::http::read_capped(resp, cap).await {
            Ok((body, false)) => body,
            Ok((_, true)) if (200..300).contains(&status) => {
                return Err(UpstreamError::TooLarge {
                    status,
                    code: "answer_too_large".into(),
                    message: format!(
                        "the answer is over upstream.max_response_bytes ({cap} bytes)"
                    ),
                });
            }
            // An error page that large: its first bytes are enough.
            Ok((body, true)) => body,
            Err(e) => {
                return Err(UpstreamError::Transport(
                    crate::http::describe_reqwest_error(&e),
                ));
            }
        };
        match status {
            200..=299 => match single {
                Some(id) => parse_single(&body, id),
                None => parse_batch(&body, profile),
            },
            // Some single-task services answer a task that settled badly
            // with an error status and the task's own record (captcha: 504
            // with `status: failed`): that is an answer about the task.
            _ if single.is_some_and(|id| names_task(&body, id)) => {
                parse_single(&body, single.unwrap_or_default())
            }
            // A single task the upstream does not know: absent, like a
            // batch answer that leaves it out.
            404 if single.is_some()
                && matches!(error_code(&body).0.as_str(), "not_found" | "no_task") =>
            {
                Ok(BatchAnswer::default())
            }
            _ => Err(classify_status(status, retry_after, &body)),
        }
    }

    /// Updates health, the service's standing and the back-off pause from
    /// one request's result.
    fn observe(&self, service: &str, result: &Result<BatchAnswer, UpstreamError>) {
        let mut h = self.health.lock().expect("health lock");
        h.requests += 1;
        match result {
            Ok(_) => {
                h.consecutive_failures = 0;
                h.token_accepted = true;
                h.last_success_at = Some(crate::clock::now_ms());
                drop(h);
                self.pacer.lock().expect("pacer lock").faster();
                self.service_answered(service);
            }
            // A batch or a service refused says nothing about the
            // upstream's load: no global pause.
            Err(e @ UpstreamError::TooLarge { .. }) => {
                h.failures += 1;
                h.last_error = Some(e.to_string());
                drop(h);
                self.service_answered(service);
            }
            Err(
                e @ UpstreamError::ServiceRefused {
                    status,
                    code,
                    message,
                },
            ) => {
                h.failures += 1;
                h.last_error = Some(format!("{service}: {e}"));
                drop(h);
                self.service_refused(service, *status, code, message);
            }
            Err(e) => {
                h.failures += 1;
                h.consecutive_failures += 1;
                h.last_error = Some(e.to_string());
                if matches!(e, UpstreamError::Unauthorized { .. }) {
                    h.token_accepted = false;
                }
                let retry_after = match e {
                    UpstreamError::RateLimited { retry_after }
                    | UpstreamError::Server { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let pause = upstream_backoff(
                    h.consecutive_failures,
                    retry_after,
                    rand::random(),
                    self.cfg.backoff_initial,
                    self.cfg.backoff_max,
                );
                let mut p = self.pacer.lock().expect("pacer lock");
                p.pause_until(Instant::now() + pause);
                if matches!(e, UpstreamError::RateLimited { .. }) {
                    p.slower();
                }
            }
        }
    }

    /// The service answered (it is not broken, whatever else went wrong).
    fn service_answered(&self, service: &str) {
        if let Some(was) = self.broken.lock().expect("broken lock").remove(service) {
            tracing::warn!(
                service,
                broken_for = ?Duration::from_millis(
                    (crate::clock::now_ms() - was.health.broken_since).max(0) as u64
                ),
                "the upstream answers this service again; polling it resumes"
            );
            self.metrics.service_broken(service, false);
        }
    }

    /// The upstream refused `service`: its tasks wait for
    /// `upstream.broken_service_retry`, then one batch asks again.
    fn service_refused(&self, service: &str, status: u16, code: &str, message: &str) {
        let retry = *self.broken_retry.read().expect("retry lock");
        let now_ms = crate::clock::now_ms();
        let until = Instant::now() + retry;
        let mut all = self.broken.lock().expect("broken lock");
        let state = all.entry(service.to_string()).or_insert_with(|| {
            let hint = match (status, code) {
                (_, "token_mismatched") => "the token is not enabled for this service",
                (_, "api_not_implemented") => {
                    "the upstream does not implement this call for this service"
                }
                (404, _) => "no such endpoint: check the service name and its tasks_path",
                (405, _) => "the endpoint does not take POST: check its tasks_path",
                (403, _) => {
                    "forbidden (not a token refusal): a firewall, or the service is not enabled"
                }
                _ => "the upstream refuses this service's requests",
            };
            tracing::error!(
                service,
                status,
                code,
                message,
                retry_every = ?retry,
                "the upstream refuses this service ({hint}); its tasks stay queued and are asked \
                 about again on their own schedule, other services carry on"
            );
            self.metrics.service_broken(service, true);
            ServiceState {
                health: ServiceHealth {
                    service: service.to_string(),
                    broken_since: now_ms,
                    status,
                    code: code.to_string(),
                    message: message.to_string(),
                    failures: 0,
                    retry_at: now_ms,
                },
                paused_until: until,
            }
        });
        state.health.failures += 1;
        state.health.status = status;
        state.health.code = code.to_string();
        state.health.message = message.to_string();
        state.health.retry_at = now_ms + retry.as_millis() as i64;
        state.paused_until = until;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profiles() -> crate::profile::Profiles {
        crate::profile::Profiles::new(&Default::default(), false, "producer").unwrap()
    }

    #[test]
    fn a_bad_item_does_not_spoil_the_batch() {
        let p = profiles();
        let body = br#"{"items": [{"id": "a", "response": {}}, {"no_id": 1}, 5, {"id": "b"}], "count": 4}"#;
        let a = parse_batch(body, p.get("producer").unwrap()).unwrap();
        assert_eq!(a.records.len(), 2);
        assert_eq!(a.unattributed, 2);
        assert!(!a.complete());
        assert_eq!(a.records["a"].raw.get(), r#"{"id": "a", "response": {}}"#);
    }

    #[test]
    fn duplicates_keep_the_settled_record() {
        let p = profiles();
        let body = br#"{"items": [{"id": "a", "finished_at": 1}, {"id": "a"}], "count": 2}"#;
        let a = parse_batch(body, p.get("producer").unwrap()).unwrap();
        assert!(a.records["a"].value.get("finished_at").is_some());
        assert!(a.complete());
    }

    #[test]
    fn a_count_above_the_items_says_the_answer_is_incomplete() {
        let p = profiles();
        let producer = p.get("producer").unwrap();
        let a = parse_batch(br#"{"items": [{"id": "a"}], "count": 2}"#, producer).unwrap();
        assert_eq!((a.items, a.count, a.complete()), (1, Some(2), false));
        // minimax says `total`, and its items are bare task objects.
        let minimax = p.get("minimax").unwrap();
        let a = parse_batch(
            br#"{"items": [{"id": "m", "status": "running"}], "total": 3}"#,
            minimax,
        )
        .unwrap();
        assert_eq!((a.records.len(), a.complete()), (1, false));
        let a = parse_batch(br#"{"items": [], "count": 0}"#, producer).unwrap();
        assert!(a.complete());
    }

    #[test]
    fn a_single_answer_is_the_record_and_an_empty_object_is_absent() {
        let a = parse_single(br#"{"task_id": "c", "status": "ready"}"#, "c").unwrap();
        assert_eq!(a.records["c"].value["status"], "ready");
        assert!(parse_single(b"{}", "c").unwrap().records.is_empty());
        assert!(parse_single(b"<html>", "c").is_err());
    }

    /// The upstream's JSON error shape.
    fn error(code: &str, message: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "success": false,
            "error": {"code": code, "message": message},
            "trace_id": "t",
        }))
        .unwrap()
    }

    #[test]
    fn every_status_class_is_told_apart() {
        let html = |title: &str| format!("<html><head><title>{title}</title></head></html>");
        let class = |status: u16, body: &[u8]| classify_status(status, None, body);
        let refused = |e: &UpstreamError, want: u16| {
            assert!(
                matches!(e, UpstreamError::ServiceRefused { status, .. } if *status == want),
                "{want}: {e:?}"
            );
            assert_eq!(e.outcome(), "service_refused");
        };
        let too_large = |e: &UpstreamError, want: u16| {
            assert!(
                matches!(e, UpstreamError::TooLarge { status, .. } if *status == want),
                "{want}: {e:?}"
            );
            assert_eq!(e.outcome(), "too_large");
        };

        // The token: 401 whatever the body; 403 only when it says invalid_token.
        for body in [
            error("invalid_token", "invalid or missing bearer token"),
            html("401 Authorization Required").into_bytes(),
            Vec::new(),
        ] {
            let e = class(401, &body);
            assert!(
                matches!(e, UpstreamError::Unauthorized { status: 401, .. }),
                "{e:?}"
            );
            assert_eq!(e.outcome(), "unauthorized");
        }
        let e = class(403, &error("invalid_token", "invalid token"));
        assert_eq!(
            e,
            UpstreamError::Unauthorized {
                status: 403,
                code: "invalid_token".into()
            }
        );
        // The bare-string form says the same.
        assert_eq!(
            class(403, br#"{"error":"invalid_token"}"#),
            UpstreamError::Unauthorized {
                status: 403,
                code: "invalid_token".into()
            }
        );
        // Any other 403 (a firewall's page, another code) is the service's.
        refused(&class(403, html("403 Forbidden").as_bytes()), 403);
        refused(&class(403, &error("forbidden", "not allowed")), 403);
        refused(&class(403, b""), 403);

        // The service cannot be polled as configured.
        refused(&class(404, &error("not_found", "no API at /x/tasks")), 404);
        refused(&class(404, html("404 Not Found").as_bytes()), 404);
        refused(
            &class(405, &error("method_not_allowed", "method not allowed")),
            405,
        );
        let e = class(
            400,
            &error("api_not_implemented", "this api is not implemented"),
        );
        refused(&e, 400);
        assert!(
            matches!(&e, UpstreamError::ServiceRefused { code, .. } if code == "api_not_implemented")
        );
        refused(
            &class(
                400,
                &error("token_mismatched", "the token does not match this api"),
            ),
            400,
        );
        // A 400 that does not say the batch is too big.
        refused(
            &class(400, &error("bad_request", "missing field `ids`")),
            400,
        );
        refused(&class(400, b"bad request"), 400);

        // The batch is too big: 413 whatever the body, or a 400 that says so.
        too_large(
            &class(413, html("413 Request Entity Too Large").as_bytes()),
            413,
        );
        too_large(&class(413, b""), 413);
        for message in [
            "too many ids in one batch: 60 > 50",
            "request too large",
            "ids exceeds the limit",
            "at most 100 ids (maximum)",
            "batch limit reached",
        ] {
            too_large(&class(400, &error("bad_request", message)), 400);
        }

        // 429: the whole client slows down, with or without Retry-After.
        let ra = Some(Duration::from_secs(7));
        let e = classify_status(429, ra, &error("too_many_requests", "slow down"));
        assert_eq!(e, UpstreamError::RateLimited { retry_after: ra });
        assert_eq!(e.outcome(), "rate_limited");
        assert_eq!(
            class(429, b""),
            UpstreamError::RateLimited { retry_after: None }
        );

        // 5xx: the whole client backs off, keeping the Retry-After.
        for status in [500, 502, 503, 504] {
            let e = classify_status(status, ra, html("Bad Gateway").as_bytes());
            assert_eq!(
                e,
                UpstreamError::Server {
                    status,
                    retry_after: ra
                }
            );
            assert_eq!(e.outcome(), "server_error");
        }
    }

    #[test]
    fn truncated_and_html_bodies_are_errors() {
        let p = profiles();
        let producer = p.get("producer").unwrap();
        assert!(matches!(
            parse_batch(br#"{"items": [{"id": "a""#, producer),
            Err(UpstreamError::Malformed(_))
        ));
        assert!(matches!(
            parse_batch(b"<html>502 Bad Gateway</html>", producer),
            Err(UpstreamError::Malformed(_))
        ));
        assert_eq!(
            error_code(br#"{"success":false,"error":{"code":"invalid_token","message":"m"}}"#),
            ("invalid_token".to_string(), "m".to_string())
        );
        assert_eq!(
            error_code(br#"{"error":"invalid_token"}"#),
            ("invalid_token".to_string(), "invalid_token".to_string())
        );
        assert_eq!(
            error_code(br#"{"error":"Invalid token, check it"}"#),
            ("unknown".to_string(), "Invalid token, check it".to_string())
        );
    }
}
