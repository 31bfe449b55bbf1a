//! `taskhook bench --only purge`: does the purge keep up with deliveries?
//!
//! Finished work is purged once a minute, chunk after chunk until nothing
//! past `store.done_retention` is left. It keeps up when it removes done
//! tasks at least as fast as the daemon finishes them: the throughput
//! scenario's sustained delivery rate (its measured figure when it ran in
//! the same bench run, else its target).
//!
//! For each store (SQLite, then PostgreSQL when a server answers) the
//! daemon delivers N tasks (the throughput scenario's number, `--tasks`, at
//! least 12,000; at most 30,000 on PostgreSQL, where one daemon delivers
//! slowly) through the simulator to the bench's receiver, keeping
//! them for an hour; then a reload (SIGHUP) sets `store.done_retention` and
//! `delivery.dead_letter_ttl` to a second, and the bench watches
//! `/v1/stats` until the daemon's next purge (once a minute) has removed
//! them all, and reads the rows each chunk removed from the daemon's debug
//! log. The purge runs on an idle daemon: under load it shares the store's
//! writer with the deliveries.
//!
//! PostgreSQL: `TASKHOOK_BENCH_DATABASE_URL`, else
//! `TASKHOOK_TEST_DATABASE_URL`, else `postgres://postgres@127.0.0.1:5432/test`;
//! the run uses a schema of its own and drops it afterwards.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::{Daemon, Figure, Harness, Plan, daemon_config, fig, limited_upstream, thousands};

/// The store one run fills and watches being purged.
enum Backend {
    Sqlite,
    /// A PostgreSQL server and the schema the run creates in it.
    Postgres {
        url: String,
        schema: String,
    },
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres { .. } => "PostgreSQL",
        }
    }
}

/// What one run measured.
struct Purge {
    /// Done tasks filled, and how fast the daemon delivered them.
    tasks: usize,
    fill_rate: f64,
    /// Done tasks removed per second, from the first chunk seen committed
    /// to the last.
    tasks_per_second: f64,
    /// Rows (tasks, events, deliveries, attempts) removed in all.
    rows: u64,
}

/// Done tasks in the store, at least: a purge removes 5,000 per chunk, and
/// a few chunks are needed to time it.
const MIN_TASKS: usize = 12_000;
/// Done tasks filled on PostgreSQL, at most: one daemon delivers there
/// far more slowly than on SQLite (about 200 tasks/s to one webhook on two
/// busy cores), and the fill must not take many minutes.
const MAX_POSTGRES_TASKS: usize = 30_000;
/// The daemon purges once a minute (its `PURGE_EVERY`).
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// How often `/v1/stats` is read while the purge runs.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// After the reload the bench waits for the next purge and for the purge
/// itself, at most this in all.
const PURGE_WITHIN: Duration = Duration::from_secs(PURGE_EVERY.as_secs() + 120);

/// Runs the scenario, adding its figures to `out` (after the throughput
/// scenario's, when it ran).
pub(crate) async fn purge(h: &Harness, plan: &Plan, out: &mut Vec<Figure>) -> anyhow::Result<()> {
    let n = plan.throughput_tasks.max(MIN_TASKS);
    let (reference, source) = match measured_sustained_rate(out) {
        Some(rate) => (rate, "the throughput scenario's sustained delivery rate"),
        None => (
            plan.target(10_000.0, 100.0),
            "the throughput scenario's target delivery rate",
        ),
    };
    let mut backends = vec![Backend::Sqlite];
    match postgres_url() {
        Some(url) if postgres_reachable(&url).await => backends.push(Backend::Postgres {
            url,
            schema: format!("bench_purge_{}", std::process::id()),
        }),
        Some(url) => out.push(fig(
            "purge",
            "PostgreSQL",
            format!("skipped: no server answers at {}", redact(&url)),
            "",
            None,
        )),
        None => {}
    }
    for backend in backends {
        let name = backend.name();
        let tasks = match backend {
            Backend::Sqlite => n,
            Backend::Postgres { .. } => n.min(MAX_POSTGRES_TASKS),
        };
        let measured = run(h, &backend, tasks).await;
        if let Backend::Postgres { url, schema } = &backend {
            drop_schema(url, schema).await;
        }
        let target = format!("≥ {} tasks/s ({source})", thousands(reference));
        let m = match measured {
            Ok(m) => m,
            Err(e) => {
                // The other store is still measured; the run fails at the end.
                out.push(fig(
                    "purge",
                    &format!("{name}: purge rate of done tasks"),
                    format!("not measured: {e:#}"),
                    &target,
                    Some(false),
                ));
                continue;
            }
        };
        out.push(fig(
            "purge",
            &format!("{name}: done tasks filled through the daemon"),
            format!(
                "{} ({:.0} tasks/s delivered)",
                thousands(m.tasks as f64),
                m.fill_rate
            ),
            "",
            None,
        ));
        out.push(fig(
            "purge",
            &format!("{name}: purge rate of done tasks"),
            format!(
                "{} tasks/s ({} rows/s)",
                thousands(m.tasks_per_second),
                thousands(m.tasks_per_second * m.rows as f64 / m.tasks as f64)
            ),
            &target,
            Some(m.tasks_per_second >= reference),
        ));
        // Each purge must clear a minute of deliveries before the next.
        let minute = 60.0 * reference / m.tasks_per_second.max(1.0);
        out.push(fig(
            "purge",
            &format!("{name}: a minute of deliveries at that rate, purged in"),
            format!("{minute:.1} s"),
            "≤ 60 s",
            Some(minute <= 60.0),
        ));
    }
    Ok(())
}

