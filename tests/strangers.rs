//! Strangers on the internet: a squatter who uploads with someone else's
//! address, bodies built to exhaust memory, slow clients, floods of new
//! galleries and sign-in mails, and timing that would tell who has a gallery.
//! Each test here failed on the code before the defence it checks.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use flipstack_core::domain::{Email, SecretToken, now_millis};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

tier_tests!(
    a_squatters_session_never_sees_what_the_owner_uploads,
    signing_out_everywhere_else_ends_the_other_sessions,
    rate_limits_answer_429_with_retry_after,
    the_storage_quota_is_kept,
    signin_answers_the_same_whether_or_not_the_address_has_a_gallery,
);

fn email() -> String {
    format!("person-{:08x}@example.com", rand::random::<u32>())
}

/// A client address of its own for one test, as the load balancer would
/// append it (the tests share 127.0.0.1 and, on the mariadb tier, memcached).
fn client_ip() -> String {
    format!("127.{}.{}.{}", rand::random::<u8>(), rand::random::<u8>(), 1 + rand::random::<u8>() % 250)
}

async fn upload_ok(app: &TestApp, b: &Browser, email: &str) -> flipstack_core::domain::UploadId {
    let r = b.upload(Some(email), "p.png", &png(16, 12)).await;
    assert_eq!(r.status(), 303, "upload: {}", r.text().await.unwrap());
    app.latest_upload(email).await.unwrap()
}

/// Signs `b` in through a mailed link (the `n`-th mailed to the address);
/// `elsewhere` ticks "sign out every other browser".
async fn sign_in_by_link(app: &TestApp, b: &Browser, address: &str, n: usize, elsewhere: bool) {
    let csrf = b.csrf().await;
    let r = b.post_form("/signin", &[("csrf", &csrf), ("email", address)]).await;
    assert_eq!(r.status(), 200);
    let links = app.wait_mailed_links(address, n).await;
    assert_eq!(links.len(), n, "mail number {n} for {address}");
    let (status, page) = b.text(&links[n - 1]).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(address), "the link page says which address it is for: {page}");
    let token = hidden_value(&page, "token").unwrap();
    let csrf = hidden_value(&page, "csrf").unwrap();
    let mut form = vec![("csrf", csrf.as_str()), ("token", token.as_str())];
    if elsewhere {
        form.push(("elsewhere", "out"));
    }
    let r = b.post_form("/signin/link", &form).await;
    assert_eq!(r.status(), 303);
}

async fn a_squatters_session_never_sees_what_the_owner_uploads(tier: Tier) {
    let app = TestApp::spawn(tier).await;
    let owner_address = email();
    // The squatter gets there first with an address that is not theirs.
    let squatter = app.browser();
    let squatted = upload_ok(&app, &squatter, &owner_address).await;
    assert_eq!(squatter.text("/gallery").await.0, 200, "a first upload signs its browser in");

    // The owner proves the address through the mailed link, and uploads.
    let owner = app.browser();
    sign_in_by_link(&app, &owner, &owner_address, 1, false).await;
    let mine = upload_ok(&app, &owner, &owner_address).await;
    let (status, gallery) = owner.text("/gallery").await;
    assert_eq!(status, 200);
    assert!(gallery.contains(&format!("upload-{mine}")) && gallery.contains(&format!("upload-{squatted}")));

    // The squatter's session ended with the owner's first sign-in.
    assert_eq!(squatter.text("/gallery").await.0, 303, "the squatter is signed out");
    for variant in ["original", "flipped", "original-thumb"] {
        assert_eq!(squatter.get(&format!("/images/{mine}/{variant}")).await.status(), 403, "{variant}");
    }
    let r = squatter.upload(None, "more.png", &png(8, 8)).await;
    assert_eq!(r.status(), 422, "no session to upload into");
    let r = squatter.upload(Some(&owner_address), "more.png", &png(8, 8)).await;
    assert_eq!(r.status(), 403, "typing the address again gets a mail to its owner, not a session");
    assert_eq!(app.latest_upload(&owner_address).await, Some(mine), "nothing added by the squatter");
    app.shutdown().await;
}

