//! The event stream's wire format: what the server sends
//! (`flipstack_domain::status::AdminEvent`, the one type both sides use) is the
//! JSON the console and any other reader of `GET /admin/api/events` expect.

use flipstack_domain::domain::{EventKind, UploadId};
use flipstack_domain::records::ReadSource;
use flipstack_domain::status::AdminEvent;

fn wire(event: &AdminEvent, json: &str) {
    assert_eq!(serde_json::to_string(event).unwrap(), json);
    assert_eq!(&serde_json::from_str::<AdminEvent>(json).unwrap(), event);
}

#[test]
fn every_event_keeps_its_wire_format() {
    wire(
        &AdminEvent::Job {
            id: 7,
            at: 1_000,
            kind: EventKind::Failed,
            upload_id: Some(UploadId::from_i64(3).unwrap()),
            person: Some("abc".into()),
            detail: Some("not a picture".into()),
        },
        r#"{"type":"job","id":7,"at":1000,"kind":"failed","upload_id":3,"person":"abc","detail":"not a picture"}"#,
    );
    wire(
        &AdminEvent::GalleryRead { at: 2_000, person: "abc".into(), source: ReadSource::Replica },
        r#"{"type":"gallery_read","at":2000,"person":"abc","source":"replica"}"#,
    );
    wire(&AdminEvent::Blocked { at: 3_000, blocked: true }, r#"{"type":"blocked","at":3000,"blocked":true}"#);
}
