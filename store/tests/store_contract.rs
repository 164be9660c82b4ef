//! The store's contract, the same on both back ends: each check runs on
//! SQLite (always) and on MariaDB (`mariadb_*`: the mariadb tier, which the
//! default nextest profile skips; scripts/test.sh runs it). The checks pin the
//! places where the two back ends once drifted apart: a permanent failure's
//! `next_attempt_at`, `upload_stats` from one snapshot, `purge_expired` as one
//! transaction.

use std::sync::Arc;
use std::time::Duration;

use flipstack_domain::domain::{
    DisplayName, Email, EventKind, ImageFormat, PersonId, TokenHash, UploadId, UploadState, WorkerStatus, now_millis,
};
use flipstack_store::{
    self as store, AcceptUpload, Failure, FlipOutcome, MetadataStore, NewOwner, NewSession, NewUpload, NoticeDue,
    UploadFilter, WorkerInfo,
};

/// The database beneath a store, for what a check must do behind its back.
enum Raw {
    Sqlite(std::path::PathBuf),
    MariaDb(String),
}

impl Raw {
    /// Runs `sqlite` or `mariadb`, whichever this database speaks.
    async fn execute(&self, sqlite: &str, mariadb: &str) {
        match self {
            Raw::Sqlite(path) => rusqlite::Connection::open(path).unwrap().execute_batch(sqlite).unwrap(),
            Raw::MariaDb(url) => {
                use mysql_async::prelude::Queryable;
                let pool = mysql_async::Pool::new(url.as_str());
                pool.get_conn().await.unwrap().query_drop(mariadb).await.unwrap();
                pool.disconnect().await.ok();
            }
        }
    }
}

async fn sqlite() -> (Arc<dyn MetadataStore>, Raw, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flipstack.sqlite");
    let store = open(&format!("sqlite://{}", path.display())).await;
    (store, Raw::Sqlite(path), dir)
}

async fn mariadb() -> (Arc<dyn MetadataStore>, Raw) {
    use mysql_async::prelude::Queryable;
    let primary = std::env::var("FLIPSTACK_TEST_MYSQL_PRIMARY").expect(
        "FLIPSTACK_TEST_MYSQL_PRIMARY is not set: the mariadb tier needs scripts/services.sh (scripts/test.sh)",
    );
    let name = format!("fs_contract_{:08x}", rand::random::<u32>());
    let pool = mysql_async::Pool::new(primary.as_str());
    let mut conn = pool.get_conn().await.expect("connecting to the test MariaDB primary");
    conn.query_drop(format!("CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")).await.unwrap();
    drop(conn);
    pool.disconnect().await.ok();
    let url = format!("{primary}/{name}");
    (open(&url).await, Raw::MariaDb(url))
}

async fn open(url: &str) -> Arc<dyn MetadataStore> {
    let wait = Duration::from_millis(200);
    store::connect(url, &[], Arc::new(store::NoMetrics), wait, wait).await.expect("opening the store")
}

/// An accepted upload of a new person, claimed by `owner`.
async fn claimed_upload(store: &dyn MetadataStore, owner: &str, now: i64) -> UploadId {
    let id = accepted_upload(store, now).await;
    assert!(store.claim(id, owner, now, now + 60_000).await.unwrap().is_some(), "the new upload is claimable");
    id
}

/// An accepted upload of a new person, waiting (pending, never sent).
async fn accepted_upload(store: &dyn MetadataStore, now: i64) -> UploadId {
    let email = Email::parse(&format!("contract-{:08x}@example.com", rand::random::<u32>())).unwrap();
    upload_of(store, NewOwner::Create { id: PersonId::new(), email }, false, now).await
}

/// An accepted upload of `owner`, who asks for completion notices or not.
async fn upload_of(store: &dyn MetadataStore, owner: NewOwner, notice: bool, now: i64) -> UploadId {
    let id = UploadId::new();
    store
        .accept_upload(AcceptUpload {
            upload: NewUpload {
                id,
                name: DisplayName::from_client(Some("a.png")),
                format: ImageFormat::Png,
                bytes: 10,
                width: 2,
                height: 2,
                trace_parent: None,
            },
            owner,
            session: None,
            person_hash: String::new(),
            notice: Some(notice),
            now,
        })
        .await
        .unwrap();
    id
}

const OUTCOME: FlipOutcome = FlipOutcome {
    flipped_bytes: 10,
    flipped_width: 2,
    flipped_height: 2,
    method: String::new(),
    thumb_width: None,
    thumb_height: None,
};

