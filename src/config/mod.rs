//! Configuration: built-in defaults (the shipped `config/taskhook.toml`),
//! then a TOML file, then `TASKHOOK__SECTION__KEY` environment variables,
//! read straight into one typed tree and checked once, section by section.
//! Every error names the offending key.
//!
//! May call: `profile` (service profiles are part of the configuration),
//! `outcome` (event types), `redact`, `clock`.

mod secret;
mod serde_util;

pub use secret::{Secret, SigningKey};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;
use utoipa::ToSchema;

use crate::outcome::Outcome;
use crate::profile::{ProfileOverride, Profiles};
use serde_util::{duration, durations, ser_headers, ser_opt_url, ser_url};

/// The documented defaults; compiled in so the file and the binary agree.
pub const DEFAULTS_TOML: &str = include_str!("../../config/taskhook.toml");
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

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub upstream: UpstreamConfig,
    pub poll: PollConfig,
    pub store: StoreConfig,
    pub api: ApiConfig,
    pub delivery: DeliveryConfig,
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
}

/// The `[upstream]` section: where and how fast to poll.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(serialize_with = "ser_url")]
    pub base_url: Url,
    #[serde(default)]
    pub token: Option<Secret>,
    #[serde(default, skip_serializing)]
    token_file: Option<PathBuf>,
    pub default_service: String,
    /// Accept tasks of services that are neither built in nor configured,
    /// read with the generic profile.
    pub allow_unknown_services: bool,
    /// `[upstream.services.NAME]` as written.
    #[serde(default, skip_serializing)]
    services: BTreeMap<String, ProfileOverride>,
    /// Every service profile in force; shown (by `check-config`) for the
    /// configured services and the default one.
    #[serde(skip_deserializing, rename(serialize = "services"))]
    pub profiles: Profiles,
    pub batch_size: usize,
    pub max_requests_per_second: f64,
    pub max_concurrent_requests: usize,
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    #[serde(with = "duration")]
    pub backoff_initial: Duration,
    #[serde(with = "duration")]
    pub backoff_max: Duration,
    /// While the upstream refuses the token, it is tried again this often.
    #[serde(with = "duration")]
    pub token_retry: Duration,
    /// A service the upstream refuses (404, 405, ...) is asked again this
    /// often; other services carry on.
    #[serde(with = "duration")]
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

    fn check(&mut self) -> Result<(), ConfigError> {
        http_url("upstream.base_url", &self.base_url)?;
        self.token = secret::resolve(
            "upstream.token",
            self.token.take(),
            self.token_file.take().as_deref(),
            None,
        )?;
        service_name("upstream.default_service", &self.default_service)?;
        self.profiles = Profiles::new(
            &self.services,
            self.allow_unknown_services,
            &self.default_service,
        )
        .map_err(ConfigError)?;
        if self.profiles.get(&self.default_service).is_none() {
            return err(
                "upstream.default_service",
                format!(
                    "{:?} is not a known service; describe it in [upstream.services.{}] \
                     or set upstream.allow_unknown_services",
                    self.default_service, self.default_service
                ),
            );
        }
        range("upstream.batch_size", self.batch_size, 1, 500)?;
        let r = self.max_requests_per_second;
        if !(r.is_finite() && r > 0.0 && r <= 10_000.0) {
            return err(
                "upstream.max_requests_per_second",
                format!("must be > 0 and <= 10000, got {r}"),
            );
        }
        range(
            "upstream.max_concurrent_requests",
            self.max_concurrent_requests,
            1,
            64,
        )?;
        positive("upstream.request_timeout", self.request_timeout)?;
        positive("upstream.backoff_initial", self.backoff_initial)?;
        positive("upstream.backoff_max", self.backoff_max)?;
        positive("upstream.token_retry", self.token_retry)?;
        positive("upstream.broken_service_retry", self.broken_service_retry)?;
        range(
            "upstream.max_response_bytes",
            self.max_response_bytes,
            64 * 1024,
            1 << 30,
        )?;
        if self.backoff_max < self.backoff_initial {
            return err(
                "upstream.backoff_max",
                "must not be shorter than upstream.backoff_initial",
            );
        }
        Ok(())
    }
}

