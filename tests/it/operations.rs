//! Running it where it lives: metrics, health checks, systemd notification,
//! reload, and secrets kept out of every output.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_count_the_work() {
    let sim = spawn_sim(&[]);
    let a = Receiver::start(Some(SECRET_A)).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = webhook_toml("a", &a.url, Some(SECRET_A));
    let daemon = spawn_daemon(&daemon_config(dir.path(), &sim.url, &extra));
    let ids: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    sim_create_ids(&sim.url, &ids, 100).await;
    enqueue_ids(&daemon.url, &ids).await;
    eventually("deliveries", Duration::from_secs(20), || async {
        (a.accepted_by_task().len() == 20).then_some(())
    })
    .await;
    // The receiver's 2xx is recorded a moment after it answers.
    eventually("every task done", Duration::from_secs(10), || async {
        let (_, st) = get_json(&format!("{}/v1/stats", daemon.url)).await;
        (st["tasks"]["done"] == 20).then_some(())
    })
    .await;

    let resp = reqwest::get(format!("{}/metrics", daemon.url))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition");
    // A metric that is not exported fails the test (it must not read as 0).
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        let samples: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .collect();
        assert!(!samples.is_empty(), "{name} {label:?} is not exported");
        samples
            .iter()
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(h) => {
                    h.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                prometheus_parse::Value::Summary(_) => 0.0,
            })
            .sum()
    };
    assert_eq!(value("taskhook_tasks_enqueued_total", None), 20.0, "{text}");
    assert_eq!(
        value(
            "taskhook_tasks_finished_total",
            Some(("outcome", "succeeded"))
        ),
        20.0
    );
    assert_eq!(
        value("taskhook_deliveries_total", Some(("outcome", "delivered"))),
        20.0
    );
    assert!(value("taskhook_upstream_requests_total", Some(("outcome", "ok"))) >= 1.0);
    assert_eq!(value("taskhook_tasks", Some(("status", "done"))), 20.0);
    assert_eq!(value("taskhook_dead_letters", None), 0.0);
    // Each histogram counted its observations (the +Inf bucket).
    for (histogram, at_least) in [
        ("taskhook_upstream_request_duration_seconds", 1.0),
        ("taskhook_upstream_ids_per_request", 1.0),
        ("taskhook_delivery_duration_seconds", 20.0),
        ("taskhook_enqueue_to_delivered_seconds", 20.0),
        ("taskhook_detection_lag_seconds", 20.0),
    ] {
        let n = value(histogram, None);
        assert!(n >= at_least, "{histogram}: {n} observations in {text}");
    }
    assert_eq!(value("taskhook_enqueue_to_delivered_seconds", None), 20.0);
    value("taskhook_rate_limiter_wait_seconds_total", None);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(!line.contains("m1"), "no task IDs in labels: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_subcommand_exits_by_readiness_and_liveness() {
    // The upstream wants another token than the daemon has: ready until
    // the first poll is refused, alive throughout.
    let sim = spawn_sim(&["--token", "right"]);
    let dir = tempfile::tempdir().unwrap();
    let daemon = spawn_daemon(&daemon_config(dir.path(), &sim.url, ""));
    let api = daemon.url.as_str();
    for args in [
        &["health", "--api", api][..],
        &["health", "--live", "--api", api],
    ] {
        let out = taskhook_async(args).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    sim_create(&sim.url, vec![json!({"id": "h1", "outcome": "never"})]).await;
    enqueue_ids(api, &["h1".to_string()]).await;
    eventually("readyz to answer 503", Duration::from_secs(10), || async {
        let (s, _) = get_json(&format!("{api}/readyz")).await;
        (s == 503).then_some(())
    })
    .await;
    let out = taskhook_async(&["health", "--api", api]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "not ready: the token is refused"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("503") && err.contains("token"), "{err}");
    let out = taskhook_async(&["health", "--live", "--api", api]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "still alive: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nothing listens: neither ready nor alive.
    for args in [
        &["health", "--api", "http://127.0.0.1:9"][..],
        &["health", "--live", "--api", "http://127.0.0.1:9"],
    ] {
        let out = taskhook_async(args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_and_the_watchdog() {
    let sim = spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let cfg = daemon_config(dir.path(), &sim.url, "");
    // systemd names the watched process in WATCHDOG_PID: the shell's own
    // PID, which `exec` hands on to taskhook.
    let _daemon = spawn_program(
        "sh",
        &[
            "-c",
            "WATCHDOG_PID=$$ exec \"$0\" run -c \"$1\"",
            BIN,
            cfg.to_str().unwrap(),
        ],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
        "listening on ",
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !(seen.iter().any(|m: &String| m.contains("READY=1"))
        && seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2)
    {
        let n = sock.recv(&mut buf).expect("a notification within 20 s");
        seen.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    assert!(seen[0].contains("READY=1"), "READY comes first: {seen:?}");
}

/// Distinctive secrets planted in every place a secret can come from; none
/// may appear in any output.
const UPSTREAM_TOKEN: &str = "upstream-PLANTED-u7731";
const API_TOKEN: &str = "api-PLANTED-a4410";
/// A webhook's `secret_env` secret (base64 of "hookPLANTEDsecret5521xyz").
const HOOK_SECRET: &str = "whsec_aG9va1BMQU5URURzZWNyZXQ1NTIxeHl6";
/// `delivery.secret` (base64 of "deliveryPLANTEDsecret889").
const DELIVERY_SECRET: &str = "whsec_ZGVsaXZlcnlQTEFOVEVEc2VjcmV0ODg5";
const PLANTED: [&str; 9] = [
    UPSTREAM_TOKEN,
    API_TOKEN,
    "aG9va1BMQU5URURzZWNyZXQ1NTIxeHl6",
    "ZGVsaXZlcnlQTEFOVEVEc2VjcmV0ODg5",
    "userinfo-PLANTED-3307",
    "query-PLANTED-6612",
    "header-PLANTED-9034",
    "cfgquery-PLANTED-1187",
    // A fragment of every one of them: no output may carry even a part.
    "PLANTED",
];

/// Runs the daemon with secrets from the environment, in per-task webhook
/// URLs and in a configured webhook's headers and URL, logging at debug in
/// `format`; drives every path that could print them (deliveries that
/// succeed, fail and dead-letter, a refused API token, check-config) and
/// returns each output by name.
async fn outputs_with_planted_secrets(format: &str) -> Vec<(String, String)> {
    let sim = spawn_sim(&["--token", UPSTREAM_TOKEN]);
    let live = Receiver::start(Some(DELIVERY_SECRET)).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[[webhooks]]\nname = \"configured\"\n\
         url = \"http://127.0.0.1:9/hook?key=cfgquery-PLANTED-1187&mode=x\"\n\
         secret_env = \"TASKHOOK_TEST_HOOK_SECRET\"\n\
         headers = { \"authorization\" = \"Bearer header-PLANTED-9034\" }\n";
    let cfg = daemon_config(dir.path(), &sim.url, extra);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("token = \"test-token\"\n", "")
        .replace(
            "[delivery]\n",
            "[delivery]\nallow_private_networks = true\n",
        );
    std::fs::write(&cfg, text).unwrap();
    let envs = [
        ("TASKHOOK__UPSTREAM__TOKEN", UPSTREAM_TOKEN),
        ("TASKHOOK__API__TOKEN", API_TOKEN),
        ("TASKHOOK__DELIVERY__SECRET", DELIVERY_SECRET),
        ("TASKHOOK_TEST_HOOK_SECRET", HOOK_SECRET),
    ];
    let log = dir.path().join("daemon.log");
    let (mut child, api) = spawn_daemon_logging_with(&cfg, "debug", &log, format, &envs);
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let req = http.get(format!("{api}{path}")).bearer_auth(API_TOKEN);
        let path = path.to_string();
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            r.text().await.unwrap()
        }
    };

    sim_create(&sim.url, vec![json!({"id": "s1", "duration_ms": 50})]).await;
    let live_url = live
        .url
        .replacen("http://", "http://user:userinfo-PLANTED-3307@", 1)
        + "?token=query-PLANTED-6612";
    let dead_url = "http://user:userinfo-PLANTED-3307@127.0.0.1:9/hook?token=query-PLANTED-6612";
    let r = http
        .post(format!("{api}/v1/tasks"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"id": "s1", "webhooks": [live_url, dead_url]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        202,
        "the API token from the environment is in force"
    );
    let wrong = http
        .get(format!("{api}/v1/stats"))
        .bearer_auth("not-it")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let wrong = wrong.text().await.unwrap();

    // The per-task URL is delivered to, signed with delivery.secret; the
    // other two fail until they are dead letters: error paths run.
    eventually("the per-task delivery", Duration::from_secs(20), || async {
        live.accepted_by_task().contains_key("s1").then_some(())
    })
    .await;
    let hit = &live.accepted_by_task()["s1"][0];
    assert!(
        hit.signature_ok,
        "signed with delivery.secret from the environment"
    );
    assert!(
        hit.headers["authorization"].starts_with("Basic "),
        "the userinfo was used: {:?}",
        hit.headers
    );
    let failed = eventually("two dead letters", Duration::from_secs(20), || async {
        let v: serde_json::Value =
            serde_json::from_str(&get("/v1/deliveries?state=failed").await).unwrap();
        let list = v["deliveries"].as_array().cloned().unwrap_or_default();
        (list.len() == 2).then_some(list)
    })
    .await;
    assert!(failed.iter().all(|d| d["attempts"] == 4), "{failed:?}");

    let mut outputs = vec![("401 answer".to_string(), wrong)];
    for path in [
        "/v1/stats",
        "/v1/deliveries",
        "/v1/deliveries?state=failed",
        "/v1/tasks/s1",
        "/metrics",
    ] {
        outputs.push((path.to_string(), get(path).await));
    }
    let task: serde_json::Value =
        serde_json::from_str(&outputs.iter().find(|o| o.0 == "/v1/tasks/s1").unwrap().1).unwrap();
    assert_eq!(
        task["deliveries"].as_array().map(Vec::len),
        Some(3),
        "{task}"
    );
    assert!(
        task["webhooks"].to_string().contains("127.0.0.1:9/hook"),
        "the URL is shown, redacted: {task}"
    );

    let mut check = Command::new(BIN);
    check.args(["check-config", "-c", cfg.to_str().unwrap()]);
    for (k, v) in envs {
        check.env(k, v);
    }
    let check = output_within(&mut check, Duration::from_secs(30));
    let (out, err) = (
        String::from_utf8_lossy(&check.stdout).to_string(),
        String::from_utf8_lossy(&check.stderr).to_string(),
    );
    assert_eq!(check.status.code(), Some(0), "check-config: {err}");
    assert!(
        out.contains("[redacted]") && out.contains("127.0.0.1:9/hook"),
        "{out}"
    );
    outputs.push(("check-config stdout".into(), out));
    outputs.push(("check-config stderr".into(), err));

    send_signal(child.id(), "TERM");
    assert_eq!(
        wait_child(&mut child, Duration::from_secs(15)).code(),
        Some(0)
    );
    let logs = std::fs::read_to_string(&log).unwrap();
    let debug_marker = if format == "json" {
        "\"level\":\"DEBUG\""
    } else {
        " DEBUG "
    };
    assert!(
        logs.contains(debug_marker),
        "{format} debug logs were written"
    );
    assert!(
        logs.contains("dead-letter") || logs.contains("dead letter"),
        "the failures were logged: {logs}"
    );
    outputs.push((format!("{format} logs"), logs));
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_errors_api_or_metrics() {
    for format in ["json", "text"] {
        for (what, text) in outputs_with_planted_secrets(format).await {
            for secret in PLANTED {
                assert!(
                    !text.contains(secret),
                    "{secret} leaked into {what}:\n{}",
                    text.lines()
                        .filter(|l| l.contains(secret))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_webhooks_and_refuses_a_bad_file() {
    let sim = spawn_sim(&[]);
    let a = Receiver::start(Some(SECRET_A)).await;
    let b = Receiver::start(Some(SECRET_B)).await;
    let dir = tempfile::tempdir().unwrap();
    let hook = |name: &str, r: &Receiver, secret: &str| {
        format!(
            "[[webhooks]]\nname = \"{name}\"\nurl = \"{}\"\nsecret = \"{secret}\"\n",
            r.url
        )
    };
    let cfg = daemon_config(dir.path(), &sim.url, &hook("a", &a, SECRET_A));
    let original = std::fs::read_to_string(&cfg).unwrap();
    let log = dir.path().join("daemon.log");
    let (mut child, api) = spawn_daemon_logging(&cfg, "info", &log);
    let hup = |pid: u32| send_signal(pid, "HUP");
    let log_has = |needle: &'static str| {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(needle)
                .then_some(())
        }
    };

    sim_create(
        &sim.url,
        (0..3)
            .map(|i| json!({"id": format!("before-{i}"), "duration_ms": 50}))
            .collect(),
    )
    .await;
    let (s, v) = post_json(
        &format!("{api}/v1/tasks"),
        &json!({"tasks": [{"id": "before-0"}, {"id": "before-1"}, {"id": "before-2"}]}),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    eventually("the first events at A", Duration::from_secs(15), || async {
        (a.accepted_by_task().len() == 3).then_some(())
    })
    .await;

    // A broken file is refused; the daemon keeps the running configuration.
    std::fs::write(&cfg, original.replace("batch_size = 50", "batch_size = 0")).unwrap();
    hup(child.id());
    eventually("the refusal in the log", Duration::from_secs(10), || {
        log_has("configuration reload refused")
    })
    .await;
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("upstream.batch_size"),
        "the reason names the key"
    );

    // A second webhook is added: new events go to both, old ones are not re-sent.
    std::fs::write(&cfg, format!("{original}{}", hook("b", &b, SECRET_B))).unwrap();
    hup(child.id());
    eventually("the reload in the log", Duration::from_secs(10), || {
        log_has("configuration reloaded")
    })
    .await;
    sim_create(&sim.url, vec![json!({"id": "after-0", "duration_ms": 50})]).await;
    let (s, v) = post_json(&format!("{api}/v1/tasks"), &json!({"id": "after-0"})).await;
    assert_eq!(s, 202, "{v}");
    eventually("the new event at both", Duration::from_secs(15), || async {
        (a.accepted_by_task().contains_key("after-0")
            && b.accepted_by_task().contains_key("after-0"))
        .then_some(())
    })
    .await;
    assert_eq!(a.hits().len(), 4, "nothing re-delivered to A");
    assert_eq!(
        b.hits().len(),
        1,
        "B gets only what finished after it was added"
    );
    assert!(b.hits()[0].signature_ok);

    send_signal(child.id(), "TERM");
    assert!(wait_child(&mut child, Duration::from_secs(15)).success());
    // Logs carry the task, the webhook and the attempt as fields.
    let delivered: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["message"] == "delivered")
        .collect();
    assert_eq!(delivered.len(), 5);
    assert!(
        delivered
            .iter()
            // The attempt's span carries them (`span` in a JSON line).
            .all(|v| {
                let s = &v["span"];
                s["task_id"].is_string() && s["webhook"].is_string() && s["attempt"] == 1
            }),
        "{delivered:?}"
    );
}

/// `method url` with an optional bearer token and JSON body.
async fn call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// The failed (dead-lettered) delivery of `task`, once there is one.
async fn dead_letter_of(api: &str, token: &str, task: &str) -> serde_json::Value {
    let url = format!("{api}/v1/deliveries?state=failed");
    eventually(
        &format!("the dead letter of {task}"),
        Duration::from_secs(20),
        || async {
            let (_, v) = call(reqwest::Method::GET, &url, Some(token), None).await;
            v["deliveries"]
                .as_array()
                .and_then(|l| l.iter().find(|d| d["task_id"] == task).cloned())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_retry_poll_batch_and_api_token_and_keeps_start_only_keys() {
    use reqwest::Method as M;
    let sim = spawn_sim(&[]);
    let down = Receiver::start(None).await;
    down.behaviour.lock().unwrap().status = Some(500);
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(dir.path(), &sim.url, &webhook_toml("down", &down.url, None));
    let original = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("batch_size = 50", "batch_size = 5")
        .replace(
            r#"retry_schedule = ["100ms", "200ms", "300ms"]"#,
            r#"retry_schedule = ["50ms", "50ms"]"#,
        )
        .replace("[api]\n", "[api]\ntoken = \"old-api-token\"\n");
    std::fs::write(&cfg, &original).unwrap();
    let log = dir.path().join("daemon.log");
    let (mut child, api) = spawn_daemon_logging(&cfg, "info", &log);
    let log_has = |needle: &'static str| {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_string)
        }
    };

    // Forty tasks that never finish keep the poller busy; one finishes.
    let never: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
    let mut specs: Vec<_> = never
        .iter()
        .map(|id| json!({"id": id, "outcome": "never"}))
        .collect();
    specs.push(json!({"id": "before", "duration_ms": 50}));
    sim_create(&sim.url, specs).await;
    let mut tasks: Vec<_> = never.iter().map(|id| json!({"id": id})).collect();
    tasks.push(json!({"id": "before"}));
    let (s, v) = call(
        M::POST,
        &format!("{api}/v1/tasks"),
        Some("old-api-token"),
        Some(json!({ "tasks": tasks })),
    )
    .await;
    assert_eq!(s, 202, "{v}");

    // Before: two retries, then a dead letter; batches of at most 5.
    let d = dead_letter_of(&api, "old-api-token", "before").await;
    assert_eq!(d["attempts"], 3, "{d}");
    let stats = eventually("several batches", Duration::from_secs(10), || async {
        let (_, st) = get_json(&format!("{}/_sim/stats", sim.url)).await;
        (st["batch_requests"].as_u64() >= Some(16)).then_some(st)
    })
    .await;
    assert_eq!(stats["max_ids_per_request"], 5, "{stats}");

    // The reload: retry schedule, batch size, API token, poll TTL, and two
    // keys fixed at start (the listen address and the store path).
    let other_store = dir.path().join("other.db");
    let reloaded = original
        .replace("batch_size = 5", "batch_size = 20")
        .replace(
            r#"retry_schedule = ["50ms", "50ms"]"#,
            r#"retry_schedule = ["50ms", "50ms", "50ms", "50ms"]"#,
        )
        .replace("old-api-token", "new-api-token")
        .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"")
        .replace(
            &dir.path().join("taskhook.db").display().to_string(),
            &other_store.display().to_string(),
        );
    assert_ne!(reloaded, original);
    std::fs::write(&cfg, &reloaded).unwrap();
    send_signal(child.id(), "HUP");
    eventually("the reload in the log", Duration::from_secs(10), || {
        log_has("configuration reloaded")
    })
    .await;

    // Start-only keys: named in the "restart needed" line, old values kept.
    let line = eventually("the restart-needed line", Duration::from_secs(10), || {
        log_has("only with a restart")
    })
    .await;
    let keys: serde_json::Value = serde_json::from_str(&line).unwrap();
    let keys = keys["keys"].as_str().unwrap_or_default();
    assert!(
        keys.contains("api.listen") && keys.contains("store.path"),
        "{line}"
    );
    assert!(!other_store.exists(), "the store was not switched");

    // The new API token is required at once; the API still listens where it did.
    let stats_url = format!("{api}/v1/stats");
    let (s, _) = call(M::GET, &stats_url, Some("old-api-token"), None).await;
    assert_eq!(s, 401, "the old API token is refused");
    let (s, st) = call(M::GET, &stats_url, Some("new-api-token"), None).await;
    assert_eq!(s, 200, "{st}");
    assert_eq!(st["tasks"]["watching"], 40, "the same store: {st}");

    // The new batch size is used.
    let (s, _) = post_json(&format!("{}/_sim/reset", sim.url), &json!({})).await;
    assert_eq!(s, 200);
    let stats = eventually("a batch above 5 IDs", Duration::from_secs(10), || async {
        let (_, st) = get_json(&format!("{}/_sim/stats", sim.url)).await;
        (st["max_ids_per_request"].as_u64() > Some(5)).then_some(st)
    })
    .await;
    assert!(stats["max_ids_per_request"].as_u64() <= Some(20), "{stats}");

    // The new retry schedule: four retries before the dead letter.
    sim_create(&sim.url, vec![json!({"id": "after", "duration_ms": 50})]).await;
    let (s, v) = call(
        M::POST,
        &format!("{api}/v1/tasks"),
        Some("new-api-token"),
        Some(json!({"id": "after"})),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let d = dead_letter_of(&api, "new-api-token", "after").await;
    assert_eq!(d["attempts"], 5, "{d}");

    // A poll setting: a TTL shorter than the tasks' age expires them all.
    std::fs::write(
        &cfg,
        reloaded.replace("missing_grace = 3", "missing_grace = 3\ntask_ttl = \"1s\""),
    )
    .unwrap();
    send_signal(child.id(), "HUP");
    eventually(
        "every watched task expired",
        Duration::from_secs(20),
        || async {
            let (_, st) = call(M::GET, &stats_url, Some("new-api-token"), None).await;
            (st["tasks"]["watching"] == 0).then_some(())
        },
    )
    .await;
    let (_, t) = call(
        M::GET,
        &format!("{api}/v1/tasks/w0"),
        Some("new-api-token"),
        None,
    )
    .await;
    assert_eq!(t["outcome"], "expired", "{t}");

    send_signal(child.id(), "TERM");
    assert!(wait_child(&mut child, Duration::from_secs(15)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_delivery_finish() {
    let sim = spawn_sim(&[]);
    let slow = Receiver::start(Some(SECRET_A)).await;
    slow.behaviour.lock().unwrap().delay = Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = daemon_config(
        dir.path(),
        &sim.url,
        &webhook_toml("slow", &slow.url, Some(SECRET_A)),
    );
    let mut daemon = spawn_daemon(&cfg);
    sim_create(&sim.url, vec![json!({"id": "t1", "duration_ms": 50})]).await;
    enqueue_ids(&daemon.url, &["t1".to_string()]).await;
    eventually(
        "the delivery in flight",
        Duration::from_secs(15),
        || async {
            (slow.max_in_flight.load(std::sync::atomic::Ordering::SeqCst) >= 1).then_some(())
        },
    )
    .await;
    assert!(slow.hits().is_empty(), "still in flight when SIGTERM comes");
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(15)), Some(0));
    // The daemon waited for the answer before it exited.
    let hits = slow.hits();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].status_sent, 200);

    // The answer was recorded: after a restart nothing is sent again.
    let daemon = spawn_daemon(&cfg);
    let (s, t) = get_json(&format!("{}/v1/tasks/t1", daemon.url)).await;
    assert_eq!(s, 200);
    assert_eq!(t["status"], "done", "{t}");
    assert_eq!(t["deliveries"][0]["state"], "delivered", "{t}");
    assert_eq!(t["deliveries"][0]["attempts"], 1, "{t}");
    let (_, st) = get_json(&format!("{}/v1/stats", daemon.url)).await;
    assert_eq!(st["deliveries"]["pending"], 0, "{st}");
    assert_eq!(slow.hits().len(), 1);
}
