//! The data tier: read-your-writes over a lagging replica, the gallery cache
//! (hits without queries, the stale-set race, outages), and dump/restore.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::*;
use flipstack_core::cache::{CacheError, Cached, KvCache};
use flipstack_core::domain::{DisplayName, Email, ImageFormat, PersonId, UploadId, now_millis};
use flipstack_core::gallery::Gallery;
use flipstack_core::store::{AcceptUpload, NewOwner, NewUpload, ReadSource};

tier_tests!(
    a_second_gallery_read_is_cached_and_queries_nothing,
    a_slow_reader_never_leaves_the_cache_older_than_the_database,
    a_burst_of_misses_makes_one_database_read,
    dump_and_restore_give_identical_rows,
    a_dump_of_hostile_names_replays_exactly_through_the_mariadb_client_and_restore
);

fn email() -> String {
    format!("tier-{:08x}@example.com", rand::random::<u32>())
}

async fn upload(app: &TestApp, b: &Browser, email: &str) -> UploadId {
    let r = b.upload(Some(email), "p.png", &png(32, 24)).await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    app.latest_upload(email).await.unwrap()
}

async fn gallery(b: &Browser) -> (u16, String, String) {
    let r = b.get("/gallery").await;
    let status = r.status().as_u16();
    let source = r.headers().get("x-read-source").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, source, r.text().await.unwrap())
}

const REQUEST_QUERIES: &str = "flipstack_db_queries_total{target=";

async fn request_queries(app: &TestApp) -> f64 {
    let text = reqwest::get(format!("{}/metrics", app.base)).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(REQUEST_QUERIES) && l.contains("origin=\"request\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn a_second_gallery_read_is_cached_and_queries_nothing(tier: Tier) {
    let app = TestApp::spawn(tier).await;
    let b = app.browser();
    let me = email();
    let id = upload(&app, &b, &me).await;
    app.wait_done(id).await;
    // The worker's completion reaches the server's cache within its event poll.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, first, html) = gallery(&b).await;
    assert_eq!(status, 200);
    assert_ne!(first, "cache", "the first read after a write misses");
    assert!(html.contains("data-state=\"done\""));
    let hits = app.metric("flipstack_cache_hits_total").await;
    let queries = request_queries(&app).await;
    let (status, second, html2) = gallery(&b).await;
    assert_eq!((status, second.as_str()), (200, "cache"));
    assert_eq!(html2.replace(char::is_whitespace, "").len(), html.replace(char::is_whitespace, "").len());
    assert_eq!(request_queries(&app).await, queries, "the cached read, session check included, made no database query");
    assert_eq!(app.metric("flipstack_cache_hits_total").await, hits + 1.0);
    assert!(app.metric("flipstack_gallery_reads_total{source=\"cache\"}").await >= 1.0);
    app.shutdown().await;
}

/// The real cache, with stores of gallery pages held back while armed: a
/// reader that read the database, then took its time to fill the cache.
struct SlowFill {
    inner: Arc<dyn KvCache>,
    armed: AtomicBool,
    delay: Duration,
}

#[async_trait]
impl KvCache for SlowFill {
    fn kind(&self) -> flipstack_core::domain::CacheBackend {
        self.inner.kind()
    }
    async fn get_many(&self, keys: &[&str]) -> Result<HashMap<String, Cached>, CacheError> {
        self.inner.get_many(keys).await
    }
    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        if key.starts_with("fs:g:") && self.armed.load(Ordering::SeqCst) {
            tokio::time::sleep(self.delay).await;
        }
        self.inner.set(key, value, ttl).await
    }
    async fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, CacheError> {
        self.inner.add(key, value, ttl).await
    }
    async fn cas(&self, key: &str, value: &[u8], ttl: Duration, cas: u64) -> Result<bool, CacheError> {
        self.inner.cas(key, value, ttl, cas).await
    }
    async fn delete(&self, key: &str) -> Result<(), CacheError> {
        self.inner.delete(key).await
    }
}

