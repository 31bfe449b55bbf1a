//! The PostgreSQL scenarios of `taskhook bench`: the shared store measured
//! beside the SQLite figures, in the same run, on the same machine.
//!
//! - `pg-throughput`: the same tasks delivered by 1, 2 and 3 daemons sharing
//!   one schema (and by one daemon on SQLite, for reference): tasks/s, the
//!   ratio to one instance, CPU per 1,000 tasks of taskhook and of the
//!   PostgreSQL server.
//! - `pg-scale`: a million watched tasks enqueued 10,000 IDs per request;
//!   idle CPU and queries per second while none is due (LISTEN/NOTIFY and
//!   the 1 s fallback poll); then the claim latency while 10,000 of them are
//!   polled every second with the million in the table.
//! - `pg-vacuum`: dead row versions, live rows and sizes of every table after
//!   a 100,000-task run with the server's autovacuum settings as they are
//!   (the planner statistics kept fresh by the bench), and what autovacuum,
//!   or else a `VACUUM`, made of them.
//!
//! Each scenario works in a fresh schema of the database
//! (`--database-url` / `TASKHOOK_BENCH_DATABASE_URL`), which its daemons
//! reach through `search_path` in their `store.url` and name themselves in
//! `application_name` (so their sessions can be told apart), and drops it
//! afterwards. When the server does not answer, each scenario writes one
//! SKIPPED line naming the variable instead of figures.
//!
//! CPU comes from /proc: each daemon child's, and the server's (the
//! postmaster, found as the parent of the bench's own session, with its
//! reaped children, and every live child), so the server must run on this
//! machine for the PostgreSQL CPU figures; elsewhere they read "n/a".

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::{
    Daemon, Figure, Harness, Plan, cpu_seconds, daemon_config, fig, limited_upstream, percentile,
    signature_counts, signatures, thousands,
};

/// The variable naming the server, as `--database-url` does.
pub(crate) const URL_VAR: &str = "TASKHOOK_BENCH_DATABASE_URL";
/// The server when neither names one.
pub(crate) const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Kernel clock ticks per second of the CPU times in /proc/PID/stat
/// (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// The sizes of the PostgreSQL scenarios in one run.
struct Sizes {
    /// Tasks per throughput run (one run per instance count).
    throughput_tasks: usize,
    /// Instance counts of the throughput runs.
    instances: &'static [usize],
    /// Watched tasks in the scale scenario.
    scale_tasks: usize,
    /// How long the idle figures are measured.
    idle_for: Duration,
    /// Tasks made due for the claim-latency window, and its length.
    claim_due: usize,
    claim_for: Duration,
    /// Tasks of the vacuum run.
    vacuum_tasks: usize,
    /// How long the vacuum scenario waits for autovacuum after the run
    /// (when the server runs it).
    autovacuum_wait: Duration,
}

impl Sizes {
    fn new(plan: &Plan) -> Sizes {
        if plan.quick {
            Sizes {
                throughput_tasks: 300,
                instances: &[1, 2],
                scale_tasks: plan.scale_tasks.min(5_000),
                idle_for: Duration::from_secs(2),
                claim_due: 500,
                claim_for: Duration::from_secs(2),
                vacuum_tasks: 500,
                autovacuum_wait: Duration::ZERO,
            }
        } else {
            Sizes {
                throughput_tasks: 10_000,
                instances: &[1, 2, 3],
                scale_tasks: plan.scale_tasks,
                idle_for: Duration::from_secs(10),
                claim_due: 10_000,
                claim_for: Duration::from_secs(10),
                vacuum_tasks: 100_000,
                autovacuum_wait: Duration::from_secs(65),
            }
        }
    }
}

// ---- the server ----------------------------------------------------------------

/// The URL for the bench's own session: `url` without the keys only
/// taskhook reads (`search_path`, `sslrootcert`). The bench connects
/// without TLS, so a URL asking for it is refused.
fn session_url(url: &str) -> anyhow::Result<String> {
    let mut parsed = reqwest::Url::parse(url).with_context(|| format!("{URL_VAR}: not a URL"))?;
    let mut kept = Vec::new();
    for (k, v) in parsed.query_pairs() {
        match &*k {
            "search_path" | "sslrootcert" => {}
            "sslmode" if v != "disable" => bail!(
                "{URL_VAR}: the bench connects without TLS (sslmode={v}); \
                 point it at a server on this machine"
            ),
            _ => kept.push((k.into_owned(), v.into_owned())),
        }
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok(parsed.into())
}

/// A daemon's `store.url` for `schema`: `url` with `search_path` and
/// `application_name` set to the schema (replacing any the URL had), so the
/// scenario's sessions can be found in `pg_stat_activity`.
fn store_url(url: &str, schema: &str) -> anyhow::Result<String> {
    let mut parsed = reqwest::Url::parse(url).with_context(|| format!("{URL_VAR}: not a URL"))?;
    let mut pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| k != "search_path" && k != "application_name")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    pairs.push(("search_path".into(), schema.into()));
    pairs.push(("application_name".into(), schema.into()));
    parsed.query_pairs_mut().clear().extend_pairs(pairs);
    Ok(parsed.into())
}

/// The bench's session on the server, and where the server's processes are.
struct Server {
    client: tokio_postgres::Client,
    /// The URL as given (daemons get it with their schema).
    url: String,
    /// The postmaster's process ID, when the server runs on this machine.
    postmaster: Option<i32>,
}

/// Why there is no session: the server did not answer (the scenario is
/// skipped), or it answered with an error (the scenario fails).
enum Unavailable {
    Unreachable(String),
    Failed(anyhow::Error),
}