/// The `[poll]` section: the schedule and the give-up rules.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    #[serde(with = "duration")]
    pub first_poll_after: Duration,
    #[serde(with = "duration")]
    pub interval: Duration,
    #[serde(with = "duration")]
    pub max_interval: Duration,
    pub backoff_factor: f64,
    #[serde(with = "duration")]
    pub task_ttl: Duration,
    pub missing_grace: u32,
    pub failure_confirmations: u32,
    /// `budget`: every task at `interval` while the request budget allows;
    /// `backoff`: `interval × backoff_factor^n` up to `max_interval`.
    pub strategy: Strategy,
    /// Place a new task's first poll near the moment its service's tasks
    /// usually finish, once enough have finished.
    pub learn_first_poll: bool,
    /// A learned first poll comes no later than this after enqueue.
    #[serde(with = "duration")]
    pub first_poll_max: Duration,
}

/// How the time between two polls of a task is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Every task at `poll.interval` while the budget allows, all slower
    /// alike when it does not: the lag follows the demand.
    Budget,
    /// `interval × backoff_factor^(polls-1)` up to `max_interval`, whatever
    /// the budget.
    Backoff,
}

impl PollConfig {
    fn check(&self) -> Result<(), ConfigError> {
        positive("poll.interval", self.interval)?;
        positive("poll.max_interval", self.max_interval)?;
        positive("poll.task_ttl", self.task_ttl)?;
        positive("poll.first_poll_max", self.first_poll_max)?;
        let f = self.backoff_factor;
        if !(f.is_finite() && (1.0..=10.0).contains(&f)) {
            return err(
                "poll.backoff_factor",
                format!("must be 1.0..=10.0, got {f}"),
            );
        }
        range("poll.missing_grace", self.missing_grace, 1, 1000)?;
        range(
            "poll.failure_confirmations",
            self.failure_confirmations,
            1,
            100,
        )?;
        if self.max_interval < self.interval {
            return err(
                "poll.max_interval",
                "must not be shorter than poll.interval",
            );
        }
        Ok(())
    }
}

/// How hard SQLite works to make each commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Full,
    Normal,
}

/// The `[store]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The PostgreSQL URL; when set, it wins over `path`.
    #[serde(default, serialize_with = "serde_util::ser_db_url")]
    pub url: Option<Secret>,
    #[serde(default, skip_serializing)]
    url_file: Option<PathBuf>,
    /// The password of `url`'s user, kept apart from the URL (a Docker
    /// secret or systemd credential holding the password alone); put into
    /// `url` when the configuration is checked.
    #[serde(default, skip_serializing)]
    password: Option<Secret>,
    #[serde(default, skip_serializing)]
    password_file: Option<PathBuf>,
    /// Connections to PostgreSQL at most (the LISTEN session is one more).
    pub pool_size: usize,
    pub path: PathBuf,
    pub sync: SyncMode,
    #[serde(with = "duration")]
    pub done_retention: Duration,
}

