//! Configuration: built-in defaults (the shipped `config/taskhook.toml`),
//! then a TOML file, then `TASKHOOK__SECTION__KEY` environment variables,
//! validated once into [`Config`]. Every error names the offending key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use url::Url;

use crate::profile::{ProfileOverride, Profiles};
use crate::schedule::PollSchedule;
use crate::terminal::Outcome;

/// The documented defaults; compiled in so the file and the binary agree.
pub const DEFAULTS_TOML: &str = include_str!("../config/taskhook.toml");
/// The system-wide file read when neither `-c` nor `TASKHOOK_CONFIG` is given.
pub const SYSTEM_CONFIG: &str = "/etc/taskhook/taskhook.toml";

/// A configuration error: the key at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ConfigError {}

fn err<T>(key: &str, msg: impl fmt::Display) -> Result<T, ConfigError> {
    Err(ConfigError(format!("{key}: {msg}")))
}

/// A secret value. Never printed: `Debug`, `Display` and serialization all
/// show a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// A Standard Webhooks signing key: the bytes behind `whsec_BASE64`.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// Parses `whsec_BASE64` (the prefix is optional).
    pub fn parse(s: &str) -> Option<Self> {
        use base64::Engine;
        let b64 = s.trim().strip_prefix("whsec_").unwrap_or(s.trim());
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        (!bytes.is_empty()).then_some(SigningKey(bytes))
    }
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}
impl Serialize for SigningKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}
fn ser_opt_url<S: Serializer>(u: &Option<Url>, s: S) -> Result<S::Ok, S::Error> {
    match u {
        Some(u) => s.serialize_str(&crate::redact::url(u.as_str())),
        None => s.serialize_none(),
    }
}
fn ser_url<S: Serializer>(u: &Url, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::redact::url(u.as_str()))
}
fn ser_headers<S: Serializer>(h: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(h.keys().map(|k| (k, crate::redact::REDACTED)))
}
fn ser_durations<S: Serializer>(d: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(d.iter().map(|d| humantime::format_duration(*d).to_string()))
}

/// The whole validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub upstream: UpstreamConfig,
    pub poll: PollConfig,
    pub store: StoreConfig,
    pub api: ApiConfig,
    pub delivery: DeliveryConfig,
    pub daemon: DaemonConfig,
    pub webhooks: Vec<WebhookConfig>,
}

/// The `[upstream]` section: where and how fast to poll.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamConfig {
    #[serde(serialize_with = "ser_url")]
    pub base_url: Url,
    pub token: Option<Secret>,
    pub default_service: String,
    /// Accept tasks of services that are neither built in nor configured,
    /// read with the generic profile.
    pub allow_unknown_services: bool,
    /// Every service profile in force; shown (by `check-config`) for the
    /// configured services and the default one.
    #[serde(rename = "services")]
    pub profiles: Profiles,
    pub batch_size: usize,
    pub max_requests_per_second: f64,
    pub max_concurrent_requests: usize,
    #[serde(serialize_with = "ser_duration")]
    pub request_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub backoff_initial: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub backoff_max: Duration,
    /// While the upstream refuses the token, it is tried again this often.
    #[serde(serialize_with = "ser_duration")]
    pub token_retry: Duration,
    /// A service the upstream refuses (404, 405, ...) is asked again this
    /// often; other services carry on.
    #[serde(serialize_with = "ser_duration")]
    pub broken_service_retry: Duration,
    /// The largest answer read; a larger one fails its batch.
    pub max_response_bytes: usize,
}

impl UpstreamConfig {
    /// The full URL of service `service`'s tasks endpoint.
    pub fn tasks_url(&self, service: &str) -> String {
        let base = self.base_url.as_str().trim_end_matches('/');
        let path = self.profiles.for_task(service).tasks_path(service);
        format!("{base}{path}")
    }
}

/// The `[poll]` section: the schedule and the give-up rules.
#[derive(Debug, Clone, Serialize)]
pub struct PollConfig {
    #[serde(serialize_with = "ser_duration")]
    pub first_poll_after: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub max_interval: Duration,
    pub backoff_factor: f64,
    #[serde(serialize_with = "ser_duration")]
    pub task_ttl: Duration,
    pub missing_grace: u32,
    pub failure_confirmations: u32,
}

