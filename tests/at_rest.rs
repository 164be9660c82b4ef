//! What flipstack leaves on disk and in the blob store: secrets readable by
//! their user only, uploads durable before they are answered, and nothing of
//! a deleted picture left behind (issue 11, items 7–9).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use flipstack_core::domain::{Email, UploadId, UploadState};
use flipstack_core::store::{MetadataStore, ReadFrom};

fn email() -> String {
    format!("rest-{:08x}@example.com", rand::random::<u32>())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process that is stopped with SIGTERM (so `flipstack up` stops its
/// workers), then killed if it does not end, also when a test fails.
struct Stopped {
    child: Child,
    /// The process to signal, when it is not the child itself (under strace).
    target: Option<u32>,
}

impl Stopped {
    fn stop(&mut self) {
        let pid = self.target.unwrap_or(self.child.id());
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// `flipstack up` on the embedded defaults in `data`, its log (stdout and
/// stderr) in `log`; `wrap` runs it under another program (strace).
async fn flipstack_up(data: &Path, log: &Path, wrap: &[&str]) -> (Stopped, String) {
    let port = free_port();
    let bin = env!("CARGO_BIN_EXE_flipstack");
    let mut cmd = match wrap.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg("--").arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let out = std::fs::File::create(log).unwrap();
    cmd.arg("up")
        .env("FLIPSTACK_DATA_DIR", data)
        .env("FLIPSTACK_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLIPSTACK_QUEUE_POLL_MS", "20")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let child = cmd.spawn().expect("starting flipstack up");
    let mut up = Stopped { child, target: None };
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while reqwest::get(format!("{base}/healthz")).await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "flipstack up did not answer: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        assert!(up.child.try_wait().unwrap().is_none(), "flipstack up ended: {}", std::fs::read_to_string(log).unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !wrap.is_empty() {
        // Signal flipstack itself, not strace, so it stops its workers.
        let pid = up.child.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        up.target = Some(children.split_whitespace().next().expect("strace runs flipstack").parse().unwrap());
    }
    (up, base)
}

/// Waits (bounded) until an upload of `store` is done.
async fn wait_done(store: &dyn MetadataStore, id: UploadId) {
    let started = Instant::now();
    loop {
        let state = store.upload(id).await.unwrap().map(|u| u.state);
        if state == Some(UploadState::Done) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "upload {id} is {state:?} after two minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn uploads_of(store: &dyn MetadataStore, address: &str) -> Vec<UploadId> {
    let person = store.person_by_email(&Email::parse(address).unwrap()).await.unwrap().expect("a gallery");
    let page = store.gallery_page(person.id, 0, 100, ReadFrom::Primary).await.unwrap();
    page.page.items.iter().map(|i| i.id).collect()
}

async fn sqlite_store(data: &Path) -> std::sync::Arc<dyn MetadataStore> {
    let url = format!("sqlite://{}", data.join("flipstack.db").display());
    flipstack_core::store::connect(
        &url,
        &[],
        std::sync::Arc::new(flipstack_core::metrics::Metrics::new()),
        Duration::from_millis(75),
        Duration::from_secs(2),
    )
    .await
    .unwrap()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        }
        out.push(p);
    }
}

// ---- 7: secrets readable by their user only ------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flipstack_up_keeps_its_data_to_its_user_and_sign_in_links_out_of_the_log() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let log = root.path().join("up.log");
    let (mut up, base) = flipstack_up(&data, &log, &[]).await;
    let me = email();
    let owner = Browser::new(&base);
    assert_eq!(owner.upload(Some(&me), "a.png", &png(40, 30)).await.status(), 303);
    // Another browser asks for a sign-in link: a live secret lands in the outbox.
    let other = Browser::new(&base);
    let csrf = other.csrf().await;
    assert!(other.post_form("/signin", &[("csrf", &csrf), ("email", &me)]).await.status().is_success());
    let store = sqlite_store(&data).await;
    let id = uploads_of(store.as_ref(), &me).await[0];
    wait_done(store.as_ref(), id).await;
    drop(store);
    let outbox = data.join("outbox");
    let started = Instant::now();
    let mail = loop {
        let mails: Vec<PathBuf> = std::fs::read_dir(&outbox).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        if let Some(m) = mails.into_iter().find(|p| p.extension().is_some_and(|e| e == "eml")) {
            break m;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no sign-in mail in {}", outbox.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(&mail).unwrap().replace("=\r\n", "").replace("=\n", "").replace("=3D", "=");
    let at = text.find("token=").expect("the mail holds a link") + 6;
    let token: String =
        text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    assert!(token.len() >= 20, "a token in {text}");
    up.stop();

    let mut entries = Vec::new();
    walk(&data, &mut entries);
    entries.push(data.clone());
    let names: Vec<String> = entries.iter().map(|p| p.strip_prefix(&data).unwrap().display().to_string()).collect();
    for want in ["flipstack.db", "admin-token", "outbox", "blobs/originals", "blobs/flipped", "blobs/thumbs/flipped"] {
        assert!(names.iter().any(|n| n == want), "{want} is in the data folder: {names:?}");
    }
    let open: Vec<String> = entries
        .iter()
        .filter_map(|p| {
            let mode = std::fs::symlink_metadata(p).unwrap().permissions().mode();
            let ok = if p.is_dir() { mode & 0o777 == 0o700 } else { mode & 0o077 == 0 };
            (!ok).then(|| format!("{} {:o}", p.display(), mode & 0o777))
        })
        .collect();
    assert!(open.is_empty(), "folders 0700 and files 0600 in the data folder; these are not: {open:#?}");

    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains(&token), "the sign-in link's token is not in the log:\n{logged}");
    let file_name = mail.file_name().unwrap().to_str().unwrap();
    assert!(logged.contains(file_name), "the log names the mail's file ({file_name}):\n{logged}");
}