/// Which store the configuration selects.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend<'a> {
    /// One daemon, one SQLite file.
    Sqlite(&'a Path),
    /// Several daemons may share one PostgreSQL database.
    Postgres(&'a str),
}

impl StoreConfig {
    /// The backend in force: PostgreSQL when `url` is set, else SQLite.
    pub fn backend(&self) -> Backend<'_> {
        match &self.url {
            Some(u) => Backend::Postgres(u.expose()),
            None => Backend::Sqlite(&self.path),
        }
    }

    /// One line for operators: which store, where (password redacted).
    pub fn describe(&self) -> String {
        match self.backend() {
            Backend::Sqlite(p) => format!("SQLite at {} (one daemon)", p.display()),
            Backend::Postgres(u) => format!(
                "PostgreSQL at {} (several daemons may share it)",
                crate::redact::password(u)
            ),
        }
    }

    fn check(&mut self) -> Result<(), ConfigError> {
        self.url = secret::resolve(
            "store.url",
            self.url.take(),
            self.url_file.take().as_deref(),
            None,
        )?;
        let password = secret::resolve(
            "store.password",
            self.password.take(),
            self.password_file.take().as_deref(),
            None,
        )?;
        if let Some(u) = &self.url {
            let shown = crate::redact::password(u.expose());
            let mut parsed = match Url::parse(u.expose()) {
                Ok(p) if matches!(p.scheme(), "postgres" | "postgresql") => p,
                Ok(_) => {
                    return err(
                        "store.url",
                        format!("must be a postgres:// or postgresql:// URL, got {shown:?}"),
                    );
                }
                Err(e) => return err("store.url", format!("invalid URL {shown:?}: {e}")),
            };
            if let Some(pw) = password {
                if parsed.password().is_some() || parsed.query_pairs().any(|(k, _)| k == "password")
                {
                    return err(
                        "store.password",
                        "store.url carries a password already: give it one way only",
                    );
                }
                if parsed.username().is_empty() {
                    return err(
                        "store.password",
                        format!(
                            "store.url names no user to go with it (postgres://USER@host/db), got {shown:?}"
                        ),
                    );
                }
                // Percent-encoded into the userinfo; the driver decodes it.
                if parsed
                    .set_password(Some(&percent_encode(pw.expose())))
                    .is_err()
                {
                    return err(
                        "store.password",
                        format!("store.url has no host to go with it, got {shown:?}"),
                    );
                }
                self.url = Some(Secret::new(String::from(parsed)));
            }
        } else if password.is_some() {
            return err(
                "store.password",
                "is set but store.url is not (give the URL without its password in store.url, \
                 store.url_file or TASKHOOK__STORE__URL)",
            );
        }
        range("store.pool_size", self.pool_size, 1, 256)?;
        if self.path.as_os_str().is_empty() {
            return err("store.path", "must not be empty");
        }
        Ok(())
    }
}

/// `s` with every byte but the URL's unreserved characters (letters,
/// digits, `-._~`) written `%XX`: safe in a URL's user info whatever it
/// holds (`Url::set_password` leaves a `%` as it is).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `[api]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    #[serde(default)]
    pub token: Option<Secret>,
    #[serde(default, skip_serializing)]
    token_file: Option<PathBuf>,
    pub max_body_bytes: usize,
    pub max_webhooks_per_task: usize,
    /// The token `POST /v1/callbacks/{service}` takes in its URL
    /// (`?token=`); unset: `token`. A leaked callback token lets its
    /// holder send hints only.
    #[serde(default)]
    pub callback_token: Option<Secret>,
    #[serde(default, skip_serializing)]
    callback_token_file: Option<PathBuf>,
    /// The largest callback body read.
    pub max_callback_bytes: usize,
    /// Callbacks one source address may send per second (twice that in a
    /// burst); more are counted and ignored.
    pub callbacks_per_second_per_source: u32,
}

impl ApiConfig {
    /// The token a callback URL must carry, if any.
    pub fn callback_token(&self) -> Option<&Secret> {
        self.callback_token.as_ref().or(self.token.as_ref())
    }

    fn check(&mut self) -> Result<(), ConfigError> {
        self.token = secret::resolve(
            "api.token",
            self.token.take(),
            self.token_file.take().as_deref(),
            None,
        )?;
        self.callback_token = secret::resolve(
            "api.callback_token",
            self.callback_token.take(),
            self.callback_token_file.take().as_deref(),
            None,
        )?;
        range(
            "api.max_callback_bytes",
            self.max_callback_bytes,
            1024,
            64 << 20,
        )?;
        range(
            "api.callbacks_per_second_per_source",
            self.callbacks_per_second_per_source,
            1,
            1_000_000,
        )?;
        range("api.max_body_bytes", self.max_body_bytes, 1024, 1 << 30)?;
        range(
            "api.max_webhooks_per_task",
            self.max_webhooks_per_task,
            0,
            1000,
        )?;
        Ok(())
    }
}

