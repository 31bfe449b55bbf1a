//! The command line (contract §3): the daemon, `check-config`, thin clients
//! of the control API (`client`), `store copy` (`store`), and, with the
//! `dev-tools` feature, the simulator, the `demo` and the bench.
//!
//! May call: `runtime`, `config`, `store`, and the dev-tool crates.

mod client;
#[cfg(feature = "dev-tools")]
mod demo;
mod store;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "taskhook",
    version,
    about = "Watches AceData Cloud task IDs and delivers each result as a signed, retried webhook."
)]
/// The command line of the `taskhook` binary.
pub struct Cli {
    /// Log format; overrides daemon.log_format.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

/// The value of `--log-format`.
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

/// The subcommands.
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
        /// Follow the tasks until each one's deliveries are settled.
        #[arg(long)]
        wait: bool,
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
        /// Refresh every 2 s (or the given interval, e.g. `--watch 5s`).
        #[arg(long, num_args = 0..=1, default_missing_value = "2s", value_parser = humantime::parse_duration)]
        watch: Option<std::time::Duration>,
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
    /// Send deliveries again: one by ID, or every dead letter a filter
    /// matches (e.g. `--since 2h --webhook billing`), paced by each
    /// webhook's concurrency cap.
    #[command(group(clap::ArgGroup::new("what").required(true).multiple(true)
        .args(["delivery_id", "all_failed", "since", "until", "webhook", "event_type", "parked"])))]
    Replay {
        #[command(flatten)]
        api: ApiArgs,
        /// One delivery (a dead letter or a parked one).
        #[arg(conflicts_with_all = ["all_failed", "since", "until", "webhook", "event_type", "parked", "dry_run"])]
        delivery_id: Option<i64>,
        /// Every dead letter.
        #[arg(long)]
        all_failed: bool,
        /// Dead-lettered at most this long ago (`2h`, `30m`) or since an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Dead-lettered before this long ago, or before an RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// Only deliveries to this webhook.
        #[arg(long)]
        webhook: Option<String>,
        /// Only events of this type (`task.succeeded`, `task.failed`, ...).
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Parked deliveries (their webhook left the configuration), not dead letters.
        #[arg(long)]
        parked: bool,
        /// Count what the filter matches; replay nothing.
        #[arg(long)]
        dry_run: bool,
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
    /// Work on a store directly, without a daemon.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Run the upstream simulator.
    #[cfg(feature = "dev-tools")]
    Sim(taskhook_sim::SimArgs),
    /// Simulator, daemon and a receiver on loopback: watch tasks flow.
    #[cfg(feature = "dev-tools")]
    Demo(demo::DemoArgs),
    /// Measure throughput, upstream efficiency, lag, scale and isolation.
    #[cfg(feature = "dev-tools")]
    Bench(taskhook_bench::BenchArgs),
}

/// The subcommands of `taskhook store`.
#[derive(Subcommand)]
enum StoreCommand {
    /// Copy a SQLite store into a PostgreSQL one (stop its daemon first).
    ///
    /// Copies watched tasks (with their service, webhooks, metadata,
    /// enqueue time and poll count), events with their pending and
    /// delivered deliveries, dead letters and parked deliveries, and
    /// learned durations, then prints what it read and wrote. Refuses a
    /// SQLite store a running daemon holds. Idempotent: what the target
    /// has already is counted and left alone, so running it again loses
    /// and doubles nothing.
    Copy {
        /// The SQLite store (default: store.path of the configuration).
        #[arg(long, value_name = "PATH")]
        from: Option<PathBuf>,
        /// The PostgreSQL URL (default: store.url of the configuration,
        /// with store.url_file, store.password_file and the environment
        /// applied). A password written here shows in the process list:
        /// prefer the configuration.
        #[arg(long, value_name = "URL")]
        to: Option<String>,
        /// Config file for what --from or --to leaves out, with the
        /// environment (else $TASKHOOK_CONFIG, else
        /// /etc/taskhook/taskhook.toml if present); only its [store] is
        /// checked.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
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
        Command::Store {
            command: StoreCommand::Copy { from, to, config },
        } => {
            init_logging(log_format.unwrap_or(LogFormat::Text), "warn");
            runtime(store::copy(store::CopyArgs { from, to, config }))
        }
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
        #[cfg(feature = "dev-tools")]
        Command::Sim(args) => {
            init_logging(log_format.unwrap_or(LogFormat::Text), "info");
            runtime(async move {
                use anyhow::Context;
                let stop = crate::runtime::signal();
                let listener = tokio::net::TcpListener::bind(args.listen)
                    .await
                    .with_context(|| format!("--listen: cannot listen on {}", args.listen))?;
                println!(
                    "taskhook sim: listening on http://{}",
                    listener.local_addr()?
                );
                std::io::stdout().flush()?;
                taskhook_sim::serve(listener, args, stop).await?;
                Ok(())
            })
        }
        #[cfg(feature = "dev-tools")]
        Command::Bench(args) => {
            init_logging(log_format.unwrap_or(LogFormat::Text), "error");
            runtime(taskhook_bench::run(args))
        }
        #[cfg(feature = "dev-tools")]
        Command::Demo(args) => {
            init_logging(log_format.unwrap_or(LogFormat::Text), "warn");
            runtime(demo::run(args))
        }
        Command::Enqueue {
            api,
            service,
            webhooks,
            metadata,
            wait,
            ids,
        } => runtime(client::enqueue(
            &api.api, service, webhooks, metadata, ids, wait,
        )),
        Command::Status {
            api,
            json,
            watch,
            id,
        } => runtime(client::status(&api.api, json, id, watch)),
        Command::Health { api, live } => runtime(client::health(&api.api, live)),
        Command::Deliveries {
            api,
            failed,
            limit,
            json,
        } => runtime(client::deliveries(&api.api, failed, limit, json)),
        Command::Replay {
            api,
            delivery_id,
            all_failed: _,
            since,
            until,
            webhook,
            event_type,
            parked,
            dry_run,
        } => runtime(client::replay(
            &api.api,
            delivery_id,
            client::ReplayFilter {
                since,
                until,
                webhook,
                event_type,
                parked,
                dry_run,
            },
        )),
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
            if let Some(w) = cfg.nothing_receives() {
                eprintln!("taskhook: warning: {w}");
            }
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
    // Colour only for a person at a terminal: systemd's journal, `docker
    // logs` and files get plain text. NO_COLOR set to anything but the
    // empty string turns it off (no-color.org).
    let colour = {
        use std::io::IsTerminal;
        std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn run_daemon(cfg: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    // Signals are caught before the daemon says it is ready (to systemd,
    // and with its address): a supervisor may stop or reload it at once.
    let stop_signal = crate::runtime::signal();
    #[cfg(unix)]
    let mut hup = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::hangup())?
    };
    let daemon = crate::runtime::Daemon::start(cfg).await?;
    println!(
        "taskhook: control API listening on http://{}",
        daemon.api_addr
    );
    std::io::stdout().flush()?;
    let stop = daemon.shutdown_token();
    tokio::spawn(async move {
        stop_signal.await;
        stop.cancel();
    });
    #[cfg(unix)]
    {
        let reloader = daemon.reloader();
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