/// Claims and finishes an upload at `at`: flipped, or failed for good.
async fn finish(store: &dyn MetadataStore, id: UploadId, flipped: bool, at: i64) {
    store.claim(id, "w1", at, at + 60_000).await.unwrap().expect("claimable");
    if flipped {
        store.complete(id, "w1", &OUTCOME, at).await.unwrap().expect("completed");
    } else {
        store.fail_attempt(id, "w1", "not a picture", Failure::Permanent, at).await.unwrap().expect("failed");
    }
}

/// Past the interval since `quiet_since`, with everything finished long ago.
fn due(quiet_since: i64) -> NoticeDue {
    NoticeDue { quiet_since, settled_before: i64::MAX }
}

/// A new person, with a first upload (still pending) made with `notice` asked or not.
async fn person_with_upload(store: &dyn MetadataStore, notice: bool, now: i64) -> (PersonId, Email, UploadId) {
    let person = PersonId::new();
    let email = Email::parse(&format!("notice-{:08x}@example.com", rand::random::<u32>())).unwrap();
    let id = upload_of(store, NewOwner::Create { id: person, email: email.clone() }, notice, now).await;
    (person, email, id)
}

/// One notice for a finished batch: due only once nothing is pending or
/// processing, taken once (recorded as it is taken), with its counts; a
/// later batch waits for the quiet time after the last notice.
async fn a_notice_covers_a_finished_batch_once(store: &dyn MetadataStore, _raw: &Raw) {
    let now = now_millis();
    let (person, email, first) = person_with_upload(store, true, now).await;
    let second = upload_of(store, NewOwner::Existing(person), true, now).await;
    assert_eq!(store.notice_wish(person).await.unwrap(), (true, None));
    let quiet = now + 100;
    finish(store, first, true, now + 10).await;
    assert!(store.due_notices(due(quiet), 10).await.unwrap().is_empty(), "the second upload is still pending");
    assert!(store.take_notice(person, due(quiet), now + 20).await.unwrap().is_none());
    finish(store, second, false, now + 30).await;
    // Something finished after the batch was to have settled: the next
    // picture of the batch may still be on its way.
    let unsettled = NoticeDue { quiet_since: quiet, settled_before: now + 29 };
    assert!(store.due_notices(unsettled, 10).await.unwrap().is_empty(), "not settled yet");
    assert!(store.take_notice(person, unsettled, now + 35).await.unwrap().is_none());
    assert_eq!(store.due_notices(due(quiet), 10).await.unwrap(), vec![person]);

    let batch = store.take_notice(person, due(quiet), now + 40).await.unwrap().expect("the batch is ready");
    assert_eq!((batch.person_id, &batch.email, batch.ready, batch.failed), (person, &email, 1, 1));
    assert_eq!((batch.sent_at, batch.covered_until), (now + 40, now + 30));
    assert_eq!(store.notice_wish(person).await.unwrap(), (true, Some(now + 40)));
    assert!(store.take_notice(person, due(quiet), now + 41).await.unwrap().is_none(), "taken once");
    assert!(store.due_notices(due(now + 1_000), 10).await.unwrap().is_empty(), "nothing new finished");

    // The next batch is due only when the last notice is old enough.
    let third = upload_of(store, NewOwner::Existing(person), true, now + 50).await;
    finish(store, third, true, now + 60).await;
    assert!(store.due_notices(due(now + 39), 10).await.unwrap().is_empty(), "the last notice is too recent");
    assert!(store.take_notice(person, due(now + 39), now + 70).await.unwrap().is_none());
    let next = store.take_notice(person, due(now + 40), now + 80).await.unwrap().expect("quiet long enough");
    assert_eq!((next.ready, next.failed, next.covered_until), (1, 0, now + 60), "only the new upload");
}

/// A mail that could not be sent gives its batch back, whole, for the
/// next round; a give-back after something changed the notice does nothing.
async fn a_notice_given_back_is_taken_again(store: &dyn MetadataStore, _raw: &Raw) {
    let now = now_millis();
    let (person, _, id) = person_with_upload(store, true, now).await;
    finish(store, id, true, now + 10).await;
    let batch = store.take_notice(person, due(now + 100), now + 20).await.unwrap().unwrap();
    assert!(store.give_back_notice(&batch).await.unwrap());
    assert_eq!(store.notice_wish(person).await.unwrap(), (true, None), "as before it was taken");
    let again = store.take_notice(person, due(now + 100), now + 30).await.unwrap().expect("taken again");
    assert_eq!(again.ready, 1);
    assert!(!store.give_back_notice(&batch).await.unwrap(), "the first take is long gone");
    assert_eq!(store.notice_wish(person).await.unwrap(), (true, Some(now + 30)));
}