async fn a_slow_reader_never_leaves_the_cache_older_than_the_database(tier: Tier) {
    let app = TestApp::spawn_with(tier, |_| {}, 0).await;
    let s = &app.services;
    let me = Email::parse(&email()).unwrap();
    let hash = me.hashed_id();
    let person = PersonId::new();
    let add = |n: u64, owner: NewOwner| AcceptUpload {
        upload: NewUpload {
            id: UploadId::new(),
            name: DisplayName::from_client(Some(&format!("{n}.png"))),
            format: ImageFormat::Png,
            bytes: 10,
            width: 1,
            height: 1,
            trace_parent: None,
        },
        owner,
        session: None,
        person_hash: hash.clone(),
        notice: Some(false),
        now: now_millis(),
    };
    let receipt = s.store.accept_upload(add(1, NewOwner::Create { id: person, email: me.clone() })).await.unwrap();
    // Two server instances over one cache: a slow reader and a writer.
    let slow =
        Arc::new(SlowFill { inner: s.cache.clone(), armed: AtomicBool::new(false), delay: Duration::from_millis(600) });
    let reader = Gallery::new(s.store.clone(), slow.clone(), s.metrics.clone(), Duration::from_secs(300));
    let writer = Gallery::new(s.store.clone(), s.cache.clone(), s.metrics.clone(), Duration::from_secs(300));
    writer.invalidate(&hash, &receipt).await;
    assert_eq!(reader.read(person, &hash, 0, 12).await.unwrap().page.total, 1);

    // The writer's upload invalidates; the reader misses, reads one picture, and is slow to fill.
    writer.invalidate(&hash, &Default::default()).await;
    slow.armed.store(true, Ordering::SeqCst);
    let r = reader.clone();
    let h = hash.clone();
    let slow_read = tokio::spawn(async move { r.read(person, &h, 0, 12).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(250)).await;
    let receipt = s.store.accept_upload(add(2, NewOwner::Existing(person))).await.unwrap();
    writer.invalidate(&hash, &receipt).await;
    let stale = slow_read.await.unwrap();
    assert_eq!(stale.page.total, 1, "the slow reader read before the write");
    // Its old view did reach the cache…
    let key = format!("fs:g:{hash}:0:12");
    let raw = s.cache.get_many(&[&key]).await.unwrap();
    let cached: serde_json::Value = serde_json::from_slice(&raw[&key].data).unwrap();
    assert_eq!(cached["page"]["total"], 1, "the race happened: the stale page was stored after the write");
    // …but is never served: every later read sees both pictures.
    slow.armed.store(false, Ordering::SeqCst);
    for g in [&reader, &writer] {
        let read = g.read(person, &hash, 0, 12).await.unwrap();
        assert_eq!(read.page.total, 2, "read from {:?}", read.source);
    }
    let again = writer.read(person, &hash, 0, 12).await.unwrap();
    assert_eq!((again.page.total, again.source), (2, ReadSource::Cache), "and the fresh page is what the cache serves");
    app.shutdown().await;
}

async fn a_burst_of_misses_makes_one_database_read(tier: Tier) {
    use flipstack_core::metrics::TargetLabel;
    let app = TestApp::spawn_with(tier, |_| {}, 0).await;
    let s = &app.services;
    let me = Email::parse(&email()).unwrap();
    let hash = me.hashed_id();
    let person = PersonId::new();
    let receipt = s
        .store
        .accept_upload(AcceptUpload {
            upload: NewUpload {
                id: UploadId::new(),
                name: DisplayName::from_client(Some("a.png")),
                format: ImageFormat::Png,
                bytes: 10,
                width: 1,
                height: 1,
                trace_parent: None,
            },
            owner: NewOwner::Create { id: person, email: me.clone() },
            session: None,
            person_hash: hash.clone(),
            notice: Some(false),
            now: now_millis(),
        })
        .await
        .unwrap();
    // Filling the cache takes a while, so the misses below overlap.
    let slow =
        Arc::new(SlowFill { inner: s.cache.clone(), armed: AtomicBool::new(true), delay: Duration::from_millis(300) });
    let gallery = Gallery::new(s.store.clone(), slow, s.metrics.clone(), Duration::from_secs(300));
    gallery.invalidate(&hash, &receipt).await;
    let queries = || {
        ["primary", "replica"]
            .iter()
            .map(|t| s.metrics.db_queries.get_or_create(&TargetLabel { target: t, origin: "request" }).get())
            .sum::<u64>()
    };
    let before = queries();
    let reads: Vec<_> = (0..20)
        .map(|_| {
            let (g, h) = (gallery.clone(), hash.clone());
            tokio::spawn(async move { g.read(person, &h, 0, 12).await.unwrap() })
        })
        .collect();
    for r in reads {
        assert_eq!(r.await.unwrap().page.total, 1);
    }
    let made = queries() - before;
    // One read; on MariaDB a replica that could not wait for the write hands it to the primary.
    let most = if tier == Tier::Embedded { 1 } else { 2 };
    assert!((1..=most).contains(&made), "20 concurrent misses made {made} database reads");
    app.shutdown().await;
}

async fn dump_and_restore_give_identical_rows(tier: Tier) {
    let app = TestApp::spawn(tier).await;
    let b = app.browser();
    let me = email();
    for _ in 0..3 {
        let id = upload(&app, &b, &me).await;
        app.wait_done(id).await;
    }
    // A name with quotes, a line break and non-ASCII survives the round trip.
    let r = b
        .upload_raw(
            &[("csrf", &b.csrf().await)],
            Some(("it's a \u{201c}name\u{201d}, ünïcødé.png".as_bytes(), &png(8, 8))),
        )
        .await;
    assert_eq!(r.status(), 303);
    app.wait_done(app.latest_upload(&me).await.unwrap()).await;
    // A `notices` row too. Asked for after everything finished, it covers it
    // all: no notice is due, so no row changes between dump and compare.
    let person = app.services.store.person_by_email(&Email::parse(&me).unwrap()).await.unwrap().unwrap().id;
    app.services.store.set_notice_wanted(person, true, now_millis()).await.unwrap();

    let dump = app.data.path().join("dump.sql");
    let bin = env!("CARGO_BIN_EXE_flipstack");
    let out = std::process::Command::new(bin)
        .args(["db", "dump", "--out", dump.to_str().unwrap()])
        .envs(app.config.to_env())
        .output()
        .unwrap();
    assert!(out.status.success(), "dump: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&dump).unwrap();
    assert!(text.starts_with("-- flipstack dump v2") && text.contains("CREATE TABLE uploads"));
    assert!(text.contains("INSERT INTO notices"), "the notices table is dumped");

    // An empty database of the same kind.
    let target = tempfile::tempdir().unwrap();
    let mut config = config_for(tier, target.path()).await;
    config.queue_url = "db://".into();
    let restore = |force: bool| {
        let mut args = vec!["db", "restore", dump.to_str().unwrap()];
        if force {
            args.push("--force");
        }
        std::process::Command::new(bin).args(args).envs(config.to_env()).output().unwrap()
    };
    let out = restore(false);
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    let out = restore(false);
    assert!(!out.status.success(), "a second restore finds the database not empty");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert!(restore(true).status.success(), "--force replaces the rows");

    let restored = flipstack_core::Services::connect(config).await.unwrap();
    let before = store_rows(app.services.store.clone()).await;
    let after = store_rows(restored.store.clone()).await;
    assert!(before.len() > 10);
    assert_eq!(before, after, "identical rows");
    app.shutdown().await;
}

/// Strings that broke out of a literal that only doubled `'`, or that a SQL
/// client's line handling mangles.
const HOSTILE: &[&str] = &[
    "ends in a backslash quote \\'",
    "x\\', 0, 0); DROP TABLE people; -- ",
    "nul\0byte",
    "back\\slash\\\\ and \\0 \\n \\Z \\",
    "line\nbreak\r\nand a lone cr\r",
    "tab\t bell\x07 esc\x1b del\x7f ctrl-z\x1a",
    "\u{fc}n\u{ef}c\u{f8}d\u{e9} \u{2713} \u{1f39e} \u{202e}bidi",
    "'",
    "''",
    "",
    "-- not a comment /* nor this */ ; nor a statement end",
];

/// Every row of a store, as comparable text.
async fn store_rows(store: Arc<dyn flipstack_core::store::MetadataStore>) -> Vec<String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let reader = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(r) = rx.recv().await {
            all.push(format!("{r:?}"));
        }
        all
    });
    store.dump_rows(tx).await.unwrap();
    reader.await.unwrap()
}