/// The throughput scenario's sustained delivery rate, when it ran first.
fn measured_sustained_rate(figures: &[Figure]) -> Option<f64> {
    figures
        .iter()
        .find(|f| f.scenario == "throughput" && f.name.starts_with("sustained delivery rate"))
        .and_then(|f| f.value.split_whitespace().next())
        .and_then(|v| v.replace(',', "").parse().ok())
}

/// Fills a store with `n` done tasks through the daemon and measures its
/// first purge of them.
async fn run(h: &Harness, backend: &Backend, n: usize) -> anyhow::Result<Purge> {
    h.reset();
    let sim = h.sim(limited_upstream()).await?;
    let tag = match backend {
        Backend::Sqlite => "purge-sqlite",
        Backend::Postgres { .. } => "purge-postgres",
    };
    let cfg = daemon_config(
        h,
        tag,
        &sim,
        "batch_size = 500\nmax_requests_per_second = 58\nmax_concurrent_requests = 5\n\
         [poll]\nfirst_poll_after = \"500ms\"\ninterval = \"1s\"\nmax_interval = \"1s\"\n\
         [delivery]\nmax_concurrent_per_webhook = 512\ndead_letter_ttl = \"1h\"\n",
        1,
    )?;
    let mut store = "done_retention = \"1h\"\n".to_string();
    if let Backend::Postgres { url, schema } = backend {
        let sep = if url.contains('?') { '&' } else { '?' };
        let with_schema = format!("{url}{sep}search_path={schema}");
        store.push_str(&format!(
            "url = {}\n",
            Value::String(with_schema) // a TOML basic string is a JSON string
        ));
    }
    add_to_section(&cfg, "store", &store)?;
    let log = h.dir.path().join(format!("{tag}.log"));
    let daemon = start_logging_purges(&cfg, &log)?;

    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let specs: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "duration_ms": 500, "running_shape": "ack"}))
        .collect();
    h.create_sim_tasks(&sim, specs).await?;
    let fill = Instant::now();
    h.enqueue(&daemon.api, &ids, 10_000).await?;
    h.wait_for(tag, 0, n as u64, Duration::from_secs(120 + n as u64 / 100))
        .await?;
    // A task is done once its delivery is recorded.
    let deadline = Instant::now() + Duration::from_secs(60);
    while done_tasks(h, &daemon.api).await? < n as u64 {
        if Instant::now() > deadline {
            bail!("not every task done a minute after its delivery");
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    let fill_rate = n as f64 / fill.elapsed().as_secs_f64();

    // Keep finished work a second from now on: the next purge takes it all.
    let text = std::fs::read_to_string(&cfg)?
        .replace("done_retention = \"1h\"", "done_retention = \"1s\"")
        .replace("dead_letter_ttl = \"1h\"", "dead_letter_ttl = \"1s\"");
    std::fs::write(&cfg, text)?;
    reload(&daemon)?;
    let reloaded = Instant::now();
    while !std::fs::read_to_string(&log)?.contains("configuration reloaded") {
        if reloaded.elapsed() > Duration::from_secs(10) {
            bail!("the daemon did not reload its configuration within 10 s");
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    let started = Instant::now();

    // The first purge: from the first chunk seen gone to the last.
    let mut first: Option<(Instant, u64)> = None;
    let last = loop {
        let now = Instant::now();
        let left = done_tasks(h, &daemon.api).await?;
        if left < n as u64 && first.is_none() {
            first = Some((now, left));
        }
        if left == 0 {
            break now;
        }
        if started.elapsed() > PURGE_WITHIN {
            bail!("{left} of {n} done tasks still there {PURGE_WITHIN:?} after the reload");
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    };
    daemon.stop()?;
    let (first_at, left_then) = first.expect("the loop saw fewer than n first");
    let seconds = (last - first_at).as_secs_f64();
    if left_then == 0 || seconds <= 0.0 {
        bail!("the purge removed all {n} tasks between two samples: too few to time");
    }
    Ok(Purge {
        tasks: n,
        fill_rate,
        tasks_per_second: left_then as f64 / seconds,
        rows: purged_rows(&log)?,
    })
}

/// Sends SIGHUP to the daemon: it reloads its configuration file.
fn reload(daemon: &Daemon) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(daemon.child.id()).context("the daemon's pid")?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        bail!(
            "cannot send SIGHUP to the daemon ({pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `/v1/stats`' count of done tasks.
async fn done_tasks(h: &Harness, api: &str) -> anyhow::Result<u64> {
    let v: Value = h
        .http
        .get(format!("{api}/v1/stats"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    v["tasks"]["done"]
        .as_u64()
        .with_context(|| format!("no tasks.done in /v1/stats: {v}"))
}

/// Adds `lines` at the top of `[section]` in the config file `path`.
fn add_to_section(path: &Path, section: &str, lines: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let header = format!("[{section}]\n");
    if !text.contains(&header) {
        bail!("no [{section}] in {}", path.display());
    }
    std::fs::write(path, text.replacen(&header, &format!("{header}{lines}"), 1))?;
    Ok(())
}

/// Starts the daemon as [`Daemon::start`] does, with its purge's debug
/// lines (JSON) written to `log`.
fn start_logging_purges(config: &Path, log: &Path) -> anyhow::Result<Daemon> {
    let child = Command::new(crate::taskhook_binary()?)
        .args(["run", "--log-format", "json", "-c"])
        .arg(config)
        .env(
            "RUST_LOG",
            "error,taskhook::runtime::purge=debug,taskhook::cli=info",
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting the daemon")?;
    Daemon::announced(child, Some(log))
}

/// The rows the daemon's purges removed, from its debug log.
fn purged_rows(log: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(log)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "purged finished work")
        .filter_map(|v| v["rows"].as_u64())
        .sum())
}

/// The PostgreSQL server to measure on.
fn postgres_url() -> Option<String> {
    ["TASKHOOK_BENCH_DATABASE_URL", "TASKHOOK_TEST_DATABASE_URL"]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|u| !u.is_empty()))
        .or_else(|| Some("postgres://postgres@127.0.0.1:5432/test".into()))
}

/// Whether a PostgreSQL server answers at `url` (within 5 s).
async fn postgres_reachable(url: &str) -> bool {
    let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok((_client, connection))) => {
            drop(connection);
            true
        }
        _ => false,
    }
}

/// Drops the run's schema (the daemon is stopped by then).
async fn drop_schema(url: &str, schema: &str) {
    let dropped = async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let conn = tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await?;
        drop(client);
        let _ = conn.await;
        Ok::<_, tokio_postgres::Error>(())
    };
    if let Err(e) = dropped.await {
        eprintln!("bench: could not drop schema {schema}: {e}");
    }
}

/// `url` without its password (`scheme://user:***@host/...`).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_rate_is_the_throughput_figure_when_there_is_one() {
        let figures = vec![fig(
            "throughput",
            "sustained delivery rate (10th–90th percentile)",
            "9612 tasks/s".into(),
            "≥ 10,000 tasks/s",
            Some(false),
        )];
        assert_eq!(measured_sustained_rate(&figures), Some(9612.0));
        assert_eq!(measured_sustained_rate(&[]), None);
    }

    #[test]
    fn a_password_is_left_out_of_the_url() {
        assert_eq!(
            redact("postgres://bench:s3cret@db:5432/test"),
            "postgres://bench:***@db:5432/test"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
    }

    #[test]
    fn purged_rows_add_up_the_purge_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("d.log");
        std::fs::write(
            &log,
            concat!(
                r#"{"level":"DEBUG","rows":20000,"message":"purged finished work"}"#,
                "\n",
                r#"{"level":"ERROR","message":"something else","rows":7}"#,
                "\nnot json\n",
                r#"{"level":"DEBUG","rows":1234,"message":"purged finished work"}"#,
                "\n"
            ),
        )
        .unwrap();
        assert_eq!(purged_rows(&log).unwrap(), 21234);
    }
}
