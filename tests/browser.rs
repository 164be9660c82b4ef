//! The pages as a person uses them, in headless Chromium: upload two pictures
//! through the file input, watch them flip without reloading, open one,
//! delete one, log out, sign in again through the mailed link, the paused
//! banner, a hostile file's message. Screenshots at 375 and 1280 px wide go
//! to target/screenshots/ on every run.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::webdriver::{Chromedriver, Session};
use common::*;

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots")
}

async fn shoot(s: &Session, name: &str) {
    for (w, h) in [(375, 812), (1280, 900)] {
        s.resize(w, h).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.screenshot(&screenshots().join(format!("{name}-{w}.png"))).await;
    }
    s.resize(1280, 900).await;
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_uses_the_pages_in_a_real_browser() {
    let mut app = TestApp::spawn_with(Tier::Embedded, |_| {}, 0).await;
    let driver = Chromedriver::start().await;
    let s = Session::new(&driver).await;
    let files = tempfile::tempdir().unwrap();
    let first = write(files.path(), "harbour.png", &png(320, 200));
    let second = write(files.path(), "hills.jpg", &jpeg(300, 400));
    let me = format!("browser-{:08x}@example.com", rand::random::<u32>());

    // Upload two pictures through the file input (no worker yet: they wait).
    s.goto(&format!("{}/form", app.base)).await;
    shoot(&s, "form").await;
    s.type_into(&s.find("#email").await, &me).await;
    s.choose_files(&s.find("#file").await, &[&first, &second]).await;
    s.click(&s.find("#upload-form button[type=submit]").await).await;
    s.wait_until("the gallery after the uploads", "return location.pathname === '/gallery'", Duration::from_secs(20))
        .await;
    assert_eq!(s.count("#gallery > li").await, 2);
    assert_eq!(s.count("#gallery > li[data-state=pending]").await, 2, "both wait to be flipped");
    shoot(&s, "gallery-pending").await;

    // They turn flipped in place: the same page, never reloaded.
    s.script("window.flipstackMarker = 'still the same page'; return true").await;
    app.start_worker().await;
    s.wait_until(
        "both pictures flipped, live",
        "return document.querySelectorAll('#gallery > li[data-state=done]').length === 2",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(s.script("return window.flipstackMarker").await, "still the same page", "updated without a reload");
    s.wait_until(
        "the flipped pictures shown",
        "return [...document.querySelectorAll('#gallery img[alt^=Flipped]')].filter(i => i.complete && i.naturalWidth > 0).length === 2",
        Duration::from_secs(10),
    )
    .await;
    shoot(&s, "gallery").await;

    // Open one full size.
    let ids: Vec<String> = s
        .script("return [...document.querySelectorAll('#gallery > li')].map(li => li.id.replace('upload-', ''))")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    s.click(&s.find(&format!("#upload-{} a[href$='/flipped']", ids[0])).await).await;
    s.wait_until("the full-size picture", "return location.pathname.endsWith('/flipped')", Duration::from_secs(10))
        .await;
    let width = s.script("const i = document.querySelector('img'); return i && i.complete ? i.naturalWidth : 0").await;
    assert!(width.as_u64().unwrap_or(0) >= 300, "the picture opens full size: {width}");
    s.goto(&format!("{}/gallery", app.base)).await;

    // Delete one, after the dialog; its pictures are unreachable afterwards.
    let victim = &ids[1];
    s.click(&s.find(&format!("#upload-{victim} a.delete")).await).await;
    assert!(s.alert_text().await.contains("Delete"), "a confirmation first");
    s.accept_alert().await;
    s.wait_until(
        "the deleted picture gone from the page",
        &format!("return !document.getElementById('upload-{victim}')"),
        Duration::from_secs(10),
    )
    .await;
    let status = s
        .async_script(&format!("fetch('/images/{victim}/original', {{cache: 'no-store'}}).then(r => done(r.status))"))
        .await;
    assert_eq!(status, 404, "the deleted picture is unreachable");
    assert_eq!(s.count("#gallery > li").await, 1);

    // Log out; the gallery is closed to this browser.
    s.click(&s.find("form[action='/logout'] button").await).await;
    s.wait_until("the upload page after logging out", "return location.pathname === '/form'", Duration::from_secs(10))
        .await;
    s.goto(&format!("{}/gallery", app.base)).await;
    s.wait_until("the sign-in page", "return location.pathname === '/signin'", Duration::from_secs(10)).await;

    // Sign in again through the link in the outbox.
    s.type_into(&s.find("#email").await, &me).await;
    s.click(&s.find("form[action='/signin'] button").await).await;
    s.wait_until(
        "the link-sent message",
        "return document.body.innerText.includes('sign-in link is on its way')",
        Duration::from_secs(10),
    )
    .await;
    shoot(&s, "signin-sent").await;
    let link = app.wait_mailed_links(&me, 1).await.pop().expect("a link in the outbox");
    s.goto(&format!("{}{link}", app.base)).await;
    s.click(&s.find("form[action='/signin/link'] button").await).await;
    s.wait_until("the gallery again", "return location.pathname === '/gallery'", Duration::from_secs(10)).await;
    assert_eq!(s.count(&format!("#upload-{}", ids[0])).await, 1, "the gallery is back");
    // The same link a second time says it was used (before any button) and offers a new one.
    s.goto(&format!("{}{link}", app.base)).await;
    s.wait_until(
        "the used-link message",
        "return document.body.innerText.includes('already used')",
        Duration::from_secs(10),
    )
    .await;
    assert!(s.count("a[href='/signin']").await >= 1, "and offers a new one");

    // Paused uploads show a banner and a disabled button.
    assert_eq!(app.admin_post("/admin/api/uploads/block").await.status(), 200);
    s.goto(&format!("{}/form", app.base)).await;
    let banner = s.text(&s.find(".banner.paused").await).await;
    assert!(banner.contains("Uploads are paused"), "{banner}");
    assert_eq!(s.script("return document.querySelector('#upload-form button[type=submit]').disabled").await, true);
    shoot(&s, "paused").await;
    assert_eq!(app.admin_post("/admin/api/uploads/unblock").await.status(), 200);

    // A hostile file's message appears next to it.
    let bad = match corpus() {
        Some(dir) => dir.join("bad/html_xss_renamed.png"),
        None => write(files.path(), "html_xss_renamed.png", b"<html><script>alert(1)</script></html>"),
    };
    s.goto(&format!("{}/form", app.base)).await;
    s.choose_files(&s.find("#file").await, &[&bad]).await;
    s.click(&s.find("#upload-form button[type=submit]").await).await;
    s.wait_until("the file's error", "return !!document.querySelector('#queue li.error')", Duration::from_secs(10))
        .await;
    let row = s.text(&s.find("#queue li.error").await).await;
    assert!(row.contains("html_xss_renamed.png") && row.contains("not a picture"), "{row}");
    shoot(&s, "hostile").await;

    s.close().await;
    drop(driver);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pages_work_without_javascript_too() {
    // The same flow as plain form posts (what a browser without JavaScript
    // sends), checked for what the script would otherwise provide.
    let app = TestApp::spawn_with(Tier::Embedded, |_| {}, 0).await;
    let b = app.browser();
    let me = format!("nojs-{:08x}@example.com", rand::random::<u32>());
    let csrf = b.csrf().await;
    let (a, c) = (png(30, 20), png(20, 30));
    let files: [(&[u8], &[u8]); 2] = [(b"a.png", &a), (b"c.png", &c)];
    assert_eq!(b.upload_parts(&[("csrf", &csrf), ("email", &me)], &files, false).await.status(), 303);
    let (_, html) = b.text("/gallery").await;
    assert!(
        html.contains("<noscript><meta http-equiv=\"refresh\""),
        "without the script the page refreshes while pictures wait"
    );
    let id = app.latest_upload(&me).await.unwrap();
    let (status, confirm) = b.text(&format!("/uploads/{id}/delete?page=1")).await;
    assert_eq!(status, 200, "deleting asks on a page of its own");
    assert!(confirm.contains("Delete this picture?"));
    app.shutdown().await;
}