/// Every row of a MariaDB database no flipstack migrated (one the `mariadb`
/// client replayed a dump into), in the form of [`store_rows`].
async fn mariadb_rows(url: &str) -> Vec<String> {
    use flipstack_core::store::{SqlValue, TABLES};
    use mysql_async::Value;
    use mysql_async::prelude::Queryable;
    let pool = mysql_async::Pool::new(url);
    let mut conn = pool.get_conn().await.unwrap();
    let mut all = Vec::new();
    for table in TABLES {
        let rows: Vec<mysql_async::Row> = conn.exec(format!("SELECT * FROM {table} ORDER BY 1"), ()).await.unwrap();
        for row in rows {
            let columns: Vec<String> = row.columns_ref().iter().map(|c| c.name_str().into_owned()).collect();
            let values: Vec<SqlValue> = (0..columns.len())
                .map(|i| match row.as_ref(i).unwrap() {
                    Value::NULL => SqlValue::Null,
                    Value::Int(n) => SqlValue::Int(*n),
                    Value::UInt(n) => SqlValue::Int(*n as i64),
                    Value::Bytes(b) => SqlValue::Text(String::from_utf8(b.clone()).unwrap()),
                    other => panic!("{table} holds {other:?}"),
                })
                .collect();
            all.push(format!("{:?}", (*table, columns, values)));
        }
    }
    drop(conn);
    pool.disconnect().await.ok();
    all
}

