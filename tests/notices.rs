//! Completion notices over HTTP, on every tier: the box on the upload form,
//! one mail per finished batch and at most one per interval, the gallery and
//! unsubscribe links in it, and unsubscribing without signing in.

mod common;

use std::time::{Duration, Instant};

use common::*;
use flipstack_core::backups::Period;
use flipstack_core::domain::{Email, PersonId, UploadId, now_millis};
use flipstack_core::store::ReadFrom;

tier_tests!(
    a_batch_gets_one_mail_and_no_second_within_the_interval,
    unsubscribing_by_the_mailed_link_stops_the_mails,
    nobody_who_did_not_ask_gets_a_mail,
);

/// Short enough for a test, long enough that a batch finishes inside it.
const EVERY: Duration = Duration::from_secs(3);

async fn app(tier: Tier) -> TestApp {
    TestApp::spawn_with(tier, |c| c.notice_every = Period::from_secs(EVERY.as_secs() as i64).unwrap(), 1).await
}

fn email() -> String {
    format!("notice-{:08x}@example.com", rand::random::<u32>())
}

const TICKED: &str = "name=\"notice\" value=\"on\" checked";

/// Whether the form shows the "mail me" box ticked for this browser.
async fn box_ticked(b: &Browser) -> bool {
    let (status, page) = b.text("/form").await;
    assert_eq!(status, 200);
    assert!(page.contains("Mail me when my pictures are flipped"), "the form has the box");
    page.contains(TICKED)
}

/// Posts the upload form as a browser without script does: csrf, the
/// address (when given), the box (when ticked), the files.
async fn upload(b: &Browser, email: Option<&str>, notice: bool, files: usize) {
    let csrf = b.csrf().await;
    let mut fields = vec![("csrf", csrf.as_str())];
    if let Some(e) = email {
        fields.push(("email", e));
    }
    if notice {
        fields.push(("notice", "on"));
    }
    let png = png(24, 16);
    let names: Vec<String> = (0..files).map(|i| format!("p{i}.png")).collect();
    let files: Vec<(&[u8], &[u8])> = names.iter().map(|n| (n.as_bytes(), png.as_slice())).collect();
    let r = b.upload_parts(&fields, &files, false).await;
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
}

async fn person(app: &TestApp, email: &str) -> PersonId {
    app.services.store.person_by_email(&Email::parse(email).unwrap()).await.unwrap().expect("a gallery").id
}

/// Waits until every upload of the person is done.
async fn wait_all_done(app: &TestApp, email: &str) -> Vec<UploadId> {
    let read = app.services.store.gallery_page(person(app, email).await, 0, 100, ReadFrom::Primary).await.unwrap();
    let ids: Vec<UploadId> = read.page.items.iter().map(|i| i.id).collect();
    for id in &ids {
        app.wait_done(*id).await;
    }
    ids
}

