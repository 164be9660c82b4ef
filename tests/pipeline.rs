//! The job pipeline under crashes and poison, the admin API, the upload
//! block across instances, and the AWS parts (SQS reconciler, CloudWatch).

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use flipstack_core::domain::{UploadId, UploadState, WorkerStatus};

tier_tests!(
    uploads_survive_workers_killed_at_random,
    a_poison_picture_fails_with_a_reason,
    a_block_reaches_another_server_within_a_second,
    the_admin_api_wants_its_token_and_dumps_restorable_sql,
    paused_workers_flip_nothing_until_resumed_and_failures_retry_and_redrive,
    the_operators_listing_finds_uploads_by_state_format_reason_and_person,
);

fn email() -> String {
    format!("pipe-{:08x}@example.com", rand::random::<u32>())
}

/// A picture that takes a worker some milliseconds, so kills land mid-job.
fn busy_jpeg(seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(1400, 1000, |x, y| {
        image::Rgb([(x ^ y ^ seed) as u8, (x * 7 + seed) as u8, (y / 4) as u8])
    });
    let t = turbojpeg::Image {
        pixels: img.as_raw().as_slice(),
        width: 1400,
        pitch: 4200,
        height: 1000,
        format: turbojpeg::PixelFormat::RGB,
    };
    turbojpeg::compress(t, 92, turbojpeg::Subsamp::Sub2x2).unwrap().to_vec()
}