/// `mariadb < dump` into a fresh database, in the server's default `sql_mode`
/// with `extra_mode` added; returns the database's URL.
async fn replay_with_mariadb_client(primary: &str, dump: &std::path::Path, extra_mode: &str) -> String {
    let db = fresh_database(primary).await;
    let (creds, host_port) = primary.strip_prefix("mysql://").unwrap().split_once('@').unwrap();
    let (user, password) = creds.split_once(':').unwrap();
    let (host, port) = host_port.split_once(':').unwrap();
    let client = std::process::Command::new("mariadb")
        .args(["--no-defaults", "--batch", &format!("--host={host}"), &format!("--port={port}")])
        .args([format!("--user={user}"), format!("--password={password}")])
        .arg(format!("--init-command=SET SESSION sql_mode = CONCAT(@@sql_mode, '{extra_mode}')"))
        .arg(&db)
        .stdin(std::fs::File::open(dump).unwrap())
        .output()
        .expect("running the mariadb client (Debian package mariadb-client)");
    assert!(
        client.status.success(),
        "the mariadb client could not replay the dump ({extra_mode}): {}",
        String::from_utf8_lossy(&client.stderr)
    );
    format!("{primary}/{db}")
}

async fn a_dump_of_hostile_names_replays_exactly_through_the_mariadb_client_and_restore(tier: Tier) {
    init_logging();
    let data = tempfile::tempdir().unwrap();
    let config = config_for(tier, data.path()).await;
    let source = flipstack_core::Services::connect(config.clone()).await.unwrap();
    let me = Email::parse(&email()).unwrap();
    let person = PersonId::new();
    let now = now_millis();
    for (n, text) in HOSTILE.iter().enumerate() {
        let owner =
            if n == 0 { NewOwner::Create { id: person, email: me.clone() } } else { NewOwner::Existing(person) };
        source
            .store
            .accept_upload(AcceptUpload {
                upload: NewUpload {
                    id: UploadId::new(),
                    name: DisplayName::from_stored((*text).into()),
                    format: ImageFormat::Png,
                    bytes: 10,
                    width: 1,
                    height: 1,
                    trace_parent: None,
                },
                owner,
                session: None,
                person_hash: me.hashed_id(),
                notice: Some(false),
                now,
            })
            .await
            .unwrap();
        source.store.set_setting(&format!("hostile-{n:02}"), text, now).await.unwrap();
        let worker = flipstack_core::store::WorkerInfo {
            id: format!("w-{n:02}"),
            host: (*text).into(),
            pid: 1,
            started_at: now,
            heartbeat_at: now,
            status: flipstack_core::store::WorkerStatus::Idle,
            current_upload: None,
            jobs_done: 0,
        };
        source.store.worker_heartbeat(&worker).await.unwrap();
    }
    let want = store_rows(source.store.clone()).await;
    assert!(want.len() > 3 * HOSTILE.len());

    let dump = data.path().join("dump.sql");
    let bin = env!("CARGO_BIN_EXE_flipstack");
    let out = std::process::Command::new(bin)
        .args(["db", "dump", "--out", dump.to_str().unwrap()])
        .envs(config.to_env())
        .output()
        .unwrap();
    assert!(out.status.success(), "dump: {}", String::from_utf8_lossy(&out.stderr));

    // `flipstack db restore` into an empty database of this tier.
    let target = tempfile::tempdir().unwrap();
    let mut restore_config = config_for(tier, target.path()).await;
    restore_config.queue_url = "db://".into();
    let out = std::process::Command::new(bin)
        .args(["db", "restore", dump.to_str().unwrap()])
        .envs(restore_config.to_env())
        .output()
        .unwrap();
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    let restored = flipstack_core::Services::connect(restore_config).await.unwrap();
    assert_eq!(store_rows(restored.store.clone()).await, want, "restore reads back every row exactly");

    // The `mariadb` client, with and without NO_BACKSLASH_ESCAPES.
    let Ok(primary) = std::env::var("FLIPSTACK_TEST_MYSQL_PRIMARY") else {
        eprintln!("skipped: the mariadb client replay needs the MariaDB of scripts/services.sh (run scripts/test.sh)");
        return;
    };
    for extra_mode in ["", ",NO_BACKSLASH_ESCAPES"] {
        let url = replay_with_mariadb_client(&primary, &dump, extra_mode).await;
        assert_eq!(mariadb_rows(&url).await, want, "the mariadb client{extra_mode} reads back every row exactly");
    }
}