impl Server {
    async fn connect(url: &str) -> Result<Server, Unavailable> {
        let session = session_url(url).map_err(Unavailable::Failed)?;
        let attempt = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_postgres::connect(&session, tokio_postgres::NoTls),
        )
        .await;
        let (client, conn) = match attempt {
            Err(_) => return Err(Unavailable::Unreachable("no answer within 5 s".into())),
            Ok(Err(e)) if e.as_db_error().is_none() => {
                return Err(Unavailable::Unreachable(format!(
                    "{:#}",
                    anyhow::Error::new(e)
                )));
            }
            Ok(Err(e)) => {
                return Err(Unavailable::Failed(anyhow::anyhow!(
                    "PostgreSQL at {} answered with an error: {:#}",
                    redacted(url),
                    anyhow::Error::new(e)
                )));
            }
            Ok(Ok(pair)) => pair,
        };
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(|e| Unavailable::Failed(e.into()))?
            .get(0);
        Ok(Server {
            client,
            url: url.to_string(),
            postmaster: postmaster_of(pid),
        })
    }

    /// CPU seconds used so far by the whole server (every process, the
    /// bench's session, autovacuum and other clients included), or `None`
    /// when its processes are not on this machine.
    fn cpu_seconds(&self) -> Option<f64> {
        self.postmaster.map(server_cpu_seconds)
    }

    /// The server processes serving `schema`'s daemons (their
    /// `application_name` is the schema).
    async fn backends(&self, schema: &str) -> anyhow::Result<Vec<i32>> {
        Ok(self
            .client
            .query(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                &[&schema],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Transactions committed and rolled back in this database so far
    /// (every client's; the counters reach the view within about a second
    /// of each session's activity).
    async fn transactions(&self) -> anyhow::Result<i64> {
        Ok(self
            .client
            .query_one(
                "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database \
                 WHERE datname = current_database()",
                &[],
            )
            .await?
            .get(0))
    }

    /// Waits (at most `limit`) until no session of `schema`'s daemons is
    /// left: a session flushes its table statistics when it ends.
    async fn wait_sessions_gone(&self, schema: &str, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while !self.backends(schema).await?.is_empty() {
            if started.elapsed() > limit {
                bail!("the daemons' sessions were still open {limit:?} after they stopped");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// A setting as the server shows it (`SHOW`).
    async fn setting(&self, name: &str) -> String {
        self.client
            .query_one("SELECT current_setting($1)", &[&name])
            .await
            .map(|r| r.get::<_, String>(0))
            .unwrap_or_else(|_| "?".into())
    }
}

/// The postmaster's PID: the parent of backend `pid`, when both are
/// PostgreSQL processes of this machine (a server elsewhere, or in another
/// PID namespace, gives `None`).
fn postmaster_of(pid: i32) -> Option<i32> {
    let backend = ProcStat::read(pid)?;
    let parent = ProcStat::read(backend.ppid)?;
    (backend.comm == "postgres" && parent.comm == "postgres").then_some(backend.ppid)
}

/// The CPU seconds of the server whose postmaster is `postmaster`: its own
/// and its reaped children's (ended sessions), and every live child's.
fn server_cpu_seconds(postmaster: i32) -> f64 {
    let Some(pm) = ProcStat::read(postmaster) else {
        return 0.0;
    };
    let mut ticks = pm.utime + pm.stime + pm.cutime + pm.cstime;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(p) = ProcStat::read(pid).filter(|p| p.ppid == postmaster) {
                ticks += p.utime + p.stime;
            }
        }
    }
    ticks as f64 / TICKS_PER_SECOND
}

/// CPU seconds used so far by the processes `pids`.
fn processes_cpu_seconds(pids: &[i32]) -> f64 {
    pids.iter()
        .filter_map(|&p| ProcStat::read(p))
        .map(|p| (p.utime + p.stime) as f64 / TICKS_PER_SECOND)
        .sum()
}

/// The fields of /proc/PID/stat the bench reads.
#[derive(Debug, PartialEq)]
struct ProcStat {
    comm: String,
    ppid: i32,
    /// CPU ticks: user and system, and those of reaped children.
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

impl ProcStat {
    fn read(pid: i32) -> Option<ProcStat> {
        ProcStat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Parses stat(5): `pid (comm) state ppid ...`, the command name in
    /// parentheses (it may hold spaces and parentheses itself).
    fn parse(stat: &str) -> Option<ProcStat> {
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_string();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        Some(ProcStat {
            comm,
            ppid: f.get(1)?.parse().ok()?,
            utime: num(11)?,
            stime: num(12)?,
            cutime: num(13)?,
            cstime: num(14)?,
        })
    }
}

/// The URL with its password hidden.
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("redacted"));
            }
            u.to_string()
        }
        Err(_) => "(not a URL)".into(),
    }
}

/// The server, or `None` after the scenario's SKIPPED line (printed and
/// written as its only figure) when it does not answer.
async fn server_or_skip(
    plan: &Plan,
    scenario: &'static str,
    out: &mut Vec<Figure>,
) -> anyhow::Result<Option<Server>> {
    let Some(url) = plan.database_url.as_deref() else {
        eprintln!("bench: {scenario} is not part of the quick run (name it in --only to run it)");
        return Ok(None);
    };
    match Server::connect(url).await {
        Ok(s) => Ok(Some(s)),
        Err(Unavailable::Failed(e)) => Err(e),
        Err(Unavailable::Unreachable(why)) => {
            let line = format!(
                "PostgreSQL not reachable at {} ({why}); set {URL_VAR} or --database-url",
                redacted(url)
            );
            eprintln!("bench: {scenario} SKIPPED: {line}");
            out.push(fig(scenario, "SKIPPED", line, "", None));
            Ok(None)
        }
    }
}

// ---- schemas ---------------------------------------------------------------------

/// A fresh schema for one scenario; [`Schema::drop_now`] drops it.
struct Schema {
    name: String,
    /// The daemons' `store.url`.
    store_url: String,
}

impl Schema {
    fn new(server: &Server) -> anyhow::Result<Schema> {
        let name = schema_name(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
            std::process::id(),
        );
        Ok(Schema {
            store_url: store_url(&server.url, &name)?,
            name,
        })
    }

    /// Ends whatever session still works in the schema (its daemons are
    /// stopped by then), then drops it with everything in it.
    async fn drop_now(self, server: &Server) -> anyhow::Result<()> {
        server
            .client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1 AND pid <> pg_backend_pid()",
                &[&self.name],
            )
            .await?;
        server
            .client
            .batch_execute(&format!(
                "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {} CASCADE; RESET lock_timeout",
                self.name
            ))
            .await
            .with_context(|| format!("dropping schema {}", self.name))?;
        Ok(())
    }
}