/// Asking covers what already finished: only uploads finished from then on
/// are announced. Unasking stops the notices; a person who never asked gets none.
async fn asking_for_notices_covers_what_already_finished(store: &dyn MetadataStore, _raw: &Raw) {
    let now = now_millis();
    let (person, _, old) = person_with_upload(store, false, now).await;
    finish(store, old, true, now + 10).await;
    let (stranger, _, theirs) = person_with_upload(store, false, now).await;
    finish(store, theirs, true, now + 10).await;
    assert_eq!(store.notice_wish(stranger).await.unwrap(), (false, None));
    store.set_notice_wanted(person, true, now + 20).await.unwrap();
    store.set_notice_wanted(person, true, now + 21).await.unwrap();
    assert_eq!(store.notice_wish(person).await.unwrap(), (true, None));
    assert!(store.due_notices(due(now + 1_000), 10).await.unwrap().is_empty(), "the earlier upload is covered");

    // Asked again with a new upload: nothing is reset, the new one is announced.
    let new = upload_of(store, NewOwner::Existing(person), true, now + 30).await;
    finish(store, new, true, now + 40).await;
    assert_eq!(store.due_notices(due(now + 1_000), 10).await.unwrap(), vec![person]);

    // An upload without the box ticked turns it off.
    upload_of(store, NewOwner::Existing(person), false, now + 50).await;
    assert_eq!(store.notice_wish(person).await.unwrap(), (false, None));
    assert!(store.take_notice(person, due(now + 1_000), now + 60).await.unwrap().is_none());
    store.set_notice_wanted(stranger, false, now).await.unwrap();
    assert_eq!(store.notice_wish(stranger).await.unwrap(), (false, None), "unasking makes no row");
}

/// Two processes taking the same notice at once: one gets it.
async fn two_takers_of_one_notice_get_it_once(store: &dyn MetadataStore, _raw: &Raw) {
    let now = now_millis();
    let (person, _, id) = person_with_upload(store, true, now).await;
    finish(store, id, true, now + 10).await;
    let (a, b) = tokio::join!(
        store.take_notice(person, due(now + 100), now + 20),
        store.take_notice(person, due(now + 100), now + 21)
    );
    let taken = [a.unwrap(), b.unwrap()].into_iter().flatten().count();
    assert_eq!(taken, 1, "one notice for one batch");
}

/// A permanent failure ends the job at the failure's time: `next_attempt_at`
/// is that time on both back ends (MariaDB once left it where it was).
async fn a_permanent_failure_sets_next_attempt_to_the_failure_time(store: &dyn MetadataStore, _raw: &Raw) {
    let now = now_millis();
    let id = claimed_upload(store, "w1", now).await;
    let failed_at = now + 5_000;
    assert!(store.fail_attempt(id, "w1", "not a picture", Failure::Permanent, failed_at).await.unwrap().is_some());
    let u = store.upload(id).await.unwrap().unwrap();
    assert_eq!(u.state, UploadState::Failed);
    assert_eq!(u.next_attempt_at, failed_at);
    assert_eq!(u.finished_at, Some(failed_at));
    assert_eq!(u.lease_owner, None);
}

/// Counts by state and the oldest unfinished upload come from one read.
async fn upload_stats_count_states_and_the_oldest_unfinished(store: &dyn MetadataStore, _raw: &Raw) {
    let now = now_millis();
    let first = claimed_upload(store, "w1", now).await;
    let _second = claimed_upload(store, "w1", now + 1_000).await;
    store.fail_attempt(first, "w1", "broken", Failure::Permanent, now + 2_000).await.unwrap();
    let stats = store.upload_stats().await.unwrap();
    assert_eq!(stats.by_state.get("failed"), Some(&1));
    assert_eq!(stats.by_state.get("processing"), Some(&1));
    assert_eq!(stats.oldest_unfinished_at, Some(now + 1_000), "the failed upload is not unfinished");
}