impl PollConfig {
    pub fn schedule(&self) -> PollSchedule {
        PollSchedule {
            first_poll_after: self.first_poll_after,
            interval: self.interval,
            max_interval: self.max_interval,
            backoff_factor: self.backoff_factor,
        }
    }
}

/// How hard SQLite works to make each commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Full,
    Normal,
}

/// The `[store]` section.
#[derive(Debug, Clone, Serialize)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub sync: SyncMode,
    #[serde(serialize_with = "ser_duration")]
    pub done_retention: Duration,
}

/// The `[api]` section.
#[derive(Debug, Clone, Serialize)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
    pub max_body_bytes: usize,
    pub max_webhooks_per_task: usize,
}

/// The `[delivery]` section: retries, timeouts, limits, the per-task secret.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryConfig {
    #[serde(serialize_with = "ser_durations")]
    pub retry_schedule: Vec<Duration>,
    #[serde(serialize_with = "ser_duration")]
    pub request_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    pub max_concurrent_per_webhook: usize,
    #[serde(serialize_with = "ser_duration")]
    pub dead_letter_ttl: Duration,
    pub secret: Option<SigningKey>,
    pub allow_private_networks: bool,
    /// Every webhook request goes through this proxy (http, https, socks5).
    #[serde(serialize_with = "ser_opt_url")]
    pub proxy: Option<Url>,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The `[daemon]` section: shutdown and logging.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonConfig {
    #[serde(serialize_with = "ser_duration")]
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
}

/// One configured receiver.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookConfig {
    pub name: String,
    #[serde(serialize_with = "ser_url")]
    pub url: Url,
    pub secret: Option<SigningKey>,
    /// Event types sent to this webhook; `None` means all.
    pub events: Option<Vec<String>>,
    /// Extra request headers; their values are shown redacted.
    #[serde(serialize_with = "ser_headers")]
    pub headers: BTreeMap<String, String>,
}

impl WebhookConfig {
    pub fn wants(&self, outcome: Outcome) -> bool {
        match &self.events {
            None => true,
            Some(list) => list.iter().any(|e| e == outcome.event_type()),
        }
    }
}

// ---- the raw, as-written shape ------------------------------------------

/// The configuration as written, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    upstream: RawUpstream,
    poll: RawPoll,
    store: RawStore,
    api: RawApi,
    delivery: RawDelivery,
    daemon: RawDaemon,
    #[serde(default)]
    webhooks: Vec<RawWebhook>,
}

/// As written: `[upstream]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    base_url: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
    default_service: String,
    allow_unknown_services: bool,
    #[serde(default)]
    services: BTreeMap<String, ProfileOverride>,
    batch_size: i64,
    max_requests_per_second: f64,
    max_concurrent_requests: i64,
    request_timeout: String,
    backoff_initial: String,
    backoff_max: String,
    token_retry: String,
    broken_service_retry: String,
    max_response_bytes: i64,
}

/// As written: `[poll]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoll {
    first_poll_after: String,
    interval: String,
    max_interval: String,
    backoff_factor: f64,
    task_ttl: String,
    missing_grace: i64,
    failure_confirmations: i64,
}

/// As written: `[store]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: PathBuf,
    sync: String,
    done_retention: String,
}

/// As written: `[api]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
    max_body_bytes: i64,
    max_webhooks_per_task: i64,
}

/// As written: `[delivery]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    retry_schedule: Vec<String>,
    request_timeout: String,
    connect_timeout: String,
    max_concurrent_per_webhook: i64,
    dead_letter_ttl: String,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    allow_private_networks: bool,
    proxy: Option<String>,
}

/// As written: `[daemon]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    shutdown_grace: String,
    log_format: String,
    log_level: String,
}

/// As written: one `[[webhooks]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    name: String,
    url: String,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
    events: Option<Vec<String>>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

// ---- loading -------------------------------------------------------------