/// A schema name unique to this moment and process: `th_bench_` and hex.
fn schema_name(nanos: u128, pid: u32) -> String {
    format!("th_bench_{:x}_{pid:x}", nanos & 0xffff_ffff_ffff)
}

/// Runs `body` with a fresh schema and drops the schema afterwards, whether
/// `body` succeeded or not.
async fn with_schema<'a, T, F, Fut>(server: &'a Server, body: F) -> anyhow::Result<T>
where
    F: FnOnce(&'a Server, Schema) -> Fut,
    Fut: std::future::Future<Output = (Schema, anyhow::Result<T>)>,
{
    let schema = Schema::new(server)?;
    let (schema, result) = body(server, schema).await;
    let dropped = schema.drop_now(server).await;
    let value = result?;
    dropped?;
    Ok(value)
}

/// Writes a daemon config like [`daemon_config`]'s, on `store_url`
/// (PostgreSQL) instead of the SQLite file when given.
fn config(
    h: &Harness,
    name: &str,
    sim: &str,
    extra: &str,
    store_url: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let path = daemon_config(h, name, sim, extra, 1)?;
    if let Some(url) = store_url {
        let text = std::fs::read_to_string(&path)?;
        std::fs::write(&path, with_store_url(&text, url)?)?;
    }
    Ok(path)
}

/// `config` (a daemon's TOML) with `url = "..."` first in its `[store]`
/// section: the URL wins over the SQLite path.
fn with_store_url(config: &str, url: &str) -> anyhow::Result<String> {
    if !config.contains("\n[store]\n") {
        bail!("the daemon config has no [store] section");
    }
    // A TOML basic string: JSON's escaping is a subset of it.
    let quoted = serde_json::to_string(url)?;
    Ok(config.replacen("\n[store]\n", &format!("\n[store]\nurl = {quoted}\n"), 1))
}

// ---- the daemons' metrics ------------------------------------------------------------

/// One sample of a /metrics text: its labels and its value.
type Sample = (Vec<(String, String)>, f64);

/// The samples of metric `name` (the full sample name, e.g. `..._bucket`).
fn samples(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = if let Some(inner) = rest.strip_prefix('{') {
                let (labels, value) = inner.split_once('}')?;
                (labels, value)
            } else if rest.starts_with(' ') {
                ("", rest)
            } else {
                return None;
            };
            let value = value.split_whitespace().next()?.parse::<f64>().ok()?;
            let labels = labels
                .split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
                })
                .collect();
            Some((labels, value))
        })
        .collect()
}

/// The value of `name` with label `op` (or with no labels when `op` is
/// `None`), 0 when absent.
fn metric(text: &str, name: &str, op: Option<&str>) -> f64 {
    samples(text, name)
        .into_iter()
        .find(|(labels, _)| match op {
            Some(op) => labels.iter().any(|(k, v)| k == "op" && v == op),
            None => labels.is_empty(),
        })
        .map_or(0.0, |(_, v)| v)
}

/// The cumulative buckets (upper bound, count) of histogram `name` for
/// operation `op`, in bound order.
fn buckets(text: &str, name: &str, op: &str) -> Vec<(f64, f64)> {
    let mut b: Vec<(f64, f64)> = samples(text, &format!("{name}_bucket"))
        .into_iter()
        .filter(|(labels, _)| labels.iter().any(|(k, v)| k == "op" && v == op))
        .filter_map(|(labels, v)| {
            let le = labels.iter().find(|(k, _)| k == "le")?.1.as_str();
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, v))
        })
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    b
}

