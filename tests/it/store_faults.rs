//! The disk under the store fills up, or the store stops taking writes:
//! enqueue answers 503, readiness fails, nothing stored is lost, and the
//! daemon recovers on its own when the disk does. A read-only store is
//! refused at start with a clear error. Needs root (a small tmpfs is
//! mounted; files are made immutable with chattr), so a plain `cargo test`
//! lists these tests as ignored; `.ci/run` runs them as root with
//! `cargo test --test it store_faults:: -- --include-ignored`. Run that way,
//! a `mount` or `chattr` that cannot run fails the test with the reason.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use serde_json::json;

/// Runs a system tool the test cannot do without; a tool that is missing
/// or fails fails the test, naming it and saying why.
fn run_tool(cmd: &mut Command) {
    let out = output_within(cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {} (these tests need root; see the module doc)",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn new(dir: &Path, size: &str) -> Mount {
        let at = dir.join("disk");
        std::fs::create_dir_all(&at).unwrap();
        run_tool(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&at),
        );
        Mount(at)
    }
    fn remount(&self, mode: &str) {
        run_tool(
            Command::new("mount")
                .args(["-o", &format!("remount,{mode}")])
                .arg(&self.0),
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let out = output_within(
            Command::new("umount").arg("-l").arg(&self.0),
            Duration::from_secs(30),
        );
        if !out.status.success() {
            eprintln!(
                "warning: cannot unmount {}: {}",
                self.0.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
}

fn config_on(dir: &Path, disk: &Path, sim: &str) -> PathBuf {
    let cfg = daemon_config(dir, sim, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &dir.join("taskhook.db").display().to_string(),
        &disk.join("taskhook.db").display().to_string(),
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

async fn enqueue(api: &str, prefix: &str, n: usize) -> (u16, serde_json::Value) {
    let body = json!({"tasks": (0..n).map(|i| json!({"id": format!("{prefix}-{i}"), "metadata": {"pad": "x".repeat(200)}})).collect::<Vec<_>>()});
    post_json(&format!("{api}/v1/tasks"), &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: mounts a small tmpfs / chattr"]
async fn a_full_disk_refuses_new_work_keeps_the_old_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Mount::new(dir.path(), "3m");
    let sim = spawn_sim(&[]);
    let daemon = spawn_daemon(&config_on(dir.path(), &disk.0, &sim.url));
    let (s, _) = enqueue(&daemon.url, "kept", 20).await;
    assert_eq!(s, 202);

    // Fill the disk to the last byte.
    let filler = disk.0.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let (s, v) = eventually("enqueue to be refused", Duration::from_secs(10), || async {
        let (s, v) = enqueue(&daemon.url, "more", 500).await;
        (s != 202).then_some((s, v))
    })
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("store_unavailable")),
        "{v}"
    );
    let (s, v) = get_json(&format!("{}/readyz", daemon.url)).await;
    assert_eq!(s, 503, "{v}");
    assert!(
        v["problems"][0].as_str().unwrap().starts_with("store"),
        "{v}"
    );
    let (s, st) = get_json(&format!("{}/v1/stats", daemon.url)).await;
    assert_eq!(
        (s, st["tasks"]["watching"].as_u64()),
        (200, Some(20)),
        "what was stored stays: {st}"
    );

    std::fs::remove_file(&filler).unwrap();
    eventually("recovery", Duration::from_secs(10), || async {
        let (s, _) = get_json(&format!("{}/readyz", daemon.url)).await;
        (s == 200).then_some(())
    })
    .await;
    let (s, v) = enqueue(&daemon.url, "after", 50).await;
    assert_eq!(s, 202, "{v}");
    let (_, st) = get_json(&format!("{}/v1/stats", daemon.url)).await;
    assert_eq!(st["tasks"]["watching"].as_u64(), Some(70), "{st}");
    drop(daemon);
}

#[test]
#[ignore = "needs root: mounts a small tmpfs / chattr"]
fn a_read_only_store_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Mount::new(dir.path(), "1m");
    disk.remount("ro");
    let cfg = config_on(dir.path(), &disk.0, "http://127.0.0.1:9");
    let out = output_within(
        Command::new(BIN).args(["run", "-c", cfg.to_str().unwrap()]),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("taskhook.db") || err.contains("taskhook.lock"),
        "{err}"
    );
    assert!(err.to_lowercase().contains("read-only"), "{err}");
}

/// Makes `files` immutable (writes through open descriptors fail with
/// EPERM) until dropped: a store that turns read-only under the daemon.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    /// Needs root on a file system with the immutable flag (ext4, xfs,
    /// btrfs, tmpfs since Linux 6.0).
    fn new(files: Vec<PathBuf>) -> Immutable {
        let mut done = Immutable(Vec::new());
        for f in files {
            run_tool(Command::new("chattr").arg("+i").arg(&f));
            done.0.push(f);
        }
        done
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for f in &self.0 {
            let out = output_within(
                Command::new("chattr").arg("-i").arg(f),
                Duration::from_secs(30),
            );
            if !out.status.success() {
                eprintln!(
                    "warning: cannot make {} writable again: {}",
                    f.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: mounts a small tmpfs / chattr"]
async fn a_store_turning_read_only_refuses_new_work_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let sim = spawn_sim(&[]);
    let daemon = spawn_daemon(&daemon_config(dir.path(), &sim.url, ""));
    let (s, _) = enqueue(&daemon.url, "kept", 10).await;
    assert_eq!(s, 202);
    let db = dir.path().join("taskhook.db");
    let files = vec![db.clone(), db.with_extension("db-wal")];
    let frozen = Immutable::new(files);
    let (s, v) = enqueue(&daemon.url, "more", 5).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("store_unavailable")),
        "{v}"
    );
    let (s, _) = get_json(&format!("{}/readyz", daemon.url)).await;
    assert_eq!(s, 503);
    let (s, st) = get_json(&format!("{}/v1/stats", daemon.url)).await;
    assert_eq!(
        (s, st["tasks"]["watching"].as_u64()),
        (200, Some(10)),
        "reads still work: {st}"
    );
    drop(frozen);
    eventually("recovery", Duration::from_secs(10), || async {
        let (s, _) = enqueue(&daemon.url, "after", 5).await;
        (s == 202).then_some(())
    })
    .await;
    // /readyz checks the store at most once a second.
    eventually("ready again", Duration::from_secs(5), || async {
        let (s, _) = get_json(&format!("{}/readyz", daemon.url)).await;
        (s == 200).then_some(())
    })
    .await;
    let (_, st) = get_json(&format!("{}/v1/stats", daemon.url)).await;
    assert_eq!(st["tasks"]["watching"].as_u64(), Some(15), "{st}");
    drop(daemon);
}
