//! A fleet starting at once, as an Auto Scaling group starts a new stack:
//! several `flipstack serve` and `flipstack work` processes on one empty
//! MariaDB at the same instant all come up, and a process whose database is
//! not there yet waits for it (saying so) instead of exiting.
//!
//! `FLIPSTACK_TEST_BIN` runs another build of the binary (e.g. an older one,
//! to see the test fail on it); the default is this build's.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "fleet-start-test-token";

fn flipstack_bin() -> PathBuf {
    std::env::var_os("FLIPSTACK_TEST_BIN").map(PathBuf::from).unwrap_or_else(|| env!("CARGO_BIN_EXE_flipstack").into())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One process of the fleet, its log in a file.
struct Member {
    role: &'static str,
    child: Child,
    log: PathBuf,
    base: Option<String>,
}

impl Member {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment every member shares: one database, one cache, one blob
/// folder, one outbox, the database queue.
fn shared_env(database_url: &str, cache_url: &str, shared: &Path) -> Vec<(String, String)> {
    vec![
        ("FLIPSTACK_DATABASE_URL".into(), database_url.into()),
        ("FLIPSTACK_CACHE_URL".into(), cache_url.into()),
        ("FLIPSTACK_BLOB_URL".into(), format!("file://{}", shared.join("blobs").display())),
        ("FLIPSTACK_MAIL_URL".into(), format!("outbox://{}", shared.join("outbox").display())),
        ("FLIPSTACK_QUEUE_URL".into(), "db://".into()),
        ("FLIPSTACK_QUEUE_POLL_MS".into(), "50".into()),
        ("FLIPSTACK_ADMIN_TOKEN".into(), TOKEN.into()),
        // Every round's uploads come from 127.0.0.1 and count in the shared
        // memcached with every other test's: the limits have tests of their own.
        ("FLIPSTACK_GALLERIES_PER_CLIENT_PER_HOUR".into(), "1000000".into()),
        ("FLIPSTACK_UPLOADS_PER_CLIENT_PER_HOUR".into(), "1000000".into()),
        ("RUST_LOG".into(), "info,mysql_async=warn,refinery_core=warn".into()),
    ]
}

fn spawn_member(role: &'static str, n: usize, env: &[(String, String)], dir: &Path) -> Member {
    let data = dir.join(format!("{role}-{n}"));
    std::fs::create_dir_all(&data).unwrap();
    let log = dir.join(format!("{role}-{n}.log"));
    let mut cmd = Command::new(flipstack_bin());
    cmd.arg(role)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("FLIPSTACK_DATA_DIR", &data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut base = None;
    if role == "serve" {
        let port = free_port();
        cmd.env("FLIPSTACK_LISTEN", format!("127.0.0.1:{port}"));
        base = Some(format!("http://127.0.0.1:{port}"));
    }
    let child = cmd.spawn().expect("starting flipstack");
    Member { role, child, log, base }
}

fn logs(members: &[Member]) -> String {
    members.iter().map(|m| format!("--- {} (pid {}):\n{}", m.role, m.child.id(), m.log_text())).collect()
}

/// Waits until every server's readiness answers 200 and every worker has
/// registered, failing (with every log) as soon as a member exits.
async fn wait_all_up(members: &mut [Member], within: Duration) {
    let started = Instant::now();
    flipstack_core::tls::install_crypto_provider();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    loop {
        for m in members.iter_mut() {
            if let Some(status) = m.child.try_wait().unwrap() {
                let role = m.role;
                panic!("a `flipstack {role}` exited at start ({status}); the logs:\n{}", logs(members));
            }
        }
        let mut servers_ready = 0;
        let mut registered = Vec::new();
        for m in members.iter() {
            let Some(base) = &m.base else { continue };
            if http.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status() == 200) {
                servers_ready += 1;
                if let Ok(r) = http.get(format!("{base}/admin/api/status")).bearer_auth(TOKEN).send().await
                    && let Ok(status) = r.json::<serde_json::Value>().await
                {
                    registered = status["workers"]
                        .as_array()
                        .map(|ws| ws.iter().filter_map(|w| w["pid"].as_u64()).collect())
                        .unwrap_or_default();
                }
            }
        }
        let servers = members.iter().filter(|m| m.base.is_some()).count();
        let workers_up =
            members.iter().filter(|m| m.role == "work").all(|m| registered.contains(&u64::from(m.child.id())));
        if servers_ready == servers && workers_up {
            return;
        }
        assert!(
            started.elapsed() < within,
            "the fleet did not come up within {within:?}; the logs:\n{}",
            logs(members)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn upload_flips(base: &str) {
    let b = Browser::new(base);
    let me = format!("fleet-{:08x}@example.com", rand::random::<u32>());
    let r = b.upload(Some(&me), "p.png", &png(40, 30)).await;
    assert_eq!(r.status(), 303, "the upload is taken: {}", r.text().await.unwrap());
    let started = Instant::now();
    loop {
        let (status, html) = b.text("/gallery").await;
        assert_eq!(status, 200);
        if html.contains("data-state=\"done\"") {
            return;
        }
        assert!(!html.contains("data-state=\"failed\""), "the flip failed:\n{html}");
        assert!(started.elapsed() < Duration::from_secs(30), "the upload was not flipped within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Acceptance: 2 servers and 2 workers started together on an empty MariaDB,
/// 20 rounds in a row, all come up every time and an upload flips.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_two_servers_and_two_workers_start_together_on_an_empty_database_twenty_times() {
    Tier::Mariadb.require();
    let primary = env("FLIPSTACK_TEST_MYSQL_PRIMARY");
    let cache = format!("memcache://{}", env("FLIPSTACK_TEST_MEMCACHED"));
    let rounds: usize = std::env::var("FLIPSTACK_TEST_FLEET_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(20);
    for round in 1..=rounds {
        let dir = tempfile::tempdir().unwrap();
        let db = fresh_database(&primary).await;
        let env = shared_env(&format!("{primary}/{db}"), &cache, dir.path());
        // Spawned back to back: all four reach the empty database together.
        let roles = ["serve", "work", "serve", "work"];
        let mut members: Vec<Member> =
            roles.iter().enumerate().map(|(n, role)| spawn_member(role, n, &env, dir.path())).collect();
        wait_all_up(&mut members, Duration::from_secs(60)).await;
        let base = members[2].base.clone().unwrap();
        upload_flips(&base).await;
        eprintln!("round {round}/{rounds}: 2 servers and 2 workers up, an upload flipped");
    }
}

/// A server started before its database waits for it, says what it waits
/// for, and comes up when the database does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_a_server_started_before_its_database_waits_for_it() {
    Tier::Mariadb.require();
    let services = PrivateServices::start("mariadb");
    let primary = services.get("FLIPSTACK_TEST_MYSQL_PRIMARY");
    let db = fresh_database(&primary).await;
    services.control("stop", "primary");
    let dir = tempfile::tempdir().unwrap();
    let env = shared_env(&format!("{primary}/{db}"), "memory://", dir.path());
    let mut members = vec![spawn_member("serve", 0, &env, dir.path()), spawn_member("work", 1, &env, dir.path())];
    let started = Instant::now();
    while !members[0].log_text().contains("waiting for the database") {
        assert!(started.elapsed() < Duration::from_secs(20), "no line says what it waits for:\n{}", logs(&members));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for m in members.iter_mut() {
        assert!(m.child.try_wait().unwrap().is_none(), "`flipstack {}` gave up at once:\n{}", m.role, m.log_text());
    }
    services.control("start", "primary");
    wait_all_up(&mut members, Duration::from_secs(60)).await;
    upload_flips(members[0].base.as_deref().unwrap()).await;
}

/// The wait is bounded: with nothing listening, the process exits with an
/// error that names the service and the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_that_never_answers_ends_the_wait_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut env = shared_env(&format!("mysql://root@127.0.0.1:{port}/nothing"), "memory://", dir.path());
    env.push(("FLIPSTACK_STARTUP_WAIT_SECS".into(), "2".into()));
    let mut member = spawn_member("work", 0, &env, dir.path());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = member.child.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "still waiting after 30 s:\n{}", member.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = member.log_text();
    assert!(!status.success());
    assert!(log.contains("waiting for the database"), "{log}");
    assert!(log.contains("gave up waiting for the database"), "{log}");
    assert!(log.contains("FLIPSTACK_STARTUP_WAIT_SECS"), "{log}");
}
