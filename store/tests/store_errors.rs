//! A store error keeps the driver's error beneath it: code can walk
//! `std::error::Error::source()` from a `StoreError` down to the
//! `rusqlite::Error` or `mysql_async::Error` that caused it, and classify the
//! failure by method, not by its text.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use flipstack_store::{self as store, StoreError};

/// Every error in the chain below `e`, nearest first.
fn causes(e: &StoreError) -> Vec<&(dyn Error + 'static)> {
    let mut out = Vec::new();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push(cause);
        next = cause.source();
    }
    out
}

async fn connect(url: &str) -> StoreError {
    let wait = Duration::from_millis(200);
    match store::connect(url, &[], Arc::new(store::NoMetrics), wait, wait).await {
        Ok(_) => panic!("{url} should not open"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_sqlite_error_reaches_down_to_rusqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-database.sqlite");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let e = connect(&format!("sqlite://{}", path.display())).await;
    let chain = causes(&e);
    assert!(
        chain.iter().any(|c| c.downcast_ref::<rusqlite::Error>().is_some()),
        "no rusqlite::Error below {e}: {chain:?}"
    );
}

#[tokio::test]
async fn a_refused_mariadb_connection_reaches_down_to_mysql_async_and_is_unavailable() {
    // A loopback port nobody listens on: taken, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = connect(&format!("mysql://flipstack:x@127.0.0.1:{port}/flipstack")).await;
    assert!(e.is_unavailable(), "a refused connection is worth retrying: {e:?}");
    let chain = causes(&e);
    let driver = chain.iter().find_map(|c| c.downcast_ref::<mysql_async::Error>());
    assert!(matches!(driver, Some(mysql_async::Error::Io(_))), "no mysql_async I/O error below {e}: {chain:?}");
}
