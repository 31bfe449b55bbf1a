//! The command line (contract §3): the daemon, the simulator, the demo, and
//! thin clients of the control API.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::config::{self, Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "taskhook",
    version,
    about = "Watches AceData Cloud task IDs and delivers each result as a signed, retried webhook."
)]
pub struct Cli {
    /// Log format; overrides daemon.log_format.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

/// Where client subcommands find the daemon.
#[derive(clap::Args, Clone)]
struct ApiArgs {
    /// The daemon's control API.
    #[arg(long, env = "TASKHOOK_API", default_value = "http://127.0.0.1:8080")]
    api: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Config file (else $TASKHOOK_CONFIG, else /etc/taskhook/taskhook.toml if present).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Hand task IDs to the daemon (`-` reads IDs from stdin, one a line).
    Enqueue {
        #[command(flatten)]
        api: ApiArgs,
        /// The upstream service of these tasks (default: upstream.default_service).
        #[arg(long)]
        service: Option<String>,
        /// Extra webhook URL for these tasks (repeatable).
        #[arg(long = "webhook")]
        webhooks: Vec<String>,
        /// JSON object echoed in each task's event.
        #[arg(long)]
        metadata: Option<String>,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Show the queue summary, or one task.
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
        id: Option<String>,
    },
    /// List deliveries (newest first).
    Deliveries {
        #[command(flatten)]
        api: ApiArgs,
        /// Only dead-lettered deliveries.
        #[arg(long)]
        failed: bool,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Send dead-lettered deliveries again.
    Replay {
        #[command(flatten)]
        api: ApiArgs,
        /// Every failed delivery.
        #[arg(long, conflicts_with = "delivery_id")]
        all_failed: bool,
        #[arg(required_unless_present = "all_failed")]
        delivery_id: Option<i64>,
    },
    /// Exit 0 when the daemon is ready (`/readyz`), 1 otherwise: for container health checks.
    Health {
        #[command(flatten)]
        api: ApiArgs,
        /// Check liveness (`/healthz`) instead of readiness.
        #[arg(long)]
        live: bool,
    },
    /// Validate a config and print it, secrets redacted (exit 2 when invalid).
    CheckConfig {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Run the upstream simulator.
    Sim(crate::sim::SimArgs),
    /// Simulator, daemon and a receiver on loopback: watch tasks flow.
    Demo(crate::demo::DemoArgs),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log_format.map(|f| match f {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    });
    match cli.command {
        Command::CheckConfig { config } => check_config(config),
        Command::Run { config } => {
            let cfg = match load(config.clone()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(
                log_format.unwrap_or(cfg.daemon.log_format),
                &cfg.daemon.log_level,
            );
            runtime(run_daemon(cfg, config))
        }
        Command::Sim(args) => {
            init_logging(log_format.unwrap_or(LogFormat::Text), "info");
            runtime(async move {
                let listener = tokio::net::TcpListener::bind(args.listen)
                    .await
                    .with_context(|| format!("--listen: cannot listen on {}", args.listen))?;
                println!(
                    "taskhook sim: listening on http://{}",
                    listener.local_addr()?
                );
                std::io::stdout().flush()?;
                crate::sim::serve(listener, args, crate::daemon::signal()).await?;
                Ok(())
            })
        }
        Command::Demo(args) => {
            init_logging(log_format.unwrap_or(LogFormat::Text), "warn");
            runtime(crate::demo::run(args))
        }
        Command::Enqueue {
            api,
            service,
            webhooks,
            metadata,
            ids,
        } => runtime(enqueue(api, service, webhooks, metadata, ids)),
        Command::Status { api, json, id } => runtime(status(api, json, id)),
        Command::Health { api, live } => runtime(health(api, live)),
        Command::Deliveries {
            api,
            failed,
            limit,
            json,
        } => runtime(deliveries(api, failed, limit, json)),
        Command::Replay {
            api,
            all_failed,
            delivery_id,
        } => runtime(replay(api, all_failed, delivery_id)),
    }
}

fn load(path: Option<PathBuf>) -> Result<Config, ExitCode> {
    let file = config::resolve_path(path.as_deref());
    Config::load(file.as_deref()).map_err(|e| {
        eprintln!("taskhook: invalid configuration: {e}");
        ExitCode::from(2)
    })
}

fn check_config(path: Option<PathBuf>) -> ExitCode {
    let file = config::resolve_path(path.as_deref());
    match load(path) {
        Ok(cfg) => {
            match &file {
                Some(f) => println!(
                    "# effective configuration: defaults + {} + environment",
                    f.display()
                ),
                None => println!("# effective configuration: defaults + environment"),
            }
            print!("{}", cfg.to_redacted_toml());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn runtime<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("taskhook: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskhook: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `RUST_LOG` wins over the configured level.
pub fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn run_daemon(cfg: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    let daemon = crate::daemon::Daemon::start(cfg).await?;
    println!(
        "taskhook: control API listening on http://{}",
        daemon.api_addr
    );
    std::io::stdout().flush()?;
    let stop = daemon.shutdown_token();
    tokio::spawn(async move {
        crate::daemon::signal().await;
        stop.cancel();
    });
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let reloader = daemon.reloader();
        let mut hup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let file = config::resolve_path(path.as_deref());
                match Config::load(file.as_deref()) {
                    Ok(new) => {
                        let restart = reloader.reload(new);
                        tracing::info!("configuration reloaded");
                        if !restart.is_empty() {
                            tracing::warn!(keys = ?restart, "these settings change only with a restart; keeping the running values");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "configuration reload refused; keeping the running configuration");
                    }
                }
            }
        });
    }
    daemon.run_until_stopped().await;
    Ok(())
}

/// A client of the control API.
struct ApiClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl ApiClient {
    fn new(api: &ApiArgs) -> Self {
        ApiClient {
            base: api.api.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            token: std::env::var("TASKHOOK_API_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| {
            format!(
                "cannot reach the daemon at {} (set --api or TASKHOOK_API)",
                self.base
            )
        })?;
        let status = resp.status();
        let text = resp.text().await?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or(text.as_str());
            bail!("{status}: {msg}");
        }
        Ok(value)
    }
}

async fn enqueue(
    api: ApiArgs,
    service: Option<String>,
    webhooks: Vec<String>,
    metadata: Option<String>,
    ids: Vec<String>,
) -> anyhow::Result<()> {
    let metadata: Option<Value> = match metadata {
        Some(m) => Some(serde_json::from_str(&m).context("--metadata: not JSON")?),
        None => None,
    };
    let mut all = Vec::new();
    for id in ids {
        if id == "-" {
            for line in std::io::stdin().lock().lines() {
                let line = line?;
                let line = line.trim();
                if !line.is_empty() {
                    all.push(line.to_string());
                }
            }
        } else {
            all.push(id);
        }
    }
    let client = ApiClient::new(&api);
    let (mut accepted, mut duplicates) = (0, 0);
    for chunk in all.chunks(1000) {
        let tasks: Vec<Value> = chunk
            .iter()
            .map(|id| {
                let mut t = json!({"id": id});
                if let Some(s) = &service {
                    t["service"] = json!(s);
                }
                if !webhooks.is_empty() {
                    t["webhooks"] = json!(webhooks);
                }
                if let Some(m) = &metadata {
                    t["metadata"] = m.clone();
                }
                t
            })
            .collect();
        let out = client
            .call(
                reqwest::Method::POST,
                "/v1/tasks",
                Some(json!({"tasks": tasks})),
            )
            .await?;
        accepted += out["accepted"].as_u64().unwrap_or(0);
        duplicates += out["duplicates"].as_u64().unwrap_or(0);
    }
    println!("accepted {accepted}, duplicates {duplicates}");
    Ok(())
}

async fn status(api: ApiArgs, as_json: bool, id: Option<String>) -> anyhow::Result<()> {
    let client = ApiClient::new(&api);
    match id {
        Some(id) => {
            let path = format!("/v1/tasks/{}", url_escape(&id));
            let t = client.call(reqwest::Method::GET, &path, None).await?;
            if as_json {
                println!("{}", serde_json::to_string_pretty(&t)?);
                return Ok(());
            }
            let s = |k: &str| t.get(k).map(show).unwrap_or_default();
            println!("task        {}", s("id"));
            println!("service     {}", s("service"));
            println!("status      {}", s("status"));
            println!("upstream    {}", s("upstream_state"));
            println!("polls       {}", s("polls"));
            println!("enqueued    {}", s("enqueued_at"));
            println!("next poll   {}", s("next_poll_at"));
            if let Some(Value::Array(ds)) = t.get("deliveries") {
                for d in ds {
                    println!(
                        "delivery    #{} {} {} attempts={} {}",
                        show(&d["id"]),
                        show(&d["webhook"]),
                        show(&d["state"]),
                        show(&d["attempts"]),
                        show(&d["last_error"])
                    );
                }
            }
        }
        None => {
            let st = client.call(reqwest::Method::GET, "/v1/stats", None).await?;
            if as_json {
                println!("{}", serde_json::to_string_pretty(&st)?);
                return Ok(());
            }
            println!("watching           {}", show(&st["tasks"]["watching"]));
            println!("delivering         {}", show(&st["tasks"]["delivering"]));
            println!("done               {}", show(&st["tasks"]["done"]));
            println!("pending deliveries {}", show(&st["deliveries"]["pending"]));
            println!("dead letters       {}", show(&st["dead_letters"]));
            println!(
                "oldest watching    {}",
                show(&st["oldest_watching_enqueued_at"])
            );
            let up = &st["upstream"];
            let health = if up["token_accepted"] == json!(false) {
                "token refused (401)".to_string()
            } else if up["consecutive_failures"].as_u64().unwrap_or(0) > 0 {
                format!("failing: {}", show(&up["last_error"]))
            } else {
                "ok".to_string()
            };
            println!("upstream           {health}");
        }
    }
    Ok(())
}

async fn health(api: ApiArgs, live: bool) -> anyhow::Result<()> {
    let path = if live { "/healthz" } else { "/readyz" };
    let url = format!("{}{path}", api.api.trim_end_matches('/'));
    let resp = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    if status.is_success() {
        println!("{body}");
        Ok(())
    } else {
        bail!("{status}: {body}")
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn url_escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

async fn deliveries(api: ApiArgs, failed: bool, limit: usize, as_json: bool) -> anyhow::Result<()> {
    let client = ApiClient::new(&api);
    let mut path = format!("/v1/deliveries?limit={limit}");
    if failed {
        path.push_str("&state=failed");
    }
    let out = client.call(reqwest::Method::GET, &path, None).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:>8}  {:<10} {:<16} {:<24} {:>8}  last error",
        "id", "state", "type", "task", "attempts"
    );
    for d in out["deliveries"].as_array().cloned().unwrap_or_default() {
        println!(
            "{:>8}  {:<10} {:<16} {:<24} {:>8}  {}",
            show(&d["id"]),
            show(&d["state"]),
            show(&d["event_type"]),
            show(&d["task_id"]),
            show(&d["attempts"]),
            show(&d["last_error"])
        );
    }
    Ok(())
}

async fn replay(api: ApiArgs, all_failed: bool, id: Option<i64>) -> anyhow::Result<()> {
    let client = ApiClient::new(&api);
    let out = if all_failed {
        client
            .call(reqwest::Method::POST, "/v1/deliveries/replay-failed", None)
            .await?
    } else {
        let id = id.expect("clap requires an id");
        client
            .call(
                reqwest::Method::POST,
                &format!("/v1/deliveries/{id}/replay"),
                None,
            )
            .await?
    };
    println!("replayed {}", show(&out["replayed"]));
    Ok(())
}
