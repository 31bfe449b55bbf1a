//! The browser console at `/ui` over HTTP, as a browser would use it
//! without scripts: the login and its cookie, CSRF on every action, the
//! pages and their numbers, escaping of hostile values, server-sent
//! events, and bulk replay behind its confirmation. `browser` drives the
//! same console in headless Chromium.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::common::*;

const API_TOKEN: &str = "console-api-token-4f9a";

/// A daemon config for console tests: the harness's fast settings, the API
/// token (if any) and extra TOML (webhooks).
fn console_config(dir: &Path, sim: &str, token: Option<&str>, extra: &str) -> PathBuf {
    let cfg = daemon_config(dir, sim, extra);
    let api = match token {
        Some(t) => format!("[api]\nlisten = \"127.0.0.1:0\"\ntoken = \"{t}\"\n"),
        None => "[api]\nlisten = \"127.0.0.1:0\"\n".to_string(),
    };
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[api]\nlisten = \"127.0.0.1:0\"\n", &api);
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// One answer: status, headers (lower-case names; `set-cookie` joined by
/// newlines) and body.
struct Page {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Page {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    /// The value of the first `name="csrf"` field on the page.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no CSRF field on the page: {}", self.body));
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }

    /// The text of the element with `data-stat="key"`.
    fn stat(&self, key: &str) -> String {
        let marker = format!("data-stat=\"{key}\">");
        let at = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no {key} on the page"));
        let rest = &self.body[at + marker.len()..];
        rest[..rest.find('<').unwrap()].to_string()
    }
}