/// Quantile `q` of the observations made between two scrapes of one
/// histogram (cumulative buckets, as [`buckets`] gives them): the upper
/// bound of the bucket it falls in (`INFINITY` past the last bound), or
/// `None` when nothing was observed between them.
fn quantile_between(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let earlier: HashMap<u64, f64> = before.iter().map(|(b, c)| (b.to_bits(), *c)).collect();
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(b, c)| (*b, c - earlier.get(&b.to_bits()).copied().unwrap_or(0.0)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta.iter().find(|(_, c)| *c >= q * total).map(|(b, _)| *b)
}

/// A latency bound in seconds as "≤ N ms" (or "> N ms" past the last bucket).
fn bound_ms(bound: Option<f64>, last_finite: f64) -> String {
    match bound {
        None => "none observed".into(),
        Some(b) if b.is_infinite() => format!("> {:.0} ms", last_finite * 1000.0),
        Some(b) if b < 0.01 => format!("≤ {:.1} ms", b * 1000.0),
        Some(b) => format!("≤ {:.0} ms", b * 1000.0),
    }
}

async fn scrape(h: &Harness, api: &str) -> anyhow::Result<String> {
    Ok(h.http
        .get(format!("{api}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Waits until every daemon counts `n` live instances (their heartbeats
/// seen) and polls with its share (`taskhook_sharing`), so the upstream
/// budget is shared before work arrives and every daemon takes part.
async fn wait_instances(h: &Harness, daemons: &[Daemon], n: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let mut all = true;
        for d in daemons {
            let text = scrape(h, &d.api).await?;
            all &= metric(&text, "taskhook_instances", None) as usize == n
                && metric(&text, "taskhook_sharing", None) == 1.0;
        }
        if all {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the daemons did not see {n} instances within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- one delivery run -------------------------------------------------------------------

/// Runs `ANALYZE` on a schema's hot tables every [`ANALYZE_EVERY`] on a
/// session of its own, until dropped: the planner statistics a server's
/// autovacuum would keep fresh (see [`throughput`]).
struct Analyzer {
    _stop: tokio_util::sync::DropGuard,
}

/// How often [`Analyzer`] refreshes the statistics.
const ANALYZE_EVERY: Duration = Duration::from_secs(2);

impl Analyzer {
    async fn start(server: &Server, schema: &str) -> anyhow::Result<Analyzer> {
        let (client, conn) =
            tokio_postgres::connect(&session_url(&server.url)?, tokio_postgres::NoTls).await?;
        let stop = tokio_util::sync::CancellationToken::new();
        let sql = format!("ANALYZE {schema}.tasks, {schema}.deliveries, {schema}.events");
        let until = stop.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            loop {
                tokio::select! {
                    _ = &mut conn => return,
                    _ = until.cancelled() => return,
                    _ = tokio::time::sleep(ANALYZE_EVERY) => {}
                }
                tokio::select! {
                    _ = &mut conn => return,
                    _ = until.cancelled() => return,
                    _ = client.batch_execute(&sql) => {}
                }
            }
        });
        Ok(Analyzer {
            _stop: stop.drop_guard(),
        })
    }
}

/// What one run of [`deliver_tasks`] measured.
struct Run {
    tasks: usize,
    /// First enqueue to last delivery, seconds.
    wall: f64,
    /// Deliveries per second between the 10th and 90th percentile of arrivals.
    sustained: f64,
    /// CPU seconds of the daemons, the server (if local) and the bench
    /// process (simulator and receiver) over the run.
    taskhook_cpu: f64,
    server_cpu: Option<f64>,
    bench_cpu: f64,
    /// Deliveries whose signature verified, and those refused.
    signatures: (u64, u64),
}

impl Run {
    fn per_thousand(&self, cpu: f64) -> f64 {
        cpu / (self.tasks as f64 / 1000.0)
    }
}

/// `n` tasks that finish within a second of their creation, enqueued
/// 10,000 per request spread over `instances` daemons on `store_url`
/// (SQLite when `None`), until each is delivered once to webhook 0. The
/// upstream enforces the real limits (60 requests/s, 5 in flight), which
/// the daemons share.
async fn deliver_tasks(
    h: &Harness,
    server: Option<&Server>,
    store: Option<&Schema>,
    instances: usize,
    n: usize,
    name: &str,
    analyze: bool,
) -> anyhow::Result<Run> {
    let store_url = store.map(|s| s.store_url.as_str());
    h.reset();
    let sim = h.sim(limited_upstream()).await?;
    let ids: Vec<String> = (0..n).map(|i| format!("{name}-{i}")).collect();
    let specs: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"id": id, "duration_ms": (i as u64 * 7919) % 1000, "running_shape": "ack"}))
        .collect();
    h.create_sim_tasks(&sim, specs).await?;
    let cfg = config(
        h,
        name,
        &sim,
        "batch_size = 500\nmax_requests_per_second = 58\nmax_concurrent_requests = 5\n\
         [poll]\nfirst_poll_after = \"500ms\"\ninterval = \"1s\"\nmax_interval = \"1s\"\n\
         [delivery]\nmax_concurrent_per_webhook = 64\n",
        store_url,
    )?;
    let mut daemons = Vec::new();
    for _ in 0..instances {
        daemons.push(Daemon::start(&cfg)?);
    }
    if store_url.is_some() {
        wait_instances(h, &daemons, instances).await?;
    }
    let daemon_cpu = |ds: &[Daemon]| ds.iter().map(Daemon::cpu_seconds).sum::<f64>();
    let (cpu0, own0) = (daemon_cpu(&daemons), cpu_seconds("self"));
    let analyzer = match (server, store) {
        (Some(server), Some(schema)) if analyze => {
            Some(Analyzer::start(server, &schema.name).await?)
        }
        _ => None,
    };
    let server0 = server.and_then(Server::cpu_seconds);
    let started = Instant::now();
    // The requests take turns over the daemons, one at a time.
    for (i, chunk) in ids.chunks(10_000).enumerate() {
        h.enqueue(&daemons[i % instances].api, chunk, 10_000)
            .await?;
    }
    h.wait_for(name, 0, n as u64, Duration::from_secs(120 + n as u64 / 200))
        .await?;
    let wall = started.elapsed().as_secs_f64();
    let taskhook_cpu = daemon_cpu(&daemons) - cpu0;
    let bench_cpu = cpu_seconds("self") - own0;
    let server_cpu = match (server0, server.and_then(Server::cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    drop(analyzer);
    for d in daemons {
        d.stop()?;
    }
    let mut arrivals = h.seen.arrivals.lock().expect("lock").clone();
    arrivals.sort_unstable();
    let (a, b) = (percentile(&arrivals, 0.1), percentile(&arrivals, 0.9));
    Ok(Run {
        tasks: n,
        wall,
        sustained: 0.8 * n as f64 / ((b - a).max(1) as f64 / 1000.0),
        taskhook_cpu,
        server_cpu,
        bench_cpu,
        signatures: signature_counts(h),
    })
}

/// "1.23 s", or "n/a" when the server's processes are not on this machine.
fn seconds_or_na(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |s| format!("{s:.3} s"))
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0)
}

// ---- pg-throughput -------------------------------------------------------------

/// `pg-throughput`: 1, 2 and 3 daemons on one schema, and one on SQLite.
pub(crate) async fn throughput(
    h: &Harness,
    plan: &Plan,
    out: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    const S: &str = "pg-throughput";
    let Some(server) = server_or_skip(plan, S, out).await? else {
        return Ok(());
    };
    let sizes = Sizes::new(plan);
    let n = sizes.throughput_tasks;
    let sqlite = deliver_tasks(h, None, None, 1, n, "pg-tp-sqlite", false).await?;
    let mut runs = Vec::new();
    for &k in sizes.instances {
        let run = with_schema(&server, |server, schema| async move {
            let name = format!("pg-tp-{k}");
            let r = deliver_tasks(h, Some(server), Some(&schema), k, n, &name, false).await;
            (schema, r)
        })
        .await?;
        runs.push((k, run));
    }
    // The same with the statistics kept fresh: what the planner sees once
    // autovacuum has analyzed the tables (or when it is off, as on some
    // test servers, never).
    let analyzed = with_schema(&server, |server, schema| async move {
        let r = deliver_tasks(h, Some(server), Some(&schema), 1, n, "pg-tp-an", true).await;
        (schema, r)
    })
    .await?;

    let one = runs[0].1.sustained;
    out.push(fig(
        S,
        "tasks per run (finishing within 1 s; upstream at 60 requests/s, 5 in flight, shared)",
        n.to_string(),
        "",
        None,
    ));
    out.push(fig(
        S,
        "SQLite, 1 instance, same tasks: sustained rate (10th–90th pct) / taskhook CPU per 1,000 tasks",
        format!(
            "{:.0} tasks/s / {:.3} s",
            sqlite.sustained,
            sqlite.per_thousand(sqlite.taskhook_cpu)
        ),
        "",
        None,
    ));
    let (mut ok, mut bad) = sqlite.signatures;
    for (k, run) in &runs {
        let label = if *k == 1 {
            "1 instance".to_string()
        } else {
            format!("{k} instances")
        };
        out.push(fig(
            S,
            &format!("{label}: first enqueue → last delivery"),
            format!(
                "{:.1} s ({:.0} tasks/s)",
                run.wall,
                run.tasks as f64 / run.wall
            ),
            "",
            None,
        ));
        out.push(fig(
            S,
            &format!("{label}: sustained rate (10th–90th pct), ratio to 1 instance / to SQLite"),
            format!(
                "{:.0} tasks/s ({:.2}× / {:.2}×)",
                run.sustained,
                run.sustained / one.max(1.0),
                run.sustained / sqlite.sustained.max(1.0)
            ),
            "",
            None,
        ));
        out.push(fig(
            S,
            &format!("{label}: CPU per 1,000 tasks, taskhook (all instances) / PostgreSQL server"),
            format!(
                "{:.3} s / {}",
                run.per_thousand(run.taskhook_cpu),
                seconds_or_na(run.server_cpu.map(|c| run.per_thousand(c)))
            ),
            "",
            None,
        ));
        out.push(fig(
            S,
            &format!("{label}: cores busy, taskhook + PostgreSQL + bench (simulator, receiver)"),
            format!(
                "{:.2} + {} + {:.2} of {}",
                run.taskhook_cpu / run.wall,
                run.server_cpu
                    .map_or_else(|| "n/a".into(), |c| format!("{:.2}", c / run.wall)),
                run.bench_cpu / run.wall,
                cores()
            ),
            "",
            None,
        ));
        ok += run.signatures.0;
        bad += run.signatures.1;
    }
    out.push(fig(
        S,
        &format!(
            "1 instance, tables analyzed every {} s: sustained rate, ratio to 1 instance / CPU per 1,000 tasks, taskhook / PostgreSQL",
            ANALYZE_EVERY.as_secs()
        ),
        format!(
            "{:.0} tasks/s ({:.2}×) / {:.3} s / {}",
            analyzed.sustained,
            analyzed.sustained / one.max(1.0),
            analyzed.per_thousand(analyzed.taskhook_cpu),
            seconds_or_na(analyzed.server_cpu.map(|c| analyzed.per_thousand(c)))
        ),
        "",
        None,
    ));
    ok += analyzed.signatures.0;
    bad += analyzed.signatures.1;
    out.push(signatures(S, (ok, bad), ((runs.len() + 2) * n) as u64));
    Ok(())
}

// ---- pg-scale ------------------------------------------------------------------------

/// `pg-scale`: a million watched tasks; enqueue rate, idle cost, claim latency.
pub(crate) async fn scale(h: &Harness, plan: &Plan, out: &mut Vec<Figure>) -> anyhow::Result<()> {
    const S: &str = "pg-scale";
    let Some(server) = server_or_skip(plan, S, out).await? else {
        return Ok(());
    };
    let sizes = Sizes::new(plan);
    with_schema(&server, |server, schema| async move {
        let r = scale_in(h, plan, &sizes, server, &schema, out).await;
        (schema, r)
    })
    .await
}

async fn scale_in(
    h: &Harness,
    plan: &Plan,
    sizes: &Sizes,
    server: &Server,
    schema: &Schema,
    out: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    const S: &str = "pg-scale";
    const CLAIM: &str = "claim_poll_batch";
    const HISTOGRAM: &str = "taskhook_store_query_duration_seconds";
    let n = sizes.scale_tasks;
    let sim = h.sim(taskhook_sim::SimArgs::default()).await?;
    let cfg = config(
        h,
        "pg-scale",
        &sim,
        "batch_size = 500\nmax_requests_per_second = 50\n\
         [poll]\nfirst_poll_after = \"1h\"\ninterval = \"1s\"\nmax_interval = \"1s\"\n",
        Some(&schema.store_url),
    )?;
    let daemon = Daemon::start(&cfg)?;
    let ids: Vec<String> = (0..n).map(|i| format!("pg-scale-{i:08}")).collect();
    let rate = h.enqueue(&daemon.api, &ids, 10_000).await?;

    // Idle: none is due for an hour. What the daemon, its sessions and the
    // whole server spend, and how many transactions reach the database.
    let backends = server.backends(&schema.name).await?;
    let metrics0 = scrape(h, &daemon.api).await?;
    let (cpu0, sessions0, server0) = (
        daemon.cpu_seconds(),
        processes_cpu_seconds(&backends),
        server.cpu_seconds(),
    );
    let tx0 = server.transactions().await?;
    let idle_started = Instant::now();
    tokio::time::sleep(sizes.idle_for).await;
    let tx1 = server.transactions().await?;
    let idle = idle_started.elapsed().as_secs_f64();
    let idle_cpu = daemon.cpu_seconds() - cpu0;
    let sessions_cpu = processes_cpu_seconds(&backends) - sessions0;
    let idle_server = match (server0, server.cpu_seconds()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let metrics1 = scrape(h, &daemon.api).await?;
    // The second reading is a transaction of the bench's own.
    let tx_rate = (tx1 - tx0 - 1).max(0) as f64 / idle;
    let calls = |text: &str| {
        [
            "claim_poll_batch",
            "claim_deliveries",
            "record_polls",
            "record_deliveries",
        ]
        .iter()
        .map(|op| metric(text, &format!("{HISTOGRAM}_count"), Some(op)))
        .sum::<f64>()
    };
    let calls_rate = (calls(&metrics1) - calls(&metrics0)) / idle;

    // Claims with the million in the table: some of them made due now,
    // running at the upstream for an hour, so they are claimed and polled
    // every second throughout the window.
    let due: Vec<String> = ids
        .iter()
        .step_by((n / sizes.claim_due).max(1))
        .cloned()
        .collect();
    drop(ids);
    h.create_sim_tasks(
        &sim,
        due.iter()
            .map(|id| json!({"id": id, "duration_ms": 3_600_000u64}))
            .collect(),
    )
    .await?;
    let requests0 = h.sim_stats(&sim).await?["requests"].as_u64().unwrap_or(0);
    let before = scrape(h, &daemon.api).await?;
    server
        .client
        .execute(
            &format!(
                "UPDATE {}.tasks SET next_poll_at = $1 WHERE id = ANY($2)",
                schema.name
            ),
            &[&crate::now_ms(), &due],
        )
        .await?;
    tokio::time::sleep(sizes.claim_for).await;
    let after = scrape(h, &daemon.api).await?;
    let requests = h.sim_stats(&sim).await?["requests"].as_u64().unwrap_or(0) - requests0;
    let claims = metric(&after, &format!("{HISTOGRAM}_count"), Some(CLAIM))
        - metric(&before, &format!("{HISTOGRAM}_count"), Some(CLAIM));
    let claim_mean = (metric(&after, &format!("{HISTOGRAM}_sum"), Some(CLAIM))
        - metric(&before, &format!("{HISTOGRAM}_sum"), Some(CLAIM)))
        / claims.max(1.0);
    let (b0, b1) = (
        buckets(&before, HISTOGRAM, CLAIM),
        buckets(&after, HISTOGRAM, CLAIM),
    );
    let last_finite = b1
        .iter()
        .rev()
        .find(|(b, _)| b.is_finite())
        .map_or(0.0, |(b, _)| *b);
    let p99 = quantile_between(&b0, &b1, 0.99);
    let p50 = quantile_between(&b0, &b1, 0.5);
    let size: i64 = server
        .client
        .query_one(
            &format!("SELECT pg_total_relation_size('{}.tasks')", schema.name),
            &[],
        )
        .await?
        .get(0);
    daemon.stop()?;
    if requests == 0 || claims == 0.0 {
        bail!(
            "no claim reached the upstream while {} tasks were due",
            due.len()
        );
    }

    let enqueue_target = plan.target(50_000.0, 5_000.0);
    let idle_target = plan.target(0.01, 0.05);
    out.push(fig(S, "watched tasks", n.to_string(), "1,000,000", None));
    out.push(fig(
        S,
        "enqueue rate (10,000 IDs per request)",
        format!("{rate:.0} IDs/s"),
        &format!("≥ {} IDs/s", thousands(enqueue_target)),
        Some(rate >= enqueue_target),
    ));
    out.push(fig(
        S,
        "daemon CPU while none is due",
        format!(
            "{idle_cpu:.3} s over {idle:.0} s ({:.2} %)",
            100.0 * idle_cpu / idle
        ),
        &format!("< {:.0} %", 100.0 * idle_target),
        Some(idle_cpu / idle < idle_target),
    ));
    out.push(fig(
        S,
        "PostgreSQL CPU while none is due: the daemon's sessions / whole server",
        format!(
            "{} ({} sessions) / {} over {idle:.0} s",
            if server.postmaster.is_some() {
                format!("{sessions_cpu:.3} s")
            } else {
                "n/a".into()
            },
            backends.len(),
            seconds_or_na(idle_server)
        ),
        "",
        None,
    ));
    out.push(fig(
        S,
        "queries while none is due: database transactions/s (pg_stat_database) / store calls/s (daemon metrics)",
        format!("{tx_rate:.1} / {calls_rate:.1}"),
        "",
        None,
    ));
    out.push(fig(
        S,
        &format!(
            "claim latency with {} watched, {} due every second: p50 / p99 / mean (daemon histogram, {claims:.0} claims)",
            thousands(n as f64),
            thousands(due.len() as f64)
        ),
        format!(
            "{} / {} / {:.1} ms",
            bound_ms(p50, last_finite),
            bound_ms(p99, last_finite),
            claim_mean * 1000.0
        ),
        "",
        None,
    ));
    out.push(fig(
        S,
        "tasks table with its indexes",
        format!("{:.0} MiB", size as f64 / 1048576.0),
        "",
        None,
    ));
    Ok(())
}

// ---- pg-vacuum -------------------------------------------------------------------------

/// The tables whose health the vacuum scenario reports.
const TABLES: [&str; 4] = ["tasks", "events", "deliveries", "attempts"];

/// One table's statistics and sizes.
#[derive(Debug, Clone, Default)]
struct TableHealth {
    live: i64,
    dead: i64,
    inserted: i64,
    updated: i64,
    hot_updated: i64,
    deleted: i64,
    autovacuums: i64,
    table_bytes: i64,
    index_bytes: i64,
}

async fn table_health(
    server: &Server,
    schema: &str,
) -> anyhow::Result<HashMap<String, TableHealth>> {
    let rows = server
        .client
        .query(
            "SELECT relname::text, n_live_tup, n_dead_tup, n_tup_ins, n_tup_upd, n_tup_hot_upd, \
                    n_tup_del, autovacuum_count, \
                    pg_table_size(relid), pg_indexes_size(relid) \
             FROM pg_stat_user_tables WHERE schemaname = $1",
            &[&schema],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                TableHealth {
                    live: r.get(1),
                    dead: r.get(2),
                    inserted: r.get(3),
                    updated: r.get(4),
                    hot_updated: r.get(5),
                    deleted: r.get(6),
                    autovacuums: r.get(7),
                    table_bytes: r.get(8),
                    index_bytes: r.get(9),
                },
            )
        })
        .collect())
}

