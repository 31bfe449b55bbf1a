//! Shared test harness: the real `taskhook` binary started on loopback
//! ports, a recording webhook receiver, and poll-until helpers.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

pub const BIN: &str = env!("CARGO_BIN_EXE_taskhook");

/// A child process killed when dropped, with the URL it printed.
pub struct Proc {
    pub child: Child,
    pub url: String,
    pub stdout_lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    /// Sends signal `sig` ("TERM", "HUP", "INT", "KILL") from this process.
    pub fn signal(&self, sig: &str) {
        send_signal(self.pid(), sig);
    }
    /// Waits for exit (up to `timeout`) and returns the exit code (`None`
    /// when a signal ended it). A child still running at the deadline is
    /// killed and the test fails.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        wait_child(&mut self.child, timeout).code()
    }
}

/// The number of signal `name` ("TERM", "HUP", "INT", "KILL", "USR1").
pub fn signal_number(name: &str) -> libc::c_int {
    match name.trim_start_matches("SIG") {
        "TERM" => libc::SIGTERM,
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        other => panic!("unknown signal {other}"),
    }
}

/// Sends signal `sig` to process `pid` with kill(2) from this process;
/// fails the test if the signal could not be sent.
pub fn send_signal(pid: u32, sig: &str) {
    let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, signal_number(sig)) };
    assert_eq!(
        rc,
        0,
        "kill -{sig} {pid}: {}",
        std::io::Error::last_os_error()
    );
}

/// Waits for `child` to exit, at most `timeout`: a child still running
/// then is killed, reaped, and the test fails.
pub fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "process {} did not exit within {timeout:?}; killed",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to completion with its stdout and stderr captured, like
/// [`Command::output`], but for at most `timeout`: past it the process is
/// killed and the test fails.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> std::process::Output {
    output_within_input(cmd, None, timeout)
}

/// [`output_within`] with `input` written to the process's stdin.
pub fn output_within_input(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> std::process::Output {
    use std::io::{Read, Write};
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout piped")));
    let err = reader(Box::new(child.stderr.take().expect("stderr piped")));
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin piped");
        stdin.write_all(input).expect("writing stdin");
    }
    let status = wait_child(&mut child, timeout);
    std::process::Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// `taskhook ARGS`, captured, within 60 s.
pub fn taskhook(args: &[&str]) -> std::process::Output {
    output_within(Command::new(BIN).args(args), Duration::from_secs(60))
}

/// [`taskhook`] from async code (on a blocking thread).
pub async fn taskhook_async(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        taskhook(&args)
    })
    .await
    .expect("the command thread")
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `taskhook ARGS`, waiting for the stdout line that contains
/// `listening on ` and taking the URL after it.
pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
    spawn_until(args, envs, "listening on ")
}

/// Starts `taskhook ARGS`, waiting for a stdout line containing `marker`;
/// the first `http` word after it becomes [`Proc::url`].
pub fn spawn_until(args: &[&str], envs: &[(&str, &str)], marker: &'static str) -> Proc {
    spawn_program(BIN, args, envs, marker)
}

/// [`spawn_until`] for any program (a shell wrapping the binary, say).
pub fn spawn_program(
    program: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    marker: &'static str,
) -> Proc {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env(
            "RUST_LOG",
            std::env::var("TEST_LOG").unwrap_or_else(|_| "error".into()),
        );
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the taskhook binary starts");
    let stdout = child.stdout.take().expect("stdout piped");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = lines.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(i) = line.find(marker)
                && let Some(tx) = tx.take()
            {
                let url = line[i + marker.len()..]
                    .split_whitespace()
                    .find(|w| w.starts_with("http"))
                    .unwrap_or("")
                    .to_string();
                let _ = tx.send(url);
            }
            sink.lock().unwrap().push(line);
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("taskhook {args:?} did not report its address"));
    Proc {
        child,
        url,
        stdout_lines: lines,
    }
}

