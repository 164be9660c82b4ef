//! Liveness apart from readiness: `/livez` answers while the process serves,
//! whatever its services do; `/readyz` (and its old name `/healthz`) says
//! whether the database answers. During a primary outage the server is kept
//! (the same process, still live) and only stops being ready, then recovers.

mod common;

use std::time::{Duration, Instant};

use common::*;

async fn get(base: &str, path: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path} did not answer: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

tier_tests!(live_and_ready_while_everything_answers);

async fn live_and_ready_while_everything_answers(tier: Tier) {
    let app = TestApp::spawn_with(tier, |_| {}, 0).await;
    let (status, live) = get(&app.base, "/livez").await;
    assert_eq!((status, live["status"].as_str()), (200, Some("ok")));
    for path in ["/readyz", "/healthz"] {
        let (status, ready) = get(&app.base, path).await;
        assert_eq!(status, 200, "{path}: {ready}");
        assert_eq!(ready["database"], "ok", "{path}");
        assert_eq!(ready["cache"], "ok", "{path}");
    }
    app.shutdown().await;
}

/// Acceptance: a primary outage keeps the server (live all along, never
/// restarted), makes it unready, and it is ready again when the primary is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_a_primary_outage_makes_the_server_unready_but_never_dead() {
    Tier::Mariadb.require();
    init_logging();
    let services = PrivateServices::start("mariadb");
    let primary = services.get("FLIPSTACK_TEST_MYSQL_PRIMARY");
    let db = fresh_database(&primary).await;
    let data = tempfile::tempdir().unwrap();
    let config = flipstack_core::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_owned(),
        database_url: Some(format!("{primary}/{db}")),
        ..flipstack_core::Config::default()
    };
    let app = TestApp::spawn_config(Tier::Mariadb, config, data, 0).await;
    assert_eq!(get(&app.base, "/readyz").await.0, 200);
    let (_, before) = get(&app.base, "/livez").await;

    services.control("stop", "primary");
    // Readiness turns within a probe or two; liveness never does.
    let started = Instant::now();
    let mut unready_answers = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let (live, _) = get(&app.base, "/livez").await;
        assert_eq!(live, 200, "liveness failed during a database outage");
        let (ready, body) = get(&app.base, "/readyz").await;
        if ready == 503 {
            assert_eq!(body["database"], "unavailable");
            unready_answers += 1;
        }
        let (old, _) = get(&app.base, "/healthz").await;
        assert!(old == 503 || ready == 200, "/healthz is readiness");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(unready_answers >= 5, "readiness said 503 only {unready_answers} times during the outage");

    services.control("start", "primary");
    let started = Instant::now();
    while get(&app.base, "/readyz").await.0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(30), "ready again within 30 s of the primary's return");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, after) = get(&app.base, "/livez").await;
    assert!(
        after["uptime_secs"].as_u64() >= before["uptime_secs"].as_u64().map(|u| u + 8),
        "the same server all along: {before} then {after}"
    );
    app.shutdown().await;
}
