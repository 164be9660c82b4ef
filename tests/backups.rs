//! Database backups into the blob store (issue 16): the fleet's schedule
//! keeps the newest N, and one restores through the admin API; the admin
//! routes take, list and restore backups and refuse what is not one.

mod common;

use std::time::{Duration, Instant};

use common::*;
use flipstack_core::backups::{BackupName, Period};
use flipstack_core::domain::now_millis;
use flipstack_core::status::{BackupDone, BackupInfo};
use tokio::io::AsyncWriteExt;

tier_tests!(
    scheduled_backups_keep_the_newest_two_and_one_restores,
    the_backup_routes_take_list_restore_and_refuse_what_is_not_a_backup,
);

fn email() -> String {
    format!("backup-{:08x}@example.com", rand::random::<u32>())
}

async fn listed(app: &TestApp) -> Vec<BackupInfo> {
    let r = app.admin_get("/admin/api/backups").await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Every object under `backups/`, whatever its name.
async fn stored_backups(app: &TestApp) -> Vec<String> {
    app.blob_keys().await.into_iter().filter(|k| k.split('/').any(|folder| folder == "backups")).collect()
}

async fn restore(app: &TestApp, name: &str) -> reqwest::Response {
    app.admin_post(&format!("/admin/api/backups/{name}/restore")).await
}

async fn upload_done(app: &TestApp, browser: &Browser, me: &str, name: &str) -> i64 {
    assert_eq!(browser.upload(Some(me), name, &png(40, 30)).await.status(), 303);
    let id = app.latest_upload(me).await.unwrap();
    app.wait_done(id).await;
    id.get()
}

async fn upload_status(app: &TestApp, id: i64) -> u16 {
    app.admin_get(&format!("/admin/api/uploads/{id}")).await.status().as_u16()
}

async fn scheduled_backups_keep_the_newest_two_and_one_restores(tier: Tier) {
    let mut app = TestApp::spawn_with(
        tier,
        |c| {
            c.backup_every = Some(Period::from_secs(1).unwrap());
            c.backup_keep = 2;
        },
        1,
    )
    .await;
    let kept_id = upload_done(&app, &app.browser(), &email(), "kept.png").await;
    let written = r#"flipstack_backups_total{outcome="written"}"#;
    let since_upload = app.metric(written).await;

    // More than two taken since the upload, and then exactly two kept (each
    // backup is written before the oldest goes, so look between two).
    let started = Instant::now();
    let kept = loop {
        let taken = app.metric(written).await - since_upload;
        let listing = listed(&app).await;
        let stored = stored_backups(&app).await;
        if taken >= 3.0 && listing.len() == 2 && stored.len() == 2 {
            break listing;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "after {taken} backups: listed {listing:?}, stored {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(kept[0].name > kept[1].name && kept[0].at > kept[1].at, "newest first: {kept:?}");
    assert!(kept.iter().all(|b| b.bytes > 0 && BackupName::parse(&b.name).is_ok()), "{kept:?}");
    assert_eq!(app.metric(r#"flipstack_backups_total{outcome="failed"}"#).await, 0.0);

    // The schedule stops with its server; one without a schedule takes over,
    // so the backup to restore is not pruned under the test.
    app.server.take().unwrap().shutdown_within(Duration::from_secs(2)).await;
    let mut quiet = app.config.clone();
    quiet.backup_every = None;
    let services = flipstack_core::Services::connect(quiet).await.unwrap();
    let server = flipstack_server::start(services, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    app.base = format!("http://{}", server.addr);
    app.server = Some(server);

    // An upload after the backups, then the older backup restored: the
    // database is as it was then.
    let later_id = upload_done(&app, &app.browser(), &email(), "later.png").await;
    let target = &kept[1].name;
    let r = restore(&app, target).await;
    assert_eq!(r.status(), 200);
    let done: BackupDone = r.json().await.unwrap();
    assert_eq!(&done.name, target);
    assert!(done.rows > 0, "{done:?}");
    assert_eq!(upload_status(&app, kept_id).await, 200, "the upload in the backup is back");
    assert_eq!(upload_status(&app, later_id).await, 404, "the later upload is not in the backup");
    let listing = listed(&app).await;
    let before = done.before.expect("the database as it was is backed up first");
    assert_eq!(listing[0].name, before, "the newest backup is the one from just before: {listing:?}");

    // Restoring that undoes the restore.
    let r = restore(&app, &before).await;
    assert_eq!(r.status(), 200);
    assert_eq!(upload_status(&app, later_id).await, 200, "undone");
    assert_eq!(upload_status(&app, kept_id).await, 200);
    app.shutdown().await;
}

async fn the_backup_routes_take_list_restore_and_refuse_what_is_not_a_backup(tier: Tier) {
    let app = TestApp::spawn_with(tier, |c| c.backup_keep = 2, 1).await;
    assert_eq!(listed(&app).await, vec![], "none yet");
    let me = email();
    let id = upload_done(&app, &app.browser(), &me, "one.png").await;

    // POST takes one now; the listing shows it.
    let r = app.admin_post("/admin/api/backups").await;
    assert_eq!(r.status(), 200);
    let taken: BackupDone = r.json().await.unwrap();
    assert!(taken.rows >= 2 && taken.bytes > 0, "{taken:?}");
    assert_eq!(
        listed(&app).await,
        vec![BackupInfo {
            name: taken.name.clone(),
            bytes: taken.bytes,
            at: BackupName::parse(&taken.name).unwrap().taken_at(),
        }]
    );
    let name = BackupName::parse(&taken.name).unwrap();
    let text = app.services.blobs.get_backup(&name).await.unwrap().unwrap();
    assert!(text.starts_with(b"-- flipstack dump v2\n"), "a flipstack dump");
    assert_eq!(text.len() as u64, taken.bytes);

    // Older backups beyond backup_keep (2) go when one is taken.
    let day = 86_400_000;
    let (two_days, yesterday) = (BackupName::at(now_millis() - 2 * day), BackupName::at(now_millis() - day));
    for old in [&two_days, &yesterday] {
        let mut w = app.services.blobs.backup_writer(old);
        w.write_all(&text).await.unwrap();
        w.shutdown().await.unwrap();
    }
    assert_eq!(listed(&app).await.len(), 3);
    tokio::time::sleep(Duration::from_millis(1000 - now_millis().rem_euclid(1000) as u64)).await;
    let r = app.admin_post("/admin/api/backups").await;
    assert_eq!(r.status(), 200);
    let newest: BackupDone = r.json().await.unwrap();
    let names: Vec<String> = listed(&app).await.into_iter().map(|b| b.name).collect();
    assert_eq!(names, vec![newest.name.clone(), taken.name.clone()], "the newest two are kept");
    assert_eq!(stored_backups(&app).await.len(), 2);

    // What is not a backup's name is refused before anything is read.
    for bad in ["passwd", "..%2F..%2Fetc%2Fpasswd", "flipstack-20261307T181500Z.sql", "flipstack-x.sql"] {
        let r = restore(&app, bad).await;
        assert_eq!(r.status(), 400, "{bad}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("not a backup's name"), "{bad}: {body}");
    }
    let r = restore(&app, yesterday.as_str()).await;
    assert_eq!(r.status(), 404, "pruned, so gone");
    // A backup cut off in transit is refused, and the database stays.
    let cut = BackupName::at(now_millis() - 3 * day);
    let mut w = app.services.blobs.backup_writer(&cut);
    w.write_all(&text[..text.len() / 2]).await.unwrap();
    w.shutdown().await.unwrap();
    let r = restore(&app, cut.as_str()).await;
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("nothing was replaced"), "{body}");
    assert_eq!(upload_status(&app, id).await, 200);

    // A good one restores (the upload stays: it is in it).
    let r = restore(&app, &taken.name).await;
    assert_eq!(r.status(), 200);
    let done: BackupDone = r.json().await.unwrap();
    assert_eq!(done.rows, taken.rows);
    assert_eq!(upload_status(&app, id).await, 200);

    // The orphan sweep leaves backups alone, however old.
    let store = app.services.store.as_ref();
    app.services.blobs.sweep_orphans(store, now_millis() + 1000).await.unwrap();
    assert!(stored_backups(&app).await.len() >= 3, "{:?}", stored_backups(&app).await);
    app.shutdown().await;
}
