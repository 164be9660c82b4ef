//! The service's rules about people and their pictures, apart from HTTP:
//! whose gallery an upload goes into, and whose picture a page may show or
//! delete. Handlers parse the request, call these and render the answer.

use flipstack_core::domain::{Email, PersonId, UploadId};
use flipstack_core::store::{MetadataStore, StoreError, Upload};

use crate::session::SignedIn;

/// Whose gallery an upload goes into, as far as the request tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadTarget {
    /// The signed-in person's own gallery: no address typed, or their own.
    Own { person: PersonId, email: Email },
    /// An address typed by someone who is not signed in to it, signed in as
    /// somebody else or not at all. If it has a gallery, nothing is stored
    /// and its owner is mailed a sign-in link; if not, a gallery is made.
    Typed(Email),
    /// Nobody signed in and no address typed: the form asks for one.
    NoAddress,
}

/// Being signed in is what lets a person upload into a gallery that exists;
/// typing its address never does.
pub fn upload_target(signed_in: Option<&SignedIn>, typed: Option<Email>) -> UploadTarget {
    match (signed_in, typed) {
        (Some(me), None) => UploadTarget::Own { person: me.person_id, email: me.email.clone() },
        (Some(me), Some(e)) if e == me.email => UploadTarget::Own { person: me.person_id, email: e },
        (_, Some(e)) => UploadTarget::Typed(e),
        (None, None) => UploadTarget::NoAddress,
    }
}

/// One of `me`'s pictures, by the id in a path. `None` when the text is not
/// an id, there is no such picture, or it is someone else's: the same
/// answer, so no page tells whether another person's picture exists.
pub async fn own_upload(store: &dyn MetadataStore, me: PersonId, id: &str) -> Result<Option<Upload>, StoreError> {
    let Ok(id) = id.parse::<UploadId>() else { return Ok(None) };
    Ok(store.upload(id).await?.filter(|u| u.person_id == me))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use flipstack_core::domain::{DisplayName, ImageFormat, SecretToken, now_millis};
    use flipstack_core::metrics::Metrics;
    use flipstack_core::store::{self, AcceptUpload, NewOwner, NewUpload};

    use super::*;

    fn email(name: &str) -> Email {
        Email::parse(&format!("{name}@example.com")).unwrap()
    }

    fn signed_in(name: &str) -> SignedIn {
        SignedIn { token: SecretToken::generate(), person_id: PersonId::new(), email: email(name) }
    }

    #[test]
    fn a_signed_in_person_uploads_into_their_own_gallery_with_or_without_typing_it() {
        let me = signed_in("ann");
        let own = UploadTarget::Own { person: me.person_id, email: me.email.clone() };
        assert_eq!(upload_target(Some(&me), None), own);
        assert_eq!(upload_target(Some(&me), Some(email("ann"))), own);
    }

    #[test]
    fn typing_an_address_never_reaches_its_gallery_by_itself() {
        let me = signed_in("ann");
        assert_eq!(upload_target(Some(&me), Some(email("bob"))), UploadTarget::Typed(email("bob")));
        assert_eq!(upload_target(None, Some(email("ann"))), UploadTarget::Typed(email("ann")));
        assert_eq!(upload_target(None, None), UploadTarget::NoAddress);
    }

    #[tokio::test]
    async fn a_picture_is_found_only_by_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("rules.sqlite").display());
        let wait = Duration::from_millis(200);
        let store = store::connect(&url, &[], Arc::new(Metrics::new()), wait, wait).await.unwrap();
        let (owner, id) = (PersonId::new(), UploadId::new());
        let ann = email("ann");
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
                owner: NewOwner::Create { id: owner, email: ann.clone() },
                session: None,
                person_hash: ann.hashed_id(),
                notice: Some(false),
                now: now_millis(),
            })
            .await
            .unwrap();
        let mine = own_upload(store.as_ref(), owner, &id.to_string()).await.unwrap();
        assert_eq!(mine.map(|u| u.id), Some(id));
        assert!(own_upload(store.as_ref(), PersonId::new(), &id.to_string()).await.unwrap().is_none());
        assert!(own_upload(store.as_ref(), owner, "not-an-id").await.unwrap().is_none());
        assert!(own_upload(store.as_ref(), owner, &UploadId::new().to_string()).await.unwrap().is_none());
    }
}
