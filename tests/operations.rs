//! Running it where it lives: metrics, health checks, systemd notification,
//! reload, and secrets kept out of every output.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use common::*;
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
    for histogram in [
        "taskhook_upstream_request_duration_seconds",
        "taskhook_upstream_ids_per_request",
        "taskhook_delivery_duration_seconds",
        "taskhook_enqueue_to_delivered_seconds",
        "taskhook_detection_lag_seconds",
    ] {
        assert!(
            text.contains(&format!("{histogram}_count")),
            "{histogram} in {text}"
        );
    }
    assert!(text.contains("taskhook_rate_limiter_wait_seconds_total"));
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(!line.contains("m1"), "no task IDs in labels: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_subcommand_exits_by_readiness() {
    let sim = spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    let daemon = spawn_daemon(&daemon_config(dir.path(), &sim.url, ""));
    let api = daemon.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["health", "--api", &api])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = Command::new(BIN)
        .args(["health", "--api", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_errors_or_metrics() {
    let sim = spawn_sim(&["--token", "upstream-SECRET-1"]);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "upstream-SECRET-1\n").unwrap();
    let extra = format!(
        "[[webhooks]]\nname = \"x\"\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"{SECRET_B}\"\n"
    );
    let cfg = daemon_config(dir.path(), &sim.url, &extra);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "token = \"test-token\"",
            &format!("token_file = \"{}\"", token_file.display()),
        )
        .replace("[api]\n", "[api]\ntoken = \"api-SECRET-2\"\n");
    std::fs::write(&cfg, text).unwrap();
    let log = dir.path().join("daemon.log");
    let (mut child, api) = spawn_daemon_logging(&cfg, "debug", &log);
    sim_create(&sim.url, vec![json!({"id": "s1", "duration_ms": 50})]).await;
    let r = reqwest::Client::new()
        .post(format!("{api}/v1/tasks"))
        .bearer_auth("api-SECRET-2")
        .json(&json!({"id": "s1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let wrong = reqwest::Client::new()
        .get(format!("{api}/v1/stats"))
        .bearer_auth("not-it")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The delivery to the dead receiver fails and retries: error paths run.
    eventually(
        "a failed delivery attempt",
        Duration::from_secs(20),
        || async {
            let r = reqwest::Client::new()
                .get(format!("{api}/v1/deliveries"))
                .bearer_auth("api-SECRET-2")
                .send()
                .await
                .unwrap();
            let v: serde_json::Value = r.json().await.unwrap();
            (v["deliveries"][0]["attempts"].as_u64() >= Some(2)).then_some(())
        },
    )
    .await;
    let metrics = reqwest::get(format!("{api}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let check = Command::new(BIN)
        .args(["check-config", "-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("\"level\":\"DEBUG\""),
        "json debug logs were written"
    );
    for (what, text) in [
        ("logs", logs.as_str()),
        ("metrics", metrics.as_str()),
        ("check-config", &String::from_utf8_lossy(&check.stdout)),
        ("401 answer", wrong.as_str()),
    ] {
        for secret in [
            "upstream-SECRET-1",
            "api-SECRET-2",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ] {
            assert!(!text.contains(secret), "{secret} leaked into {what}");
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
    let hup = |pid: u32| {
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
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
    post_json(
        &format!("{api}/v1/tasks"),
        &json!({"tasks": [{"id": "before-0"}, {"id": "before-1"}, {"id": "before-2"}]}),
    )
    .await;
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
    post_json(&format!("{api}/v1/tasks"), &json!({"id": "after-0"})).await;
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

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
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