/// The `[delivery]` section: retries, timeouts, limits, the per-task secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    #[serde(with = "durations")]
    pub retry_schedule: Vec<Duration>,
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    pub max_concurrent_per_webhook: usize,
    #[serde(with = "duration")]
    pub dead_letter_ttl: Duration,
    /// The per-task secret as written (inline or from a file).
    #[serde(default, skip_serializing, rename = "secret")]
    secret_source: Option<Secret>,
    #[serde(default, skip_serializing, rename = "secrets")]
    secrets_source: Option<Vec<Secret>>,
    #[serde(default, skip_serializing)]
    secret_file: Option<PathBuf>,
    /// Sign deliveries to per-task webhook URLs, one signature each (the
    /// newest first): several during a rotation.
    #[serde(
        skip_deserializing,
        rename = "secrets",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub keys: Vec<SigningKey>,
    pub allow_private_networks: bool,
    /// Every webhook request goes through this proxy (http, https, socks5).
    #[serde(default, serialize_with = "ser_opt_url")]
    pub proxy: Option<Url>,
}

impl DeliveryConfig {
    /// The lease of a delivery being sent: long enough to cover a wait for a
    /// slot behind a slow receiver (each delivery queued in a lane waits for
    /// at most 32 attempts per slot) plus the attempt itself.
    pub fn lease_until(&self, now: crate::clock::Millis) -> crate::clock::Millis {
        now + (self.request_timeout * 40)
            .max(Duration::from_secs(600))
            .as_millis() as crate::clock::Millis
    }

    fn check(&mut self) -> Result<(), ConfigError> {
        if self.retry_schedule.is_empty() {
            return err("delivery.retry_schedule", "must list at least one delay");
        }
        for (i, step) in self.retry_schedule.iter().enumerate() {
            let key = format!("delivery.retry_schedule[{i}]");
            positive(&key, *step)?;
            if i > 0 && *step < self.retry_schedule[i - 1] {
                return err(&key, "the schedule must not decrease");
            }
        }
        positive("delivery.request_timeout", self.request_timeout)?;
        positive("delivery.connect_timeout", self.connect_timeout)?;
        range(
            "delivery.max_concurrent_per_webhook",
            self.max_concurrent_per_webhook,
            1,
            1024,
        )?;
        positive("delivery.dead_letter_ttl", self.dead_letter_ttl)?;
        let s = secret::resolve(
            "delivery.secret",
            self.secret_source.take(),
            self.secret_file.take().as_deref(),
            None,
        )?;
        self.keys = secret::rotation("delivery.secret", self.secrets_source.take(), s)?;
        if let Some(p) = &self.proxy
            && !matches!(p.scheme(), "http" | "https" | "socks5" | "socks5h")
        {
            return err(
                "delivery.proxy",
                format!(
                    "must be http://, https:// or socks5://, got {:?}",
                    crate::redact::url(p.as_str())
                ),
            );
        }
        Ok(())
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The `[daemon]` section: shutdown and logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
}

impl DaemonConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return err(
                "daemon.log_level",
                format!("not a log filter: {:?}", self.log_level),
            );
        }
        Ok(())
    }
}

/// One configured receiver.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    #[serde(serialize_with = "ser_url")]
    pub url: Url,
    /// The secret as written (inline, from a file or a variable).
    #[serde(default, skip_serializing, rename = "secret")]
    secret_source: Option<Secret>,
    #[serde(default, skip_serializing)]
    secret_file: Option<PathBuf>,
    #[serde(default, skip_serializing)]
    secret_env: Option<String>,
    /// `secrets = [new, old]`: a rotation, every key signs.
    #[serde(default, skip_serializing, rename = "secrets")]
    secrets_source: Option<Vec<Secret>>,
    /// The keys that sign its deliveries, one signature each, the newest
    /// first. Several while a rotation is under way; none: unsigned.
    #[serde(
        skip_deserializing,
        rename = "secrets",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub keys: Vec<SigningKey>,
    /// Event types sent to this webhook; `None` means all.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Extra request headers; their values are shown redacted.
    #[serde(default, serialize_with = "ser_headers")]
    pub headers: BTreeMap<String, String>,
}

impl WebhookConfig {
    pub fn wants(&self, outcome: Outcome) -> bool {
        match &self.events {
            None => true,
            Some(list) => list.iter().any(|e| e == outcome.event_type()),
        }
    }

