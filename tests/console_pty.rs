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
        Up::start_pool(data, log, 1)
    }

    /// With a local pool of 1 to `max` workers.
    fn start_pool(data: &Path, log: &Path, max: u32) -> Up {
        let port = free_port();
        let log = std::fs::File::create(log).unwrap();
        let child = flipstack()
            .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data)
            .args(["--workers-min", "1", "--workers-max", &max.to_string()])
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
    confirmed(&tmux, &["b"], "block uploads?", "uploads BLOCKED");
    wait_until("POST /upload answering 503", Duration::from_secs(10), || async { upload(9).await == 503 }).await;
    assert!(form().await.contains("Uploads are paused"));

    // Again: open.
    confirmed(&tmux, &["b"], "unblock uploads?", "uploads open");
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
    let restored =
        flipstack().args(["db", "restore", "--data-dir"]).arg(dir.path().join("restored")).arg(dump).output().unwrap();
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

/// The admin API as the console's operator would check it, with the token
/// from `<data>/admin-token`.
struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    fn new(base: &str, data: &Path) -> Admin {
        let token = std::fs::read_to_string(data.join("admin-token")).unwrap().trim().to_owned();
        flipstack_core::tls::install_crypto_provider();
        Admin { http: reqwest::Client::new(), base: base.to_owned(), token }
    }

    async fn get(&self, path: &str) -> serde_json::Value {
        let r = self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await.unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// The kinds of one upload's events, oldest first.
    async fn history(&self, id: i64) -> Vec<String> {
        let d = self.get(&format!("/admin/api/uploads/{id}")).await;
        d["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap().to_owned()).collect()
    }
}

/// `keys`, which ask `question`; then `y`, after which the screen shows `done`.
fn confirmed(tmux: &Tmux, keys: &[&str], question: &str, done: &str) {
    tmux.keys(keys);
    tmux.wait_for(question, Duration::from_secs(5), |s| s.contains(question));
    tmux.keys(&["y"]);
    tmux.wait_for(done, Duration::from_secs(10), |s| s.contains(done));
}

async fn wait_healthy(up: &Up, log: &Path) {
    flipstack_core::tls::install_crypto_provider();
    let health = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !health.get(format!("{}/healthz", up.base)).send().await.is_ok_and(|r| r.status().is_success()) {
        let log = std::fs::read_to_string(log).unwrap_or_default();
        assert!(Instant::now() < deadline, "flipstack up did not answer /healthz within 30 s; its log:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn console(tmux_dir: &Path, up: &Up, data: &Path, extra: &[&str]) -> Tmux {
    let mut argv = vec![
        console_support::BIN.to_owned(),
        "console".into(),
        "--url".into(),
        up.base.clone(),
        "--data-dir".into(),
        data.display().to_string(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    // NO_COLOR as an operator's terminal might set it: the console still works.
    Tmux::start(80, 24, tmux_dir, &[("NO_COLOR", "1".into())], &argv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_pauses_retries_scales_lists_backs_up_and_read_only_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("up.log");
    let up = Up::start_pool(&data, &log, 2);
    wait_healthy(&up, &log).await;
    let admin = Admin::new(&up.base, &data);
    let visitor = Browser::new(&up.base);
    let me = "operator@example.com";
    let tmux = console(dir.path(), &up, &data, &[]);
    tmux.wait_for("the first status", Duration::from_secs(20), |s| s.contains("uploads open"));

    // w, y: the workers pause (the header says so, and the status).
    confirmed(&tmux, &["w"], "pause the workers?", "workers PAUSED");
    assert_eq!(admin.get("/admin/api/status").await["workers_paused"], true);
    assert_eq!(visitor.upload(Some(me), "waits.png", &picture(1)).await.status(), 303);
    let waiting = admin.get("/admin/api/uploads").await[0]["upload"]["id"].as_i64().unwrap();
    // w, y again: resumed, and the upload that waited is flipped.
    confirmed(&tmux, &["w"], "resume the workers?", "workers resumed");
    wait_until("the waiting upload flipped", Duration::from_secs(60), || async {
        admin.get(&format!("/admin/api/uploads/{waiting}")).await["upload"]["state"] == "done"
    })
    .await;

    // A poison picture fails; the uploads view finds it by its state and shows it in full.
    assert_eq!(visitor.upload(Some(me), "poison.png", &common::poison_png()).await.status(), 303);
    let poison = admin.get("/admin/api/uploads").await[0]["upload"]["id"].as_i64().unwrap();
    wait_until("the poison upload failed", Duration::from_secs(60), || async {
        admin.get(&format!("/admin/api/uploads/{poison}")).await["upload"]["state"] == "failed"
    })
    .await;
    tmux.keys(&["u"]);
    tmux.wait_for("the uploads view", Duration::from_secs(10), |s| s.contains("uploads view") && s.contains("done"));
    tmux.keys(&["/"]);
    tmux.keys(&["f", "a", "i", "l", "e", "d", "Enter"]);
    let screen = tmux.wait_for("only the failed upload", Duration::from_secs(10), |s| {
        s.contains(&poison.to_string()) && !s.contains(&waiting.to_string())
    });
    assert!(
        line_with(&screen, &poison.to_string()).is_some_and(|l| l.contains("failed")),
        "listed as failed:\n{screen}"
    );
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for("the upload in full", Duration::from_secs(10), |s| s.contains("events"));
    assert!(screen.contains("uploaded") && screen.contains("attempts"), "events and attempts:\n{screen}");
    assert!(screen.contains("could not be decoded"), "the failure reason:\n{screen}");
    // r, y: this one is retried (it fails again: nothing was replaced).
    confirmed(&tmux, &["r"], &format!("retry upload #{poison}?"), "sent to be flipped again");
    wait_until("the retried upload failed again", Duration::from_secs(60), || async {
        admin.history(poison).await == ["uploaded", "failed", "retried", "failed"]
    })
    .await;
    // One Escape at a time: two at once read as one key (Alt-Escape).
    tmux.keys(&["Escape"]);
    tmux.wait_for("the listing again", Duration::from_secs(5), |s| s.contains("Enter details"));
    tmux.keys(&["Escape"]);
    tmux.wait_for("the main screen", Duration::from_secs(5), |s| s.contains("┌ fleet"));

    // r, y on the main screen: every failed upload.
    confirmed(&tmux, &["r"], "retry every failed upload?", "1 failed upload(s) sent");
    // x, y: the database queue has no dead-letter queue, and the console says so.
    confirmed(&tmux, &["x"], "redrive the dead-letter queue?", "no dead-letter queue");

    // s: the local pool to 2 workers.
    tmux.keys(&["s"]);
    tmux.wait_for("the scale prompt", Duration::from_secs(5), |s| s.contains("set the desired capacity"));
    confirmed(&tmux, &["BSpace", "2", "Enter"], "set the local pool to 2?", "desired capacity set to 2");
    wait_until("the pool at 2", Duration::from_secs(30), || async {
        admin.get("/admin/api/status").await["pool"]["desired"] == 2
    })
    .await;

    // B: the backups view; n, y: one now, listed; r, the word, Enter: restored from it.
    tmux.keys(&["B"]);
    tmux.wait_for("the backups view", Duration::from_secs(10), |s| s.contains("backups · blob store"));
    confirmed(&tmux, &["n"], "back up the database now?", "database backed up");
    let backups = admin.get("/admin/api/backups").await;
    let name = backups[0]["name"].as_str().unwrap_or_else(|| panic!("one backup listed: {backups}")).to_owned();
    tmux.wait_for("the backup listed", Duration::from_secs(10), |s| s.contains(&name));
    tmux.keys(&["r"]);
    tmux.wait_for("the restore question", Duration::from_secs(5), |s| s.contains(&format!("restore {name}?")));
    tmux.keys(&["r", "e", "s", "t", "o", "r", "e", "Enter"]);
    tmux.wait_for("the restore", Duration::from_secs(20), |s| s.contains(&format!("database restored from {name}")));
    tmux.keys(&["Escape"]);
    tmux.wait_for("the main screen", Duration::from_secs(5), |s| s.contains("┌ fleet"));

    // l: the server's warnings and errors; ?: every key.
    tmux.keys(&["l"]);
    tmux.wait_for("the log view", Duration::from_secs(10), |s| s.contains("server log"));
    tmux.keys(&["Escape"]);
    tmux.wait_for("the main screen", Duration::from_secs(5), |s| s.contains("┌ fleet"));
    tmux.keys(&["?"]);
    let help = tmux.wait_for("the help", Duration::from_secs(5), |s| s.contains("┌ help"));
    for k in [
        "retry every failed upload",
        "redrive the dead-letter queue",
        "pause or resume",
        "desired capacity",
        "uploads:",
        "backups:",
    ] {
        assert!(help.contains(k), "help lists {k:?}:\n{help}");
    }
    tmux.keys(&["Escape"]);
    tmux.wait_for("the main screen", Duration::from_secs(5), |s| s.contains("┌ fleet"));
    tmux.keys(&["q"]);
    drop(tmux);

    // A read-only console refuses every change, and changes nothing.
    let before = admin.history(poison).await;
    let tmux = console(dir.path(), &up, &data, &["--read-only"]);
    tmux.wait_for("the first status", Duration::from_secs(20), |s| {
        s.contains("READ-ONLY") && s.contains("uploads open")
    });
    let asks = [
        "pause the workers?",
        "retry every failed upload?",
        "redrive the dead-letter queue?",
        "set the desired capacity",
    ];
    for (k, ask) in ["w", "r", "x", "s"].into_iter().zip(asks) {
        tmux.keys(&[k]);
        let screen = tmux.wait_for("the refusal", Duration::from_secs(5), |s| s.contains("read-only console"));
        assert!(!screen.contains(ask), "{k} asked nothing:\n{screen}");
        // Should it have asked, y would act: it must not.
        tmux.keys(&["y"]);
    }
    tmux.keys(&["u"]);
    tmux.wait_for("the uploads view", Duration::from_secs(10), |s| s.contains("uploads view") && s.contains("failed"));
    tmux.keys(&["/", "f", "a", "i", "l", "e", "d", "Enter"]);
    tmux.wait_for("the failed upload", Duration::from_secs(10), |s| s.contains(&poison.to_string()));
    tmux.keys(&["r"]);
    tmux.wait_for("the refusal in the view", Duration::from_secs(5), |s| s.contains("read-only console"));
    tmux.keys(&["Escape"]);
    tmux.wait_for("the main screen", Duration::from_secs(5), |s| s.contains("┌ fleet"));
    let backups_before = admin.get("/admin/api/backups").await;
    tmux.keys(&["B"]);
    tmux.wait_for("the backups view", Duration::from_secs(10), |s| s.contains("backups · blob store"));
    let newest = backups_before[0]["name"].as_str().unwrap().to_owned();
    for (k, ask) in [("n", "back up the database now?".to_owned()), ("r", format!("restore {newest}?"))] {
        tmux.keys(&[k]);
        let screen = tmux.wait_for("the refusal", Duration::from_secs(5), |s| s.contains("read-only console"));
        assert!(!screen.contains(&ask), "{k} asked nothing:\n{screen}");
        tmux.keys(&["y"]);
    }
    assert_eq!(admin.get("/admin/api/backups").await, backups_before, "no backup taken or restored");
    let status = admin.get("/admin/api/status").await;
    assert_eq!(status["workers_paused"], false, "not paused by the read-only console");
    assert_eq!(admin.history(poison).await, before, "not retried by the read-only console");
}
