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

    // Open one in the viewer, step to the next and back with the keys,
    // leave with Escape; then full size from the viewer.
    let ids: Vec<String> = s
        .script("return [...document.querySelectorAll('#gallery > li')].map(li => li.id.replace('upload-', ''))")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let viewing = |id: &str| format!("return location.pathname === '/uploads/{id}/view'");
    s.click(&s.find(&format!("#upload-{} figure:nth-child(2) a.open", ids[0])).await).await;
    s.wait_until("the viewer", &viewing(&ids[0]), Duration::from_secs(10)).await;
    s.wait_until(
        "the original and the flip side by side",
        "return [...document.querySelectorAll('#viewer img')].filter(i => i.complete && i.naturalWidth > 0).length === 2",
        Duration::from_secs(10),
    )
    .await;
    shoot(&s, "viewer").await;
    assert_eq!(s.count("#viewer-prev").await, 0, "the newest picture has no newer one");
    s.press_key("\u{E014}").await; // →
    s.wait_until("the next picture in the viewer", &viewing(&ids[1]), Duration::from_secs(10)).await;
    s.press_key("\u{E012}").await; // ←
    s.wait_until("the previous picture again", &viewing(&ids[0]), Duration::from_secs(10)).await;
    s.press_key("\u{E00C}").await; // Escape
    s.wait_until("the gallery after Escape", "return location.pathname === '/gallery'", Duration::from_secs(10)).await;
    s.goto(&format!("{}/uploads/{}/view?page=1", app.base, ids[0])).await;
    s.click(&s.find("#viewer figure:nth-child(2) a.full").await).await;
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
    // The viewer is a plain page: the pictures, links to the neighbours and
    // back, and the full size, with no script needed.
    let (status, viewer) = b.text(&format!("/uploads/{id}/view?page=1")).await;
    assert_eq!(status, 200, "{viewer}");
    assert!(viewer.contains("id=\"viewer-close\""), "a way back: {viewer}");
    assert!(viewer.contains("rel=\"next\""), "a link to the older picture");
    assert!(!viewer.contains("rel=\"prev\""), "none to a newer one: it is the newest");
    assert!(viewer.contains(&format!("src=\"/images/{id}/original")), "the original is shown");
    let link = viewer.split("rel=\"next\"").next().unwrap().rsplit("href=\"").next().unwrap();
    let older = link.split('"').next().unwrap();
    let (status, second) = b.text(older).await;
    assert_eq!(status, 200, "the older picture's page: {older}");
    assert!(second.contains("rel=\"prev\"") && !second.contains("rel=\"next\""), "the oldest links back only");
    let (status, _) = b.text("/uploads/1/view?page=1").await;
    assert_eq!(status, 404, "a picture not in this gallery has no viewer");
    let (status, confirm) = b.text(&format!("/uploads/{id}/delete?page=1")).await;
    assert_eq!(status, 200, "deleting asks on a page of its own");
    assert!(confirm.contains("Delete this picture?"));
    app.shutdown().await;
}

/// Twelve photos for the gallery: the corpus's first twelve when it is
/// there, else generated 12 MP JPEGs (smooth, so far smaller than photos).
fn twelve_photos() -> (Vec<(String, Vec<u8>)>, &'static str) {
    if let Some(dir) = corpus() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir.join("photos"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e != "tsv"))
            .collect();
        names.sort();
        names.truncate(12);
        let photos = names
            .into_iter()
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
            .collect();
        return (photos, "the corpus's first twelve photos");
    }
    let photos = (0..12u32)
        .map(|i| {
            let (w, h) = if i % 3 == 2 { (3000, 4000) } else { (4000, 3000) };
            (format!("generated-{i}.jpg"), jpeg(w, h))
        })
        .collect();
    (photos, "twelve generated 12 MP JPEGs (no corpus here)")
}

/// What the page fetched and showed, read in the browser after scrolling
/// to the end: every image request (URL, bytes) and every picture in the
/// grid (its URL, width in pixels, slot width in CSS pixels, the upload's
/// width). An `<img>` with `srcset` reports its natural width in CSS pixels
/// (divided by the density it was chosen for), so each picture's pixels are
/// counted by loading its URL again on its own, after the bytes are read.
const MEASURE: &str = r#"
const fetched = performance.getEntriesByType('resource')
  .filter(e => e.initiatorType === 'img')
  .map(e => [new URL(e.name).pathname, e.transferSize || e.encodedBodySize]);
