//! The command line: config checking, the client subcommands and the demo.

use std::process::Command;
use std::time::Duration;

use crate::common::*;
use serde_json::json;

#[test]
fn check_config_names_the_bad_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    for (text, key) in [
        (
            "[upstream]\nbatch_size = 501\n",
            "upstream.batch_size must be 1..=500",
        ),
        (
            "[poll]\ninterval = \"soon\"\n",
            "poll.interval: invalid duration \"soon\"",
        ),
        ("[upstream]\nbatchsize = 5\n", "batchsize"),
        (
            "[upstream.services.kling]\nsettle_without_finished_at = \"maybe\"\n",
            "upstream.services.kling.settle_without_finished_at must be",
        ),
        (
            "[upstream.services.kling]\nsucess_words = [\"ok\"]\n",
            "sucess_words",
        ),
        (
            "[upstream]\ndefault_service = \"nonesuch\"\n",
            "upstream.default_service: \"nonesuch\" is not a known service",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let out = taskhook(&["check-config", "-c", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&key.replace(" must be", ": must be")),
            "{text}: {err}"
        );
    }
    let out = taskhook(&["run", "-c", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "run refuses a bad config too");
}

#[test]
fn check_config_prints_the_effective_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "file-SECRET-token\n").unwrap();
    std::fs::write(
        &path,
        format!(
            "[upstream]\ntoken_file = \"{}\"\n[api]\ntoken = \"api-SECRET\"\n[[webhooks]]\nname = \"p\"\nurl = \"http://p.example/h\"\nsecret = \"{SECRET_A}\"\n",
            token_file.display()
        ),
    )
    .unwrap();
    let out = output_within(
        Command::new(BIN)
            .args(["check-config", "-c", path.to_str().unwrap()])
            .env("TASKHOOK__UPSTREAM__BATCH_SIZE", "120"),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(text.contains("batch_size = 120"), "{text}");
    assert!(text.contains("[redacted]"));
    for secret in ["SECRET", "C2FVsBQ"] {
        assert!(!text.contains(secret), "{text}");
        assert!(!err.contains(secret), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_and_status_talk_to_the_daemon() {
    let sim = spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    let daemon = spawn_daemon(&daemon_config(dir.path(), &sim.url, ""));
    sim_create(
        &sim.url,
        vec![
            json!({"id": "c1", "outcome": "never"}),
            json!({"id": "c2", "outcome": "never"}),
        ],
    )
    .await;
    let api = daemon.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        output_within_input(
            Command::new(BIN).args([
                "enqueue",
                "--api",
                &api,
                "--metadata",
                r#"{"job": 9}"#,
                "c1",
                "-",
            ]),
            Some(b"c2\n\nc1\n"),
            Duration::from_secs(30),
        )
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "accepted 2, duplicates 1"
    );
    let out = taskhook_async(&["status", "--api", &daemon.url]).await;
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("watching           2"), "{text}");
    let out = taskhook_async(&["status", "--api", &daemon.url, "--json", "c1"]).await;
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["metadata"], json!({"job": 9}));
    let out = taskhook(&["status", "--api", "http://127.0.0.1:9", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the daemon"));
}

#[test]
fn the_demo_shows_events_flowing_and_stops_on_ctrl_c() {
    let mut demo = spawn_until(&["demo"], &[], "control API");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let lines = demo.stdout_lines.lock().unwrap().clone();
        if lines.iter().any(|l| l.contains("press Ctrl-C")) {
            let text = lines.join("\n");
            assert!(
                text.contains("all 7 events delivered, every signature valid"),
                "{text}"
            );
            // One line per event, each verified by the receiver.
            let events: usize = text
                .split_once("all ")
                .and_then(|(_, rest)| rest.split_once(" events delivered"))
                .and_then(|(n, _)| n.parse().ok())
                .unwrap_or_else(|| panic!("no event count in {text}"));
            assert_eq!(
                lines.iter().filter(|l| l.ends_with("signature ok")).count(),
                events,
                "one verified line per event: {text}"
            );
            for kind in ["task.succeeded", "task.failed", "task.not_found"] {
                assert!(text.contains(kind), "{kind} in {text}");
            }
            // The console's address, and the console there (no token: no login).
            let console = format!("{}/ui", demo.url);
            assert!(
                text.contains(&format!("console             {console} ")),
                "{text}"
            );
            let page = tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async { reqwest::get(&console).await?.text().await })
                .unwrap();
            assert!(
                page.contains("<title>Overview · taskhook</title>"),
                "{page}"
            );
            // Three differently shaped services, each decided right.
            for (task, kind) in [
                ("demo-image-2", "task.succeeded"),
                ("demo-video-3", "task.succeeded"),
                ("demo-video-4", "task.failed"),
            ] {
                assert!(
                    text.lines().any(|l| l.contains(task)
                        && l.contains(kind)
                        && l.contains("signature ok")),
                    "{task} {kind} in {text}"
                );
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "demo output: {lines:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    demo.signal("INT");
    assert_eq!(demo.wait_exit(Duration::from_secs(15)), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_wait_follows_tasks_to_delivery_and_status_watch_refreshes() {
    let sim = spawn_sim(&[]);
    let a = Receiver::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("[[webhooks]]\nname = \"pipeline\"\nurl = \"{}\"\n", a.url);
    let daemon = spawn_daemon(&daemon_config(dir.path(), &sim.url, &extra));
    sim_create(
        &sim.url,
        vec![
            json!({"id": "w1", "duration_ms": 300, "items": 2}),
            json!({"id": "w2", "duration_ms": 200, "outcome": "failed"}),
        ],
    )
    .await;
    let out = taskhook_async(&["enqueue", "--api", &daemon.url, "--wait", "w1", "w2"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("w1: done: succeeded | pipeline delivered"),
        "{text}"
    );
    assert!(
        text.contains("w2: done: failed | pipeline delivered"),
        "{text}"
    );

    // --watch prints the summary again and again until stopped.
    let mut watch = std::process::Command::new(BIN)
        .args(["status", "--api", &daemon.url, "--watch", "100ms"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let blocks = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.starts_with("done"))
            .take(3)
            .count();
        let _ = tx.send(blocks);
    });
    let blocks = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap();
    watch.kill().expect("status --watch was still running");
    watch.wait().unwrap();
    assert_eq!(blocks, Ok(3), "three refreshed summaries within 30 s");
}

#[test]
fn the_bench_smoke_run_completes_and_writes_results() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("RESULTS.md");
    let run = output_within(
        Command::new(BIN).args([
            "bench",
            "--quick",
            "--tasks",
            "500",
            "--scale",
            "5000",
            "--out",
            out.to_str().unwrap(),
        ]),
        Duration::from_secs(400),
    );
    // Exit 0 means every target of the smoke run held (a missed one is
    // named on stderr and fails the run).
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(&out).unwrap();
    for scenario in [
        "| throughput |",
        "| efficiency |",
        "| lag |",
        "| scale |",
        "| isolation |",
        "| floor |",
        "| callbacks |",
        "| sweep |",
    ] {
        assert!(text.contains(scenario), "{scenario} in {text}");
    }
    // Every delivery's signature verified by the specification's library.
    for (scenario, at_least) in [
        ("throughput", 500),
        ("efficiency", 200),
        ("isolation", 3600),
        ("floor", 100),
        ("callbacks", 100),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("| {scenario} | signatures verified")))
            .unwrap_or_else(|| panic!("no signature line for {scenario} in {text}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (ok, of) = cells[3].split_once(" of ").expect("N of M");
        let (ok, of): (u64, u64) = (ok.parse().unwrap(), of.parse().unwrap());
        assert!(ok == of && ok >= at_least, "{line}");
        assert_eq!(cells[5], "yes", "{line}");
    }
    assert!(!text.contains("**no**"), "every target holds: {text}");
    // The sweep's chart, beside the results and linked from them.
    assert!(text.contains("](pacing-sweep.svg)"), "{text}");
    let svg = std::fs::read_to_string(dir.path().join("pacing-sweep.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
}

#[test]
fn check_config_prints_each_configured_service_profile() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        "[upstream]\ndefault_service = \"kling\"\n\
         [upstream.services.kling]\nsuccess_words = [\"Succeed\", \"ok\"]\n\
         [upstream.services.in-house]\ntasks_path = \"/v2/in-house/tasks\"\nitems = \"response.outputs\"\n",
    )
    .unwrap();
    let out = taskhook(&["check-config", "-c", path.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let table: toml::Table = text.parse().unwrap();
    let services = &table["upstream"]["services"];
    let kling = &services["kling"];
    assert_eq!(
        kling["success_words"],
        toml::Value::Array(vec!["succeed".into(), "ok".into()])
    );
    assert_eq!(
        kling["items"].as_str(),
        Some("response"),
        "built-in keys stay"
    );
    assert_eq!(kling["tasks_path"].as_str(), Some("/kling/tasks"));
    let own = &services["in-house"];
    assert_eq!(own["tasks_path"].as_str(), Some("/v2/in-house/tasks"));
    assert_eq!(own["items"].as_str(), Some("response.outputs"));
    assert_eq!(
        own["settle_without_finished_at"].as_str(),
        Some("result"),
        "new services start generic"
    );
    assert!(
        services.get("producer").is_none(),
        "only configured services and the default are shown"
    );
}