/// Expired rows go, live ones stay, and the count says how many went.
async fn purge_expired_removes_only_what_expired(store: &dyn MetadataStore, _raw: &Raw) {
    let now = now_millis();
    let id = claimed_upload(store, "w1", now - 8 * 86_400_000).await;
    store.fail_attempt(id, "w1", "old", Failure::Permanent, now - 8 * 86_400_000).await.unwrap();
    let events_before = store.events_for_upload(id).await.unwrap().len();
    assert!(events_before >= 2, "uploaded and failed events: {events_before}");
    let purged = store.purge_expired(now).await.unwrap();
    assert!(purged >= events_before as u64, "purged {purged}, expected at least the {events_before} week-old events");
    assert!(store.events_for_upload(id).await.unwrap().is_empty());
    assert!(store.upload(id).await.unwrap().is_some(), "uploads are not purged");
}

/// An operator's retry sets a failed upload back to pending from zero, with
/// a `retried` event; anything not failed is left alone.
async fn a_retry_sets_a_failed_upload_back_to_pending_once(store: &dyn MetadataStore, _raw: &Raw) {
    let now = now_millis();
    let id = claimed_upload(store, "w1", now).await;
    assert!(store.retry_upload(id, now + 1).await.unwrap().is_none(), "a processing upload is not retried");
    store.fail_attempt(id, "w1", "not a picture", Failure::Permanent, now + 2).await.unwrap().unwrap();
    let change = store.retry_upload(id, now + 3).await.unwrap().expect("a failed upload is retried");
    assert!(!change.person_hash.is_empty());
    let u = store.upload(id).await.unwrap().unwrap();
    assert_eq!((u.state, u.attempts, u.claims), (UploadState::Pending, 0, 0));
    assert_eq!((u.failure_reason, u.finished_at, u.lease_owner), (None, None, None));
    assert_eq!(u.next_attempt_at, now + 3);
    let kinds: Vec<EventKind> = store.events_for_upload(id).await.unwrap().into_iter().map(|e| e.kind).collect();
    // Events of one millisecond have no order among them (their ids are not sequential).
    assert_eq!(kinds.iter().filter(|k| **k == EventKind::Retried).count(), 1, "{kinds:?}");
    assert!(store.retry_upload(id, now + 4).await.unwrap().is_none(), "a second retry finds it pending");
}

/// Unsent: pending, never confirmed sent, never claimed, older than the cut-off.
async fn unsent_jobs_are_the_unconfirmed_unclaimed_ones(store: &dyn MetadataStore, _raw: &Raw) {
    let now = now_millis();
    let waiting = accepted_upload(store, now - 10_000).await;
    let sent = accepted_upload(store, now - 10_000).await;
    store.mark_enqueued(sent, now - 9_000).await.unwrap();
    let claimed = claimed_upload(store, "w1", now - 10_000).await;
    let young = accepted_upload(store, now).await;
    let unsent = store.unsent(now - 5_000, 100).await.unwrap();
    assert_eq!(unsent, vec![waiting], "not {sent} (sent), {claimed} (claimed) or {young} (younger than the cut-off)");
}

/// The operator's listing: filters by state, format and part of the reason,
/// taking the reason's `%` and `_` literally; each row with its owner's hash.
async fn find_uploads_filters_and_takes_the_reason_literally(store: &dyn MetadataStore, _raw: &Raw) {
    let now = now_millis();
    let literal = claimed_upload(store, "w1", now).await;
    store.fail_attempt(literal, "w1", "50%_off", Failure::Permanent, now).await.unwrap();
    let other = claimed_upload(store, "w1", now + 1).await;
    store.fail_attempt(other, "w1", "500 off", Failure::Permanent, now + 1).await.unwrap();
    let pending = accepted_upload(store, now + 2).await;
    let all = store.find_uploads(&UploadFilter::default(), 10).await.unwrap();
    let ids: Vec<UploadId> = all.iter().map(|(u, _)| u.id).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(all.iter().all(|(_, hash)| !hash.is_empty()), "every row has its owner's hash");
    let failed = UploadFilter { state: "failed".into(), ..Default::default() };
    let failed: Vec<UploadId> = store.find_uploads(&failed, 10).await.unwrap().into_iter().map(|(u, _)| u.id).collect();
    assert!(failed.contains(&literal) && failed.contains(&other) && !failed.contains(&pending), "{failed:?}");
    let by_reason = UploadFilter { reason: "50%_".into(), ..Default::default() };
    let found: Vec<UploadId> =
        store.find_uploads(&by_reason, 10).await.unwrap().into_iter().map(|(u, _)| u.id).collect();
    assert_eq!(found, vec![literal], "% and _ are literal");
    let gif = UploadFilter { format: "gif".into(), ..Default::default() };
    assert!(store.find_uploads(&gif, 10).await.unwrap().is_empty());
}