/// Which file, if any, to layer over the defaults: `-c`, then
/// `TASKHOOK_CONFIG`, then the system file if it exists.
pub fn resolve_path(cli: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = cli {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("TASKHOOK_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let sys = Path::new(SYSTEM_CONFIG);
    sys.exists().then(|| sys.to_path_buf())
}

impl Config {
    /// Defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like [`Config::load`] with an explicit environment, for tests.
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        use config::{Config as Layers, Environment, File, FileFormat};
        let mut b = Layers::builder().add_source(File::from_str(DEFAULTS_TOML, FileFormat::Toml));
        if let Some(f) = file {
            if !f.exists() {
                return err("config", format!("file {} does not exist", f.display()));
            }
            b = b.add_source(File::from(f).format(FileFormat::Toml));
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("TASKHOOK__"))
            .collect();
        b = b.add_source(
            Environment::with_prefix("TASKHOOK")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("delivery.retry_schedule")
                .source(Some(env)),
        );
        let layered = b.build().map_err(|e| ConfigError(format!("config: {e}")))?;
        let raw: Raw = layered
            .try_deserialize()
            .map_err(|e| ConfigError(describe_serde_error(e)))?;
        Self::validate(raw)
    }

    /// Parses one TOML text over the defaults (no file, no environment).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().map_err(|e| ConfigError(format!("config: {e}")))?;
        let path = dir.path().join("taskhook.toml");
        std::fs::write(&path, text).map_err(|e| ConfigError(format!("config: {e}")))?;
        Self::load_with_env(Some(&path), std::iter::empty())
    }

    fn validate(raw: Raw) -> Result<Config, ConfigError> {
        let u = raw.upstream;
        let base_url = http_url("upstream.base_url", &u.base_url)?;
        let token = secret("upstream.token", u.token, u.token_file.as_deref(), None)?;
        service_name("upstream.default_service", &u.default_service)?;
        let profiles = Profiles::new(&u.services, u.allow_unknown_services, &u.default_service)
            .map_err(ConfigError)?;
        if profiles.get(&u.default_service).is_none() {
            return err(
                "upstream.default_service",
                format!(
                    "{:?} is not a known service; describe it in [upstream.services.{}] \
                     or set upstream.allow_unknown_services",
                    u.default_service, u.default_service
                ),
            );
        }
        let upstream = UpstreamConfig {
            base_url,
            token,
            default_service: u.default_service,
            allow_unknown_services: u.allow_unknown_services,
            profiles,
            batch_size: range("upstream.batch_size", u.batch_size, 1, 500)? as usize,
            max_requests_per_second: {
                let r = u.max_requests_per_second;
                if !(r.is_finite() && r > 0.0 && r <= 10_000.0) {
                    return err(
                        "upstream.max_requests_per_second",
                        format!("must be > 0 and <= 10000, got {r}"),
                    );
                }
                r
            },
            max_concurrent_requests: range(
                "upstream.max_concurrent_requests",
                u.max_concurrent_requests,
                1,
                64,
            )? as usize,
            request_timeout: positive("upstream.request_timeout", &u.request_timeout)?,
            backoff_initial: positive("upstream.backoff_initial", &u.backoff_initial)?,
            backoff_max: positive("upstream.backoff_max", &u.backoff_max)?,
            token_retry: positive("upstream.token_retry", &u.token_retry)?,
            broken_service_retry: positive(
                "upstream.broken_service_retry",
                &u.broken_service_retry,
            )?,
            max_response_bytes: range(
                "upstream.max_response_bytes",
                u.max_response_bytes,
                64 * 1024,
                1 << 30,
            )? as usize,
        };
        if upstream.backoff_max < upstream.backoff_initial {
            return err(
                "upstream.backoff_max",
                "must not be shorter than upstream.backoff_initial",
            );
        }

        let p = raw.poll;
        let poll = PollConfig {
            first_poll_after: duration("poll.first_poll_after", &p.first_poll_after)?,
            interval: positive("poll.interval", &p.interval)?,
            max_interval: positive("poll.max_interval", &p.max_interval)?,
            backoff_factor: {
                let f = p.backoff_factor;
                if !(f.is_finite() && (1.0..=10.0).contains(&f)) {
                    return err(
                        "poll.backoff_factor",
                        format!("must be 1.0..=10.0, got {f}"),
                    );
                }
                f
            },
            task_ttl: positive("poll.task_ttl", &p.task_ttl)?,
            missing_grace: range("poll.missing_grace", p.missing_grace, 1, 1000)? as u32,
            failure_confirmations: range(
                "poll.failure_confirmations",
                p.failure_confirmations,
                1,
                100,
            )? as u32,
        };
        if poll.max_interval < poll.interval {
            return err(
                "poll.max_interval",
                "must not be shorter than poll.interval",
            );
        }

        let s = raw.store;
        if s.path.as_os_str().is_empty() {
            return err("store.path", "must not be empty");
        }
        let store = StoreConfig {
            path: s.path,
            sync: match s.sync.as_str() {
                "full" => SyncMode::Full,
                "normal" => SyncMode::Normal,
                other => {
                    return err(
                        "store.sync",
                        format!("must be \"full\" or \"normal\", got {other:?}"),
                    );
                }
            },
            done_retention: duration("store.done_retention", &s.done_retention)?,
        };

        let a = raw.api;
        let api = ApiConfig {
            listen: a.listen.parse().or_else(|_| {
                err(
                    "api.listen",
                    format!("not an address like 127.0.0.1:8080: {:?}", a.listen),
                )
            })?,
            token: secret("api.token", a.token, a.token_file.as_deref(), None)?,
            max_body_bytes: range("api.max_body_bytes", a.max_body_bytes, 1024, 1 << 30)? as usize,
            max_webhooks_per_task: range(
                "api.max_webhooks_per_task",
                a.max_webhooks_per_task,
                0,
                1000,
            )? as usize,
        };

        let d = raw.delivery;
        if d.retry_schedule.is_empty() {
            return err("delivery.retry_schedule", "must list at least one delay");
        }
        let mut retry_schedule = Vec::with_capacity(d.retry_schedule.len());
        for (i, s) in d.retry_schedule.iter().enumerate() {
            let key = format!("delivery.retry_schedule[{i}]");
            let step = positive(&key, s)?;
            if retry_schedule.last().is_some_and(|prev| step < *prev) {
                return err(&key, "the schedule must not decrease");
            }
            retry_schedule.push(step);
        }
        let delivery = DeliveryConfig {
            retry_schedule,
            request_timeout: positive("delivery.request_timeout", &d.request_timeout)?,
            connect_timeout: positive("delivery.connect_timeout", &d.connect_timeout)?,
            max_concurrent_per_webhook: range(
                "delivery.max_concurrent_per_webhook",
                d.max_concurrent_per_webhook,
                1,
                1024,
            )? as usize,
            dead_letter_ttl: positive("delivery.dead_letter_ttl", &d.dead_letter_ttl)?,
            allow_private_networks: d.allow_private_networks,
            proxy: match d.proxy.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(p) => {
                    let u = Url::parse(p).or_else(|e| {
                        err(
                            "delivery.proxy",
                            format!("invalid URL {:?}: {e}", crate::redact::url(p)),
                        )
                    })?;
                    if !matches!(u.scheme(), "http" | "https" | "socks5" | "socks5h") {
                        return err(
                            "delivery.proxy",
                            format!(
                                "must be http://, https:// or socks5://, got {:?}",
                                crate::redact::url(p)
                            ),
                        );
                    }
                    Some(u)
                }
            },
            secret: signing_key(
                "delivery.secret",
                secret("delivery.secret", d.secret, d.secret_file.as_deref(), None)?,
            )?,
        };

        let dm = raw.daemon;
        let daemon = DaemonConfig {
            shutdown_grace: duration("daemon.shutdown_grace", &dm.shutdown_grace)?,
            log_format: match dm.log_format.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return err(
                        "daemon.log_format",
                        format!("must be \"text\" or \"json\", got {other:?}"),
                    );
                }
            },
            log_level: {
                if tracing_subscriber::EnvFilter::try_new(&dm.log_level).is_err() {
                    return err(
                        "daemon.log_level",
                        format!("not a log filter: {:?}", dm.log_level),
                    );
                }
                dm.log_level
            },
        };

        let mut webhooks: Vec<WebhookConfig> = Vec::with_capacity(raw.webhooks.len());
        for (i, w) in raw.webhooks.into_iter().enumerate() {
            let key = |k: &str| format!("webhooks[{i}].{k}");
            if w.name.trim().is_empty() {
                return err(&key("name"), "must not be empty");
            }
            if webhooks.iter().any(|o| o.name == w.name) {
                return err(&key("name"), format!("{:?} is used twice", w.name));
            }
            let url = http_url(&key("url"), &w.url)?;
            let sec = secret(
                &key("secret"),
                w.secret,
                w.secret_file.as_deref(),
                w.secret_env.as_deref(),
            )?;
            let secret = signing_key(&key("secret"), sec)?;
            if let Some(events) = &w.events {
                for e in events {
                    if !Outcome::EVENT_TYPES.contains(&e.as_str()) {
                        return err(
                            &key("events"),
                            format!(
                                "unknown event type {e:?} (known: {})",
                                Outcome::EVENT_TYPES.join(", ")
                            ),
                        );
                    }
                }
            }
            for (h, v) in &w.headers {
                if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err()
                    || reqwest::header::HeaderValue::from_str(v).is_err()
                {
                    return err(&key("headers"), format!("invalid header {h:?}"));
                }
            }
            webhooks.push(WebhookConfig {
                name: w.name,
                url,
                secret,
                events: w.events,
                headers: w.headers,
            });
        }

        Ok(Config {
            upstream,
            poll,
            store,
            api,
            delivery,
            daemon,
            webhooks,
        })
    }

    /// The effective configuration as TOML, every secret redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Turns the config crate's messages into `key: problem` form where it can.
