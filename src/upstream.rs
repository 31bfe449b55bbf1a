//! The upstream client: `retrieve_batch` against `/{service}/tasks`, paced
//! by a rate limiter, capped in concurrency, backing off on 429 and 5xx.
//! Every failure is an error value for that batch; none loses an ID.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use crate::config::{Secret, UpstreamConfig};
use crate::profile::{Profile, RequestMode};
use crate::schedule::upstream_backoff;
use crate::webhook::parse_retry_after;

/// Why a batch request produced no records.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpstreamError {
    #[error("429 too many requests")]
    RateLimited { retry_after: Option<Duration> },
    #[error("401 the upstream refuses the token ({code})")]
    Unauthorized { code: String },
    #[error("400 bad request ({code}: {message})")]
    BadRequest { code: String, message: String },
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
    /// Items that could not be attributed to a task (unreadable, or no ID).
    pub unattributed: usize,
    /// Items the answer carried.
    pub items: usize,
    /// The answer's own total (`count`, or the profile's count field).
    pub count: Option<u64>,
}

impl BatchAnswer {
    /// True when every item is attributed and the answer's total says none
    /// was left out: only then is an absent ID a miss.
    pub fn complete(&self) -> bool {
        self.unattributed == 0 && self.count.is_none_or(|c| c <= self.items as u64)
    }
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
                answer.unattributed += 1;
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
        Some(serde_json::Value::String(s)) => ("unknown".into(), s),
        _ => ("unknown".into(), String::new()),
    }
}

/// Paces requests to at most `rate` per second and holds them back while
/// the upstream asked us to back off. `rate` follows AIMD: halved on every
/// 429, raised by [`RATE_STEP`] per success, never above the configured
/// `max_requests_per_second`.
#[derive(Debug)]
struct Pacer {
    next_slot: Instant,
    paused_until: Instant,
    rate: f64,
    max_rate: f64,
}

/// Additive increase of the request rate per successful request (req/s).
pub const RATE_STEP: f64 = 0.25;
/// The request rate never drops below this (req/s).
pub const MIN_RATE: f64 = 0.2;

/// What the daemon knows about the upstream's health, for `/readyz` and
/// `/v1/stats`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct UpstreamHealth {
    /// False after a 401: polling pauses until the token is fixed.
    pub token_accepted: bool,
    /// The request rate in force now (lowered after 429s).
    pub requests_per_second: f64,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub last_success_at: Option<i64>,
    pub requests: u64,
    pub failures: u64,
}