/// Bytes as MiB with one decimal.
fn mib(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// `pg-vacuum`: a 100,000-task run, then each table's dead rows and sizes.
pub(crate) async fn vacuum(h: &Harness, plan: &Plan, out: &mut Vec<Figure>) -> anyhow::Result<()> {
    const S: &str = "pg-vacuum";
    let Some(server) = server_or_skip(plan, S, out).await? else {
        return Ok(());
    };
    let sizes = Sizes::new(plan);
    with_schema(&server, |server, schema| async move {
        let r = vacuum_in(h, &sizes, server, &schema, out).await;
        (schema, r)
    })
    .await
}

async fn vacuum_in(
    h: &Harness,
    sizes: &Sizes,
    server: &Server,
    schema: &Schema,
    out: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    const S: &str = "pg-vacuum";
    let n = sizes.vacuum_tasks;
    // The statistics are kept fresh: with the planner problem that
    // pg-throughput shows, a settle would read every pending delivery and
    // the run would take many times longer. ANALYZE removes no dead row.
    let run = deliver_tasks(h, Some(server), Some(schema), 1, n, "pg-vacuum", true).await?;
    // Stopped daemons' sessions flush their statistics as they end.
    server
        .wait_sessions_gone(&schema.name, Duration::from_secs(30))
        .await?;
    let after_run = table_health(server, &schema.name).await?;
    let autovacuum_on = server.setting("autovacuum").await == "on";
    let settings = [
        "autovacuum",
        "autovacuum_naptime",
        "autovacuum_vacuum_scale_factor",
        "autovacuum_vacuum_threshold",
        "autovacuum_vacuum_cost_limit",
        "vacuum_cost_limit",
        "autovacuum_vacuum_cost_delay",
    ];
    let mut shown = Vec::new();
    for s in settings {
        shown.push(format!("{s} {}", server.setting(s).await));
    }
    let reloptions: Vec<String> = server
        .client
        .query(
            "SELECT c.relname::text || ' (' || array_to_string(c.reloptions, ', ') || ')' \
             FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace \
             WHERE s.nspname = $1 AND c.relkind = 'r' AND c.reloptions IS NOT NULL \
             ORDER BY c.relname",
            &[&schema.name],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();

    // Then, idle: how long until autovacuum reaches the hot tables, and
    // what they hold after it; when it does not come (or the server has it
    // off), what a VACUUM leaves.
    let waited = Instant::now();
    let mut reached = None;
    let mut latest = after_run.clone();
    let wait = if autovacuum_on {
        sizes.autovacuum_wait
    } else {
        Duration::ZERO
    };
    while !wait.is_zero() && waited.elapsed() < wait {
        latest = table_health(server, &schema.name).await?;
        let done = ["tasks", "deliveries"].iter().all(|t| {
            latest.get(*t).map_or(0, |x| x.autovacuums)
                > after_run.get(*t).map_or(0, |x| x.autovacuums)
                || latest.get(*t).is_some_and(|x| x.dead == 0)
        });
        if done {
            reached = Some(waited.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let vacuumed = reached.is_none();
    if vacuumed {
        let tables: Vec<String> = TABLES
            .iter()
            .map(|t| format!("{}.{t}", schema.name))
            .collect();
        server
            .client
            .batch_execute(&format!("VACUUM {}", tables.join(", ")))
            .await?;
        latest = table_health(server, &schema.name).await?;
    }

    out.push(fig(
        S,
        &format!(
            "tasks delivered (1 instance, tables analyzed every {} s), then the daemon stopped",
            ANALYZE_EVERY.as_secs()
        ),
        format!("{n} in {:.1} s", run.wall),
        "",
        None,
    ));
    out.push(fig(
        S,
        "server autovacuum settings / the schema's per-table settings",
        format!("{} / {}", shown.join(", "), reloptions.join("; ")),
        "",
        None,
    ));
    for t in TABLES {
        let x = after_run.get(t).cloned().unwrap_or_default();
        out.push(fig(
            S,
            &format!("{t}: live / dead rows after the run (autovacuums during it)"),
            format!("{} / {} ({})", x.live, x.dead, x.autovacuums),
            "",
            None,
        ));
        out.push(fig(
            S,
            &format!("{t}: table + indexes"),
            format!("{} + {}", mib(x.table_bytes), mib(x.index_bytes)),
            "",
            None,
        ));
        out.push(fig(
            S,
            &format!("{t}: dead row versions made per task (updates + deletes), HOT updates"),
            format!(
                "{:.2} ({} of {} updates HOT; {} inserted)",
                (x.updated + x.deleted) as f64 / n as f64,
                x.hot_updated,
                x.updated,
                x.inserted
            ),
            "",
            None,
        ));
    }
    {
        let summary = |t: &str| {
            let x = latest.get(t).cloned().unwrap_or_default();
            format!(
                "{t} {} dead, {} + {}",
                x.dead,
                mib(x.table_bytes),
                mib(x.index_bytes)
            )
        };
        out.push(fig(
            S,
            "idle after the run: autovacuum reached tasks and deliveries after",
            match reached {
                Some(d) => format!("{:.0} s", d.as_secs_f64()),
                None if !autovacuum_on => "never (autovacuum is off on this server)".into(),
                None if wait.is_zero() => "not waited for (quick run)".into(),
                None => format!("not within {} s", wait.as_secs()),
            },
            "",
            None,
        ));
        out.push(fig(
            S,
            if vacuumed {
                "after a VACUUM by the bench: dead rows, table + indexes"
            } else {
                "after autovacuum: dead rows, table + indexes"
            },
            format!("{}; {}", summary("tasks"), summary("deliveries")),
            "",
            None,
        ));
    }
    out.push(signatures(S, run.signatures, n as u64));
    Ok(())
}

// ---- the results file --------------------------------------------------------------------

/// The notes under the results table about the PostgreSQL rows: how each
/// was measured, what limits it, and the settings recommended; empty when
/// no PostgreSQL scenario ran.
pub(crate) fn notes(figures: &[Figure]) -> String {
    let pg: Vec<&Figure> = figures
        .iter()
        .filter(|f| f.scenario.starts_with("pg-"))
        .collect();
    if pg.is_empty() {
        return String::new();
    }
    let mut md = String::from("\n## PostgreSQL\n\n");
    let skipped: Vec<&&Figure> = pg.iter().filter(|f| f.name == "SKIPPED").collect();
    if !skipped.is_empty() {
        let which: Vec<&str> = skipped.iter().map(|f| f.scenario).collect();
        md.push_str(&format!(
            "Skipped ({}): no PostgreSQL server answered. Set `{URL_VAR}` (or \
             `--database-url`) to a server this machine runs to measure them.\n\n",
            which.join(", ")
        ));
        if skipped.len() == pg.len() {
            return md;
        }
    }
    md.push_str(NOTES);
    md
}

/// How the PostgreSQL rows were measured, what limits each, and the
/// settings recommended (see [`notes`]).
const NOTES: &str = include_str!("postgres_notes.md");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_url_drops_taskhook_keys_and_refuses_tls() {
        assert_eq!(
            session_url("postgres://u@h:5432/db?search_path=x&connect_timeout=3").unwrap(),
            "postgres://u@h:5432/db?connect_timeout=3"
        );
        assert_eq!(
            session_url("postgres://u@h/db?search_path=x&sslmode=disable").unwrap(),
            "postgres://u@h/db?sslmode=disable"
        );
        assert!(session_url("postgres://u@h/db?sslmode=require").is_err());
        assert!(session_url("not a url").is_err());
    }

    #[test]
    fn a_store_url_names_the_schema_twice_and_replaces_what_was_there() {
        assert_eq!(
            store_url("postgres://u@h/db", "th_bench_1").unwrap(),
            "postgres://u@h/db?search_path=th_bench_1&application_name=th_bench_1"
        );
        assert_eq!(
            store_url(
                "postgres://u@h/db?search_path=old&application_name=x&connect_timeout=3",
                "s"
            )
            .unwrap(),
            "postgres://u@h/db?connect_timeout=3&search_path=s&application_name=s"
        );
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        let name = schema_name(u128::MAX, 4242);
        assert_eq!(name, "th_bench_ffffffffffff_1092");
        assert!(name.len() < 63);
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
    }

    #[test]
    fn proc_stat_is_read_past_a_command_name_with_spaces() {
        let stat = "4242 (postgres: x (y)) S 17 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 75 3 4 20 0 1 0 100 1000 10";
        assert_eq!(
            ProcStat::parse(stat),
            Some(ProcStat {
                comm: "postgres: x (y)".into(),
                ppid: 17,
                utime: 250,
                stime: 75,
                cutime: 3,
                cstime: 4,
            })
        );
        assert_eq!(ProcStat::parse("garbage"), None);
    }

    #[test]
    fn the_store_url_goes_first_in_the_store_section() {
        let config = "[upstream]\nx = 1\n[store]\npath = \"/tmp/a.db\"\n[api]\n";
        let with = with_store_url(config, "postgres://u@h/db?search_path=s").unwrap();
        assert_eq!(
            with,
            "[upstream]\nx = 1\n[store]\nurl = \"postgres://u@h/db?search_path=s\"\n\
             path = \"/tmp/a.db\"\n[api]\n"
        );
        assert!(with_store_url("[upstream]\n", "postgres://u@h/db").is_err());
    }

    const METRICS: &str = "\
# TYPE taskhook_instances gauge
taskhook_instances 3
taskhook_store_query_duration_seconds_sum{op=\"claim_poll_batch\"} 0.5
taskhook_store_query_duration_seconds_count{op=\"claim_poll_batch\"} 100
taskhook_store_query_duration_seconds_bucket{le=\"0.0005\",op=\"claim_poll_batch\"} 10
taskhook_store_query_duration_seconds_bucket{le=\"0.001\",op=\"claim_poll_batch\"} 50
taskhook_store_query_duration_seconds_bucket{le=\"0.002\",op=\"claim_poll_batch\"} 98
taskhook_store_query_duration_seconds_bucket{le=\"+Inf\",op=\"claim_poll_batch\"} 100
taskhook_store_query_duration_seconds_count{op=\"enqueue\"} 7
taskhook_instances_total 9
";

    #[test]
    fn metrics_are_read_by_name_and_operation() {
        assert_eq!(metric(METRICS, "taskhook_instances", None), 3.0);
        assert_eq!(
            metric(
                METRICS,
                "taskhook_store_query_duration_seconds_count",
                Some("enqueue")
            ),
            7.0
        );
        assert_eq!(metric(METRICS, "taskhook_absent", None), 0.0);
        let b = buckets(
            METRICS,
            "taskhook_store_query_duration_seconds",
            "claim_poll_batch",
        );
        assert_eq!(
            b,
            vec![
                (0.0005, 10.0),
                (0.001, 50.0),
                (0.002, 98.0),
                (f64::INFINITY, 100.0)
            ]
        );
    }

    #[test]
    fn a_quantile_comes_from_the_observations_between_two_scrapes() {
        let before = vec![(0.001, 0.0), (0.002, 0.0), (f64::INFINITY, 0.0)];
        let after = vec![(0.001, 90.0), (0.002, 99.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile_between(&before, &after, 0.5), Some(0.001));
        assert_eq!(quantile_between(&before, &after, 0.99), Some(0.002));
        assert_eq!(quantile_between(&before, &after, 1.0), Some(f64::INFINITY));
        // Earlier observations do not count.
        let later = vec![(0.001, 90.0), (0.002, 99.0), (f64::INFINITY, 110.0)];
        assert_eq!(quantile_between(&after, &later, 0.5), Some(f64::INFINITY));
        assert_eq!(quantile_between(&after, &after, 0.5), None);
        assert_eq!(bound_ms(Some(0.002), 4.096), "≤ 2.0 ms");
        assert_eq!(bound_ms(Some(0.016), 4.096), "≤ 16 ms");
        assert_eq!(bound_ms(Some(f64::INFINITY), 4.096), "> 4096 ms");
        assert_eq!(bound_ms(None, 4.096), "none observed");
    }

    #[test]
    fn notes_are_written_only_when_postgres_ran_and_say_when_it_was_skipped() {
        let sqlite = vec![fig("scale", "watched tasks", "1".into(), "", None)];
        assert_eq!(notes(&sqlite), "");
        let skipped = vec![fig("pg-scale", "SKIPPED", "not reachable".into(), "", None)];
        let text = notes(&skipped);
        assert!(text.contains(URL_VAR), "{text}");
        assert!(text.contains("pg-scale"), "{text}");
        let ran = vec![fig("pg-scale", "watched tasks", "1".into(), "", None)];
        assert!(notes(&ran).contains("autovacuum"));
    }
}
