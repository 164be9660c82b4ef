//! Fixed data for the console's tests: an app fed a known history.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use flipstack_console::app::{App, Msg, Options};
use flipstack_console::model::AdminEvent;
use flipstack_domain::domain::{DisplayName, EventKind, ImageFormat, PersonId, UploadId, UploadState, WorkerStatus};
use flipstack_domain::records::{Event, FlipOutcome, QueueDepth, ReadSource, Upload, WorkerInfo};
use flipstack_domain::status::{AdminStatus, FailureInfo, PoolStatus, QueueStatus, ReplicaStatus};
use flipstack_domain::status::{BackupInfo, LogLine, UploadDetail, UploadListing};
use flipstack_provision::fleet::GroupStatus;

/// 2023-11-14 22:13:20 UTC: every age in the snapshots is measured from here.
pub const T0: i64 = 1_700_000_000_000;

pub fn options(stack: Option<&str>, read_only: bool) -> Options {
    Options {
        url: "http://127.0.0.1:5000".into(),
        stack: stack.map(String::from),
        read_only,
        dump_dir: PathBuf::from("/var/backups"),
        fleet_interval_ms: 5_000,
        no_color: false,
    }
}

/// The status the server answers at `T0 + i` seconds, for `i` in 0..30:
/// traffic that grows, a queue that fills then drains.
pub fn status_at(i: i64) -> AdminStatus {
    let at = T0 + i * 1000;
    let hits: u64 = (0..=i as u64).map(|k| 10 + k).sum();
    let misses: u64 = (0..=i as u64).map(|k| 2 + k % 3).sum();
    let depth = if i < 15 { i as u64 } else { (30 - i) as u64 };
    let mut uploads = BTreeMap::new();
    uploads.insert("pending".to_owned(), depth);
    uploads.insert("processing".to_owned(), 2);
    uploads.insert("done".to_owned(), 1200 + i as u64 * 3);
    uploads.insert("failed".to_owned(), 2);
    AdminStatus {
        version: "0.1.0".into(),
        at,
        uptime_secs: 3_600 + i as u64,
        blocked: false,
        database: "mysql".into(),
        cache: "memcached".into(),
        blobs: "s3".into(),
        uploads,
        oldest_unfinished_age_secs: Some(12.4),
        queue: QueueStatus {
            kind: "sqs".into(),
            depth: QueueDepth { visible: depth, in_flight: 2, dead_letters: Some(1) },
        },
        metrics: flipstack_domain::records::MetricsSnapshot {
            cache_hits: hits,
            cache_misses: misses,
            cache_errors: 0,
            reads_cache: hits,
            reads_replica: misses - 5.min(misses),
            reads_primary: 5.min(misses),
            db_queries_primary: 900,
            db_queries_replica: 300,
            queue_wait_seconds_sum: 42.0,
            queue_wait_count: 120,
            job_seconds_sum: 30.0,
            job_count: 120,
            jobs_failed: 2,
            jobs_retried: 3,
        },
        replicas: vec![
            ReplicaStatus { name: "replica-1".into(), lag_ms: Some(35) },
            ReplicaStatus { name: "replica-2".into(), lag_ms: None },
        ],
        workers: vec![
            WorkerInfo {
                id: "ip-10-0-1-17-9f2a".into(),
                host: "ip-10-0-1-17".into(),
                pid: 4242,
                started_at: T0 - 600_000,
                heartbeat_at: at - 500,
                status: WorkerStatus::Busy,
                current_upload: Some(UploadId::from_i64(1207).unwrap()),
                jobs_done: 311,
            },
            WorkerInfo {
                id: "ip-10-0-2-9-11c0".into(),
                host: "ip-10-0-2-9".into(),
                pid: 4243,
                started_at: T0 - 600_000,
                heartbeat_at: at - 1500,
                status: WorkerStatus::Idle,
                current_upload: None,
                jobs_done: 298,
            },
            // Gone: no heartbeat for a minute, so not shown as live.
            WorkerInfo {
                id: "ip-10-0-3-4-dead".into(),
                host: "ip-10-0-3-4".into(),
                pid: 17,
                started_at: T0 - 900_000,
                heartbeat_at: at - 60_000,
                status: WorkerStatus::Busy,
                current_upload: Some(UploadId::from_i64(999).unwrap()),
                jobs_done: 12,
            },
        ],
        recent_failures: vec![
            FailureInfo {
                upload_id: 1180,
                at: Some(at - 95_000),
                reason: "the picture could not be decoded: truncated JPEG".into(),
            },
            FailureInfo {
                upload_id: 1102,
                at: Some(at - 3_700_000),
                reason: "gave up after 5 attempts: the blob store did not answer".into(),
            },
        ],
        pool: Some(PoolStatus {
            min: 1,
            max: 4,
            desired: 3,
            running: if i < 10 {
                1
            } else if i < 20 {
                2
            } else {
                3
            },
            backlog: depth,
            updated_at: at - 200,
        }),
        workers_paused: false,
        problems: vec![],
    }
}

pub fn groups(web_desired: u32, worker_desired: u32) -> Vec<GroupStatus> {
    vec![
        GroupStatus {
            name: "flipstack-demo-web".into(),
            role: "web".into(),
            desired: web_desired,
            in_service: web_desired,
            pending: 0,
            min: 1,
            max: 4,
        },
        GroupStatus {
            name: "flipstack-demo-worker".into(),
            role: "worker".into(),
            desired: worker_desired,
            in_service: worker_desired.saturating_sub(1),
            pending: 1,
            min: 1,
            max: 8,
        },
    ]
}

