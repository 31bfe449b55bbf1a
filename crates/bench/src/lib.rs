//! `taskhook bench`: puts numbers on what taskhook is for. It starts the
//! simulator and a webhook receiver in this process and the daemon as a
//! child process (so its CPU and memory can be read from /proc), runs each
//! scenario, prints a table and writes `bench/RESULTS.md`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

mod pacing;
mod postgres;
mod purge;

/// The `taskhook` binary the bench runs as its daemon: `$TASKHOOK_BIN`,
/// else the running executable (the bench runs as `taskhook bench`).
fn taskhook_binary() -> anyhow::Result<PathBuf> {
    match std::env::var_os("TASKHOOK_BIN") {
        Some(p) => Ok(PathBuf::from(p)),
        None => std::env::current_exe().context("locating the taskhook binary"),
    }
}

/// The flags of `taskhook bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// A small, fast run that checks every scenario completes (for CI),
    /// against targets scaled to its size and to a debug build.
    #[arg(long)]
    pub quick: bool,
    /// Where to write the results.
    #[arg(long, default_value = "bench/RESULTS.md")]
    pub out: PathBuf,
    /// Tasks in the throughput scenario.
    #[arg(long)]
    pub tasks: Option<usize>,
    /// Tasks in the scale scenario.
    #[arg(long)]
    pub scale: Option<usize>,
    /// Run only these scenarios (throughput, efficiency, scale, isolation,
    /// floor, callbacks, sweep, pg-throughput, pg-scale, pg-vacuum; purge
    /// runs only when named: it waits for the daemon's once-a-minute purge).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// The PostgreSQL server of the pg-* scenarios (each works in a fresh
    /// schema of it, dropped afterwards); they are skipped when it does not
    /// answer.
    #[arg(long, env = postgres::URL_VAR, default_value = postgres::DEFAULT_URL)]
    pub database_url: String,
}

/// The sizes of one run.
struct Plan {
    quick: bool,
    throughput_tasks: usize,
    finish_spread: Duration,
    efficiency_tasks: usize,
    efficiency_duration: (u64, u64),
    scale_tasks: usize,
    isolation_tasks: usize,
    /// The server of the pg-* scenarios; `None` in the quick run unless
    /// `--only` names one of them.
    database_url: Option<String>,
}

impl Plan {
    fn new(a: &BenchArgs) -> Plan {
        if a.quick {
            Plan {
                quick: true,
                throughput_tasks: a.tasks.unwrap_or(2_000),
                finish_spread: Duration::from_secs(2),
                efficiency_tasks: 200,
                efficiency_duration: (1_000, 3_000),
                scale_tasks: a.scale.unwrap_or(20_000),
                isolation_tasks: 200,
                database_url: a
                    .only
                    .iter()
                    .any(|o| o.starts_with("pg-"))
                    .then(|| a.database_url.clone()),
            }
        } else {
            Plan {
                quick: false,
                throughput_tasks: a.tasks.unwrap_or(100_000),
                finish_spread: Duration::from_secs(10),
                efficiency_tasks: 3_000,
                efficiency_duration: (5_000, 20_000),
                scale_tasks: a.scale.unwrap_or(1_000_000),
                isolation_tasks: 3_000,
                database_url: Some(a.database_url.clone()),
            }
        }
    }