/// The client. One per daemon; shared by the poller's batch tasks.
pub struct UpstreamClient {
    http: reqwest::Client,
    cfg: UpstreamConfig,
    /// The token, replaceable by a config reload.
    token: std::sync::RwLock<Option<Secret>>,
    pacer: Mutex<Pacer>,
    in_flight: Semaphore,
    health: Mutex<UpstreamHealth>,
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
            .user_agent(crate::webhook::user_agent())
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(cfg.max_concurrent_requests)
            .build()?;
        let now = Instant::now();
        Ok(UpstreamClient {
            http,
            pacer: Mutex::new(Pacer {
                next_slot: now,
                paused_until: now,
                rate: cfg.max_requests_per_second,
                max_rate: cfg.max_requests_per_second,
            }),
            in_flight: Semaphore::new(cfg.max_concurrent_requests),
            health: Mutex::new(UpstreamHealth {
                token_accepted: true,
                requests_per_second: cfg.max_requests_per_second,
                ..Default::default()
            }),
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
        h.requests_per_second = self.pacer.lock().expect("pacer lock").rate;
        h
    }

    /// True after the upstream refused the token (401), until a new one is set.
    pub fn token_refused(&self) -> bool {
        !self.health.lock().expect("health lock").token_accepted
    }

    /// Installs a new token (config reload): polling resumes at once.
    pub fn set_token(&self, token: Option<Secret>) {
        *self.token.write().expect("token lock") = token;
        self.health.lock().expect("health lock").token_accepted = true;
        let mut p = self.pacer.lock().expect("pacer lock");
        p.paused_until = Instant::now();
    }

    /// Reserves the next request slot and waits for it. Returns how long
    /// it waited (time spent in the rate limiter or a back-off pause).
    pub async fn pace(&self) -> Duration {
        let start = Instant::now();
        let at = {
            let mut p = self.pacer.lock().expect("pacer lock");
            let at = start.max(p.next_slot).max(p.paused_until);
            p.next_slot = at + Duration::from_secs_f64(1.0 / p.rate);
            at
        };
        tokio::time::sleep_until(at.into()).await;
        let waited = start.elapsed();
        self.metrics.rate_limiter_wait.inc_by(waited.as_secs_f64());
        waited
    }

    /// How long from now until requests may flow again.
    pub fn pause_remaining(&self) -> Duration {
        let p = self.pacer.lock().expect("pacer lock");
        p.paused_until.saturating_duration_since(Instant::now())
    }

    /// Asks about `ids` of `service` (one `retrieve_batch`, or one
    /// `retrieve` for a single-task profile), within the concurrency cap.
    pub async fn retrieve(
        &self,
        service: &str,
        profile: &Profile,
        ids: &[&str],
    ) -> Result<BatchAnswer, UpstreamError> {
        let _permit = self.in_flight.acquire().await.expect("never closed");
        let started = Instant::now();
        let result = self.request(service, profile, ids).await;
        self.metrics
            .upstream_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.ids_per_request.observe(ids.len() as f64);
        self.metrics.upstream_request(match &result {
            Ok(_) => "ok",
            Err(UpstreamError::RateLimited { .. }) => "rate_limited",
            Err(UpstreamError::Unauthorized { .. }) => "unauthorized",
            Err(UpstreamError::BadRequest { .. }) => "bad_request",
            Err(UpstreamError::Server { .. }) => "server_error",
            Err(UpstreamError::Transport(_)) => "transport_error",
            Err(UpstreamError::Malformed(_)) => "malformed",
        });
        self.observe(&result);
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
            None => serde_json::json!({"ids": ids, "action": "retrieve_batch", "limit": ids.len()}),
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
            .map_err(|e| UpstreamError::Transport(crate::webhook::describe_reqwest_error(&e)))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = resp
            .bytes()
            .await
            .map_err(|e| UpstreamError::Transport(crate::webhook::describe_reqwest_error(&e)))?;
        match status {
            200..=299 => match single {
                Some(id) => parse_single(&body, id),
                None => parse_batch(&body, profile),
            },
            // A single task the upstream does not know: absent, like a
            // batch answer that leaves it out.
            404 if single.is_some()
                && matches!(error_code(&body).0.as_str(), "not_found" | "no_task") =>
            {
                Ok(BatchAnswer::default())
            }
            401 | 403 => Err(UpstreamError::Unauthorized {
                code: error_code(&body).0,
            }),
            429 => Err(UpstreamError::RateLimited { retry_after }),
            400..=499 => {
                let (code, message) = error_code(&body);
                Err(UpstreamError::BadRequest { code, message })
            }
            _ => Err(UpstreamError::Server {
                status,
                retry_after,
            }),
        }
    }

    /// Updates health and the back-off pause from one request's result.
    fn observe(&self, result: &Result<BatchAnswer, UpstreamError>) {
        let mut h = self.health.lock().expect("health lock");
        h.requests += 1;
        match result {
            Ok(_) => {
                h.consecutive_failures = 0;
                h.token_accepted = true;
                h.last_success_at = Some(crate::store::now_ms());
                let mut p = self.pacer.lock().expect("pacer lock");
                p.rate = (p.rate + RATE_STEP).min(p.max_rate);
            }
            // A refused batch says nothing about the upstream's load.
            Err(UpstreamError::BadRequest { .. }) => {
                h.failures += 1;
                h.last_error = result.as_ref().err().map(ToString::to_string);
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
                p.paused_until = p.paused_until.max(Instant::now() + pause);
                if matches!(e, UpstreamError::RateLimited { .. }) {
                    p.rate = (p.rate / 2.0).max(MIN_RATE.min(p.max_rate));
                }
            }
        }
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
    }
}
