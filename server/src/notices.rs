//! Completion notices: a person who ticks "Mail me when my pictures are
//! flipped" on the upload form gets one mail per batch: once none of their
//! uploads is waiting or being flipped, for those that finished since the
//! last notice, and never more than one every `notice_every`. The mail links
//! to the gallery and to an unsubscribe page.
//!
//! One server of the whole fleet sends them: the holder of the `notices`
//! lock (`tasks::completion_notices`). The unsubscribe link needs no
//! sign-in: it carries the person's id and an HMAC of it under the shared
//! secret, so it cannot be made for anyone else, nor guessed.

use std::collections::HashMap;
use std::time::Duration;

use flipstack_core::backups::Period;
use flipstack_core::config::Config;
use flipstack_core::domain::{Millis, PersonId, now_millis};
use flipstack_core::mail::Mail;
use flipstack_core::store::{NoticeBatch, NoticeDue};

use crate::session::{sign, signed};
use crate::state::AppState;

/// The fleet-wide lock of the duty.
pub const DUTY: &str = "notices";
/// What the unsubscribe links' HMAC is for (a CSRF token is worth nothing here).
const UNSUBSCRIBE: &str = "notice-unsubscribe";
/// People served in one round; the rest wait for the next.
const PER_ROUND: u32 = 100;

/// How long nothing of a person's may finish before their batch counts as
/// whole: the page's script sends a batch one picture after another, so the
/// next picture's upload may still be on its way when the last one is flipped.
/// Never longer than the interval itself.
const SETTLE: Duration = Duration::from_secs(30);

/// When a batch may be mailed, at `now`.
pub fn due_at(config: &Config, now: Millis) -> NoticeDue {
    let millis = |d: Duration| d.as_millis() as i64;
    NoticeDue {
        quiet_since: now - millis(config.notice_every.as_duration()),
        settled_before: now - millis(SETTLE.min(config.notice_every.as_duration())),
    }
}

/// How often the leader looks for ready batches: a fraction of the interval,
/// so a batch waits little past it, and never busier than four times a second.
pub fn round_every(config: &Config) -> Duration {
    (config.notice_every.as_duration() / 4).clamp(Duration::from_millis(250), Duration::from_secs(5))
}

/// The path and query of a person's unsubscribe link.
pub fn unsubscribe_path(secret: &[u8], person: PersonId) -> String {
    format!("/notices/unsubscribe?person={person}&token={}", sign(secret, UNSUBSCRIBE, &person.to_string()))
}

/// What is wrong with an unsubscribe link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkProblem {
    /// A part is missing or not what a link holds (cut short when copied).
    Incomplete,
    /// The token is not this person's: changed, or made up.
    Forged,
}

/// The person an unsubscribe link's query is for, when its token is theirs.
pub fn unsubscribe_person(secret: &[u8], query: &HashMap<String, String>) -> Result<PersonId, LinkProblem> {
    let person = query.get("person").and_then(|p| p.parse::<PersonId>().ok()).ok_or(LinkProblem::Incomplete)?;
    let token = query.get("token").filter(|t| !t.is_empty()).ok_or(LinkProblem::Incomplete)?;
    if signed(secret, UNSUBSCRIBE, &person.to_string(), token) { Ok(person) } else { Err(LinkProblem::Forged) }
}

/// One round of the leader: every person with a ready batch gets its mail.
pub async fn send_ready(state: &AppState) {
    let services = &state.services;
    let due = due_at(&services.config, now_millis());
    let people = match services.store.due_notices(due, PER_ROUND).await {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %e, "could not look for completion notices to send; trying again shortly");
            return;
        }
    };
    for person in people {
        // Taking the batch records the notice as sent before the mail goes,
        // with a conditional update: a second server, or this one's next
        // round, finds it taken and sends nothing. Sending first and
        // recording after would mail it twice whenever the process died in
        // between; this way such a crash loses that one mail instead, and a
        // send that fails (the mail server is down) gives the batch back for
        // the next round. For a mail that is a courtesy, a rare missing one
        // beats a duplicate.
        let batch = match services.store.take_notice(person, due, now_millis()).await {
            Ok(Some(batch)) => batch,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, person = person.get(), "could not take a completion notice; it is tried again");
                continue;
            }
        };
        mail(state, &batch).await;
    }
}

async fn mail(state: &AppState, batch: &NoticeBatch) {
    let services = &state.services;
    let who = batch.email.hashed_id();
    let unsubscribe = format!("{}{}", state.public_url(), unsubscribe_path(&state.secret, batch.person_id));
    let gallery = format!("{}/gallery", state.public_url());
    let (subject, body) = notice_text(batch.ready, batch.failed, &gallery, &unsubscribe, services.config.notice_every);
    let mail = Mail { subject: &subject, body: &body, unsubscribe: Some(&unsubscribe) };
    match services.mailer.send(&batch.email, &mail).await {
        Ok(()) => tracing::info!(
            person = %who, ready = batch.ready, failed = batch.failed, mailer = services.mailer.kind(),
            "completion notice mailed"
        ),
        Err(e) => {
            let given_back = services.store.give_back_notice(batch).await;
            tracing::warn!(
                error = %e, person = %who, given_back = ?given_back,
                "could not send a completion notice; it is sent again in the next round"
            );
        }
    }
}