pub fn spawn_sim(extra: &[&str]) -> Proc {
    let mut args = vec!["sim", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    spawn(&args, &[])
}

/// A daemon config file for tests: fast intervals, loopback everything,
/// `store.sync = "normal"`.
pub fn daemon_config(dir: &Path, sim_url: &str, extra: &str) -> PathBuf {
    daemon_config_sync(dir, sim_url, extra, "normal")
}

/// [`daemon_config`] with `store.sync = SYNC` (`"full"` is the default
/// users get: an fsync per commit).
pub fn daemon_config_sync(dir: &Path, sim_url: &str, extra: &str, sync: &str) -> PathBuf {
    let path = dir.join("taskhook.toml");
    let text = format!(
        r#"
[upstream]
base_url = "{sim_url}"
token = "test-token"
batch_size = 50
max_requests_per_second = 200
max_concurrent_requests = 4
request_timeout = "5s"
backoff_initial = "50ms"
backoff_max = "400ms"
[poll]
first_poll_after = "100ms"
interval = "200ms"
max_interval = "400ms"
backoff_factor = 1.5
missing_grace = 3
failure_confirmations = 2
[store]
path = "{store}"
sync = "{sync}"
[api]
listen = "127.0.0.1:0"
[delivery]
retry_schedule = ["100ms", "200ms", "300ms"]
request_timeout = "5s"
[daemon]
shutdown_grace = "5s"
{extra}
"#,
        store = dir.join("taskhook.db").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// An external test tool (schemathesis, node): `$VAR` if set, else `name`
/// on the PATH. Missing under CI (`CI=true`) fails the test (`.ci/run`
/// installs it); elsewhere the test is skipped with a loud message.
pub fn external_tool(var: &str, name: &str, install: &str) -> Option<PathBuf> {
    let found = std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} is missing (set {var} or put it on the PATH): {install}"
        );
        eprintln!("SKIPPED: {name} is not installed ({install}; or set {var})");
    }
    found
}

/// Sets `api.token` in a config [`daemon_config`] wrote.
pub fn set_api_token(cfg: &Path, token: &str) {
    let text = std::fs::read_to_string(cfg).unwrap();
    let with = text.replacen("[api]\n", &format!("[api]\ntoken = \"{token}\"\n"), 1);
    assert_ne!(text, with, "no [api] table to set the token in");
    std::fs::write(cfg, with).unwrap();
}

/// A child process that is killed and reaped when dropped (a test that
/// fails midway leaves no daemon behind); otherwise used as a [`Child`].
pub struct ChildGuard(pub Child);

impl std::ops::Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the daemon with JSON logs at `level` written to `log`; returns
/// the child and its API URL.
pub fn spawn_daemon_logging(config: &Path, level: &str, log: &Path) -> (ChildGuard, String) {
    spawn_daemon_logging_with(config, level, log, "json", &[])
}

/// [`spawn_daemon_logging`] with the log format (`json` or `text`) and
/// extra environment variables.
pub fn spawn_daemon_logging_with(
    config: &Path,
    level: &str,
    log: &Path,
    format: &str,
    envs: &[(&str, &str)],
) -> (ChildGuard, String) {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "run",
        "-c",
        config.to_str().unwrap(),
        "--log-format",
        format,
    ])
    .env("RUST_LOG", level)
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the daemon did not report its address within 30 s; its log: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    };
    let api = line
        .split_whitespace()
        .last()
        .filter(|w| w.starts_with("http"))
        .unwrap_or_else(|| {
            panic!(
                "the daemon did not start ({line:?}); its log: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .to_string();
    (ChildGuard(child), api)
}

pub fn spawn_daemon(config: &Path) -> Proc {
    spawn(&["run", "-c", config.to_str().unwrap()], &[])
}

/// Polls `f` every 20 ms until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Standard Webhooks verification, written independently of taskhook's.
pub fn signature_valid(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", h("webhook-id"), h("webhook-timestamp")).as_bytes());
    mac.update(body);
    let want = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    h("webhook-signature").split(' ').any(|s| s == want)
}

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Hit {
    pub webhook_id: String,
    pub signature_ok: bool,
    pub body: Value,
    /// The body as it came, byte for byte (what the signature covers).
    pub raw: Vec<u8>,
    pub headers: HashMap<String, String>,
    pub status_sent: u16,
    /// Unix milliseconds when the request arrived.
    pub received_at_ms: i64,
}

impl Hit {
    /// The request's headers as a [`HeaderMap`] (for [`signature_valid`]).
    pub fn header_map(&self) -> HeaderMap {
        self.headers
            .iter()
            .map(|(k, v)| {
                (
                    axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                )
            })
            .collect()
    }
}

/// A recording webhook receiver on a loopback port.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub hits: Arc<Mutex<Vec<Hit>>>,
    /// Refuse (500) the first N attempts of each webhook-id.
    pub refuse_first: Arc<Mutex<usize>>,
    /// Refuse (503) this fraction of attempts at random.
    pub fail_rate: Arc<Mutex<f64>>,
    /// Answer every request this way instead.
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// The most requests this receiver had in flight at once.
    pub max_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Answers given in order, one per request, before anything else.
    pub script: Arc<Mutex<std::collections::VecDeque<Answer>>>,
}

/// One scripted answer: a status and its headers.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
}

