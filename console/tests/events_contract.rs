//! The console reads what the server's event stream sends: every kind of
//! the server's `AdminEvent`, serialised as the server does, parses into the
//! console's mirror of it.

use flipstack_console::model::AdminEvent as Seen;
use flipstack_server::state::AdminEvent as Sent;

fn round_trip(sent: &Sent) -> Seen {
    let json = serde_json::to_string(sent).unwrap();
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("cannot read {json}: {e}"))
}

#[test]
fn every_server_event_is_understood() {
    assert_eq!(
        round_trip(&Sent::Job {
            id: 7,
            at: 1_000,
            kind: "failed".into(),
            upload_id: Some(3),
            person: Some("abc".into()),
            detail: Some("not a picture".into()),
        }),
        Seen::Job {
            id: 7,
            at: 1_000,
            kind: "failed".into(),
            upload_id: Some(3),
            person: Some("abc".into()),
            detail: Some("not a picture".into()),
        }
    );
    assert_eq!(
        round_trip(&Sent::GalleryRead { at: 2_000, person: "abc".into(), source: "replica" }),
        Seen::GalleryRead { at: 2_000, person: "abc".into(), source: "replica".into() }
    );
    assert_eq!(round_trip(&Sent::Blocked { at: 3_000, blocked: true }), Seen::Blocked { at: 3_000, blocked: true });
}