fn describe_serde_error(e: config::ConfigError) -> String {
    let msg = e.to_string();
    // The crate says "... for key `a.b`" or "... in <file>"; lead with the key.
    if let Some(idx) = msg.find("for key `") {
        let rest = &msg[idx + 9..];
        if let Some(end) = rest.find('`') {
            let key = &rest[..end];
            return format!("{key}: {}", msg[..idx].trim_end());
        }
    }
    if let Some(field) = msg
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        return format!("{field}: unknown key ({msg})");
    }
    format!("config: {msg}")
}

fn duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim()).or_else(|_| {
        err(
            key,
            format!("invalid duration {s:?} (use e.g. \"250ms\", \"30s\", \"2h\")"),
        )
    })
}

fn positive(key: &str, s: &str) -> Result<Duration, ConfigError> {
    let d = duration(key, s)?;
    if d.is_zero() {
        return err(key, "must be longer than zero");
    }
    Ok(d)
}

fn range(key: &str, v: i64, lo: i64, hi: i64) -> Result<i64, ConfigError> {
    if v < lo || v > hi {
        return err(key, format!("must be {lo}..={hi}, got {v}"));
    }
    Ok(v)
}

fn http_url(key: &str, s: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(s).or_else(|e| err(key, format!("invalid URL {s:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return err(key, format!("must be an http(s) URL, got {s:?}"));
    }
    Ok(url)
}

/// A service name is a path segment: letters, digits, `-` and `_`.
pub fn valid_service(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn service_name(key: &str, s: &str) -> Result<(), ConfigError> {
    if !valid_service(s) {
        return err(
            key,
            format!("service names use letters, digits, '-' and '_', got {s:?}"),
        );
    }
    Ok(())
}

/// One secret from exactly one of: inline, file, environment variable.
fn secret(
    key: &str,
    inline: Option<String>,
    file: Option<&Path>,
    env: Option<&str>,
) -> Result<Option<Secret>, ConfigError> {
    let given = [inline.is_some(), file.is_some(), env.is_some()];
    if given.iter().filter(|g| **g).count() > 1 {
        return err(key, "give the secret one way only (inline, _file or _env)");
    }
    let value = if let Some(v) = inline {
        v
    } else if let Some(path) = file {
        std::fs::read_to_string(path).or_else(|e| {
            err(
                &format!("{key}_file"),
                format!("cannot read {}: {e}", path.display()),
            )
        })?
    } else if let Some(var) = env {
        std::env::var(var).or_else(|_| {
            err(
                &format!("{key}_env"),
                format!("environment variable {var} is not set"),
            )
        })?
    } else {
        return Ok(None);
    };
    let value = value.trim().to_string();
    if value.is_empty() {
        return err(key, "is empty");
    }
    Ok(Some(Secret(value)))
}

fn signing_key(key: &str, s: Option<Secret>) -> Result<Option<SigningKey>, ConfigError> {
    match s {
        None => Ok(None),
        Some(s) => SigningKey::parse(s.expose())
            .map(Some)
            .ok_or_else(|| ConfigError(format!("{key}: must be whsec_ followed by base64"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_is_a_valid_config() {
        let c = Config::load_with_env(None, std::iter::empty()).unwrap();
        assert_eq!(c.upstream.batch_size, 50);
        assert_eq!(c.poll.interval, Duration::from_secs(5));
        assert_eq!(c.delivery.retry_schedule.len(), 8);
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:8080");
        assert!(c.webhooks.is_empty());
        assert_eq!(
            c.upstream.tasks_url("producer"),
            "https://api.acedata.cloud/producer/tasks"
        );
    }

    fn bad(toml: &str) -> String {
        Config::from_toml(toml).unwrap_err().0
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(
            bad("[upstream]\nbatch_size = 0"),
            "upstream.batch_size: must be 1..=500, got 0"
        );
        assert_eq!(
            bad("[poll]\ninterval = \"soon\""),
            "poll.interval: invalid duration \"soon\" (use e.g. \"250ms\", \"30s\", \"2h\")"
        );
        assert!(bad("[upstream]\nbatchsize = 3").contains("batchsize"));
        assert!(
            bad("[delivery]\nretry_schedule = [\"5s\", \"1s\"]")
                .starts_with("delivery.retry_schedule[1]:")
        );
        assert!(
            bad("[[webhooks]]\nname = \"a\"\nurl = \"ftp://x\"").starts_with("webhooks[0].url:")
        );
        assert!(
            bad("[[webhooks]]\nname = \"a\"\nurl = \"http://x\"\nevents = [\"task.done\"]")
                .starts_with("webhooks[0].events:")
        );
        assert!(
            bad("[[webhooks]]\nname = \"a\"\nurl = \"http://x\"\nsecret = \"nope!\"")
                .starts_with("webhooks[0].secret:")
        );
        assert!(
            bad("[upstream]\ntoken_file = \"/nonexistent/t\"").starts_with("upstream.token_file:")
        );
    }

    #[test]
    fn env_overrides_the_file() {
        let env = vec![
            (
                "TASKHOOK__UPSTREAM__BATCH_SIZE".to_string(),
                "77".to_string(),
            ),
            (
                "TASKHOOK__DELIVERY__RETRY_SCHEDULE".to_string(),
                "1s,2s".to_string(),
            ),
            ("TASKHOOK__UPSTREAM__TOKEN".to_string(), "12345".to_string()),
        ];
        let c = Config::load_with_env(None, env).unwrap();
        assert_eq!(c.upstream.batch_size, 77);
        assert_eq!(
            c.delivery.retry_schedule,
            vec![Duration::from_secs(1), Duration::from_secs(2)]
        );
        assert_eq!(c.upstream.token.unwrap().expose(), "12345");
    }

    #[test]
    fn redacted_output_hides_every_secret() {
        let c = Config::from_toml(
            "[upstream]\ntoken = \"tok-SECRET\"\n[api]\ntoken = \"api-SECRET\"\n\
             [[webhooks]]\nname = \"a\"\nurl = \"http://x\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"",
        )
        .unwrap();
        let out = c.to_redacted_toml();
        assert!(!out.contains("SECRET"), "{out}");
        assert!(!out.contains("MfKQ9r8"), "{out}");
        assert!(out.contains("[redacted]"));
        assert!(!format!("{c:?}").contains("SECRET"));
    }
}