fn pictures(n: u64) -> String {
    if n == 1 { "1 picture".into() } else { format!("{n} pictures") }
}

/// The notice's subject and text.
fn notice_text(ready: u64, failed: u64, gallery: &str, unsubscribe: &str, every: Period) -> (String, String) {
    let subject = match (ready, failed) {
        (_, 0) => "Your pictures are flipped",
        (0, _) => "Your pictures could not be flipped",
        _ => "Your pictures are flipped (some could not be)",
    };
    let mut summary = Vec::new();
    if ready > 0 {
        summary.push(format!("{} flipped and ready.", pictures(ready)));
    }
    if failed > 0 {
        summary.push(format!("{} could not be flipped; your gallery says why.", pictures(failed)));
    }
    let body = format!(
        "Hello,\n\n{}\n\nYour gallery:\n{gallery}\n\n\
         You get this mail because you asked for it when you uploaded; flipstack sends at most one every {every}.\n\
         To get no more of them, open this link (or untick the box on your next upload):\n{unsubscribe}\n",
        summary.join(" ")
    );
    (subject.to_owned(), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_holds_for_its_person_only() {
        let secret = b"shared secret";
        let person = PersonId::from_i64(123_456_789).unwrap();
        let path = unsubscribe_path(secret, person);
        let query: HashMap<String, String> = serde_urlencoded::from_str(path.split_once('?').unwrap().1).unwrap();
        assert_eq!(unsubscribe_person(secret, &query), Ok(person));
        let mut other = query.clone();
        other.insert("person".into(), "123456790".into());
        assert_eq!(unsubscribe_person(secret, &other), Err(LinkProblem::Forged), "another person");
        assert_eq!(unsubscribe_person(b"another secret", &query), Err(LinkProblem::Forged));
        let csrf_like = HashMap::from([
            ("person".into(), person.to_string()),
            ("token".into(), sign(secret, "csrf", &person.to_string())),
        ]);
        assert_eq!(unsubscribe_person(secret, &csrf_like), Err(LinkProblem::Forged), "another purpose's token");
        for missing in ["person", "token"] {
            let mut cut = query.clone();
            cut.remove(missing);
            assert_eq!(unsubscribe_person(secret, &cut), Err(LinkProblem::Incomplete), "{missing}");
        }
        let mut bad = query.clone();
        bad.insert("person".into(), "-1".into());
        assert_eq!(unsubscribe_person(secret, &bad), Err(LinkProblem::Incomplete));
    }

    #[test]
    fn the_text_counts_what_is_ready_and_what_failed() {
        let every = Period::from_secs(600).unwrap();
        let (subject, body) = notice_text(2, 0, "https://p/gallery", "https://p/notices/unsubscribe?x", every);
        assert_eq!(subject, "Your pictures are flipped");
        assert!(body.contains("2 pictures flipped and ready.") && !body.contains("could not"), "{body}");
        assert!(body.contains("https://p/gallery\n") && body.contains("https://p/notices/unsubscribe?x\n"));
        assert!(body.contains("at most one every 10m"), "{body}");
        let (subject, body) = notice_text(1, 1, "g", "u", every);
        assert_eq!(subject, "Your pictures are flipped (some could not be)");
        assert!(body.contains("1 picture flipped and ready. 1 picture could not be flipped"), "{body}");
        assert_eq!(notice_text(0, 3, "g", "u", every).0, "Your pictures could not be flipped");
    }

    #[test]
    fn a_batch_settles_for_half_a_minute_at_most_the_interval() {
        let with = |secs| Config { notice_every: Period::from_secs(secs).unwrap(), ..Config::default() };
        assert_eq!(due_at(&with(600), 1_000_000), NoticeDue { quiet_since: 400_000, settled_before: 970_000 });
        assert_eq!(due_at(&with(3), 1_000_000), NoticeDue { quiet_since: 997_000, settled_before: 997_000 });
    }

    #[test]
    fn rounds_follow_the_interval_within_bounds() {
        let with = |secs| Config { notice_every: Period::from_secs(secs).unwrap(), ..Config::default() };
        assert_eq!(round_every(&with(600)), Duration::from_secs(5));
        assert_eq!(round_every(&with(2)), Duration::from_millis(500));
        assert_eq!(round_every(&with(1)), Duration::from_millis(250));
    }
}