impl Answer {
    /// `status` with a `retry-after` header of `value`.
    pub fn retry_after(status: u16, value: &str) -> Answer {
        Answer {
            status,
            headers: vec![("retry-after", value.to_string())],
        }
    }
}

/// A scripted answer: wait `delay`, then answer `status` (with a
/// `location` header when set).
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    pub status: Option<u16>,
    pub location: Option<String>,
    pub delay: Duration,
}

struct RecvState {
    secret: Option<String>,
    hits: Arc<Mutex<Vec<Hit>>>,
    refuse_first: Arc<Mutex<usize>>,
    behaviour: Arc<Mutex<Behaviour>>,
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    fail_rate: Arc<Mutex<f64>>,
    script: Arc<Mutex<std::collections::VecDeque<Answer>>>,
}

async fn record(
    State(s): State<Arc<RecvState>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use std::sync::atomic::Ordering;
    let now_in = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now_in, Ordering::SeqCst);
    let behaviour = s.behaviour.lock().unwrap().clone();
    tokio::time::sleep(behaviour.delay).await;
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    let webhook_id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let signature_ok = s
        .secret
        .as_deref()
        .map(|sec| signature_valid(sec, &headers, &body))
        .unwrap_or(true);
    let mut hits = s.hits.lock().unwrap();
    let earlier = hits.iter().filter(|h| h.webhook_id == webhook_id).count();
    let scripted = s.script.lock().unwrap().pop_front();
    let status = if let Some(answer) = &scripted {
        answer.status
    } else if let Some(fixed) = behaviour.status {
        fixed
    } else if earlier < *s.refuse_first.lock().unwrap() {
        500
    } else if rand::random::<f64>() < *s.fail_rate.lock().unwrap() {
        503
    } else {
        200
    };
    hits.push(Hit {
        webhook_id,
        signature_ok,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw: body.to_vec(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        status_sent: status,
        received_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    });
    drop(hits);
    let code = StatusCode::from_u16(status).unwrap();
    if let Some(answer) = scripted {
        let mut resp = code.into_response();
        for (k, v) in answer.headers {
            resp.headers_mut().insert(k, v.parse().unwrap());
        }
        return resp;
    }
    match behaviour.location {
        Some(loc) => (code, [("location", loc)]).into_response(),
        None => code.into_response(),
    }
}

impl Receiver {
    pub async fn start(secret: Option<&str>) -> Receiver {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let refuse_first = Arc::new(Mutex::new(0));
        let fail_rate = Arc::new(Mutex::new(0.0));
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let max_in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let script = Arc::new(Mutex::new(std::collections::VecDeque::new()));
        let state = Arc::new(RecvState {
            secret: secret.map(str::to_string),
            hits: hits.clone(),
            refuse_first: refuse_first.clone(),
            behaviour: behaviour.clone(),
            in_flight: Default::default(),
            max_in_flight: max_in_flight.clone(),
            fail_rate: fail_rate.clone(),
            script: script.clone(),
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(record))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url,
            hits,
            refuse_first,
            fail_rate,
            behaviour,
            max_in_flight,
            script,
        }
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Accepted (2xx) hits, by task ID.
    pub fn accepted_by_task(&self) -> HashMap<String, Vec<Hit>> {
        let mut m: HashMap<String, Vec<Hit>> = HashMap::new();
        for h in self.hits().into_iter().filter(|h| h.status_sent < 300) {
            let id = h.body["data"]["task_id"].as_str().unwrap_or("").to_string();
            m.entry(id).or_default().push(h);
        }
        m
    }
}

pub const SECRET_A: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
pub const SECRET_B: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A `[[webhooks]]` entry for the daemon's config.
pub fn webhook_toml(name: &str, url: &str, secret: Option<&str>) -> String {
    let mut t = format!("[[webhooks]]\nname = \"{name}\"\nurl = \"{url}\"\n");
    if let Some(secret) = secret {
        t.push_str(&format!("secret = \"{secret}\"\n"));
    }
    t
}

/// Creates simulator tasks `ids`, each finishing after `duration_ms`.
pub async fn sim_create_ids(sim: &str, ids: &[String], duration_ms: u64) {
    let specs = ids
        .iter()
        .map(|id| serde_json::json!({"id": id, "duration_ms": duration_ms}))
        .collect();
    sim_create(sim, specs).await;
}

/// Enqueues `ids` through the daemon's API in one request; asserts 202.
pub async fn enqueue_ids(api: &str, ids: &[String]) {
    let body = serde_json::json!({"tasks": ids.iter().map(|id| serde_json::json!({"id": id})).collect::<Vec<_>>()});
    let (s, v) = post_json(&format!("{api}/v1/tasks"), &body).await;
    assert_eq!(s, 202, "{v}");
}

/// Creates tasks in the simulator.
pub async fn sim_create(sim: &str, specs: Vec<Value>) {
    let resp = reqwest::Client::new()
        .post(format!("{sim}/_sim/tasks"))
        .json(&serde_json::json!({"tasks": specs}))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "sim create: {}", resp.status());
}