// ---- MariaDB only: replicas, outages -----------------------------------------

/// An app on private services this test may stop and start.
async fn private_app(services: &PrivateServices) -> TestApp {
    init_logging();
    let data = tempfile::tempdir().unwrap();
    let primary = services.get("FLIPSTACK_TEST_MYSQL_PRIMARY");
    let db = fresh_database(&primary).await;
    let config = flipstack_core::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_owned(),
        database_url: Some(format!("{primary}/{db}")),
        replica_urls: vec![format!("{}/{db}", services.get("FLIPSTACK_TEST_MYSQL_REPLICA"))],
        cache_url: format!("memcache://{}", services.get("FLIPSTACK_TEST_MEMCACHED")),
        job_lease_secs: 3,
        queue_poll_ms: 20,
        ..flipstack_core::Config::default()
    };
    TestApp::spawn_config(Tier::Mariadb, config, data, 1).await
}

/// Private services, an app on them, and a browser whose gallery holds one flipped picture.
async fn private_app_with_a_picture() -> (PrivateServices, TestApp, Browser, String, UploadId) {
    let services = PrivateServices::start("mariadb,memcached");
    let app = private_app(&services).await;
    let b = app.browser();
    let me = email();
    let id = upload(&app, &b, &me).await;
    app.wait_done(id).await;
    (services, app, b, me, id)
}

fn replica_sql(services: &PrivateServices, sql: &str) {
    let socket = services.dir.path().join("replica/mysqld.sock");
    let ok = std::process::Command::new("mariadb")
        .args(["--no-defaults", "-uroot", &format!("--socket={}", socket.display()), "-e", sql])
        .status()
        .unwrap();
    assert!(ok.success(), "{sql}");
}