    fn check(&mut self, i: usize, earlier: &[WebhookConfig]) -> Result<(), ConfigError> {
        let key = |k: &str| format!("webhooks[{i}].{k}");
        if self.name.trim().is_empty() {
            return err(&key("name"), "must not be empty");
        }
        if earlier.iter().any(|o| o.name == self.name) {
            return err(&key("name"), format!("{:?} is used twice", self.name));
        }
        http_url(&key("url"), &self.url)?;
        let s = secret::resolve(
            &key("secret"),
            self.secret_source.take(),
            self.secret_file.take().as_deref(),
            self.secret_env.take().as_deref(),
        )?;
        self.keys = secret::rotation(&key("secret"), self.secrets_source.take(), s)?;
        for e in self.events.iter().flatten() {
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
        for (h, v) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(v).is_err()
            {
                return err(&key("headers"), format!("invalid header {h:?}"));
            }
        }
        Ok(())
    }
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
        let mut cfg = Self::unchecked(file, env)?;
        cfg.check()?;
        Ok(cfg)
    }

    /// The `[store]` section alone, from the same layers as
    /// [`Config::load`], checked (its URL, password and files resolved):
    /// what `taskhook store copy` needs. The other sections are read but
    /// not checked, so the secret files that only the daemon's service can
    /// read (systemd credentials, say) need not be there.
    pub fn load_store(file: Option<&Path>) -> Result<StoreConfig, ConfigError> {
        Self::load_store_with_env(file, std::env::vars())
    }

    /// Like [`Config::load_store`] with an explicit environment, for tests.
    pub fn load_store_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<StoreConfig, ConfigError> {
        let mut store = Self::unchecked(file, env)?.store;
        store.check()?;
        Ok(store)
    }

    /// Defaults, then `file`, then `env`; read, not checked.
    fn unchecked(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match file {
            None => None,
            Some(f) if !f.exists() => {
                return err("config", format!("file {} does not exist", f.display()));
            }
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .or_else(|e| err("config", format!("cannot read {}: {e}", f.display())))?,
            ),
        };
        Self::layered(text.as_deref(), env)
    }

    /// Parses one TOML text over the defaults (no file, no environment).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let mut cfg = Self::layered(Some(text), std::iter::empty())?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Defaults, then `text`, then `env`; read, not checked.
    fn layered(
        text: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        use config::{Config as Layers, Environment, File, FileFormat};
        let mut b = Layers::builder().add_source(File::from_str(DEFAULTS_TOML, FileFormat::Toml));
        if let Some(t) = text {
            b = b.add_source(File::from_str(t, FileFormat::Toml));
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
        layered
            .try_deserialize()
            .map_err(|e| ConfigError(describe_serde_error(e)))
    }

    /// Checks every section and resolves secrets and profiles.
    fn check(&mut self) -> Result<(), ConfigError> {
        self.upstream.check()?;
        self.poll.check()?;
        self.store.check()?;
        self.api.check()?;
        self.delivery.check()?;
        self.daemon.check()?;
        let mut checked: Vec<WebhookConfig> = Vec::with_capacity(self.webhooks.len());
        for (i, mut w) in std::mem::take(&mut self.webhooks).into_iter().enumerate() {
            w.check(i, &checked)?;
            checked.push(w);
        }
        self.webhooks = checked;
        Ok(())
    }

    /// Without a webhook, a finished task's result reaches nobody unless the
    /// task named its own URL: what to tell an operator, if so.
    pub fn nothing_receives(&self) -> Option<String> {
        self.webhooks.is_empty().then(|| {
            "no [[webhooks]] configured: results reach only tasks that name their own \
             webhooks (events are kept for store.done_retention, visible through \
             GET /v1/tasks/ID)"
                .to_string()
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

fn positive(key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return err(key, "must be longer than zero");
    }
    Ok(d)
}

fn range<T: PartialOrd + fmt::Display + Copy>(
    key: &str,
    v: T,
    lo: T,
    hi: T,
) -> Result<T, ConfigError> {
    if v < lo || v > hi {
        return err(key, format!("must be {lo}..={hi}, got {v}"));
    }
    Ok(v)
}

fn http_url(key: &str, url: &Url) -> Result<(), ConfigError> {
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return err(
            key,
            format!(
                "must be an http(s) URL, got {:?}",
                crate::redact::url(url.as_str())
            ),
        );
    }
    Ok(())
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

#[cfg(test)]
mod tests;