    /// A target's threshold: `full` for the full run, `quick` for the
    /// smoke run (a few hundred tasks, often a debug build on busy cores).
    fn target(&self, full: f64, quick: f64) -> f64 {
        if self.quick { quick } else { full }
    }
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// ---- the receiver ----------------------------------------------------------

/// The receiver's path that [`post_ceiling`] posts to; its requests are
/// verified like the others but not counted as deliveries.
const CEILING_HOOK: usize = 15;

/// What the receiver saw, per webhook path `/hook/{n}`.
struct Seen {
    counts: [AtomicU64; 16],
    /// Arrival times (ms) of every accepted delivery to webhook 0.
    arrivals: Mutex<Vec<i64>>,
    /// Per task: first arrival (ms) and the upstream's finished_at (ms).
    lag: Mutex<HashMap<String, (i64, i64)>>,
    /// Deliveries whose signature the `standardwebhooks` crate (the
    /// specification's own library, independent of taskhook's signing
    /// code) accepted, and those it refused.
    verified: AtomicU64,
    bad_signatures: AtomicU64,
    verifier: standardwebhooks::Webhook,
    /// Webhook index that answers after 1 s, if any.
    slow: Mutex<Option<usize>>,
    track_lag: std::sync::atomic::AtomicBool,
}

impl Seen {
    fn new() -> anyhow::Result<Seen> {
        Ok(Seen {
            counts: Default::default(),
            arrivals: Default::default(),
            lag: Default::default(),
            verified: AtomicU64::new(0),
            bad_signatures: AtomicU64::new(0),
            verifier: standardwebhooks::Webhook::new(SECRET)
                .map_err(|e| anyhow::anyhow!("the bench secret: {e}"))?,
            slow: Default::default(),
            track_lag: Default::default(),
        })
    }
}

async fn receive(
    State(seen): State<Arc<Seen>>,
    UrlPath(n): UrlPath<usize>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let at = now_ms();
    if *seen.slow.lock().expect("lock") == Some(n) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Every request's signature is checked, by the specification's own
    // library rather than by taskhook's code.
    let valid = seen.verifier.verify(&body, &headers).is_ok();
    if n % 16 != CEILING_HOOK {
        let tally = if valid {
            &seen.verified
        } else {
            &seen.bad_signatures
        };
        tally.fetch_add(1, Ordering::SeqCst);
    }
    seen.counts[n % 16].fetch_add(1, Ordering::SeqCst);
    if n == 0 {
        seen.arrivals.lock().expect("lock").push(at);
        if seen.track_lag.load(Ordering::Relaxed) {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if let (Some(id), Some(fin)) = (
                v["data"]["task_id"].as_str(),
                v["data"]["task"]["finished_at"].as_f64(),
            ) {
                seen.lag
                    .lock()
                    .expect("lock")
                    .entry(id.to_string())
                    .or_insert((at, (fin * 1000.0) as i64));
            }
        }
    }
    StatusCode::NO_CONTENT
}

/// Serves `app` on a free loopback port until `stop`; returns its base URL.
async fn serve(app: axum::Router, stop: CancellationToken) -> anyhow::Result<String> {
    Ok(taskhook_sim::serve_on_loopback(app, async move { stop.cancelled().await }).await?)
}

/// CPU seconds (user + system) used so far by process `pid` ("self" for
/// this one), from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat(5); USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

// ---- the daemon as a child process -------------------------------------------

/// The daemon under test, a child process.
struct Daemon {
    child: Child,
    api: String,
}

impl Daemon {
    fn start(config: &Path) -> anyhow::Result<Daemon> {
        let child = Command::new(taskhook_binary()?)
            .args(["run", "-c"])
            .arg(config)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the daemon")?;
        Daemon::announced(child, None)
    }

    /// The daemon `child` (stdout piped) once its first line names the API;
    /// a daemon that never says it is killed rather than waited for. `log`,
    /// when its stderr goes to a file, is quoted if it does not start.
    fn announced(mut child: Child, log: Option<&Path>) -> anyhow::Result<Daemon> {
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the daemon did not report its address within 60 s");
        };
        let Some(api) = line.split_whitespace().find(|w| w.starts_with("http")) else {
            let _ = child.kill();
            let _ = child.wait();
            let logged = log
                .map(|l| {
                    format!(
                        "; its log: {}",
                        std::fs::read_to_string(l).unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            bail!("the daemon did not start: {line:?}{logged}");
        };
        Ok(Daemon {
            api: api.to_string(),
            child,
        })
    }

    /// CPU seconds used so far (user + system), from /proc.
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&self.child.id().to_string())
    }

    /// Resident memory now and at its peak, in MiB.
    fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let kb = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
    }

    /// SIGTERM, then waits for the exit (at most [`STOP_WITHIN`]); a daemon
    /// that is still running then is killed and the stop is an error.
    fn stop(mut self) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("the daemon's pid")?;
        // SAFETY: kill(2) has no memory-safety preconditions.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            bail!(
                "cannot send SIGTERM to the daemon ({pid}): {}",
                std::io::Error::last_os_error()
            );
        }
        let deadline = Instant::now() + STOP_WITHIN;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the daemon exited with {status} on SIGTERM");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the daemon did not exit within {STOP_WITHIN:?} of SIGTERM; killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How long a stopping daemon may take: its `shutdown_grace` (5 s) and
/// a margin.
const STOP_WITHIN: Duration = Duration::from_secs(30);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, name: &str, body: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, body)?;
    Ok(path)
}

/// What every scenario shares: the receiver, an HTTP client, a scratch directory.
struct Harness {
    http: reqwest::Client,
    seen: Arc<Seen>,
    receiver: String,
    stop: CancellationToken,
    dir: tempfile::TempDir,
}

impl Harness {
    async fn sim(&self, args: taskhook_sim::SimArgs) -> anyhow::Result<String> {
        serve(taskhook_sim::router(args), self.stop.clone()).await
    }

    async fn create_sim_tasks(&self, sim: &str, specs: Vec<Value>) -> anyhow::Result<()> {
        for chunk in specs.chunks(5_000) {
            self.http
                .post(format!("{sim}/_sim/tasks"))
                .json(&json!({"tasks": chunk}))
                .send()
                .await?
                .error_for_status()?;
        }
        Ok(())
    }