/// An app that has seen 30 seconds of status, fleet and events; its clock
/// stands at the last answer.
pub fn app(stack: Option<&str>, read_only: bool) -> App {
    let mut app = App::new(options(stack, read_only), T0);
    for i in 0..30 {
        app.tick(T0 + i * 1000);
        app.on_msg(Msg::Status(Ok(Box::new(status_at(i)))));
        if stack.is_some() && i % 5 == 0 {
            app.on_msg(Msg::Fleet(Ok(groups(1 + (i / 10) as u32, 2 + (i / 5) as u32))));
        }
    }
    app.on_msg(Msg::EventsConnected);
    let sources = ["cache", "cache", "replica", "cache", "primary", "cache"];
    for (k, source) in sources.iter().enumerate() {
        app.on_msg(Msg::Event(AdminEvent::GalleryRead {
            at: T0 + 29_000 - (sources.len() - k) as i64 * 1_500,
            person: format!("{k}f3a9c1d2e4b5a6978"),
            source: ReadSource::parse(source).unwrap(),
        }));
    }
    for (k, kind) in ["uploaded", "done", "done", "failed"].iter().enumerate() {
        app.on_msg(Msg::Event(AdminEvent::Job {
            id: k as i64,
            at: T0 + 20_000 + k as i64 * 2_000,
            kind: EventKind::parse(kind).unwrap(),
            upload_id: Some(UploadId::from_i64(1200 + k as i64).unwrap()),
            person: Some("f3a9c1d2".into()),
            detail: (*kind == "failed").then(|| "not a picture".into()),
        }));
    }
    app.tick(T0 + 29_000);
    app
}

/// An upload as the admin API lists it, `age_s` seconds before the app's clock.
pub fn upload(id: i64, state: UploadState, format: ImageFormat, age_s: i64, reason: Option<&str>) -> Upload {
    let created_at = T0 + 29_000 - age_s * 1000;
    let finished = matches!(state, UploadState::Done | UploadState::Failed).then_some(created_at + 1_250);
    Upload {
        id: UploadId::from_i64(id).unwrap(),
        person_id: PersonId::from_i64(7).unwrap(),
        name: DisplayName::from_stored(format!("picture-{id}.{}", format.as_str())),
        format,
        bytes: 48_213,
        width: 640,
        height: 480,
        state,
        attempts: if state == UploadState::Failed { 1 } else { 0 },
        claims: 1,
        next_attempt_at: created_at,
        lease_owner: (state == UploadState::Processing).then(|| "ip-10-0-1-17-9f2a".into()),
        lease_until: (state == UploadState::Processing).then_some(created_at + 30_000),
        failure_reason: reason.map(String::from),
        outcome: (state == UploadState::Done).then(|| FlipOutcome {
            flipped_bytes: 47_990,
            flipped_width: 640,
            flipped_height: 480,
            method: "jpeg-lossless".into(),
            thumb_width: Some(320),
            thumb_height: Some(240),
        }),
        created_at,
        updated_at: created_at,
        finished_at: finished,
        trace_parent: None,
    }
}

/// Four uploads, newest first, as `GET /admin/api/uploads` answers.
pub fn listing() -> Vec<UploadListing> {
    let decode = "the picture could not be decoded: corrupt deflate stream";
    vec![
        UploadListing {
            upload: upload(1304, UploadState::Processing, ImageFormat::Jpeg, 3, None),
            person_hash: "3fa1c2d9e8b7a6f5".into(),
        },
        UploadListing {
            upload: upload(1303, UploadState::Failed, ImageFormat::Png, 40, Some(decode)),
            person_hash: "3fa1c2d9e8b7a6f5".into(),
        },
        UploadListing {
            upload: upload(1302, UploadState::Done, ImageFormat::Heic, 95, None),
            person_hash: "b04e7d1100aa33cc".into(),
        },
        UploadListing {
            upload: upload(1301, UploadState::Pending, ImageFormat::Gif, 300, None),
            person_hash: "b04e7d1100aa33cc".into(),
        },
    ]
}

/// Upload 1303 in full: uploaded, claimed, failed.
pub fn failed_detail() -> UploadDetail {
    let u = listing().remove(1).upload;
    let event = |id: i64, dt: i64, kind: &str, detail: Option<&str>| Event {
        id,
        at: u.created_at + dt,
        kind: EventKind::parse(kind).unwrap(),
        upload_id: Some(u.id),
        person_hash: Some("3fa1c2d9e8b7a6f5".into()),
        detail: detail.map(String::from),
    };
    UploadDetail {
        events: vec![event(1, 0, "uploaded", None), event(2, 1_250, "failed", u.failure_reason.as_deref())],
        person_hash: "3fa1c2d9e8b7a6f5".into(),
        upload: u,
    }
}

/// What `GET /admin/api/logs` answers: a warning and an error.
pub fn log_lines() -> Vec<LogLine> {
    vec![
        LogLine {
            at: T0 + 29_000 - 65_000,
            level: "WARN".into(),
            target: "flipstack_server::upload".into(),
            message: "the queue did not answer; the job is sent again later error=cannot connect".into(),
        },
        LogLine {
            at: T0 + 29_000 - 4_000,
            level: "ERROR".into(),
            target: "flipstack_server::admin".into(),
            message: "database dump failed part-way error=the database is unavailable".into(),
        },
    ]
}

/// What `GET /admin/api/backups` answers: three backups, newest first.
pub fn backup_list() -> Vec<BackupInfo> {
    [(6, 4_812_331), (12 * 3600 + 6, 4_790_002), (24 * 3600 + 6, 4_701_977)]
        .into_iter()
        .map(|(age_s, bytes)| {
            let at = (T0 + 29_000 - age_s * 1000).div_euclid(1000) * 1000;
            BackupInfo { name: flipstack_domain::backups::BackupName::at(at).to_string(), bytes, at }
        })
        .collect()
}
