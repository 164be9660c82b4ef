//! One job on embedded defaults (SQLite, a blob folder, the uploads table as
//! the queue): the worker stores the flip and both thumbnails and records
//! how the flip was made and the thumbnails' size.

use std::time::{Duration, Instant};

use flipstack_core::blob::BlobKind;
use flipstack_core::domain::{DisplayName, Email, ImageFormat, PersonId, UploadId, UploadState, now_millis};
use flipstack_core::store::{AcceptUpload, NewOwner, NewUpload};
use flipstack_core::{Config, Services};
use tokio_util::sync::CancellationToken;

fn jpeg(w: usize, h: usize) -> Vec<u8> {
    let px: Vec<u8> = (0..w * h * 3).map(|i| ((i / 3 / w) * 255 / h + (i % 3) * 40) as u8).collect();
    turbojpeg::compress(
        turbojpeg::Image {
            pixels: px.as_slice(),
            width: w,
            pitch: w * 3,
            height: h,
            format: turbojpeg::PixelFormat::RGB,
        },
        85,
        turbojpeg::Subsamp::Sub2x2,
    )
    .unwrap()
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stores_the_flip_and_both_thumbnails() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { data_dir: dir.path().to_path_buf(), queue_poll_ms: 10, ..Config::default() };
    let services = Services::connect(config).await.unwrap();
    let (w, h) = (1280, 960);
    let bytes = jpeg(w, h);
    let id = UploadId::new();
    services.blobs.put(BlobKind::Original, id, bytes.clone()).await.unwrap();
    let email = Email::parse("thumbs@example.com").unwrap();
    services
        .store
        .accept_upload(AcceptUpload {
            upload: NewUpload {
                id,
                name: DisplayName::from_client(Some("test.jpg")),
                format: ImageFormat::Jpeg,
                bytes: bytes.len() as u64,
                width: w as u32,
                height: h as u32,
                trace_parent: None,
            },
            owner: NewOwner::Create { id: PersonId::new(), email: email.clone() },
            session: None,
            person_hash: email.hashed_id(),
            notice: Some(false),
            now: now_millis(),
        })
        .await
        .unwrap();

    let stop = CancellationToken::new();
    let options = flipstack_worker::WorkerOptions::from_services(&services);
    let worker = tokio::spawn(flipstack_worker::run(services.clone(), options, stop.clone()));
    let started = Instant::now();
    let upload = loop {
        let u = services.store.upload(id).await.unwrap().unwrap();
        if u.state == UploadState::Done || u.state == UploadState::Failed {
            break u;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the job did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.cancel();
    worker.await.unwrap().unwrap();

    assert_eq!(upload.state, UploadState::Done, "{:?}", upload.failure_reason);
    let outcome = upload.outcome.unwrap();
    // 960 rows are whole 16-row iMCUs: the lossless path.
    assert_eq!(outcome.method, "jpeg-lossless-vflip");
    assert_eq!((outcome.flipped_width, outcome.flipped_height), (w as u32, h as u32));
    assert_eq!((outcome.thumb_width, outcome.thumb_height), (Some(480), Some(360)));
    for kind in [BlobKind::Flipped, BlobKind::OriginalThumb, BlobKind::FlippedThumb] {
        let stored = services.blobs.get_bytes(kind, id).await.unwrap();
        let stored = stored.unwrap_or_else(|| panic!("{kind:?} was not stored"));
        let header = turbojpeg::read_header(&stored).unwrap();
        let expected = if kind == BlobKind::Flipped { (w, h) } else { (480, 360) };
        assert_eq!((header.width, header.height), expected, "{kind:?}");
    }
}