const imgs = [...document.querySelectorAll('#gallery img')];
Promise.all(imgs.map(i => new Promise(ok => {
  const probe = new Image();
  const row = w => [new URL(i.currentSrc).pathname, w, i.getBoundingClientRect().width, Number(i.closest('li').dataset.width)];
  probe.onload = () => ok(row(probe.naturalWidth));
  probe.onerror = () => ok(row(0));
  probe.src = i.currentSrc;
}))).then(shown => done({fetched, shown, dpr: window.devicePixelRatio, vw: document.documentElement.clientWidth}));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gallery_fetches_pictures_that_fit_each_screen() {
    let app = TestApp::spawn_with(Tier::Embedded, |_| {}, 1).await;
    let (photos, which) = twelve_photos();
    eprintln!("gallery of {which}");
    let b = app.browser();
    let me = format!("screens-{:08x}@example.com", rand::random::<u32>());
    for (i, (name, bytes)) in photos.iter().enumerate() {
        // The first upload makes the gallery and signs this client in.
        let r = b.upload((i == 0).then_some(me.as_str()), name, bytes).await;
        assert_eq!(r.status(), 303, "{name} uploads");
    }
    let started = std::time::Instant::now();
    loop {
        let (_, html) = b.text("/gallery").await;
        if html.matches("data-state=\"done\"").count() == photos.len() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "all twelve flipped in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let session = b.cookie("fs_session").expect("signed in");

    let driver = Chromedriver::start().await;
    for (width, height, dpr, mobile, budget) in [
        (375, 812, 1.0, true, None),
        (375, 812, 3.0, true, Some(6_000_000)),
        (1280, 900, 1.0, false, None),
        (1280, 900, 2.0, false, Some(4_000_000)),
    ] {
        let s = Session::emulating(&driver, width, height, dpr, mobile).await;
        s.goto(&format!("{}/form", app.base)).await;
        s.add_cookie("fs_session", &session).await;
        s.goto(&format!("{}/gallery", app.base)).await;
        // Down to the end, a screen at a time, so every lazy picture loads.
        for _ in 0..100 {
            let at_end = s
                .script("window.scrollBy(0, window.innerHeight); return window.innerHeight + window.scrollY >= document.body.scrollHeight - 2")
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            if at_end == true {
                break;
            }
        }
        s.wait_until(
            "every picture loaded",
            "return [...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0)",
            Duration::from_secs(60),
        )
        .await;
        let m = s.async_script(MEASURE).await;
        assert_eq!(m["dpr"].as_f64(), Some(dpr), "the emulated pixel ratio holds");
        let fetched = m["fetched"].as_array().unwrap();
        let bytes: u64 = fetched.iter().map(|e| e[1].as_u64().unwrap_or(0)).sum();
        eprintln!(
            "{width} px at DPR {dpr}: {} images, {bytes} bytes ({:.2} MB); viewport {} CSS px",
            fetched.len(),
            bytes as f64 / 1e6,
            m["vw"]
        );
        for e in fetched {
            let path = e[0].as_str().unwrap();
            let variant = path.rsplit('/').next().unwrap();
            assert!(
                !matches!(variant, "original" | "flipped" | "original-view" | "flipped-view"),
                "{width} px at DPR {dpr} fetched a full-size picture: {path}"
            );
        }
        let shown = m["shown"].as_array().unwrap();
        assert_eq!(shown.len(), 2 * photos.len(), "both pictures of every upload are shown");
        for img in shown {
            let (src, natural, slot, own) = (
                img[0].as_str().unwrap(),
                img[1].as_f64().unwrap(),
                img[2].as_f64().unwrap(),
                img[3].as_f64().unwrap(),
            );
            // Sharp: a device pixel per image pixel at least (or all the picture has).
            let needed = (slot * dpr).min(own).floor();
            assert!(
                natural >= needed,
                "{width} px at DPR {dpr}: {src} is {natural} px wide for a slot of {slot} CSS px (needs {needed})"
            );
        }
        if let Some(budget) = budget {
            assert!(bytes <= budget, "{width} px at DPR {dpr}: {bytes} bytes of pictures, over {budget}");
        }
        s.screenshot(&screenshots().join(format!("gallery-twelve-{width}-dpr{dpr}.png"))).await;
        s.close().await;
    }
    drop(driver);
    app.shutdown().await;
}