async fn signing_out_everywhere_else_ends_the_other_sessions(tier: Tier) {
    let app = TestApp::spawn(tier).await;
    let address = email();
    let first = app.browser();
    upload_ok(&app, &first, &address).await;
    let laptop = app.browser();
    sign_in_by_link(&app, &laptop, &address, 1, false).await;
    assert_eq!(laptop.text("/gallery").await.0, 200);
    // A later sign-in (a second link; one mail a minute, so made here) signs out every other browser.
    let person = app.services.store.person_by_email(&Email::parse(&address).unwrap()).await.unwrap().unwrap();
    let token = SecretToken::generate();
    let now = now_millis();
    app.services.store.create_signin_token(&token.hash(), person.id, now + 600_000, now).await.unwrap();
    let phone = app.browser();
    let (status, page) = phone.text(&format!("/signin/link?token={}", token.as_str())).await;
    assert_eq!(status, 200);
    assert!(page.contains(&address) && page.contains("Sign out every other browser"), "{page}");
    let csrf = hidden_value(&page, "csrf").unwrap();
    let r = phone
        .post_form("/signin/link", &[("csrf", csrf.as_str()), ("token", token.as_str()), ("elsewhere", "out")])
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(phone.text("/gallery").await.0, 200);
    assert_eq!(laptop.text("/gallery").await.0, 303, "the laptop's (cached) session ended");
    assert_eq!(first.text("/gallery").await.0, 303);
    app.shutdown().await;
}

async fn rate_limits_answer_429_with_retry_after(tier: Tier) {
    let app = TestApp::spawn_with(
        tier,
        |c| {
            c.trusted_proxy_hops = 1;
            c.galleries_per_client_per_hour = 3;
            c.signin_mails_per_client_per_hour = 2;
        },
        0,
    )
    .await;
    let ip = client_ip();
    // A client's own X-Forwarded-For entries sit left of what the proxy appended, and are ignored.
    for forged in ["", "9.9.9.9, ", "8.8.8.8, 7.7.7.7, "] {
        let b = Browser::with_headers(&app.base, &[("x-forwarded-for", &format!("{forged}{ip}"))]);
        upload_ok(&app, &b, &email()).await;
    }
    let b = Browser::with_headers(&app.base, &[("x-forwarded-for", &format!("1.2.3.4, {ip}"))]);
    let r = b.upload(Some(&email()), "p.png", &png(16, 12)).await;
    assert_eq!(r.status(), 429, "the fourth new gallery from one address in an hour");
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&wait));
    assert!(r.text().await.unwrap().contains("Please try again in"));
    // Another client is not affected.
    let other = Browser::with_headers(&app.base, &[("x-forwarded-for", &client_ip())]);
    upload_ok(&app, &other, &email()).await;

    // Sign-in mails from one client address: the third in an hour is refused.
    let b = Browser::with_headers(&app.base, &[("x-forwarded-for", &ip)]);
    let csrf = b.csrf().await;
    for _ in 0..2 {
        let r = b.post_form("/signin", &[("csrf", &csrf), ("email", &email())]).await;
        assert_eq!(r.status(), 200);
    }
    let r = b.post_form("/signin", &[("csrf", &csrf), ("email", &email())]).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    app.shutdown().await;
}

async fn the_storage_quota_is_kept(tier: Tier) {
    let first_bytes = png(64, 64).len() as u64;
    let app = TestApp::spawn_with(tier, |c| c.quota_bytes_per_person = first_bytes + 100, 0).await;
    let b = app.browser();
    let me = email();
    let r = b.upload(Some(&me), "one.png", &png(64, 64)).await;
    assert_eq!(r.status(), 303);
    let r = b.upload(Some(&me), "two.png", &png(64, 64)).await;
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("delete some pictures"));
    app.shutdown().await;
}

// ---- The connection and the body: embedded tier (no store is involved). ----

fn addr(app: &TestApp) -> SocketAddr {
    app.base.trim_start_matches("http://").parse().unwrap()
}

/// Reads until the server closes the connection (or `within` passes); what it said.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