pub async fn get_json(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// [`get_json`] with a bearer token.
pub async fn get_json_auth(url: &str, token: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

pub async fn post_json(url: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// `url` with `search_path=SCHEMA` in its query: a daemon's `store.url`
/// for that PostgreSQL schema.
pub fn pg_store_url(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}search_path={schema}")
}

/// Sets `key = VALUE` in `[section]` of the config file `path`: `value` is
/// TOML as written (`"20"`, `"\"1s\""`, `"[\"a\"]"`). Replaces the key's
/// line when the section has one, else adds the line under the header.
pub fn set_config_key(path: &Path, section: &str, key: &str, value: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let header = format!("[{section}]");
    let start = lines
        .iter()
        .position(|l| l.trim() == header)
        .unwrap_or_else(|| panic!("{} has no {header} section", path.display()));
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .map_or(lines.len(), |i| start + 1 + i);
    let line = format!("{key} = {value}");
    let existing = lines[start + 1..end].iter().position(|l| {
        l.split_once('=')
            .is_some_and(|(k, _)| k.trim() == key && !l.trim_start().starts_with('#'))
    });
    match existing {
        Some(i) => lines[start + 1 + i] = line,
        None => lines.insert(start + 1, line),
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Points the config file `path` at PostgreSQL (`store.url`), with a small
/// pool so several daemons and tests share the server's connections.
pub fn use_postgres(path: &Path, store_url: &str) {
    let quoted = toml::Value::String(store_url.to_string()).to_string();
    set_config_key(path, "store", "url", &quoted);
    set_config_key(path, "store", "pool_size", "3");
}

/// A `[[webhooks]]` entry that receives only the event types `events`.
pub fn webhook_toml_for(name: &str, url: &str, secret: Option<&str>, events: &[&str]) -> String {
    let list: Vec<String> = events.iter().map(|e| format!("{e:?}")).collect();
    format!(
        "{}events = [{}]\n",
        webhook_toml(name, url, secret),
        list.join(", ")
    )
}

/// A value of `/metrics` at `api`: the first sample line starting with
/// `line_prefix` (`"taskhook_instances "`), or `None` when there is none.
pub async fn metric_value(api: &str, line_prefix: &str) -> Option<f64> {
    let text = reqwest::get(format!("{api}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// The chaos runs' tasks: `n` of mixed outcomes (successes, a hiccup,
/// failures of each shape, an item error), every twentieth one unknown
/// upstream; each named `{prefix}-{i}` with a duration drawn from
/// `durations_ms`. Returns the event type each ID must end with, and the
/// simulator's task specs.
pub fn chaos_tasks(
    prefix: &str,
    n: usize,
    durations_ms: std::ops::Range<u64>,
    rng: &mut impl rand::Rng,
) -> (HashMap<String, &'static str>, Vec<Value>) {
    let outcomes = [
        "succeeded",
        "succeeded",
        "succeeded",
        "hiccup",
        "failed",
        "failed_string",
        "item_error",
        "failed_unfinished",
    ];
    let mut expected: HashMap<String, &'static str> = HashMap::new();
    let mut specs = Vec::new();
    for i in 0..n {
        if i % 20 == 19 {
            expected.insert(format!("missing-{i}"), "task.not_found");
            continue;
        }
        let outcome = outcomes[i % outcomes.len()];
        let id = format!("{prefix}-{i}");
        expected.insert(
            id.clone(),
            if matches!(outcome, "succeeded" | "hiccup") {
                "task.succeeded"
            } else {
                "task.failed"
            },
        );
        specs.push(serde_json::json!({"id": id, "outcome": outcome, "duration_ms": rng.gen_range(durations_ms.clone()), "items": 1 + i % 2}));
    }
    (expected, specs)
}