/// The notices mailed to an address once there are `count` (bounded wait).
async fn wait_notices(app: &TestApp, email: &str, count: usize) -> Vec<String> {
    let started = Instant::now();
    loop {
        let mails = notices(app, email);
        if mails.len() >= count {
            return mails;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{count} notices to {email}, got {}", mails.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn notices(app: &TestApp, email: &str) -> Vec<String> {
    app.mails_to(email).into_iter().filter(|m| m.contains("Subject: Your pictures")).collect()
}

/// Past the interval and a few of the leader's rounds: a notice that were
/// due would have been sent by then.
async fn let_rounds_pass() {
    tokio::time::sleep(EVERY + Duration::from_secs(3)).await;
}

fn has_line(mail: &str, text: &str) -> bool {
    mail.lines().any(|l| l.trim_end() == text)
}

/// The unsubscribe link of a notice, as a path with its query.
fn unsubscribe_link(app: &TestApp, mail: &str) -> String {
    let header = mail.lines().find_map(|l| l.strip_prefix("List-Unsubscribe: <")).expect("a List-Unsubscribe header");
    let url = header.strip_suffix('>').expect("the header's URL in <>");
    assert!(mail.contains("\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"), "one-click (RFC 8058): {mail}");
    assert!(has_line(mail, url), "the link in the text too: {mail}");
    url.strip_prefix(&app.base).unwrap_or_else(|| panic!("{url} is on {}", app.base)).to_owned()
}

async fn a_batch_gets_one_mail_and_no_second_within_the_interval(tier: Tier) {
    let app = app(tier).await;
    let b = app.browser();
    let me = email();
    assert!(!box_ticked(&b).await, "not ticked for a new visitor");
    // As the page's script sends a batch: one picture per request, the
    // next one sent when the last is stored (and perhaps already flipped).
    upload(&b, Some(&me), true, 1).await;
    upload(&b, None, true, 1).await;
    assert!(box_ticked(&b).await, "remembered: ticked on the next form");
    wait_all_done(&app, &me).await;

    let mails = wait_notices(&app, &me, 1).await;
    assert_eq!(mails.len(), 1, "one mail for the batch");
    let mail = &mails[0];
    assert!(mail.contains("Subject: Your pictures are flipped\r\n"), "{mail}");
    assert!(mail.contains("2 pictures flipped and ready."), "both pictures in one mail: {mail}");
    assert!(has_line(mail, &format!("{}/gallery", app.base)), "the gallery link: {mail}");
    let link = unsubscribe_link(&app, mail);
    let (_, first_sent) = app.services.store.notice_wish(person(&app, &me).await).await.unwrap();
    let first_sent = first_sent.expect("the notice is recorded");

    // Another picture within the interval: its mail waits for the interval.
    upload(&b, None, true, 1).await;
    wait_all_done(&app, &me).await;
    if now_millis() < first_sent + EVERY.as_millis() as i64 - 200 {
        assert_eq!(notices(&app, &me).len(), 1, "no second mail within the interval");
    }
    let mails = wait_notices(&app, &me, 2).await;
    assert!(mails[1].contains("1 picture flipped and ready."), "only the new picture: {}", mails[1]);
    let (_, second_sent) = app.services.store.notice_wish(person(&app, &me).await).await.unwrap();
    let gap = second_sent.unwrap() - first_sent;
    assert!(gap >= EVERY.as_millis() as i64, "the second notice came {gap} ms after the first");
    assert_eq!(unsubscribe_link(&app, &mails[1]), link, "one link per person");

    let_rounds_pass().await;
    assert_eq!(notices(&app, &me).len(), 2, "each batch mailed once");
    app.shutdown().await;
}

async fn unsubscribing_by_the_mailed_link_stops_the_mails(tier: Tier) {
    let mut app = app(tier).await;
    let b = app.browser();
    let me = email();
    upload(&b, Some(&me), true, 1).await;
    wait_all_done(&app, &me).await;
    let mail = wait_notices(&app, &me, 1).await.remove(0);
    let link = unsubscribe_link(&app, &mail);
    let who = person(&app, &me).await;

    // Forged or cut links are refused and change nothing.
    let (path, token) = link.split_once("&token=").unwrap();
    let stranger = Browser::new(&app.base);
    // One character changed, whatever the token starts with.
    let swapped = if token.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{path}&token={swapped}{}", &token[1..]);
    let other_person = format!("/notices/unsubscribe?person={}&token={token}", who.get() + 1);
    for bad in [forged.as_str(), other_person.as_str()] {
        let (status, page) = stranger.text(bad).await;
        assert_eq!(status, 403, "{bad}: {page}");
        assert!(page.contains("This unsubscribe link is not valid"), "{page}");
        let r = stranger.client.post(stranger.url(bad)).send().await.unwrap();
        assert_eq!(r.status(), 403, "{bad}");
    }
    let (status, page) = stranger.text(path).await;
    assert_eq!(status, 400, "no token: {page}");
    assert!(page.contains("not complete"), "{page}");
    assert!(app.services.store.notice_wish(who).await.unwrap().0, "still asked for");

    // The link opens a page with a button (mail scanners follow links) and
    // needs no sign-in.
    let (status, page) = stranger.text(&link).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Stop these mails"), "{page}");
    let action = ["&amp;", "&#38;"].map(|amp| format!("action=\"{}\"", link.replace('&', amp)));
    assert!(action.iter().any(|a| page.contains(a)), "the button posts the link: {page}");
    assert!(app.services.store.notice_wish(who).await.unwrap().0, "opening the link changes nothing");

    // A batch in flight when the person unsubscribes is not mailed.
    app.stop_workers().await;
    upload(&b, None, true, 1).await;
    // A mail program's one-click unsubscribe (RFC 8058): a POST to the link, no cookies.
    let mail_program = reqwest::Client::new();
    let r = mail_program
        .post(format!("{}{link}", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("You will get no more mails"));
    assert!(!app.services.store.notice_wish(who).await.unwrap().0);
    assert!(!box_ticked(&b).await, "the form shows it off");
    app.start_worker().await;
    wait_all_done(&app, &me).await;
    let_rounds_pass().await;
    assert_eq!(notices(&app, &me).len(), 1, "no mail after unsubscribing");

    // Pressing the page's button again is harmless and says the same.
    let r = stranger.client.post(stranger.url(&link)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    app.shutdown().await;
}

async fn nobody_who_did_not_ask_gets_a_mail(tier: Tier) {
    let mut app = app(tier).await;
    let never = app.browser();
    let never_email = email();
    upload(&never, Some(&never_email), false, 2).await;
    assert!(!box_ticked(&never).await);
    // Ticked, then unticked on a later upload before anything finished: off again.
    app.stop_workers().await;
    let changed = app.browser();
    let changed_email = email();
    upload(&changed, Some(&changed_email), true, 1).await;
    assert!(box_ticked(&changed).await);
    upload(&changed, None, false, 1).await;
    assert!(!box_ticked(&changed).await, "unticking on an upload turns it off");
    app.start_worker().await;
    wait_all_done(&app, &never_email).await;
    wait_all_done(&app, &changed_email).await;
    let_rounds_pass().await;
    assert!(notices(&app, &never_email).is_empty(), "no mail to a person who did not ask");
    assert!(notices(&app, &changed_email).is_empty(), "no mail to a person who unticked the box");
    app.shutdown().await;
}
