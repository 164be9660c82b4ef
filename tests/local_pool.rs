//! `flipstack up`'s worker pool under a burst: it scales out on the backlog,
//! every upload is flipped, and it scales back in once the burst is over;
//! and its workers do not outlive it.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A picture on the slower (re-encode) path: its height is not a multiple of the MCU.
fn slow_jpeg(seed: u32) -> Vec<u8> {
    let (w, h) = (2400u32, 1601u32);
    let img =
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x ^ y ^ seed) as u8, (x / 3 + seed) as u8, (y / 5) as u8]));
    let t = turbojpeg::Image {
        pixels: img.as_raw().as_slice(),
        width: w as usize,
        pitch: w as usize * 3,
        height: h as usize,
        format: turbojpeg::PixelFormat::RGB,
    };
    turbojpeg::compress(t, 90, turbojpeg::Subsamp::Sub2x2).unwrap().to_vec()
}

struct Up(std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        // SIGTERM: the pool drains its workers, the server finishes requests.
        let _ = std::process::Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_scales_the_pool_out_and_back_in() {
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let up = Up(std::process::Command::new(env!("CARGO_BIN_EXE_flipstack"))
        .arg("up")
        .env("FLIPSTACK_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLIPSTACK_DATA_DIR", data.path())
        .env("FLIPSTACK_WORKERS_MIN", "1")
        .env("FLIPSTACK_WORKERS_MAX", "4")
        .env("FLIPSTACK_BACKLOG_PER_WORKER", "2")
        .env("FLIPSTACK_SCALE_IN_SECS", "3")
        .env("FLIPSTACK_QUEUE_POLL_MS", "20")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap());
    flipstack_core::tls::install_crypto_provider();
    let started = Instant::now();
    while reqwest::get(format!("{base}/healthz")).await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(started.elapsed() < Duration::from_secs(30), "flipstack up starts");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = std::fs::read_to_string(data.path().join("admin-token")).unwrap().trim().to_owned();
    let admin = reqwest::Client::new();
    let status = || async {
        let v: serde_json::Value = admin
            .get(format!("{base}/admin/api/status"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v
    };
    // The pool reports itself once it has started its first worker.
    let started = Instant::now();
    loop {
        let s = status().await;
        if s["pool"]["running"].as_u64() == Some(1) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the pool starts its minimum: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The burst: 40 pictures from four browsers at once.
    const UPLOADS: usize = 40;
    let pictures: Vec<Vec<u8>> = (0..4).map(slow_jpeg).collect();
    let mut lanes = Vec::new();
    for lane in 0..4 {
        let (base, pictures) = (base.clone(), pictures.clone());
        lanes.push(tokio::spawn(async move {
            let b = Browser::new(&base);
            let me = format!("burst-{lane}-{:08x}@example.com", rand::random::<u32>());
            for i in 0..UPLOADS / 4 {
                assert_eq!(b.upload(Some(&me), "burst.jpg", &pictures[(i + lane) % 4]).await.status(), 303);
            }
        }));
    }
    let mut most = 0;
    let mut lanes_done = false;
    let started = Instant::now();
    loop {
        if !lanes_done && lanes.iter().all(|l| l.is_finished()) {
            for l in lanes.drain(..) {
                l.await.unwrap();
            }
            lanes_done = true;
        }
        let s = status().await;
        most = most.max(s["pool"]["running"].as_u64().unwrap_or(0));
        let done = s["uploads"]["done"].as_u64().unwrap_or(0);
        if lanes_done && done == UPLOADS as u64 {
            break;
        }
        assert_eq!(s["uploads"]["failed"].as_u64().unwrap_or(0), 0, "no upload fails: {s}");
        assert!(started.elapsed() < Duration::from_secs(240), "every upload is flipped: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("the pool ran up to {most} workers during the burst");
    assert!(most >= 2, "the pool scaled out on the backlog (at most {most} workers ran)");

    // After the burst, back to the minimum (the drained workers finish and exit).
    let started = Instant::now();
    loop {
        let s = status().await;
        if s["pool"]["desired"].as_u64() == Some(1) && s["pool"]["running"].as_u64() == Some(1) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the pool scales back in after the burst: {}", s["pool"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(up);
}

/// The pids of a process's children, from `/proc`.
fn children_of(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

/// Running, not exited (a zombie waiting for its reaper counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

/// A `flipstack up` killed outright (SIGKILL: nothing of it runs to clean
/// up) does not leave its workers polling on their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_stop_when_their_up_is_killed_outright() {
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut up = Up(std::process::Command::new(env!("CARGO_BIN_EXE_flipstack"))
        .arg("up")
        .env("FLIPSTACK_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLIPSTACK_DATA_DIR", data.path())
        .env("FLIPSTACK_WORKERS_MIN", "1")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap());
    let started = Instant::now();
    let worker = loop {
        if let Some(&pid) = children_of(up.0.id()).first() {
            break pid;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "flipstack up starts a worker");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    up.0.kill().unwrap();
    up.0.wait().unwrap();
    let started = Instant::now();
    while alive(worker) {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = std::process::Command::new("kill").args(["-KILL", &worker.to_string()]).status();
            panic!("worker {worker} still runs 30 s after its flipstack up was killed");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