/// A browser without scripts: follows no redirects, keeps the session
/// cookie it is given, and remembers every body it saw (to check none
/// shows the token).
#[derive(Clone)]
struct Browser {
    base: String,
    http: reqwest::Client,
    cookie: Arc<Mutex<Option<String>>>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Browser {
    fn new(base: &str) -> Browser {
        Browser {
            base: base.to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: Default::default(),
            seen: Default::default(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Page {
        let req = match self.cookie.lock().unwrap().clone() {
            Some(c) => req.header("cookie", format!("taskhook_session={c}")),
            None => req,
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let mut headers: HashMap<String, String> = HashMap::new();
        for (k, v) in r.headers() {
            let v = v.to_str().unwrap_or("").to_string();
            headers
                .entry(k.as_str().to_string())
                .and_modify(|e| {
                    e.push('\n');
                    e.push_str(&v);
                })
                .or_insert(v);
        }
        let body = r.text().await.unwrap();
        self.seen.lock().unwrap().push(body.clone());
        Page {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Page {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Page {
        self.send(self.http.post(format!("{}{path}", self.base)).form(form))
            .await
    }

    /// Logs in with `token`; keeps the cookie on success.
    async fn login(&self, token: &str) -> Page {
        let p = self
            .post("/ui/login", &[("token", token), ("next", "/ui")])
            .await;
        if let Some(v) = cookie_value(p.header("set-cookie")) {
            *self.cookie.lock().unwrap() = Some(v);
        }
        p
    }
}

/// The session value a `set-cookie` header sets.
fn cookie_value(set_cookie: &str) -> Option<String> {
    let v = set_cookie.strip_prefix("taskhook_session=")?;
    Some(v[..v.find(';').unwrap_or(v.len())].to_string())
}

/// `/v1/stats`, with the token.
async fn stats(api: &str, token: Option<&str>) -> Value {
    let mut req = reqwest::Client::new().get(format!("{api}/v1/stats"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().json().await.unwrap()
}

/// Deliveries in `state` through `/v1/deliveries`.
async fn deliveries(api: &str, token: Option<&str>, state: &str) -> Vec<Value> {
    let mut req = reqwest::Client::new().get(format!("{api}/v1/deliveries?state={state}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let v: Value = req.send().await.unwrap().json().await.unwrap();
    v["deliveries"].as_array().cloned().unwrap_or_default()
}

/// Waits until `n` deliveries are dead-lettered and nothing else is in
/// flight (no task watched or delivering), so counts hold still.
async fn settled_with_dead_letters(api: &str, token: Option<&str>, n: u64) -> Value {
    eventually(
        "dead letters and a quiet queue",
        Duration::from_secs(60),
        || async {
            let st = stats(api, token).await;
            (st["dead_letters"] == json!(n)
                && st["tasks"]["watching"] == json!(0)
                && st["tasks"]["delivering"] == json!(0)
                && st["deliveries"]["pending"] == json!(0))
            .then_some(st)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_cookie_csrf_and_the_overview_numbers() {
    let sim = spawn_sim(&[]);
    let hook = Receiver::start(Some(SECRET_A)).await;
    hook.behaviour.lock().unwrap().status = Some(500);
    let dir = tempfile::tempdir().unwrap();
    let cfg = console_config(
        dir.path(),
        &sim.url,
        Some(API_TOKEN),
        &webhook_toml("main", &hook.url, Some(SECRET_A)),
    );
    let daemon = spawn_daemon(&cfg);
    let api = daemon.url.clone();
    let b = Browser::new(&api);

    // Without a session: to the login form, remembering where to go.
    let p = b.get("/ui").await;
    assert_eq!(p.status, 303);
    assert_eq!(p.header("location"), "/ui/login?next=%2Fui");
    let p = b.get("/ui/tasks?status=done").await;
    assert_eq!(
        p.header("location"),
        "/ui/login?next=%2Fui%2Ftasks%3Fstatus%3Ddone"
    );
    let p = b.get("/ui/events").await;
    assert_eq!(p.status, 401, "the event stream asks for a login");
    let p = b.get("/ui/login?next=%2Fui").await;
    assert_eq!(p.status, 200);
    assert!(
        p.body.contains("type=\"password\" name=\"token\""),
        "{}",
        p.body
    );
    assert!(p.body.contains("method=\"post\""));
    // Assets are open (the login page needs them) and compiled in.
    let css = b.get("/ui/assets/console.css").await;
    assert_eq!(
        (css.status, css.header("content-type")),
        (200, "text/css; charset=utf-8")
    );

    // A wrong token is refused, and not echoed back.
    let p = b.login("not-the-token-xyz").await;
    assert_eq!(p.status, 401);
    assert!(p.header("set-cookie").is_empty());
    assert!(!p.body.contains("not-the-token-xyz"));
    assert!(b.cookie.lock().unwrap().is_none());

    // The right one: a session cookie, HttpOnly, SameSite=Strict, on /ui.
    let p = b.login(API_TOKEN).await;
    assert_eq!((p.status, p.header("location")), (303, "/ui"));
    let c = p.header("set-cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=43200"] {
        assert!(c.contains(attr), "{attr} missing from {c}");
    }
    assert!(
        !c.contains("Secure"),
        "plain HTTP cannot carry a Secure cookie: {c}"
    );
    let behind_tls = b
        .send(
            b.http
                .post(format!("{api}/ui/login"))
                .header("x-forwarded-proto", "https")
                .form(&[("token", API_TOKEN)]),
        )
        .await;
    assert!(behind_tls.header("set-cookie").contains("; Secure"));

    // A forged or altered cookie is no session.
    let good = b.cookie.lock().unwrap().clone().unwrap();
    let (exp, mac) = good.split_once('.').unwrap();
    let forged = Browser::new(&api);
    *forged.cookie.lock().unwrap() = Some(format!("{}.{mac}", exp.parse::<i64>().unwrap() + 3600));
    assert_eq!(forged.get("/ui").await.status, 303);
    // The bearer token works as it does for /v1.
    let bearer = b
        .send(b.http.get(format!("{api}/ui")).bearer_auth(API_TOKEN))
        .await;
    assert_eq!(bearer.status, 200);

    // Two tasks end as dead letters (the receiver answers 500).
    let ids: Vec<String> = (1..=2).map(|i| format!("console-dl-{i}")).collect();
    sim_create_ids(&sim.url, &ids, 0).await;
    let r = reqwest::Client::new()
        .post(format!("{api}/v1/tasks"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"tasks": ids.iter().map(|id| json!({"id": id})).collect::<Vec<_>>()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let st = settled_with_dead_letters(&api, Some(API_TOKEN), 2).await;

    // The overview shows /v1/stats' numbers.
    let p = b.get("/ui").await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("<title>Overview · taskhook</title>"));
    assert_eq!(p.stat("watching"), st["tasks"]["watching"].to_string());
    assert_eq!(p.stat("delivering"), st["tasks"]["delivering"].to_string());
    assert_eq!(p.stat("done"), st["tasks"]["done"].to_string());
    assert_eq!(p.stat("dead_letters"), "2");
    assert_eq!(
        p.stat("deliveries_pending"),
        st["deliveries"]["pending"].to_string()
    );
    let instance = st["instance"].as_str().unwrap();
    assert!(
        p.stat("daemons")
            .contains(&format!("this one is {instance}; it leads")),
        "{}",
        p.stat("daemons")
    );
    assert_eq!(p.header("cache-control"), "no-store");
    assert!(
        p.header("content-security-policy")
            .contains("script-src 'self'")
    );
    assert!(p.body.contains("href=\"#main\""), "a skip link");
    assert!(
        p.body.contains("data-webhook=\"main\""),
        "the webhook's row"
    );
    let csrf = p.csrf();

    // Actions without the CSRF token, with a wrong one, or with another
    // session's: 403, and nothing replayed.
    let dead = deliveries(&api, Some(API_TOKEN), "failed").await;
    assert_eq!(dead.len(), 2);
    let one = dead[0]["id"].as_i64().unwrap();
    let replay = format!("/ui/deliveries/{one}/replay");
    let p = b.post(&replay, &[("back", "/ui/dead-letters")]).await;
    assert_eq!(p.status, 403);
    assert!(p.body.contains("CSRF"), "{}", p.body);
    let p = b
        .post(
            &replay,
            &[
                ("csrf", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
                ("back", "/ui"),
            ],
        )
        .await;
    assert_eq!(p.status, 403);
    let other = Browser::new(&api);
    other.login(API_TOKEN).await;
    let theirs = other.get("/ui").await.csrf();
    assert_ne!(theirs, csrf, "each session has its own CSRF token");
    assert_eq!(b.post(&replay, &[("csrf", &theirs)]).await.status, 403);
    let p = b
        .post("/ui/dead-letters/replay", &[("webhook", "main")])
        .await;
    assert_eq!(p.status, 403, "bulk replay needs the token too");
    let p = Browser::new(&api).post(&replay, &[("csrf", &csrf)]).await;
    assert_eq!(p.status, 403, "no session, no action, even with a token");
    assert_eq!(
        deliveries(&api, Some(API_TOKEN), "failed").await.len(),
        2,
        "nothing was replayed"
    );
    assert_eq!(stats(&api, Some(API_TOKEN)).await["dead_letters"], json!(2));

    // With the right token: replayed, and delivered once the receiver is back.
    hook.behaviour.lock().unwrap().status = None;
    let p = b
        .post(&replay, &[("csrf", &csrf), ("back", "/ui/dead-letters")])
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.header("location"), "/ui/dead-letters?replayed=1");
    eventually(
        "the replayed delivery delivered",
        Duration::from_secs(30),
        || async {
            let d = deliveries(&api, Some(API_TOKEN), "delivered").await;
            d.iter().any(|d| d["id"] == json!(one)).then_some(())
        },
    )
    .await;
    let p = b.get("/ui/dead-letters?replayed=1").await;
    assert!(p.body.contains("1 delivery is pending again"), "{}", p.body);
    // An open redirect is not possible through `back`.
    let two = dead[1]["id"].as_i64().unwrap();
    let p = b
        .post(
            &format!("/ui/deliveries/{two}/replay"),
            &[("csrf", &csrf), ("back", "https://evil.example/")],
        )
        .await;
    assert_eq!(p.header("location"), "/ui?replayed=1");

    // Logging out drops the cookie.
    let p = b.post("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!((p.status, p.header("location")), (303, "/ui/login"));
    assert!(p.header("set-cookie").contains("Max-Age=0"));

    // Changing api.token (SIGHUP) ends every session.
    assert_eq!(other.get("/ui").await.status, 200);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(API_TOKEN, "a-new-api-token");
    std::fs::write(&cfg, text).unwrap();
    daemon.signal("HUP");
    eventually(
        "the old session refused",
        Duration::from_secs(20),
        || async { (other.get("/ui").await.status == 303).then_some(()) },
    )
    .await;

    // The token never appeared in any page.
    for body in b
        .seen
        .lock()
        .unwrap()
        .iter()
        .chain(other.seen.lock().unwrap().iter())
    {
        assert!(
            !body.contains(API_TOKEN),
            "the token leaked into a page: {body}"
        );
    }
}

/// A receiver that refuses everything with a hostile body.
async fn hostile_receiver() -> String {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(|| async {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "<script>alert('answer')</script><img src=x onerror=alert(1)>",
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_metadata_and_answers_are_shown_escaped() {
    let sim = spawn_sim(&[]);
    let hook = hostile_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = console_config(
        dir.path(),
        &sim.url,
        None,
        &webhook_toml("evil<b>hook", &hook, None),
    );
    let daemon = spawn_daemon(&cfg);
    let api = daemon.url.clone();
    let id = "<script>alert(\"id\")</script>&/?#x";
    sim_create(&sim.url, vec![json!({"id": id, "duration_ms": 0})]).await;
    let (s, v) = post_json(
        &format!("{api}/v1/tasks"),
        &json!({"id": id, "metadata": {"note": "<img src=x onerror=alert('meta')>"}}),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    settled_with_dead_letters(&api, None, 1).await;

    // No token: the console is open, without a login.
    let b = Browser::new(&api);
    let overview = b.get("/ui").await;
    assert_eq!(overview.status, 200);
    assert!(overview.body.contains("evil&lt;b&gt;hook"));
    let page = b.get(&format!("/ui/tasks/{}", encode_segment(id))).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let list = b
        .get(&format!("/ui/tasks?q={}", encode_segment("<script>")))
        .await;
    assert_eq!(list.status, 200, "{}", list.body);
    let dead = b.get("/ui/dead-letters").await;
    assert_eq!(dead.status, 200, "{}", dead.body);
    for (what, p) in [
        ("task page", &page),
        ("listing", &list),
        ("dead letters", &dead),
    ] {
        assert!(
            p.body
                .contains("&lt;script&gt;alert(&quot;id&quot;)&lt;/script&gt;&amp;/?#x"),
            "{what} shows the ID escaped: {}",
            p.body
        );
        for raw in ["<script>alert", "<img src=x", "<b>hook"] {
            assert!(
                !p.body.contains(raw),
                "{what} carries raw {raw:?}: {}",
                p.body
            );
        }
    }
    // The link to the task encodes it as one path segment.
    assert!(
        list.body
            .contains(&format!("href=\"/ui/tasks/{}\"", encode_segment(id)))
    );
    assert!(
        page.body
            .contains("&lt;img src=x onerror=alert('meta')&gt;"),
        "metadata"
    );
    assert!(
        page.body
            .contains("&lt;script&gt;alert('answer')&lt;/script&gt;"),
        "the receiver's answer, escaped: {}",
        page.body
    );
    assert!(page.body.contains("<title>Task &lt;script&gt;"));
    // The event exactly as signed: compact JSON (the ID with its JSON
    // escapes), shown escaped.
    let raw = page
        .body
        .split_once("id=\"event-raw\">")
        .and_then(|(_, rest)| rest.split_once("</pre>"))
        .map(|(raw, _)| raw)
        .expect("the task page shows the signed bytes");
    assert!(raw.starts_with('{') && !raw.contains('\n'), "{raw}");
    assert!(
        raw.contains("&quot;id&quot;:&quot;&lt;script&gt;alert(\\&quot;id\\&quot;)"),
        "{raw}"
    );

    // Open console, still CSRF on every action.
    let delivery = deliveries(&api, None, "failed").await[0]["id"]
        .as_i64()
        .unwrap();
    let p = b
        .post(&format!("/ui/deliveries/{delivery}/replay"), &[])
        .await;
    assert_eq!(p.status, 403);
    assert_eq!(deliveries(&api, None, "failed").await.len(), 1);
    let csrf = page.csrf();
    let p = b
        .post(
            &format!("/ui/deliveries/{delivery}/replay"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(p.status, 303);
    // Unknown pages and tasks are pages too.
    assert_eq!(b.get("/ui/nope").await.status, 404);
    assert_eq!(b.get("/ui/tasks/never-enqueued").await.status, 404);
    assert_eq!(
        b.get("/ui/login").await.status,
        303,
        "no login without a token"
    );
}

/// `id` percent-encoded as one path segment (or query value).
fn encode_segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Reads a server-sent event stream until `want` has arrived, at most
/// `timeout`; returns what was read.
async fn read_events(b: &Browser, path: &str, want: &str, timeout: Duration) -> String {
    let mut r = b
        .http
        .get(format!("{}{path}", b.base))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut got = String::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !got.contains(want) {
        match tokio::time::timeout_at(deadline, r.chunk()).await {
            Ok(Ok(Some(c))) => got.push_str(&String::from_utf8_lossy(&c)),
            other => panic!("no {want:?} in the stream ({other:?}); got {got}"),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_carry_the_overview_and_a_task() {
    let sim = spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = console_config(dir.path(), &sim.url, Some(API_TOKEN), "");
    let daemon = spawn_daemon(&cfg);
    let b = Browser::new(&daemon.url);
    sim_create(&sim.url, vec![json!({"id": "sse-1", "outcome": "never"})]).await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/tasks", daemon.url))
        .bearer_auth(API_TOKEN)
        .json(&json!({"id": "sse-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let got = read_events(&b, "/ui/events", "\n\n", Duration::from_secs(10)).await;
    assert!(got.contains("event: overview"), "{got}");
    let data = got
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a data line");
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["stats"]["watching"], json!("1"), "{v}");
    assert!(
        got.contains("retry: "),
        "the browser is told how soon to reconnect"
    );
    // The numbers change: another event follows without a reload.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/tasks", daemon.url))
        .bearer_auth(API_TOKEN)
        .json(&json!({"id": "sse-2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let got = read_events(
        &b,
        "/ui/events",
        "\"watching\":\"2\"",
        Duration::from_secs(10),
    )
    .await;
    assert!(got.contains("event: overview"));

    let got = read_events(&b, "/ui/events?task=sse-1", "\n\n", Duration::from_secs(10)).await;
    assert!(got.contains("event: task"), "{got}");
    assert!(got.contains("\"status\":\"watching\""), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_event_stream_does_not_hold_a_stopping_daemon() {
    let sim = spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    // The harness's shutdown grace is 5 s; a stream lasts 4 s at most.
    let cfg = console_config(dir.path(), &sim.url, Some(API_TOKEN), "");
    let log = dir.path().join("daemon.log");
    let (mut child, api) = spawn_daemon_logging(&cfg, "info", &log);
    let b = Browser::new(&api);
    let mut stream = b
        .http
        .get(format!("{api}/ui/events"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
        .await
        .expect("a first event")
        .unwrap()
        .expect("a first event");
    assert!(String::from_utf8_lossy(&first).contains("event: overview"));
    send_signal(child.id(), "TERM");
    let status = tokio::task::spawn_blocking(move || {
        let status = wait_child(&mut child, Duration::from_secs(30));
        drop(child);
        status
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("grace period over"),
        "the open stream held the daemon past its grace: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_replay_confirms_the_count_and_takes_only_the_filter() {
    let sim = spawn_sim(&[]);
    let a = Receiver::start(Some(SECRET_A)).await;
    let bb = Receiver::start(Some(SECRET_B)).await;
    a.behaviour.lock().unwrap().status = Some(500);
    bb.behaviour.lock().unwrap().status = Some(500);
    let dir = tempfile::tempdir().unwrap();
    let hooks = format!(
        "{}{}",
        webhook_toml("alpha", &a.url, Some(SECRET_A)),
        webhook_toml("beta", &bb.url, Some(SECRET_B))
    );
    let cfg = console_config(dir.path(), &sim.url, Some(API_TOKEN), &hooks);
    let daemon = spawn_daemon(&cfg);
    let api = daemon.url.clone();
    let ids: Vec<String> = (1..=3).map(|i| format!("bulk-{i}")).collect();
    sim_create_ids(&sim.url, &ids, 0).await;
    let r = reqwest::Client::new()
        .post(format!("{api}/v1/tasks"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"tasks": ids.iter().map(|id| json!({"id": id})).collect::<Vec<_>>()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    settled_with_dead_letters(&api, Some(API_TOKEN), 6).await;
    a.behaviour.lock().unwrap().status = None;

    let b = Browser::new(&api);
    b.login(API_TOKEN).await;
    let list = b.get("/ui/dead-letters?webhook=alpha").await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(list.body.contains("3 match"), "{}", list.body);
    let confirm = b
        .get("/ui/dead-letters/replay?webhook=alpha&event_type=task.succeeded")
        .await;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    assert!(
        confirm.body.contains("data-count=\"3\""),
        "{}",
        confirm.body
    );
    assert!(confirm.body.contains("Replay 3 deliveries"));
    assert_eq!(
        stats(&api, Some(API_TOKEN)).await["dead_letters"],
        json!(6),
        "showing the confirmation replays nothing"
    );
    let pin = {
        let at = confirm.body.find("name=\"until_ms\" value=\"").unwrap() + 23;
        confirm.body[at..at + confirm.body[at..].find('"').unwrap()].to_string()
    };
    let csrf = confirm.csrf();
    let p = b
        .post(
            "/ui/dead-letters/replay",
            &[
                ("csrf", &csrf),
                ("state", "failed"),
                ("webhook", "alpha"),
                ("event_type", "task.succeeded"),
                ("until_ms", &pin),
            ],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert!(
        p.header("location").ends_with("replayed=3"),
        "{}",
        p.header("location")
    );
    eventually(
        "alpha's three delivered",
        Duration::from_secs(30),
        || async {
            let st = stats(&api, Some(API_TOKEN)).await;
            (st["dead_letters"] == json!(3) && st["deliveries"]["pending"] == json!(0))
                .then_some(())
        },
    )
    .await;
    let left = deliveries(&api, Some(API_TOKEN), "failed").await;
    assert!(
        left.iter().all(|d| d["webhook"] == json!("beta")),
        "{left:?}"
    );
    assert_eq!(a.accepted_by_task().len(), 3);
    let empty = b.get("/ui/dead-letters/replay?webhook=alpha").await;
    assert!(empty.body.contains("data-count=\"0\""), "{}", empty.body);
    assert!(!empty.body.contains("confirm-replay"), "nothing to confirm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_searched_filtered_and_paged() {
    let sim = spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = console_config(dir.path(), &sim.url, None, "");
    let daemon = spawn_daemon(&cfg);
    let api = daemon.url.clone();
    let ids: Vec<String> = (0..55).map(|i| format!("page-{i:02}")).collect();
    sim_create(
        &sim.url,
        ids.iter()
            .map(|id| json!({"id": id, "outcome": "never"}))
            .collect(),
    )
    .await;
    enqueue_ids(&api, &ids).await;
    enqueue_ids(&api, &["other-1".to_string()]).await;
    let b = Browser::new(&api);

    let rows = |p: &Page| p.body.matches("<a class=\"id\" href=\"/ui/tasks/").count();
    let first = b.get("/ui/tasks?q=page-").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(rows(&first), 50);
    let next = {
        let at = first
            .body
            .find("rel=\"next\" href=\"")
            .expect("a next page")
            + 17;
        first.body[at..at + first.body[at..].find('"').unwrap()].replace("&amp;", "&")
    };
    assert!(
        next.contains("q=page-") && next.contains("after_id="),
        "{next}"
    );
    let second = b.get(&next).await;
    assert_eq!(rows(&second), 5, "{}", second.body);
    assert!(!second.body.contains("rel=\"next\""));
    assert!(second.body.contains("First page"));

    let other = b.get("/ui/tasks?q=other").await;
    assert_eq!(rows(&other), 1);
    let watching = b.get("/ui/tasks?status=watching&service=producer").await;
    assert_eq!(rows(&watching), 50);
    let none = b.get("/ui/tasks?status=done").await;
    assert!(none.body.contains("No task matches."));
    assert_eq!(b.get("/ui/tasks?status=bogus").await.status, 400);
    let one = b.get("/ui/tasks/page-07").await;
    assert!(one.body.contains("<title>Task page-07 · taskhook</title>"));
    assert!(one.body.contains("data-status=\"watching\""));
}

/// What the browser test needs, or why it cannot run: node, the
/// playwright-core package (`npm ci --prefix tests/browser`) and Chromium.
fn browser_prerequisites() -> Result<(PathBuf, String), String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Err(format!(
            "no Chromium at {chromium} (apt-get install chromium, or set CHROMIUM)"
        ));
    }
    if !root
        .join("tests/browser/node_modules/playwright-core/package.json")
        .exists()
    {
        return Err(
            "tests/browser/node_modules is missing (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/browser)"
                .into(),
        );
    }
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Err("node is not installed".into());
    }
    Ok((root, chromium))
}

/// The console in headless Chromium: log in, the overview against
/// `/v1/stats`, a task's attempts, a replayed dead letter turning
/// delivered live, a filtered bulk replay behind its count, a narrow
/// screen, logout. With `TASKHOOK_SCREENSHOTS=1` it also writes the
/// README's screenshots to `docs/`. Under `CI=true` a missing browser or
/// package fails the test; elsewhere it is skipped, loudly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_walkthrough() {
    let (root, chromium) = match browser_prerequisites() {
        Ok(found) => found,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("the browser test cannot run in CI: {why}")
        }
        Err(why) => {
            eprintln!(
                "\n*** SKIPPED console::browser_walkthrough: {why}. .ci/run installs it; CI fails without it. ***\n"
            );
            return;
        }
    };
    let sim = spawn_sim(&[]);
    let hook = Receiver::start(Some(SECRET_A)).await;
    // The receiver is down: every delivery ends as a dead letter.
    hook.behaviour.lock().unwrap().status = Some(503);
    let dir = tempfile::tempdir().unwrap();
    let cfg = console_config(
        dir.path(),
        &sim.url,
        Some(API_TOKEN),
        &webhook_toml("orders-service", &hook.url, Some(SECRET_A)),
    );
    // A neutral host name: the screenshots show the instance ID.
    let daemon = spawn(
        &["run", "-c", cfg.to_str().unwrap()],
        &[("HOSTNAME", "taskhook-1")],
    );
    let api = daemon.url.clone();
    let mut specs = vec![
        json!({"id": "song-7f3a-0001", "outcome": "succeeded", "duration_ms": 0, "items": 2}),
        json!({"id": "song-7f3a-0002", "outcome": "succeeded", "duration_ms": 0}),
        json!({"id": "song-7f3a-0003", "outcome": "succeeded", "duration_ms": 0}),
        json!({"id": "video-91c2-0001", "service": "kling", "outcome": "failed", "duration_ms": 0}),
    ];
    let finishing: Vec<Value> = specs.iter().map(|s| json!({"id": s["id"], "service": s.get("service").cloned().unwrap_or(json!("producer")), "metadata": {"job": s["id"]}})).collect();
    specs.push(json!({"id": "song-b210-0009", "outcome": "never"}));
    specs.push(json!({"id": "image-44d0-0004", "service": "midjourney", "outcome": "never"}));
    sim_create(&sim.url, specs).await;
    let mut tasks = finishing;
    tasks.push(json!({"id": "song-b210-0009"}));
    tasks.push(json!({"id": "image-44d0-0004", "service": "midjourney"}));
    let r = reqwest::Client::new()
        .post(format!("{api}/v1/tasks"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"tasks": tasks}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    eventually(
        "four dead letters, nothing pending",
        Duration::from_secs(60),
        || async {
            let st = stats(&api, Some(API_TOKEN)).await;
            (st["dead_letters"] == json!(4)
                && st["tasks"]["delivering"] == json!(0)
                && st["deliveries"]["pending"] == json!(0))
            .then_some(())
        },
    )
    .await;
    // The receiver recovers: replays will be delivered.
    hook.behaviour.lock().unwrap().status = None;

    let mut cmd = std::process::Command::new("node");
    cmd.arg(root.join("tests/browser/console.mjs"))
        .current_dir(root.join("tests/browser"))
        .env("TASKHOOK_URL", &api)
        .env("TASKHOOK_TOKEN", API_TOKEN)
        .env("TASK_ID", "song-7f3a-0001")
        .env("CHROMIUM", &chromium);
    if std::env::var("TASKHOOK_SCREENSHOTS").as_deref() == Ok("1") {
        let docs = root.join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        cmd.env("SCREENSHOT_DIR", docs);
    }
    let out =
        tokio::task::spawn_blocking(move || output_within(&mut cmd, Duration::from_secs(180)))
            .await
            .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser walkthrough failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("all steps passed"), "{stdout}");
    // Only the receiver's recovery made deliveries: the replays.
    assert!(hook.hits().iter().all(|h| h.signature_ok));
}
