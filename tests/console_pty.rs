//! The console in a real terminal against a running `flipstack up`: live
//! numbers after uploads, `b` blocks and unblocks uploads for real (checked
//! over HTTP), `d` writes a dump that `flipstack db restore` accepts, `q`
//! quits and gives the terminal back. 80×24, the smallest size it supports.

mod common;
mod console_support;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::Browser;
use console_support::{Tmux, flipstack, free_port, line_with};

/// `flipstack up` on a free loopback port with its own data folder; stopped
/// with SIGTERM (so it stops its workers) when dropped.
struct Up {
    child: Child,
    base: String,
}

impl Up {
    fn start(data: &Path, log: &Path) -> Up {
        let port = free_port();
        let log = std::fs::File::create(log).unwrap();
        let child = flipstack()
            .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data)
            .args(["--workers-min", "1", "--workers-max", "1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting flipstack up");
        Up { child, base: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A picture of its own for each upload.
fn picture(n: u32) -> Vec<u8> {
    common::png(32 + n, 24)
}

async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The number after `label ` on the first line that has `marker`: e.g. the
/// uploads panel's `done 3` (marker `processing`).
fn number_after(screen: &str, marker: &str, label: &str) -> Option<u64> {
    let line = line_with(screen, marker)?;
    let rest = line.split(&format!("{label} ")).nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_live_numbers_blocks_and_dumps() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let dumps = dir.path().join("dumps");
    std::fs::create_dir_all(&dumps).unwrap();
    let up = Up::start(&data, &dir.path().join("up.log"));
    let visitor = Browser::new(&up.base);
    // Answers the upload's status: 303 (to the gallery) when taken.
    let upload = |n: u32| {
        let visitor = &visitor;
        async move {
            visitor
                .upload(Some("operator@example.com"), &format!("picture-{n}.png"), &picture(n))
                .await
                .status()
                .as_u16()
        }
    };
    let form = || async { visitor.text("/form").await.1 };
    let health = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !health.get(format!("{}/healthz", up.base)).send().await.is_ok_and(|r| r.status().is_success()) {
        let log = std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "flipstack up did not answer /healthz within 30 s; its log:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The token comes from <data>/admin-token, as an operator's would.
    let tmux = Tmux::start(
        80,
        24,
        &dumps,
        &[],
        &[
            console_support::BIN.to_owned(),
            "console".into(),
            "--url".into(),
            up.base.clone(),
            "--data-dir".into(),
            data.display().to_string(),
            "--dump-dir".into(),
            dumps.display().to_string(),
        ],
    );
    let screen = tmux.wait_for("the first status", Duration::from_secs(20), |s| {
        s.contains("uploads open") && number_after(s, "processing", "done") == Some(0)
    });
    for panel in ["fleet", "queue", "cache", "reads", "uploads"] {
        assert!(screen.contains(&format!("┌ {panel}")), "no {panel} panel:\n{screen}");
    }

    // Live numbers after uploads and gallery reads.
    for n in 0..3 {
        assert_eq!(upload(n).await, 303, "upload {n}");
    }
    for _ in 0..3 {
        assert_eq!(visitor.get("/gallery").await.status().as_u16(), 200);
    }
    let screen = tmux.wait_for("three finished uploads and the reads", Duration::from_secs(60), |s| {
        number_after(s, "processing", "done") == Some(3)
            && s.lines().any(|l| l.contains("s cache ") || l.contains("s primary ") || l.contains("s replica "))
    });
    let reads = ["cache", "replica", "primary"]
        .iter()
        .map(|src| number_after(&screen, "primary ", src).unwrap_or(0))
        .sum::<u64>();
    assert!(reads >= 3, "the reads panel counts the gallery reads:\n{screen}");
    assert!(line_with(&screen, "jobs").is_some(), "the fleet panel lists the local worker and its jobs:\n{screen}");

    // b, then y: uploads are blocked for real.
    tmux.keys(&["b"]);
    tmux.wait_for("the block confirmation", Duration::from_secs(5), |s| s.contains("block uploads?"));
    tmux.keys(&["y"]);
    tmux.wait_for("uploads blocked", Duration::from_secs(10), |s| s.contains("uploads BLOCKED"));
    wait_until("POST /upload answering 503", Duration::from_secs(10), || async { upload(9).await == 503 }).await;
    assert!(form().await.contains("Uploads are paused"));

    // Again: open.
    tmux.keys(&["b"]);
    tmux.wait_for("the unblock confirmation", Duration::from_secs(5), |s| s.contains("unblock uploads?"));
    tmux.keys(&["y"]);
    tmux.wait_for("uploads open again", Duration::from_secs(10), |s| s.contains("uploads open"));
    wait_until("uploads taken again", Duration::from_secs(10), || async {
        !form().await.contains("Uploads are paused")
    })
    .await;
    assert_eq!(upload(10).await, 303);

    // d, Enter: the proposed file in the dump folder.
    tmux.keys(&["d"]);
    tmux.wait_for("the dump prompt", Duration::from_secs(5), |s| s.contains("dump the database"));
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for("the dump written", Duration::from_secs(30), |s| s.contains("Dump written"));
    let files: Vec<_> = std::fs::read_dir(&dumps).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "one dump and no temporary file left: {files:?}");
    let dump = &files[0];
    let size = std::fs::metadata(dump).unwrap().len();
    assert!(
        screen.contains(&format!("({size} bytes)")),
        "the console tells the size written ({size} bytes):\n{screen}"
    );
    let restored = flipstack()
        .args(["db", "restore", "--data-dir"])
        .arg(dir.path().join("restored"))
        .arg(dump)
        .output()
        .unwrap();
    assert!(
        restored.status.success(),
        "flipstack db restore refused the console's dump: {}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert!(String::from_utf8_lossy(&restored.stderr).contains("restored"));

    // Esc closes the dump view; q quits and gives the terminal back.
    tmux.keys(&["Escape"]);
    tmux.wait_for("the dump view closed", Duration::from_secs(5), |s| !s.contains("Dump written"));
    tmux.keys(&["q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(code) = tmux.exit_status() {
            break code;
        }
        assert!(Instant::now() < deadline, "q did not quit:\n{}", tmux.screen());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 0, "the console exited with {status}:\n{}", tmux.screen());
    // Off the alternate screen: the panels are gone from the terminal.
    assert!(!tmux.screen().contains("┌ fleet"), "{}", tmux.screen());
}