async fn wait_for_source(b: &Browser, app: &TestApp, me: &str, want: &str, within: Duration) -> (u16, String) {
    let started = Instant::now();
    loop {
        // A write makes the next read miss the cache and go to the database.
        app.services.gallery.invalidate(&Email::parse(me).unwrap().hashed_id(), &Default::default()).await;
        let (status, source, _) = gallery(b).await;
        if source == want || started.elapsed() > within {
            return (status, source);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_the_uploaders_next_read_shows_the_upload_despite_a_delayed_replica() {
    Tier::Mariadb.require();
    let (services, app, b, me, _first) = private_app_with_a_picture().await;
    assert_eq!(wait_for_source(&b, &app, &me, "replica", Duration::from_secs(10)).await, (200, "replica".into()));
    let (_, source, _) = gallery(&b).await;
    assert_eq!(source, "cache", "the gallery is cached before the write");

    replica_sql(&services, "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY=5; START SLAVE;");
    let second = upload(&app, &b, &me).await;
    // The very next request shows the new upload…
    let (status, source, html) = gallery(&b).await;
    assert_eq!(status, 200);
    assert!(html.contains(&format!("upload-{second}")), "the uploader's next read shows the upload (source {source})");
    assert_ne!(source, "cache", "not the stale cached page");
    // …although the replica does not have it yet: a plain replica read would have missed it.
    let replica_db = app.config.replica_urls[0].clone();
    let on_replica: Option<i64> = {
        use mysql_async::prelude::Queryable;
        let mut conn = mysql_async::Conn::from_url(&replica_db).await.unwrap();
        conn.exec_first("SELECT COUNT(*) FROM uploads WHERE id = ?", (second.get(),)).await.unwrap()
    };
    assert_eq!(on_replica, Some(0), "the delayed replica lacks the upload");
    assert_eq!(source, "primary", "so the read went to the primary");
    assert!(
        app.metric("flipstack_gtid_waits_total{outcome=\"timeout\"}").await >= 1.0,
        "after waiting for the replica"
    );

    // Once the replica catches up, reads go back to it.
    replica_sql(&services, "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY=0; START SLAVE;");
    assert_eq!(wait_for_source(&b, &app, &me, "replica", Duration::from_secs(20)).await, (200, "replica".into()));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_galleries_survive_replica_and_cache_outages_and_recover() {
    Tier::Mariadb.require();
    let (services, app, b, me, id) = private_app_with_a_picture().await;
    assert_eq!(wait_for_source(&b, &app, &me, "replica", Duration::from_secs(10)).await.1, "replica");

    services.control("stop", "replica");
    let skips = app.metric("flipstack_replica_skips_total").await;
    assert_eq!(wait_for_source(&b, &app, &me, "primary", Duration::from_secs(5)).await, (200, "primary".into()));
    for _ in 0..3 {
        assert_eq!(
            wait_for_source(&b, &app, &me, "primary", Duration::ZERO).await.0,
            200,
            "a replica outage is never a user's error"
        );
    }
    assert!(app.metric("flipstack_replica_skips_total").await > skips);
    services.control("start", "replica");
    assert_eq!(
        wait_for_source(&b, &app, &me, "replica", Duration::from_secs(20)).await,
        (200, "replica".into()),
        "used again"
    );

    services.control("stop", "memcached");
    for _ in 0..3 {
        let (status, source, html) = gallery(&b).await;
        assert_eq!(status, 200, "a cache outage is never a user's error");
        assert_ne!(source, "cache");
        assert!(html.contains(&format!("upload-{id}")));
    }
    services.control("start", "memcached");
    let started = Instant::now();
    loop {
        let (status, source, _) = gallery(&b).await;
        assert_eq!(status, 200);
        if source == "cache" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "the cache is used again after it comes back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_uploads_during_a_primary_restart_get_a_503_and_all_works_after() {
    Tier::Mariadb.require();
    let (services, app, b, me, id) = private_app_with_a_picture().await;
    let count = app.blob_keys().await.len();

    services.control("stop", "primary");
    // The form still opens (its "mail me" box unknown, so left as it was).
    let (status, form) = b.text("/form").await;
    assert_eq!(status, 200, "{form}");
    assert!(form.contains(r#"name="notice_unknown""#), "the uploader is signed in: {form}");
    let r = b.upload(Some(&me), "during.png", &png(16, 16)).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let page = r.text().await.unwrap();
    assert!(page.contains("try again"), "{page}");
    assert_eq!(app.blob_keys().await.len(), count, "nothing half-saved");

    services.control("start", "primary");
    let started = Instant::now();
    loop {
        let r = b.upload(Some(&me), "after.png", &png(16, 16)).await;
        if r.status() == 303 {
            break;
        }
        assert_eq!(r.status(), 503, "while reconnecting, a retry page");
        assert!(started.elapsed() < Duration::from_secs(30), "flipstack reconnects without a restart");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = app.latest_upload(&me).await.unwrap();
    assert_ne!(after, id);
    app.wait_done(after).await;
    let (status, _, html) = gallery(&b).await;
    assert_eq!(status, 200);
    assert!(html.contains(&format!("upload-{after}")));
    app.shutdown().await;
}