/// Sends a chunked POST /upload whose body is `head` followed by `filler`
/// bytes (up to `total`), as fast as the server takes them. Returns how much
/// was sent before the server stopped it, and its answer.
async fn chunked_upload(app: &TestApp, head: &[u8], filler: u8, total: usize) -> (usize, String) {
    let b = app.browser();
    let csrf_cookie_page = b.text("/form").await.1;
    drop(csrf_cookie_page);
    let mut s = TcpStream::connect(addr(app)).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head = head.to_vec();
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        let chunk = vec![filler; 64 * 1024];
        let mut first = Some(head);
        while sent < total {
            let data = first.take().unwrap_or_else(|| chunk.clone());
            let frame = [format!("{:x}\r\n", data.len()).into_bytes(), data.clone(), b"\r\n".to_vec()].concat();
            if wr.write_all(&frame).await.is_err() {
                break;
            }
            sent += data.len();
        }
        sent
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.expect("the server answers");
    drop(rd);
    let sent = tokio::time::timeout(Duration::from_secs(60), writer).await.expect("the writer stops").unwrap();
    (sent, String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_that_never_reaches_a_boundary_is_refused_early() {
    let app = TestApp::spawn_with(Tier::Embedded, |_| {}, 0).await;
    const TOTAL: usize = 256 * 1024 * 1024;
    let before = rss_kib();
    let (sent, answer) = chunked_upload(&app, b"no boundary here", b'a', TOTAL).await;
    let grew_mib = rss_kib().saturating_sub(before) / 1024;
    eprintln!("preamble flood: sent {} KiB before the answer; RSS grew {grew_mib} MiB", sent / 1024);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(sent < TOTAL, "the server stopped reading long before 256 MiB");
    assert!(grew_mib < 64, "memory stays bounded (grew {grew_mib} MiB)");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn part_headers_that_never_end_are_refused_early() {
    let app = TestApp::spawn_with(Tier::Embedded, |_| {}, 0).await;
    const TOTAL: usize = 256 * 1024 * 1024;
    let before = rss_kib();
    let (sent, answer) =
        chunked_upload(&app, b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; x=", b'a', TOTAL).await;
    let grew_mib = rss_kib().saturating_sub(before) / 1024;
    eprintln!("header flood: sent {} KiB before the answer; RSS grew {grew_mib} MiB", sent / 1024);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(sent < TOTAL);
    assert!(grew_mib < 64, "memory stays bounded (grew {grew_mib} MiB)");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_sent_headers_and_idle_connections_are_closed() {
    let app = TestApp::spawn_with(
        Tier::Embedded,
        |c| {
            c.header_timeout_secs = 1;
            c.idle_timeout_secs = 2;
        },
        0,
    )
    .await;
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr(&app)).await.unwrap();
        s.write_all(b"GET /form HTTP/1.1\r\nHost: t\r\nX-a: ").await.unwrap();
        slow.push(s);
    }
    let mut silent = TcpStream::connect(addr(&app)).await.unwrap();
    for s in &mut slow {
        assert!(read_until_closed(s, Duration::from_secs(15)).await.is_some(), "half-sent headers are cut off");
    }
    assert!(read_until_closed(&mut silent, Duration::from_secs(15)).await.is_some(), "an idle connection is closed");
    // Nobody else noticed.
    assert_eq!(app.browser().get("/form").await.status(), 200);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_that_goes_silent_mid_file_is_stopped_and_its_spool_freed() {
    let app = TestApp::spawn_with(Tier::Embedded, |c| c.idle_timeout_secs = 2, 0).await;
    let b = app.browser();
    let csrf = b.csrf().await;
    let cookie = format!("fs_anon={}", b.cookie("fs_anon").unwrap());
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    let picture = png(200, 200);
    let mut body = format!(
        "--XyZ\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n--XyZ\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\n{}\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n",
        email()
    )
    .into_bytes();
    body.extend_from_slice(&picture[..picture.len() / 2]);
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: {}\r\n\r\n",
        body.len() + picture.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body).await.unwrap();
    let spool = app.config.data_dir.join("spool");
    // The half file is spooled, then the client goes silent.
    let answer = read_until_closed(&mut s, Duration::from_secs(20)).await.expect("the server gives up on it");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(spooled_files(&spool), 0, "the spooled part is gone");
    assert_eq!(app.upload_count().await, 0);
    app.shutdown().await;
}

/// The uploads in the spool: each server's folder there holds them beside its lock.
fn spooled_files(spool: &std::path::Path) -> usize {
    std::fs::read_dir(spool)
        .unwrap()
        .flatten()
        .map(|server| match std::fs::read_dir(server.path()) {
            Ok(files) => files.flatten().filter(|f| f.file_name() != ".lock").count(),
            Err(_) => 1,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_per_client_are_capped_and_others_still_served() {
    let app = TestApp::spawn_with(Tier::Embedded, |c| c.max_connections_per_client = 5, 0).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(addr(&app)).await.unwrap());
    }
    let mut sixth = TcpStream::connect(addr(&app)).await.unwrap();
    let _ = sixth.write_all(b"GET /form HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let said = read_until_closed(&mut sixth, Duration::from_secs(10)).await.expect("closed at once");
    assert!(said.is_empty(), "the sixth connection from one address gets nothing");
    // Another address (127.0.0.2 is this machine too) is served.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket.connect(addr(&app)).await.unwrap();
    other.write_all(b"GET /form HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await.unwrap();
    let page = read_until_closed(&mut other, Duration::from_secs(10)).await.unwrap();
    assert!(page.starts_with(b"HTTP/1.1 200"));
    drop(held);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_spool_budget_an_upload_gets_503_and_nothing_else_breaks() {
    let big = jpeg(800, 600);
    let small = png(16, 16);
    let budget = (big.len() / 2) as u64;
    assert!((small.len() as u64) < budget);
    let app = TestApp::spawn_with(Tier::Embedded, |c| c.spool_budget_bytes = budget, 0).await;
    let b = app.browser();
    let me = email();
    let r = b.upload(Some(&me), "big.jpg", &big).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let r = b.upload(Some(&me), "small.png", &small).await;
    assert_eq!(r.status(), 303, "the budget came back: a small upload goes through");
    assert_eq!(b.text("/gallery").await.0, 200);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_per_client_are_capped() {
    let app = TestApp::spawn_with(Tier::Embedded, |c| c.max_uploads_per_client = 1, 0).await;
    // One upload held open mid-body.
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 100000\r\n\r\n--XyZ\r\n",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = app.browser().upload(Some(&email()), "p.png", &png(8, 8)).await;
    assert_eq!(r.status(), 429);
    drop(s);
    let started = Instant::now();
    loop {
        let r = app.browser().upload(Some(&email()), "p.png", &png(8, 8)).await;
        if r.status() == 303 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the slot comes back when the first upload ends");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.shutdown().await;
}

// ---- Address enumeration ----

/// An SMTP server that accepts connections and never says a word: a mail
/// sent on the request path would hold the request as long as it hangs.
async fn silent_smtp() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (at, task)
}

async fn signin_answers_the_same_whether_or_not_the_address_has_a_gallery(tier: Tier) {
    let (smtp, _smtp) = silent_smtp().await;
    let app = TestApp::spawn_with(tier, |c| c.mail_url = Some(format!("smtp://127.0.0.1:{}", smtp.port())), 0).await;
    let owner = app.browser();
    let has_gallery = email();
    upload_ok(&app, &owner, &has_gallery).await;
    let b = app.browser();
    let csrf = b.csrf().await;
    let mut pages = Vec::new();
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..10 {
        for (i, address) in [has_gallery.clone(), email()].into_iter().enumerate() {
            let started = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                b.client.post(b.url("/signin")).form(&[("csrf", csrf.as_str()), ("email", &address)]).send(),
            )
            .await
            .expect("the answer does not wait for the mail server")
            .unwrap();
            times[i].push(started.elapsed());
            assert_eq!(r.status(), 200);
            if round == 0 {
                pages.push(r.text().await.unwrap().replace(&address, "ADDRESS"));
            }
        }
    }
    assert_eq!(pages[0], pages[1], "the same page either way");
    for t in &mut times {
        t.sort();
    }
    eprintln!(
        "sign-in answer, median of 10: {:?} with a gallery, {:?} without (reported, not asserted)",
        times[0][5], times[1][5]
    );
    app.shutdown().await;
}