    /// Enqueues through the API in batches; returns IDs per second.
    async fn enqueue(&self, api: &str, ids: &[String], batch: usize) -> anyhow::Result<f64> {
        let started = Instant::now();
        for chunk in ids.chunks(batch) {
            let body = serde_json::to_vec(
                &json!({"tasks": chunk.iter().map(|id| json!({"id": id})).collect::<Vec<_>>()}),
            )?;
            let r = self
                .http
                .post(format!("{api}/v1/tasks"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            if r.status() != 202 {
                bail!(
                    "enqueue answered {}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                );
            }
        }
        Ok(ids.len() as f64 / started.elapsed().as_secs_f64())
    }

    fn reset(&self) {
        for c in &self.seen.counts {
            c.store(0, Ordering::Relaxed);
        }
        self.seen.verified.store(0, Ordering::SeqCst);
        self.seen.bad_signatures.store(0, Ordering::SeqCst);
        self.seen.arrivals.lock().expect("lock").clear();
        self.seen.lag.lock().expect("lock").clear();
        *self.seen.slow.lock().expect("lock") = None;
    }

    async fn wait_for(
        &self,
        what: &str,
        webhook: usize,
        n: u64,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        while self.seen.counts[webhook].load(Ordering::Relaxed) < n {
            if started.elapsed() > limit {
                bail!(
                    "{what}: only {} of {n} deliveries after {limit:?}",
                    self.seen.counts[webhook].load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(started.elapsed())
    }

    async fn sim_stats(&self, sim: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{sim}/_sim/stats"))
            .send()
            .await?
            .json()
            .await?)
    }
}

/// One line of the results table.
struct Figure {
    scenario: &'static str,
    name: String,
    value: String,
    target: String,
    holds: Option<bool>,
}

fn fig(
    scenario: &'static str,
    name: &str,
    value: String,
    target: &str,
    holds: Option<bool>,
) -> Figure {
    Figure {
        scenario,
        name: name.to_string(),
        value,
        target: target.to_string(),
        holds,
    }
}

/// `n` rounded, with thousands separated by commas: 10000 → "10,000".
fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0.0 { format!("-{out}") } else { out }
}

/// Deliveries since the last reset whose signature `standardwebhooks`
/// accepted, and those it refused.
fn signature_counts(h: &Harness) -> (u64, u64) {
    (
        h.seen.verified.load(Ordering::SeqCst),
        h.seen.bad_signatures.load(Ordering::SeqCst),
    )
}

/// The figure that says every delivery of a scenario arrived with a valid
/// signature: at least `expected` deliveries, each checked by
/// `standardwebhooks`, none refused.
fn signatures(scenario: &'static str, (ok, bad): (u64, u64), expected: u64) -> Figure {
    fig(
        scenario,
        "signatures verified by standardwebhooks (valid of received)",
        format!("{ok} of {}", ok + bad),
        &format!("all, and ≥ {}", thousands(expected as f64)),
        Some(bad == 0 && ok >= expected),
    )
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn daemon_config(
    h: &Harness,
    name: &str,
    sim: &str,
    extra: &str,
    webhooks: usize,
) -> anyhow::Result<PathBuf> {
    let mut text = format!(
        r#"[upstream]
base_url = "{sim}"
token = "bench"
{extra}
[store]
path = "{db}"
sync = "full"
[api]
listen = "127.0.0.1:0"
max_body_bytes = 67108864
[daemon]
shutdown_grace = "5s"
"#,
        db = h.dir.path().join(format!("{name}.db")).display()
    );
    for n in 0..webhooks {
        text.push_str(&format!(
            "[[webhooks]]\nname = \"hook{n}\"\nurl = \"{}/hook/{n}\"\nsecret = \"{SECRET}\"\n",
            h.receiver
        ));
    }
    write_config(h.dir.path(), name, &text)
}

/// A simulator enforcing the real upstream's limits: about 60 requests/s
/// and 5 in flight per token.
fn limited_upstream() -> taskhook_sim::SimArgs {
    taskhook_sim::SimArgs {
        rate_limit: Some(60.0),
        max_concurrent: Some(5),
        ..Default::default()
    }
}

// ---- scenarios -------------------------------------------------------------------

async fn throughput(h: &Harness, plan: &Plan, out: &mut Vec<Figure>) -> anyhow::Result<()> {
    let n = plan.throughput_tasks;
    h.reset();
    let sim = h.sim(limited_upstream()).await?;
    let spread = plan.finish_spread.as_millis() as u64;
    let ids: Vec<String> = (0..n).map(|i| format!("tp-{i}")).collect();
    let specs: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"id": id, "duration_ms": 500 + (i as u64 * 7919) % spread, "running_shape": "ack"}))
        .collect();
    let cfg = daemon_config(
        h,
        "throughput",
        &sim,
        "batch_size = 500\nmax_requests_per_second = 58\nmax_concurrent_requests = 5\n\
         [poll]\nfirst_poll_after = \"500ms\"\ninterval = \"1s\"\nmax_interval = \"1s\"\n\
         [delivery]\nmax_concurrent_per_webhook = 64\n",
        1,
    )?;
    let daemon = Daemon::start(&cfg)?;
    let cpu0 = daemon.cpu_seconds();
    let own0 = cpu_seconds("self");
    let started = Instant::now();
    h.create_sim_tasks(&sim, specs).await?;
    let enqueue_rate = h.enqueue(&daemon.api, &ids, 10_000).await?;
    h.wait_for(
        "throughput",
        0,
        n as u64,
        Duration::from_secs(120 + n as u64 / 500),
    )
    .await?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = daemon.cpu_seconds() - cpu0;
    let own = cpu_seconds("self") - own0;
    let (_, peak) = daemon.rss_mib();
    let stats = h.sim_stats(&sim).await?;
    let metrics = h
        .http
        .get(format!("{}/metrics", daemon.api))
        .send()
        .await?
        .text()
        .await?;
    daemon.stop()?;
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let upstream_mean_ms = 1000.0 * metric("taskhook_upstream_request_duration_seconds_sum")
        / metric("taskhook_upstream_request_duration_seconds_count").max(1.0);
    let delivery_mean_ms = 1000.0 * metric("taskhook_delivery_duration_seconds_sum")
        / metric("taskhook_delivery_duration_seconds_count").max(1.0);
    let lag_mean_ms = 1000.0 * metric("taskhook_detection_lag_seconds_sum")
        / metric("taskhook_detection_lag_seconds_count").max(1.0);
    let paced = metric("taskhook_rate_limiter_wait_seconds_total");

    // The sustained rate: deliveries between the 10th and 90th percentile
    // of arrivals, over the time they took.
    let mut arrivals = h.seen.arrivals.lock().expect("lock").clone();
    arrivals.sort_unstable();
    let (a, b) = (percentile(&arrivals, 0.1), percentile(&arrivals, 0.9));
    let sustained = 0.8 * n as f64 / ((b - a).max(1) as f64 / 1000.0);

    let signed = signatures("throughput", signature_counts(h), n as u64);
    // The ceiling: a tight client posting the same kind of body to the same receiver.
    let ceiling = post_ceiling(
        h,
        Duration::from_secs(if plan.finish_spread.as_secs() > 5 {
            5
        } else {
            2
        }),
    )
    .await?;

    let sustained_target = plan.target(10_000.0, 100.0);
    out.push(fig("throughput", "tasks", n.to_string(), "100,000", None));
    out.push(fig(
        "throughput",
        "first enqueue → last delivery",
        format!("{wall:.1} s ({:.0} tasks/s)", n as f64 / wall),
        "",
        None,
    ));
    out.push(fig(
        "throughput",
        "sustained delivery rate (10th–90th percentile)",
        format!("{sustained:.0} tasks/s"),
        &format!("≥ {} tasks/s", thousands(sustained_target)),
        Some(sustained >= sustained_target),
    ));
    out.push(fig(
        "throughput",
        "ceiling: tight client alone, same receiver",
        format!("{ceiling:.0} POST/s"),
        "",
        None,
    ));
    out.push(fig(
        "throughput",
        "taskhook as a fraction of the ceiling",
        format!("{:.0} %", 100.0 * sustained / ceiling.max(1.0)),
        "",
        None,
    ));
    out.push(fig(
        "throughput",
        "daemon CPU per 1,000 tasks",
        format!("{:.3} s", cpu / (n as f64 / 1000.0)),
        "",
        None,
    ));
    out.push(fig(
        "throughput",
        "daemon peak RSS",
        format!("{peak:.0} MiB"),
        "",
        None,
    ));
    out.push(fig(
        "throughput",
        "enqueue rate (10,000 IDs per request)",
        format!("{enqueue_rate:.0} IDs/s"),
        "",
        None,
    ));
    out.push(fig(
        "throughput",
        "upstream requests / IDs per request",
        format!(
            "{} / {:.1} ({} answered 429)",
            stats["requests"],
            stats["mean_ids_per_request"].as_f64().unwrap_or(0.0),
            stats["statuses"]["429"].as_u64().unwrap_or(0)
        ),
        "",
        None,
    ));
    out.push(signed);
    out.push(fig(
        "throughput",
        "cores busy: daemon + simulator and receiver (bench process)",
        format!(
            "{:.2} + {:.2} of {}",
            cpu / wall,
            own / wall,
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        ),
        "",
        None,
    ));
    out.push(fig(
        "throughput",
        "mean upstream request / mean delivery attempt",
        format!("{upstream_mean_ms:.0} ms / {delivery_mean_ms:.1} ms"),
        "",
        None,
    ));
    out.push(fig(
        "throughput",
        "mean detection lag / time paced by the rate limiter",
        format!("{lag_mean_ms:.0} ms / {paced:.1} s"),
        "",
        None,
    ));
    Ok(())
}

/// The rate at which a tight client alone can POST signed event bodies to
/// the receiver, with 64 requests in flight.
async fn post_ceiling(h: &Harness, for_how_long: Duration) -> anyhow::Result<f64> {
    // An event body of the size and shape taskhook sends.
    let body: Arc<str> = json!({
        "type": "task.succeeded",
        "timestamp": "2026-01-01T00:00:00Z",
        "data": {"task_id": "ceiling", "service": "producer", "outcome": "succeeded", "metadata": {},
                 "task": {"id": "ceiling", "finished_at": 1767119785.589,
                          "response": {"task_id": "ceiling", "data": [{"state": "succeeded", "progress": "100%"}]}}}
    })
    .to_string()
    .into();
    let signer = Arc::new(standardwebhooks::Webhook::new(SECRET)?);
    let url = format!("{}/hook/15", h.receiver);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + for_how_long;
    let mut workers = Vec::new();
    for _ in 0..64 {
        let (http, url, body, done, signer) = (
            h.http.clone(),
            url.clone(),
            body.clone(),
            done.clone(),
            signer.clone(),
        );
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let ts = now_ms() / 1000;
                let sig = signer
                    .sign("msg_ceiling", ts, body.as_bytes())
                    .expect("a JSON body is UTF-8");
                let ok = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("webhook-id", "msg_ceiling")
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", sig)
                    .body(body.as_bytes().to_vec())
                    .send()
                    .await
                    .is_ok();
                if ok {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let started = Instant::now();
    for w in workers {
        w.await?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

async fn efficiency_and_lag(h: &Harness, plan: &Plan, out: &mut Vec<Figure>) -> anyhow::Result<()> {
    let n = plan.efficiency_tasks;
    let (lo, hi) = plan.efficiency_duration;
    let specs = |prefix: &str| -> (Vec<String>, Vec<Value>) {
        let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
        let specs = ids
            .iter()
            .enumerate()
            .map(|(i, id)| json!({"id": id, "duration_ms": lo + (i as u64 * 7919) % (hi - lo)}))
            .collect();
        (ids, specs)
    };

    // taskhook: batch_size 50 (the upstream's advice), polls every 2–3 s.
    h.reset();
    h.seen.track_lag.store(true, Ordering::Relaxed);
    let sim = h.sim(limited_upstream()).await?;
    let (ids, tasks) = specs("eff");
    let max_interval_ms = 3_000;
    let cfg = daemon_config(
        h,
        "efficiency",
        &sim,
        "batch_size = 50\nmax_requests_per_second = 50\nmax_concurrent_requests = 4\n\
         [poll]\nfirst_poll_after = \"2s\"\ninterval = \"2s\"\nmax_interval = \"3s\"\nbackoff_factor = 1.5\n",
        1,
    )?;
    let daemon = Daemon::start(&cfg)?;
    h.create_sim_tasks(&sim, tasks).await?;
    h.enqueue(&daemon.api, &ids, 1_000).await?;
    h.wait_for(
        "efficiency",
        0,
        n as u64,
        Duration::from_secs(60 + hi / 1000 * 2),
    )
    .await?;
    let stats = h.sim_stats(&sim).await?;
    daemon.stop()?;
    h.seen.track_lag.store(false, Ordering::Relaxed);
    let signed = signatures("efficiency", signature_counts(h), n as u64);
    let mut lags: Vec<i64> = h
        .seen
        .lag
        .lock()
        .expect("lock")
        .values()
        .map(|(at, fin)| at - fin)
        .collect();
    lags.sort_unstable();
    let th_requests = stats["requests"].as_f64().unwrap_or(0.0);
    let per_request = stats["mean_ids_per_request"].as_f64().unwrap_or(0.0);

    // The baseline: one `retrieve` per task every 3 s until it is finished.
    let sim = h.sim(taskhook_sim::SimArgs::default()).await?;
    let (ids, tasks) = specs("base");
    h.create_sim_tasks(&sim, tasks).await?;
    let base_lags = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let mut pollers = Vec::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    for id in ids {
        let (http, sim, lags, gate) =
            (h.http.clone(), sim.clone(), base_lags.clone(), gate.clone());
        pollers.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let _turn = gate.acquire().await.expect("open");
                let r: Value = match http
                    .post(format!("{sim}/producer/tasks"))
                    .json(&json!({"id": id, "action": "retrieve"}))
                    .send()
                    .await
                {
                    Ok(r) => r.json().await.unwrap_or(Value::Null),
                    Err(_) => continue,
                };
                if let Some(fin) = r["finished_at"].as_f64() {
                    lags.lock()
                        .expect("lock")
                        .push(now_ms() - (fin * 1000.0) as i64);
                    return;
                }
            }
        }));
    }
    for p in pollers {
        p.await?;
    }
    let base_stats = h.sim_stats(&sim).await?;
    let base_requests = base_stats["single_requests"].as_f64().unwrap_or(0.0);
    let mut base = base_lags.lock().expect("lock").clone();
    base.sort_unstable();

    let ratio = base_requests / th_requests.max(1.0);
    // The smoke run's tasks are short (1–3 s), so the baseline needs few
    // polls per task and the ratio is smaller; its busy cores scatter polls.
    let per_request_target = plan.target(45.0, 30.0);
    let ratio_target = plan.target(30.0, 10.0);
    let lag_target = max_interval_ms + plan.target(100.0, 1_000.0) as i64;
    let lag_slack = plan.target(0.0, 1_000.0) as i64;
    let (p50, p99) = (percentile(&lags, 0.5), percentile(&lags, 0.99));
    let (b50, b99) = (percentile(&base, 0.5), percentile(&base, 0.99));
    out.push(fig(
        "efficiency",
        "tasks (same durations for both)",
        n.to_string(),
        "",
        None,
    ));
    out.push(fig(
        "efficiency",
        "taskhook IDs per request (batch_size 50)",
        format!("{per_request:.1}"),
        &format!("≥ {per_request_target}"),
        Some(per_request >= per_request_target),
    ));
    out.push(fig(
        "efficiency",
        "taskhook upstream requests per task",
        format!("{:.3}", th_requests / n as f64),
        "",
        None,
    ));
    out.push(fig(
        "efficiency",
        "baseline upstream requests per task (retrieve every 3 s)",
        format!("{:.2}", base_requests / n as f64),
        "",
        None,
    ));
    out.push(fig(
        "efficiency",
        "fewer requests than the baseline",
        format!("{ratio:.0}×"),
        &format!("≥ {ratio_target}×"),
        Some(ratio >= ratio_target),
    ));
    out.push(fig(
        "lag",
        "taskhook finish → webhook received, p50 / p99",
        format!("{p50} ms / {p99} ms"),
        &format!("p99 ≤ {lag_target} ms"),
        Some(p99 <= lag_target),
    ));
    out.push(fig(
        "lag",
        "baseline finish → detected, p50 / p99",
        format!("{b50} ms / {b99} ms"),
        "",
        None,
    ));
    let no_worse = p50 <= b50 + lag_slack && p99 <= b99 + lag_slack;
    out.push(fig(
        "lag",
        "taskhook lag ≤ baseline lag (p50 and p99)",
        format!("{no_worse}"),
        &if lag_slack == 0 {
            "equal or lower".to_string()
        } else {
            format!("at most {lag_slack} ms more")
        },
        Some(no_worse),
    ));
    out.push(signed);
    Ok(())
}

async fn scale(h: &Harness, plan: &Plan, out: &mut Vec<Figure>) -> anyhow::Result<()> {
    let n = plan.scale_tasks;
    let sim = h.sim(taskhook_sim::SimArgs::default()).await?;
    let cfg = daemon_config(
        h,
        "scale",
        &sim,
        "batch_size = 500\nmax_requests_per_second = 50\n[poll]\nfirst_poll_after = \"1h\"\n",
        1,
    )?;
    let daemon = Daemon::start(&cfg)?;
    let ids: Vec<String> = (0..n).map(|i| format!("scale-{i:08}")).collect();
    let rate = h.enqueue(&daemon.api, &ids, 10_000).await?;
    drop(ids);
    // None is due: the daemon should sleep.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu0 = daemon.cpu_seconds();
    let idle_for = Duration::from_secs(if plan.scale_tasks >= 1_000_000 { 10 } else { 3 });
    tokio::time::sleep(idle_for).await;
    let idle_cpu = daemon.cpu_seconds() - cpu0;
    let (rss, peak) = daemon.rss_mib();
    daemon.stop()?;

    // Restart with 1,000 of them due now: time to the first upstream request.
    let db = h.dir.path().join("scale.db");
    {
        let c = rusqlite::Connection::open(&db)?;
        c.execute(
            "UPDATE tasks SET next_poll_at = 0 WHERE id IN (SELECT id FROM tasks ORDER BY id LIMIT 1000)",
            [],
        )?;
    }
    let before = h.sim_stats(&sim).await?["requests"].as_u64().unwrap_or(0);
    let started = Instant::now();
    let daemon = Daemon::start(&cfg)?;
    let first_poll = loop {
        if h.sim_stats(&sim).await?["requests"].as_u64().unwrap_or(0) > before {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("no poll within 60 s of the restart");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    daemon.stop()?;
    let enqueue_target = plan.target(50_000.0, 5_000.0);
    let idle_target = plan.target(0.01, 0.05);
    let db_mib = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;

    out.push(fig(
        "scale",
        "watched tasks",
        n.to_string(),
        "1,000,000",
        None,
    ));
    out.push(fig(
        "scale",
        "enqueue rate (10,000 IDs per request)",
        format!("{rate:.0} IDs/s"),
        &format!("≥ {} IDs/s", thousands(enqueue_target)),
        Some(rate >= enqueue_target),
    ));
    out.push(fig(
        "scale",
        "daemon RSS with all of them watched (now / peak)",
        format!("{rss:.0} / {peak:.0} MiB"),
        "≤ 200 MiB",
        Some(peak <= 200.0),
    ));
    out.push(fig(
        "scale",
        "daemon CPU while none is due",
        format!(
            "{:.3} s over {} s ({:.2} %)",
            idle_cpu,
            idle_for.as_secs(),
            100.0 * idle_cpu / idle_for.as_secs_f64()
        ),
        &format!("< {:.0} %", 100.0 * idle_target),
        Some(idle_cpu / idle_for.as_secs_f64() < idle_target),
    ));
    out.push(fig(
        "scale",
        "restart → first upstream request",
        format!("{} ms", first_poll.as_millis()),
        "≤ 3 s",
        Some(first_poll <= Duration::from_secs(3)),
    ));
    out.push(fig(
        "scale",
        "store size on disk",
        format!("{db_mib:.0} MiB"),
        "",
        None,
    ));
    Ok(())
}

async fn isolation(h: &Harness, plan: &Plan, out: &mut Vec<Figure>) -> anyhow::Result<()> {
    let n = plan.isolation_tasks;
    let mut rates = Vec::new();
    let (mut ok, mut bad) = (0, 0);
    for slow in [None, Some(9usize)] {
        h.reset();
        *h.seen.slow.lock().expect("lock") = slow;
        let sim = h.sim(taskhook_sim::SimArgs::default()).await?;
        let name = if slow.is_some() {
            "isolation-slow"
        } else {
            "isolation-fast"
        };
        let cfg = daemon_config(
            h,
            name,
            &sim,
            "batch_size = 500\nmax_requests_per_second = 50\n[poll]\nfirst_poll_after = \"100ms\"\ninterval = \"500ms\"\n",
            10,
        )?;
        let daemon = Daemon::start(&cfg)?;
        let ids: Vec<String> = (0..n).map(|i| format!("iso-{i}")).collect();
        let specs = ids
            .iter()
            .map(|id| json!({"id": id, "duration_ms": 0}))
            .collect();
        h.create_sim_tasks(&sim, specs).await?;
        let started = Instant::now();
        h.enqueue(&daemon.api, &ids, 10_000).await?;
        // The nine fast webhooks: time until each has every event.
        for w in 0..9 {
            h.wait_for("isolation", w, n as u64, Duration::from_secs(120))
                .await?;
        }
        let took = started.elapsed().as_secs_f64();
        rates.push(9.0 * n as f64 / took);
        daemon.stop()?;
        let (o, b) = signature_counts(h);
        (ok, bad) = (ok + o, bad + b);
    }
    *h.seen.slow.lock().expect("lock") = None;
    let ratio = rates[1] / rates[0];
    let kept_target = plan.target(0.8, 0.3);
    out.push(fig(
        "isolation",
        "events × 10 webhooks",
        format!("{n} × 10"),
        "",
        None,
    ));
    out.push(fig(
        "isolation",
        "nine fast webhooks, all fast",
        format!("{:.0} deliveries/s", rates[0]),
        "",
        None,
    ));
    out.push(fig(
        "isolation",
        "nine fast webhooks, the tenth answering after 1 s",
        format!("{:.0} deliveries/s", rates[1]),
        "",
        None,
    ));
    out.push(fig(
        "isolation",
        "throughput kept by the fast nine",
        format!("{:.0} %", 100.0 * ratio),
        &format!("≥ {:.0} %", 100.0 * kept_target),
        Some(ratio >= kept_target),
    ));
    // Both runs: every fast webhook got every event; the slow one some.
    out.push(signatures("isolation", (ok, bad), 2 * 9 * n as u64));
    Ok(())
}

/// Each figure whose target was missed, as "scenario / figure: measured
/// X, target Y".
fn missed_targets(figures: &[Figure]) -> Vec<String> {
    figures
        .iter()
        .filter(|f| f.holds == Some(false))
        .map(|f| {
            format!(
                "{} / {}: measured {}, target {}",
                f.scenario, f.name, f.value, f.target
            )
        })
        .collect()
}

// ---- the run -----------------------------------------------------------------------

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb / 1048576.0))
        .unwrap_or_else(|| "?".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem} memory")
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let plan = Plan::new(&args);
    let stop = CancellationToken::new();
    let seen = Arc::new(Seen::new()?);
    let receiver = serve(
        axum::Router::new()
            .route("/hook/{n}", axum::routing::post(receive))
            .with_state(seen.clone()),
        stop.clone(),
    )
    .await?;
    let h = Harness {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()?,
        seen,
        receiver,
        stop: stop.clone(),
        dir: tempfile::tempdir()?,
    };
    let started = Instant::now();
    let mut figures = Vec::new();
    type Scenario = for<'a> fn(
        &'a Harness,
        &'a Plan,
        &'a mut Vec<Figure>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<()>> + 'a>,
    >;
    let scenarios: [(&str, Scenario); 10] = [
        ("throughput", |h, p, o| Box::pin(throughput(h, p, o))),
        ("efficiency and lag", |h, p, o| {
            Box::pin(efficiency_and_lag(h, p, o))
        }),
        ("scale", |h, p, o| Box::pin(scale(h, p, o))),
        ("isolation", |h, p, o| Box::pin(isolation(h, p, o))),
        ("floor", |h, p, o| Box::pin(pacing::floor(h, p, o))),
        ("callbacks", |h, p, o| Box::pin(pacing::callbacks(h, p, o))),
        ("sweep", |h, p, o| Box::pin(pacing::sweep(h, p, o))),
        ("pg-throughput", |h, p, o| {
            Box::pin(postgres::throughput(h, p, o))
        }),
        ("pg-scale", |h, p, o| Box::pin(postgres::scale(h, p, o))),
        ("pg-vacuum", |h, p, o| Box::pin(postgres::vacuum(h, p, o))),
    ];
    for (name, scenario) in scenarios {
        // A scenario answers to its first word ("efficiency and lag": efficiency).
        let key = name.split_whitespace().next().unwrap_or(name);
        if !args.only.is_empty() && !args.only.iter().any(|o| o == key) {
            continue;
        }
        let t = Instant::now();
        eprintln!("bench: {name} ...");
        scenario(&h, &plan, &mut figures)
            .await
            .with_context(|| format!("scenario {name}"))?;
        eprintln!("bench: {name} done in {:.1} s", t.elapsed().as_secs_f64());
    }
    if args.only.iter().any(|o| o == "purge") {
        let t = Instant::now();
        eprintln!("bench: purge ...");
        purge::purge(&h, &plan, &mut figures)
            .await
            .context("scenario purge")?;
        eprintln!("bench: purge done in {:.1} s", t.elapsed().as_secs_f64());
    }
    stop.cancel();

    let command = if args.quick {
        "cargo run --release -- bench --quick"
    } else {
        "cargo run --release -- bench"
    };
    let mut md = String::new();
    md.push_str("# Benchmark results\n\n");
    md.push_str(&format!("Command: `{command}`  \n"));
    md.push_str(&format!("Machine: {}  \n", machine()));
    md.push_str(&format!(
        "taskhook {}, total bench time {:.0} s  \n",
        env!("CARGO_PKG_VERSION"),
        started.elapsed().as_secs_f64()
    ));
    md.push_str(&format!(
        "Run at: {}\n\n",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    ));
    md.push_str("The simulator and the receiver run inside the bench process, the daemon as a child process\n");
    md.push_str(
        "(its CPU and memory are read from /proc), all on loopback and on the same cores.\n\n",
    );
    md.push_str("| scenario | figure | measured | target | holds |\n|---|---|---|---|---|\n");
    for f in &figures {
        let holds = match f.holds {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            f.scenario, f.name, f.value, f.target, holds
        ));
    }
    md.push_str(&postgres::notes(&figures));
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    pacing::write_chart(&args.out, &mut md)?;
    std::fs::write(&args.out, &md).with_context(|| format!("writing {}", args.out.display()))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{md}")?;
    writeln!(stdout, "written to {}", args.out.display())?;
    // A missed target fails the run, naming each one.
    let missed = missed_targets(&figures);
    if !missed.is_empty() {
        for m in &missed {
            eprintln!("bench: target missed: {m}");
        }
        bail!("{} target(s) missed", missed.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missed_target_is_named_and_the_others_are_not() {
        let figures = vec![
            fig("scale", "watched tasks", "5000".into(), "1,000,000", None),
            fig(
                "scale",
                "enqueue rate",
                "90000 IDs/s".into(),
                "≥ 50,000 IDs/s",
                Some(true),
            ),
            fig("lag", "p99", "4000 ms".into(), "p99 ≤ 3100 ms", Some(false)),
        ];
        assert_eq!(
            missed_targets(&figures),
            vec!["lag / p99: measured 4000 ms, target p99 ≤ 3100 ms".to_string()]
        );
        assert!(missed_targets(&figures[..2]).is_empty());
    }

    #[test]
    fn signatures_hold_only_when_every_one_is_valid_and_enough_arrived() {
        assert_eq!(signatures("t", (500, 0), 500).holds, Some(true));
        assert_eq!(signatures("t", (499, 1), 500).holds, Some(false));
        assert_eq!(signatures("t", (499, 0), 500).holds, Some(false));
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(10_000.0), "10,000");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
        assert_eq!(thousands(100.0), "100");
        assert_eq!(thousands(5_000.0), "5,000");
    }

    #[test]
    fn the_signature_verifier_refuses_a_tampered_body() {
        // The bench's verifier is the specification's library: a body
        // signed by taskhook verifies, the same body altered does not.
        let signer = standardwebhooks::Webhook::new(SECRET).unwrap();
        let ts = now_ms() / 1000;
        let body = br#"{"type":"task.succeeded"}"#;
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("webhook-id", "msg_1".parse().unwrap());
        headers.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        headers.insert(
            "webhook-signature",
            signer.sign("msg_1", ts, body).unwrap().parse().unwrap(),
        );
        let seen = Seen::new().expect("verifier");
        assert!(seen.verifier.verify(body, &headers).is_ok());
        assert!(
            seen.verifier
                .verify(br#"{"type":"task.failed"}"#, &headers)
                .is_err()
        );
    }
}