/// Purging is one transaction: when one of its deletes fails, none of them
/// happened (MariaDB once ran them one by one, each committed on its own).
async fn purge_expired_is_one_transaction(store: &dyn MetadataStore, raw: &Raw) {
    let now = now_millis();
    let id = accepted_upload(store, now).await;
    let person = store.upload(id).await.unwrap().unwrap().person_id;
    let token = TokenHash("contract-expired-session".into());
    let session = NewSession { token_hash: token.clone(), person_id: person, expires_at: now - 1_000, proven: false };
    store.create_session(session, now - 2_000).await.unwrap();
    let silent = WorkerInfo {
        id: "silent-worker".into(),
        host: "h".into(),
        pid: 1,
        started_at: now - 3_600_000,
        heartbeat_at: now - 3_600_000,
        status: WorkerStatus::Idle,
        current_upload: None,
        jobs_done: 0,
    };
    store.worker_heartbeat(&silent).await.unwrap();
    // The last delete (silent workers) fails, after the sessions' delete ran.
    raw.execute(
        "CREATE TRIGGER purge_fails BEFORE DELETE ON workers BEGIN SELECT RAISE(ABORT, 'purge cut short'); END",
        "CREATE TRIGGER purge_fails BEFORE DELETE ON workers FOR EACH ROW \
         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'purge cut short'",
    )
    .await;
    assert!(store.purge_expired(now).await.is_err(), "the trigger stops the purge");
    assert!(
        store.session(&token, now - 2_000).await.unwrap().is_some(),
        "the expired session's delete was rolled back"
    );
    raw.execute("DROP TRIGGER purge_fails", "DROP TRIGGER purge_fails").await;
    assert!(store.purge_expired(now).await.unwrap() >= 2, "the session and the worker go");
    assert!(store.session(&token, now - 2_000).await.unwrap().is_none());
}

/// The counts by state and the oldest unfinished upload come from one
/// snapshot: read while jobs finish oldest first, the count always says which
/// upload is the oldest left (MariaDB once read them with two statements,
/// between which a job could finish).
async fn upload_stats_read_one_snapshot_while_jobs_finish(store: &dyn MetadataStore, _raw: &Raw) {
    const JOBS: i64 = 40;
    let now = now_millis();
    let mut ids = Vec::new();
    for i in 0..JOBS {
        ids.push(claimed_upload(store, "w1", now + i).await);
    }
    let outcome = FlipOutcome {
        flipped_bytes: 10,
        flipped_width: 2,
        flipped_height: 2,
        method: "pixels".into(),
        thumb_width: None,
        thumb_height: None,
    };
    let finishing = async {
        for id in &ids {
            store.complete(*id, "w1", &outcome, now_millis()).await.unwrap().unwrap();
        }
    };
    let reading = async {
        loop {
            let stats = store.upload_stats().await.unwrap();
            let left = stats.unfinished() as i64;
            let oldest = (left > 0).then(|| now + JOBS - left);
            assert_eq!(stats.oldest_unfinished_at, oldest, "{left} left, but {stats:?}");
            if left == 0 {
                break;
            }
        }
    };
    tokio::join!(finishing, reading);
}

macro_rules! contract {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let (store, raw, _dir) = super::sqlite().await;
                super::$check(store.as_ref(), &raw).await
            })*
        }
        mod mariadb {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let (store, raw) = super::mariadb().await;
                super::$check(store.as_ref(), &raw).await
            })*
        }
    };
}

contract!(
    a_permanent_failure_sets_next_attempt_to_the_failure_time,
    upload_stats_count_states_and_the_oldest_unfinished,
    purge_expired_removes_only_what_expired,
    a_retry_sets_a_failed_upload_back_to_pending_once,
    unsent_jobs_are_the_unconfirmed_unclaimed_ones,
    find_uploads_filters_and_takes_the_reason_literally,
    purge_expired_is_one_transaction,
    upload_stats_read_one_snapshot_while_jobs_finish,
    a_notice_covers_a_finished_batch_once,
    a_notice_given_back_is_taken_again,
    asking_for_notices_covers_what_already_finished,
    two_takers_of_one_notice_get_it_once,
);