async fn uploads_survive_workers_killed_at_random(tier: Tier) {
    // The embedded tier runs the database queue; the aws tier runs SQS. The
    // mariadb tier's copy is filtered out by .config/nextest.toml (skipped).
    assert_ne!(tier, Tier::Mariadb, "the database-queue path runs on the embedded tier");
    let app = TestApp::spawn_with(tier, |c| c.job_lease_secs = 2, 0).await;
    const UPLOADS: usize = 200;
    const KILLS: usize = 20;
    const WORKERS: usize = 2;
    let pictures: Vec<Vec<u8>> = (0..4).map(busy_jpeg).collect();

    // The test is the supervisor: it keeps two `flipstack work` processes running.
    let mut workers: Vec<Child> = (0..WORKERS).map(|_| app.worker_process()).collect();
    let mut kills = 0;
    let mut next_kill = Instant::now() + Duration::from_millis(300);

    let uploader = {
        let base = app.base.clone();
        let pictures = pictures.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for lane in 0..4 {
                let (base, pictures) = (base.clone(), pictures.clone());
                tasks.push(tokio::spawn(async move {
                    let b = Browser::new(&base);
                    let me = email();
                    for i in 0..UPLOADS / 4 {
                        let r = b.upload(Some(&me), "busy.jpg", &pictures[(lane + i) % 4]).await;
                        assert_eq!(r.status(), 303, "every upload is accepted");
                    }
                    me
                }));
            }
            let mut people = Vec::new();
            for t in tasks {
                people.push(t.await.unwrap());
            }
            people
        })
    };

    let started = Instant::now();
    while kills < KILLS {
        assert!(started.elapsed() < Duration::from_secs(120), "the kills took too long");
        if Instant::now() >= next_kill {
            let victim = rand::random_range(0..WORKERS);
            workers[victim].kill().unwrap(); // SIGKILL
            workers[victim].wait().unwrap();
            kills += 1;
            next_kill = Instant::now() + Duration::from_millis(rand::random_range(150..700));
        }
        for w in workers.iter_mut() {
            if w.try_wait().unwrap().is_some() {
                *w = app.worker_process();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let people = uploader.await.unwrap();

    // Every upload ends done, once, with its flipped picture.
    let mut ids = Vec::new();
    for me in &people {
        let person = app
            .services
            .store
            .person_by_email(&flipstack_core::domain::Email::parse(me).unwrap())
            .await
            .unwrap()
            .unwrap();
        let page = app
            .services
            .store
            .gallery_page(person.id, 0, 1000, flipstack_core::store::ReadFrom::Primary)
            .await
            .unwrap();
        ids.extend(page.page.items.iter().map(|i| i.id));
    }
    assert_eq!(ids.len(), UPLOADS, "no upload lost");
    let deadline = Instant::now() + Duration::from_secs(240);
    for id in &ids {
        loop {
            for w in workers.iter_mut() {
                if w.try_wait().unwrap().is_some() {
                    *w = app.worker_process();
                }
            }
            let u = app.services.store.upload(*id).await.unwrap().unwrap();
            if u.state.is_terminal() {
                assert_eq!(u.state, UploadState::Done, "upload {id}: {:?}", u.failure_reason);
                break;
            }
            assert!(Instant::now() < deadline, "upload {id} still {:?}", u.state);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut retaken = 0;
    for id in &ids {
        let events = app.services.store.events_for_upload(*id).await.unwrap();
        assert_eq!(
            events.iter().filter(|e| e.kind == flipstack_core::domain::EventKind::Done).count(),
            1,
            "upload {id} completed once: {events:?}"
        );
        let u = app.services.store.upload(*id).await.unwrap().unwrap();
        if u.claims > 1 {
            retaken += 1;
        }
    }
    eprintln!("{UPLOADS} uploads done after {KILLS} kills; {retaken} jobs were taken over from a killed worker");
    let b = app.browser();
    // Spot-check the stored results: each flipped object is the flip of its original.
    let keys = app.blob_keys().await;
    for id in ids.iter().take(20) {
        assert!(keys.iter().any(|k| k.ends_with(&format!("flipped/{id}"))), "upload {id} has its flipped object");
        let original =
            app.services.blobs.get_bytes(flipstack_core::blob::BlobKind::Original, *id).await.unwrap().unwrap();
        let flipped =
            app.services.blobs.get_bytes(flipstack_core::blob::BlobKind::Flipped, *id).await.unwrap().unwrap();
        assert_is_flip(&format!("upload {id}"), &original, &flipped);
    }
    drop(b);
    for mut w in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    app.shutdown().await;
}

async fn a_poison_picture_fails_with_a_reason(tier: Tier) {
    let app = TestApp::spawn(tier).await;
    let b = app.browser();
    let me = email();
    let r = b.upload(Some(&me), "poison.png", &poison_png()).await;
    assert_eq!(r.status(), 303, "it looks like a PNG to the upload check");
    let id = app.latest_upload(&me).await.unwrap();
    let u = app.wait_finished(id, Duration::from_secs(60)).await;
    assert_eq!(u.state, UploadState::Failed);
    let reason = u.failure_reason.unwrap_or_default();
    assert!(reason.contains("could not be decoded"), "a reason a person can read: {reason}");
    let (_, html) = b.text("/gallery").await;
    assert!(
        html.contains("data-state=\"failed\"") && html.contains("could not be decoded"),
        "the gallery shows the failure and why"
    );
    if tier == Tier::Aws {
        // Never acknowledged, the message goes round until the redrive policy parks it.
        let aws = flipstack_core::aws::AwsSettings {
            region: "us-east-1".into(),
            endpoint: app.config.aws_endpoint_url.clone(),
        };
        let sqs = aws_sdk_sqs::Client::new(&flipstack_core::aws::sdk_config(&aws).await);
        let dlq = sqs
            .get_queue_url()
            .queue_name(format!("{}-dlq", app.config.queue_url.rsplit('/').next().unwrap()))
            .send()
            .await
            .unwrap();
        let dlq = dlq.queue_url().unwrap().to_owned();
        let started = Instant::now();
        loop {
            let depth = app.services.queue.depth().await.unwrap();
            if depth.dead_letters.unwrap_or(0) >= 1 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "the poison message reaches the dead-letter queue");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let parked = sqs.receive_message().queue_url(&dlq).visibility_timeout(0).send().await.unwrap();
        let bodies: Vec<_> = parked.messages().iter().filter_map(|m| m.body()).collect();
        assert!(bodies.contains(&id.to_string().as_str()), "the dead letter names the upload: {bodies:?}");
    }
    app.shutdown().await;
}

async fn a_block_reaches_another_server_within_a_second(tier: Tier) {
    let app = TestApp::spawn(tier).await;
    let other = second_server(&app).await;
    let b = Browser::new(&other.base);
    let me = email();
    let r = b.upload(Some(&me), "before.png", &png(12, 12)).await;
    assert_eq!(r.status(), 303, "the second server takes uploads");

    let r = app.admin_post("/admin/api/uploads/block").await;
    assert_eq!(r.status(), 200);
    let blocked_at = Instant::now();
    let refused_after = loop {
        let r = b.upload(Some(&me), "during.png", &png(12, 12)).await;
        if r.status() == 503 {
            assert!(r.text().await.unwrap().contains("Uploads are paused"));
            break blocked_at.elapsed();
        }
        assert_eq!(r.status(), 303);
        assert!(blocked_at.elapsed() < Duration::from_secs(1), "the block reaches the other server within a second");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("the other server refused uploads {refused_after:?} after the block");
    let (_, form) = b.text("/form").await;
    assert!(form.contains("Uploads are paused"), "the form says so");
    let status: serde_json::Value = app.admin_get("/admin/api/status").await.json().await.unwrap();
    assert_eq!(status["blocked"], true);

    assert_eq!(app.admin_post("/admin/api/uploads/unblock").await.status(), 200);
    let unblocked_at = Instant::now();
    loop {
        let r = b.upload(Some(&me), "after.png", &png(12, 12)).await;
        if r.status() == 303 {
            break;
        }
        assert!(unblocked_at.elapsed() < Duration::from_secs(1), "unblocking reaches it within a second too");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.shutdown().await;
}

async fn the_admin_api_wants_its_token_and_dumps_restorable_sql(tier: Tier) {
    let app = TestApp::spawn(tier).await;
    let client = app.admin();
    let routes = [
        ("GET", "/admin/api/status"),
        ("POST", "/admin/api/uploads/block"),
        ("POST", "/admin/api/uploads/unblock"),
        ("GET", "/admin/api/dump"),
        ("GET", "/admin/api/events"),
        ("POST", "/admin/api/uploads/retry"),
        ("POST", "/admin/api/uploads/1/retry"),
        ("POST", "/admin/api/queue/redrive"),
        ("POST", "/admin/api/workers/pause"),
        ("POST", "/admin/api/workers/resume"),
        ("POST", "/admin/api/pool/desired?count=1"),
        ("GET", "/admin/api/uploads"),
        ("GET", "/admin/api/uploads/1"),
        ("GET", "/admin/api/logs"),
        ("GET", "/admin/api/backups"),
        ("POST", "/admin/api/backups"),
        ("POST", "/admin/api/backups/flipstack-20261207T181500Z.sql/restore"),
        ("GET", "/admin/api/nothing-here"),
    ];
    for (method, path) in routes {
        for token in [None, Some("wrong"), Some(&app.admin_token[..app.admin_token.len() - 1])] {
            let mut req = client.request(method.parse().unwrap(), format!("{}{path}", app.base));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {token:?}");
            assert!(r.headers().contains_key("www-authenticate"));
        }
    }
    assert_eq!(app.admin_get("/admin/api/status").await.status(), 200, "and the right token works");
    assert!(
        app.services.store.setting("uploads_blocked").await.unwrap().is_none_or(|v| v != "true"),
        "nothing was blocked by the refused calls"
    );
    assert!(
        app.services.store.setting("workers_paused").await.unwrap().is_none_or(|v| v != "true"),
        "nothing was paused by the refused calls"
    );
    assert!(app.services.blobs.list_backups().await.unwrap().is_empty(), "no backup was taken by the refused calls");
    let logs = app.admin_get("/admin/api/logs").await;
    assert_eq!(logs.status(), 200, "the log view's route answers with the token");
    let _: Vec<flipstack_core::status::LogLine> = logs.json().await.unwrap();

    // The events stream carries jobs and gallery reads.
    let events = app.admin_get("/admin/api/events").await;
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let b = app.browser();
    let me = email();
    let r = b.upload(Some(&me), "one.png", &png(20, 20)).await;
    assert_eq!(r.status(), 303);
    let id = app.latest_upload(&me).await.unwrap();
    app.wait_done(id).await;
    b.get("/gallery").await;
    let mut stream = events.bytes_stream();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    use futures::StreamExt;
    while !(seen.contains("event:job") && seen.contains("\"kind\":\"done\"") && seen.contains("event:read")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            _ => panic!("the event stream did not show the job and the read: {seen}"),
        }
        if seen.contains("event:job") && !seen.contains("event:read") {
            b.get("/gallery").await;
        }
    }
    drop(stream);

    // The streamed dump restores to identical rows.
    let dump = app.admin_get("/admin/api/dump").await;
    assert_eq!(dump.status(), 200);
    let sql = dump.text().await.unwrap();
    let file = app.data.path().join("admin-dump.sql");
    std::fs::write(&file, &sql).unwrap();
    let target = tempfile::tempdir().unwrap();
    let mut config = config_for(tier, target.path()).await;
    config.queue_url = "db://".into();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flipstack"))
        .args(["db", "restore", file.to_str().unwrap()])
        .envs(config.to_env())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restored = flipstack_core::Services::connect(config).await.unwrap();
    let mut again = Vec::new();
    flipstack_core::store::dump::write_dump(restored.store.as_ref(), &mut again, |_, _| {}).await.unwrap();
    let strip = |s: &str| s.lines().filter(|l| !l.starts_with("-- from a ")).map(String::from).collect::<Vec<_>>();
    assert_eq!(strip(&String::from_utf8(again).unwrap()), strip(&sql), "the restored database dumps the same rows");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aws_a_job_whose_message_was_lost_is_sent_again() {
    Tier::Aws.require();
    let mut app = TestApp::spawn_with(Tier::Aws, |c| c.requeue_after_secs = 2, 0).await;
    let b = app.browser();
    let me = email();
    assert_eq!(b.upload(Some(&me), "lost.png", &png(16, 16)).await.status(), 303);
    let id: UploadId = app.latest_upload(&me).await.unwrap();
    // The message is lost (as if the send failed, or the queue lost it).
    let aws =
        flipstack_core::aws::AwsSettings { region: "us-east-1".into(), endpoint: app.config.aws_endpoint_url.clone() };
    let sqs = aws_sdk_sqs::Client::new(&flipstack_core::aws::sdk_config(&aws).await);
    sqs.purge_queue().queue_url(&app.config.queue_url).send().await.unwrap();
    assert_eq!(app.services.queue.depth().await.unwrap().visible, 0);
    app.start_worker().await;
    let u = app.wait_finished(id, Duration::from_secs(30)).await;
    assert_eq!(u.state, UploadState::Done, "the reconciler sent the job again");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aws_metrics_reach_cloudwatch() {
    Tier::Aws.require();
    let endpoint = env("FLIPSTACK_TEST_AWS_ENDPOINT");
    let aws = flipstack_core::aws::AwsSettings { region: "us-east-1".into(), endpoint: Some(endpoint) };
    let namespace = format!("flipstack-test-{:08x}", rand::random::<u32>());
    let publisher = flipstack_core::aws::cloudwatch::Publisher::new(&aws, &namespace, "web").await;
    let metrics = flipstack_core::metrics::Metrics::new();
    let before = metrics.snapshot();
    metrics.cache_hits.inc();
    metrics.cache_hits.inc();
    metrics.cache_misses.inc();
    metrics.observe_job(0.25);
    let datums = publisher.datums(&before, &metrics.snapshot(), Some(7));
    publisher.put(datums).await.expect("PutMetricData is accepted");
    let cw = aws_sdk_cloudwatch::Client::new(&flipstack_core::aws::sdk_config(&aws).await);
    let listed = cw.list_metrics().namespace(&namespace).send().await.unwrap();
    let names: Vec<_> = listed.metrics().iter().filter_map(|m| m.metric_name()).collect();
    for want in ["CacheHits", "CacheMisses", "JobSeconds", "QueueBacklog", "GalleryReads"] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
}

/// The workers' pause holds across processes (a setting on the primary): a
/// worker that sees it claims nothing. Counted in heartbeats, not seconds.
async fn wait_heartbeats(app: &TestApp, status: WorkerStatus, after: i64, beats: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while seen.len() < beats {
        assert!(Instant::now() < deadline, "{beats} heartbeats saying {status:?}; saw {seen:?}");
        let workers = app.services.store.workers().await.unwrap();
        for w in workers.iter().filter(|w| w.status == status && w.heartbeat_at > after) {
            if !seen.contains(&w.heartbeat_at) {
                seen.push(w.heartbeat_at);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn paused_workers_flip_nothing_until_resumed_and_failures_retry_and_redrive(tier: Tier) {
    let mut app = TestApp::spawn_with(tier, |_| {}, 0).await;
    let r = app.admin_post("/admin/api/workers/pause").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["paused"], true);
    app.start_worker().await;
    wait_heartbeats(&app, WorkerStatus::Paused, 0, 1).await;

    let b = app.browser();
    let me = email();
    for i in 0..10 {
        assert_eq!(b.upload(Some(&me), &format!("p{i}.png"), &png(12 + i, 12)).await.status(), 303);
    }
    let person = app.services.store.person_by_email(&flipstack_core::domain::Email::parse(&me).unwrap()).await;
    let person = person.unwrap().unwrap();
    let page = app.services.store.gallery_page(person.id, 0, 100, flipstack_core::store::ReadFrom::Primary).await;
    let ids: Vec<UploadId> = page.unwrap().page.items.iter().map(|i| i.id).collect();
    assert_eq!(ids.len(), 10);
    // Two heartbeats of a paused worker after the uploads: it looked, and took nothing.
    wait_heartbeats(&app, WorkerStatus::Paused, flipstack_core::domain::now_millis(), 2).await;
    for id in &ids {
        let u = app.services.store.upload(*id).await.unwrap().unwrap();
        assert_eq!((u.state, u.claims), (UploadState::Pending, 0), "upload {id} is untouched while paused");
    }
    let status: serde_json::Value = app.admin_get("/admin/api/status").await.json().await.unwrap();
    assert_eq!(status["workers_paused"], true, "the status says the workers are paused");

    let r = app.admin_post("/admin/api/workers/resume").await;
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["paused"], false);
    for id in &ids {
        app.wait_done(*id).await;
    }

    // A poison picture fails; a retry (nothing replaced) fails it again, for the same reason.
    assert_eq!(b.upload(Some(&me), "poison.png", &poison_png()).await.status(), 303);
    let poison = app.latest_upload(&me).await.unwrap();
    let first = app.wait_finished(poison, Duration::from_secs(60)).await;
    assert_eq!(first.state, UploadState::Failed);
    let reason = first.failure_reason.clone().unwrap();
    let r = app.admin_post(&format!("/admin/api/uploads/{poison}/retry")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["retried"], serde_json::json!([poison.get()]));
    let again = app.wait_finished(poison, Duration::from_secs(60)).await;
    assert_eq!(again.state, UploadState::Failed);
    assert_eq!(again.failure_reason.as_deref(), Some(reason.as_str()), "the same reason");
    // A retry of one that is not failed changes nothing.
    let r = app.admin_post(&format!("/admin/api/uploads/{}/retry", ids[0])).await;
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["retried"], serde_json::json!([]));
    // Retry all: the failed one, and only it.
    let r = app.admin_post("/admin/api/uploads/retry").await;
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["retried"], serde_json::json!([poison.get()]));
    let third = app.wait_finished(poison, Duration::from_secs(60)).await;
    assert_eq!(third.failure_reason.as_deref(), Some(reason.as_str()));
    let kinds =
        |events: Vec<flipstack_core::store::Event>| events.into_iter().map(|e| e.kind.as_str()).collect::<Vec<_>>();
    let seen = kinds(app.services.store.events_for_upload(poison).await.unwrap());
    assert_eq!(seen, ["uploaded", "failed", "retried", "failed", "retried", "failed"], "its history");
    let detail: flipstack_core::status::UploadDetail =
        app.admin_get(&format!("/admin/api/uploads/{poison}")).await.json().await.unwrap();
    assert_eq!(kinds(detail.events), seen, "the drill-down shows the same history");
    assert_eq!(detail.upload.failure_reason.as_deref(), Some(reason.as_str()));

    if tier != Tier::Aws {
        let r = app.admin_post("/admin/api/queue/redrive").await;
        assert_eq!(r.status(), 409, "the database queue has no dead-letter queue");
        assert!(r.text().await.unwrap().contains("no dead-letter queue"));
        app.shutdown().await;
        return;
    }
    // SQS: never acknowledged, the poison message reaches the dead-letter queue.
    let started = Instant::now();
    while app.services.queue.depth().await.unwrap().dead_letters.unwrap_or(0) == 0 {
        assert!(started.elapsed() < Duration::from_secs(90), "the poison message reaches the dead-letter queue");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let before = kinds(app.services.store.events_for_upload(poison).await.unwrap()).len();
    let r = app.admin_post("/admin/api/queue/redrive").await;
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = r.json().await.unwrap();
    let redriven: Vec<i64> = serde_json::from_value(answer["redriven"].clone()).unwrap();
    assert!(redriven.contains(&poison.get()), "the dead letter went back: {answer}");
    assert_eq!(answer["retried"], serde_json::json!([poison.get()]), "its upload retried once: {answer}");
    let started = Instant::now();
    loop {
        let seen = kinds(app.services.store.events_for_upload(poison).await.unwrap());
        let after = &seen[before..];
        if after.len() >= 2 {
            assert_eq!(after[..2], ["retried", "failed"], "the redriven job ran and failed again: {seen:?}");
            assert_eq!(after.iter().filter(|k| **k == "retried").count(), 1, "one retry per redrive: {seen:?}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the redriven job ran and failed again: {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last = app.services.store.upload(poison).await.unwrap().unwrap();
    assert_eq!(last.failure_reason.as_deref(), Some(reason.as_str()));
    app.shutdown().await;
}

/// `GET /admin/api/uploads?query`: the ids and owners' hashes listed.
async fn listed(app: &TestApp, query: &str) -> Vec<(UploadId, String)> {
    let r = app.admin_get(&format!("/admin/api/uploads?{query}")).await;
    assert_eq!(r.status(), 200, "{query}");
    let rows: Vec<flipstack_core::status::UploadListing> = r.json().await.unwrap();
    rows.into_iter().map(|l| (l.upload.id, l.person_hash)).collect()
}

async fn listed_ids(app: &TestApp, query: &str) -> Vec<UploadId> {
    listed(app, query).await.into_iter().map(|(id, _)| id).collect()
}

async fn the_operators_listing_finds_uploads_by_state_format_reason_and_person(tier: Tier) {
    let app = TestApp::spawn(tier).await;
    let (b, c) = (app.browser(), app.browser());
    let (me, other) = (email(), email());
    assert_eq!(b.upload(Some(&me), "good.png", &png(20, 20)).await.status(), 303);
    let good = app.latest_upload(&me).await.unwrap();
    assert_eq!(b.upload(Some(&me), "bad.png", &poison_png()).await.status(), 303);
    let bad = app.latest_upload(&me).await.unwrap();
    assert_eq!(c.upload(Some(&other), "theirs.jpg", &jpeg(24, 16)).await.status(), 303);
    let theirs = app.latest_upload(&other).await.unwrap();
    app.wait_done(good).await;
    app.wait_finished(bad, Duration::from_secs(60)).await;
    app.wait_done(theirs).await;
    let all = listed(&app, "").await;
    assert_eq!(all.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [theirs, bad, good], "newest first");
    let my_hash = flipstack_core::domain::Email::parse(&me).unwrap().hashed_id();
    assert_eq!(all[1].1, my_hash, "each with its owner's hash");
    assert_eq!(listed_ids(&app, "state=failed").await, [bad]);
    assert_eq!(listed_ids(&app, "format=jpeg").await, [theirs]);
    assert_eq!(listed_ids(&app, "reason=decoded").await, [bad]);
    assert!(listed_ids(&app, "reason=%25").await.is_empty(), "a % in the reason is a plain character, not a wildcard");
    assert_eq!(listed_ids(&app, &format!("person={}", &my_hash[..6])).await, [bad, good]);
    assert_eq!(listed_ids(&app, "state=done&format=png&limit=1").await, [good]);
    let r = app.admin_get("/admin/api/uploads/99").await;
    assert_eq!(r.status(), 404);
    app.shutdown().await;
}
