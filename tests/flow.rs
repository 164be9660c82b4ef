//! The whole flow over HTTP, on every tier: upload, flip, gallery, sessions,
//! ownership, hostile input, crashes.

mod common;

use std::time::Duration;

use common::*;
use flipstack_core::domain::{Email, SecretToken, now_millis};

tier_tests!(
    upload_flips_every_photo,
    people_never_see_each_other,
    typing_someones_email_gives_no_access_and_stores_nothing,
    signin_link_works_once_and_expires,
    logout_revokes_the_session,
    posts_without_csrf_are_refused,
    every_hostile_file_is_refused_and_nothing_is_stored,
    suspicious_names_are_stored_and_shown_safely,
    size_and_pixel_limits_answer_413,
    a_worker_killed_mid_job_leaves_it_to_the_next_once,
    pages_and_errors_are_real_pages,
    delete_removes_the_picture_everywhere,
    several_pictures_in_one_plain_form_post,
    the_upload_pages_script_gets_json_answers,
    heic_uploads_are_shown_as_jpeg_and_kept_as_heic,
    screen_sizes_are_made_by_the_worker_and_for_older_uploads_on_request,
);

/// A machine without libheif (Amazon Linux 2023 has none in its
/// repositories): the release still starts and serves, and a HEIC upload is
/// refused at the door with the reason instead of failing later as a job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_libheif_refuses_heic_and_takes_everything_else() {
    let app = TestApp::spawn(Tier::Embedded).await;
    let server = second_server_with(&app, &[("FLIPSTACK_LIBHEIF", "/nonexistent/libheif.so.1")]).await;
    let b = Browser::new(&server.base);
    let me = email();
    let r = b.upload(Some(&me), "IMG_0001.HEIC", &small_heic()).await;
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(status, 415, "{body}");
    assert!(body.contains("cannot read HEIC pictures at the moment (its libheif library is missing)"), "{body}");
    assert!(app.latest_upload(&me).await.is_none(), "nothing is stored");
    let r = b.upload(Some(&me), "photo.jpg", &jpeg(64, 48)).await;
    assert_eq!(r.status(), 303, "a JPEG is taken as ever");
    let id = app.latest_upload(&me).await.expect("the JPEG is recorded");
    app.wait_done(id).await;
    drop(server);
    app.shutdown().await;
}

fn small_heic() -> Vec<u8> {
    use flipstack_core::imaging::heif;
    let (w, h) = (120, 80);
    let rgb = image::DynamicImage::ImageRgba8(gradient(w, h)).into_rgb8();
    heif::encode(&heif::Encode {
        pixels: rgb.as_raw(),
        width: w,
        height: h,
        channels: 3,
        codec: heif::Codec::Hevc,
        quality: 85,
        icc: None,
        exif: None,
        orientation: 1,
    })
    .unwrap()
}

fn email() -> String {
    format!("person-{:08x}@example.com", rand::random::<u32>())
}

async fn upload_ok(
    app: &TestApp,
    b: &Browser,
    email: &str,
    name: &str,
    bytes: &[u8],
) -> flipstack_core::domain::UploadId {
    let r = b.upload(Some(email), name, bytes).await;
    let status = r.status().as_u16();
    let location = r.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
    let body = r.text().await.unwrap();
    assert_eq!(status, 303, "{name}: upload answered {status}: {body}");
    assert_eq!(location.as_deref(), Some("/gallery"));
    app.latest_upload(email).await.expect("the upload is recorded")
}

async fn upload_flips_every_photo(tier: Tier) {
    let app = TestApp::spawn_with(tier, |_| {}, 2).await;
    let b = app.browser();
    let me = email();
    let mut uploaded = Vec::new();
    for (name, bytes) in photos() {
        let id = upload_ok(&app, &b, &me, &name, &bytes).await;
        uploaded.push((name, bytes, id));
    }
    for (name, original, id) in &uploaded {
        app.wait_done(*id).await;
        let r = b.get(&format!("/images/{id}/flipped")).await;
        assert_eq!(r.status(), 200, "{name}");
        let mime = format_of(original).mime();
        assert_eq!(r.headers()["content-type"], mime, "{name}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert!(r.headers()["cache-control"].to_str().unwrap().contains("private"));
        let flipped = r.bytes().await.unwrap();
        assert_is_flip(name, original, &flipped);
        let r = b.get(&format!("/images/{id}/original")).await;
        assert_eq!(r.bytes().await.unwrap().as_ref(), original.as_slice(), "{name}: the original is served unchanged");
    }
    // Newest first, 12 a page; every page names both pictures of each upload.
    let pages = uploaded.len().div_ceil(12);
    let mut seen = Vec::new();
    for page in 1..=pages {
        let r = b.get(&format!("/gallery?page={page}")).await;
        assert_eq!(r.status(), 200);
        let source = r.headers()["x-read-source"].to_str().unwrap().to_owned();
        assert!(["cache", "replica", "primary"].contains(&source.as_str()), "{source}");
        let html = r.text().await.unwrap();
        assert!(
            html.contains("<figcaption>Original</figcaption>") && html.contains("<figcaption>Flipped</figcaption>")
        );
        assert!(!html.contains("http-equiv=\"refresh\""), "nothing is pending any more");
        let mut on_page: Vec<(usize, _)> = uploaded
            .iter()
            .filter_map(|(_, _, id)| html.find(&format!("id=\"upload-{id}\"")).map(|at| (at, *id)))
            .collect();
        on_page.sort();
        seen.extend(on_page.into_iter().map(|(_, id)| id));
    }
    let newest_first: Vec<_> = uploaded.iter().rev().map(|(_, _, id)| *id).collect();
    assert_eq!(seen, newest_first, "every upload once, newest first, across the pages");
    app.shutdown().await;
}

async fn people_never_see_each_other(tier: Tier) {
    let app = TestApp::spawn(tier).await;
    let (a, b) = (app.browser(), app.browser());
    let (ea, eb) = (email(), email());
    let ia = upload_ok(&app, &a, &ea, "a.png", &png(40, 30)).await;
    let ib = upload_ok(&app, &b, &eb, "b.png", &png(30, 40)).await;
    app.wait_done(ia).await;
    app.wait_done(ib).await;
    let (_, ga) = a.text("/gallery").await;
    let (_, gb) = b.text("/gallery").await;
    assert!(ga.contains(&format!("upload-{ia}")) && !ga.contains(&format!("upload-{ib}")));
    assert!(gb.contains(&format!("upload-{ib}")) && !gb.contains(&format!("upload-{ia}")));
    assert!(ga.contains(&ea) && !ga.contains(&eb), "each page names only its own person");
    for variant in ["original", "flipped"] {
        assert_eq!(a.get(&format!("/images/{ia}/{variant}")).await.status(), 200);
        assert_eq!(a.get(&format!("/images/{ib}/{variant}")).await.status(), 404, "A must not fetch B's {variant}");
        assert_eq!(b.get(&format!("/images/{ia}/{variant}")).await.status(), 404, "B must not fetch A's {variant}");
        assert_eq!(app.browser().get(&format!("/images/{ia}/{variant}")).await.status(), 403, "signed out");
    }
    app.shutdown().await;
}

async fn typing_someones_email_gives_no_access_and_stores_nothing(tier: Tier) {
    let app = TestApp::spawn(tier).await;
    let owner = app.browser();
    let address = email();
    let id = upload_ok(&app, &owner, &address, "mine.png", &png(20, 20)).await;
    app.wait_done(id).await;
    let uploads = app.upload_count().await;
    let blobs = app.blob_keys().await;
    for typed in [address.clone(), address.to_uppercase()] {
        let stranger = app.browser();
        let r = stranger.upload(Some(&typed), "theirs.png", &png(24, 24)).await;
        assert_eq!(r.status(), 403, "{typed}");
        let page = r.text().await.unwrap();
        assert!(page.contains("Check your mail") && page.contains("nothing was uploaded"), "{page}");
        assert_eq!(stranger.cookie("fs_session"), None, "no session for the stranger");
        let (status, _) = stranger.text("/gallery").await;
        assert_eq!(status, 303, "the stranger has no gallery to see");
        assert_eq!(stranger.get(&format!("/images/{id}/original")).await.status(), 403);
    }
    assert_eq!(app.upload_count().await, uploads, "no upload was recorded");
    assert_eq!(app.blob_keys().await, blobs, "no blob was stored");
    // A sign-in link went to the owner (at most one a minute, however often it is asked).
    assert_eq!(app.wait_mailed_links(&address, 1).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.mailed_links(&address).len(), 1, "one mail a minute, however often it is asked");
    app.shutdown().await;
}

async fn signin_link_works_once_and_expires(tier: Tier) {
    let app = TestApp::spawn(tier).await;
    let first = app.browser();
    let address = email();
    let id = upload_ok(&app, &first, &address, "mine.png", &png(20, 20)).await;

    let second = app.browser();
    let csrf = second.csrf().await;
    let r = second.post_form("/signin", &[("csrf", &csrf), ("email", &address)]).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("sign-in link is on its way"));
    let links = app.wait_mailed_links(&address, 1).await;
    assert_eq!(links.len(), 1, "one mail with one link");
    let (status, confirm) = second.text(&links[0]).await;
    assert_eq!(status, 200);
    let token = hidden_value(&confirm, "token").expect("the link page asks to confirm");
    let csrf = hidden_value(&confirm, "csrf").unwrap();
    let r = second.post_form("/signin/link", &[("csrf", &csrf), ("token", &token)]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/gallery");
    let (status, gallery) = second.text("/gallery").await;
    assert_eq!(status, 200);
    assert!(gallery.contains(&format!("upload-{id}")), "the link signed this browser in to the gallery");

    // Used once: a second use (from any browser) is refused.
    let third = app.browser();
    let csrf = third.csrf().await;
    let r = third.post_form("/signin/link", &[("csrf", &csrf), ("token", &token)]).await;
    assert_eq!(r.status(), 410);
    assert!(r.text().await.unwrap().contains("already used"));
    assert_eq!(third.text("/gallery").await.0, 303);

    // Expired links say so.
    let person = app.services.store.person_by_email(&Email::parse(&address).unwrap()).await.unwrap().unwrap();
    let old = SecretToken::generate();
    let now = now_millis();
    app.services.store.create_signin_token(&old.hash(), person.id, now - 1, now - 15 * 60 * 1000).await.unwrap();
    let r = third.post_form("/signin/link", &[("csrf", &csrf), ("token", old.as_str())]).await;
    assert_eq!(r.status(), 410);
    assert!(r.text().await.unwrap().contains("expired"));
    let r = third.post_form("/signin/link", &[("csrf", &csrf), ("token", SecretToken::generate().as_str())]).await;
    assert_eq!(r.status(), 404, "an unknown token");
    app.shutdown().await;
}

async fn logout_revokes_the_session(tier: Tier) {
    let app = TestApp::spawn(tier).await;
    let b = app.browser();
    let id = upload_ok(&app, &b, &email(), "mine.png", &png(20, 20)).await;
    let session = b.cookie("fs_session").expect("signed in by the first upload");
    let csrf = b.csrf().await;
    let r = b.post_form("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(b.text("/gallery").await.0, 303, "signed out");
    // The old cookie, replayed, opens nothing: the session ended on the server.
    let replay = app.browser();
    replay.set_cookie("fs_session", &session);
    assert_eq!(replay.text("/gallery").await.0, 303);
    assert_eq!(replay.get(&format!("/images/{id}/original")).await.status(), 403);
    app.shutdown().await;
}

async fn posts_without_csrf_are_refused(tier: Tier) {
    let app = TestApp::spawn(tier).await;
    let b = app.browser();
    let me = email();
    upload_ok(&app, &b, &me, "first.png", &png(10, 10)).await;
    let before = app.upload_count().await;
    let r = b.upload_raw(&[("email", &me)], Some((b"x.png", &png(10, 10)))).await;
    assert_eq!(r.status(), 403, "no token");
    let r = b.upload_raw(&[("csrf", "forged"), ("email", &me)], Some((b"x.png", &png(10, 10)))).await;
    assert_eq!(r.status(), 403, "a wrong token");
    let other = app.browser();
    let foreign = other.csrf().await;
    let r = b.upload_raw(&[("csrf", &foreign)], Some((b"x.png", &png(10, 10)))).await;
    assert_eq!(r.status(), 403, "another browser's token");
    assert_eq!(app.upload_count().await, before);
    assert_eq!(b.post_form("/logout", &[]).await.status(), 403);
    assert_eq!(b.text("/gallery").await.0, 200, "still signed in: the forged logout did nothing");
    assert_eq!(b.post_form("/signin", &[("email", &me)]).await.status(), 403);
    app.shutdown().await;
}

/// What each hostile file of the corpus is answered with (README.tsv's last
/// column says what each is): 303 for those a lenient server accepts and
/// flips upright (damaged EXIF read as upright, a megabyte of comments).
fn expected_status(name: &str) -> u16 {
    match name {
        "exif_ifd_loop.jpg"
        | "exif_bad_offsets.jpg"
        | "exif_orientation_0.jpg"
        | "exif_orientation_9999.jpg"
        | "comment_1mib.jpg" => 303,
        "empty.jpg" => 400,
        "svg_script.svg" | "svg_script_renamed.jpg" | "text_renamed.jpg" | "html_xss_renamed.png" => 415,
        "png_bomb_30000x30000.png"
        | "png_bomb_12000x12000.png"
        | "webp_bomb_16383x16383.webp"
        | "gif_screen_65535x65535.gif"
        | "jpeg_header_65500x65500.jpg" => 413,
        _ => 422,
    }
}

async fn every_hostile_file_is_refused_and_nothing_is_stored(tier: Tier) {
    let app = TestApp::spawn(tier).await;
    let b = app.browser();
    let me = email();
    let first = upload_ok(&app, &b, &me, "first.png", &png(10, 10)).await;
    app.wait_done(first).await;
    let mut files: Vec<(String, Vec<u8>, u16)> = vec![
        ("generated-empty.png".into(), Vec::new(), 400),
        ("generated-text.jpg".into(), b"just some text, not a picture\n".to_vec(), 415),
        ("generated-truncated.png".into(), png(64, 64)[..80].to_vec(), 422),
    ];
    if let Some(dir) = corpus() {
        let readme = std::fs::read_to_string(dir.join("bad/README.tsv")).unwrap();
        for row in readme.lines().skip(1) {
            let name = row.split('\t').next().unwrap();
            let path = dir.join("bad").join(name);
            if path.is_file() {
                files.push((name.to_owned(), std::fs::read(&path).unwrap(), expected_status(name)));
            }
        }
        assert!(files.len() > 20, "the corpus's hostile files were found");
    }
    for (name, bytes, _) in files.iter().filter(|(_, _, status)| *status == 303) {
        let id = upload_ok(&app, &b, &me, name, bytes).await;
        app.wait_done(id).await;
        let r = b.get(&format!("/images/{id}/flipped")).await;
        assert_eq!(r.status(), 200, "{name}");
        assert_is_flip(name, bytes, &r.bytes().await.unwrap());
        eprintln!("{name}: accepted and flipped upright");
    }
    files.retain(|(_, _, status)| *status != 303);
    let uploads = app.upload_count().await;
    let blobs = app.blob_keys().await;
    for (name, bytes, status) in &files {
        let r = b.upload(Some(&me), name, bytes).await;
        let got = r.status().as_u16();
        let page = r.text().await.unwrap();
        assert_eq!(got, *status, "{name}: {page}");
        // A clear message on the upload page, which keeps the person's place.
        assert!(page.contains("That did not work.") && page.contains("id=\"upload-form\""), "{name}: {page}");
        let message = page
            .split("That did not work.</strong>")
            .nth(1)
            .unwrap_or("")
            .split("</div>")
            .next()
            .unwrap_or("")
            .trim()
            .to_owned();
        assert!(message.len() > 20, "{name}: the message says what was wrong: {message:?}");
        eprintln!("{name}: {got} {message}");
        assert_eq!(app.upload_count().await, uploads, "{name}: nothing recorded");
        assert_eq!(app.blob_keys().await, blobs, "{name}: nothing stored");
        let health = reqwest::get(format!("{}/healthz", app.base)).await.unwrap();
        assert_eq!(health.status(), 200, "{name}: the server stays healthy");
    }
    app.shutdown().await;
}

/// The hostile file names of the corpus README (name-only rows), or the same list built in.
fn suspicious_names() -> Vec<Vec<u8>> {
    let from_corpus = corpus().map(|dir| {
        let readme = std::fs::read_to_string(dir.join("bad/README.tsv")).unwrap();
        readme
            .lines()
            .filter_map(|l| l.split('\t').next()?.strip_prefix("(name only) ").map(unescape))
            .collect::<Vec<_>>()
    });
    from_corpus.filter(|v| !v.is_empty()).unwrap_or_else(|| {
        [
            "../../etc/passwd.jpg",
            "..\\\\..\\\\windows\\\\win.ini.jpg",
            "/etc/passwd",
            "photo.jpg\\x00.php",
            "photo.php.jpg",
            "a\\r\\nSet-Cookie: x=1.jpg",
            "<img src=x onerror=alert(1)>.jpg",
            "\\u202Egpj.exe",
            "CON.jpg",
            ".htaccess",
        ]
        .iter()
        .map(|s| unescape(s))
        .chain(std::iter::once(format!("{}.jpg", "x".repeat(300)).into_bytes()))
        .collect()
    })
}

/// The README writes control characters as \x00, \r, \n, \u202E.
fn unescape(s: &str) -> Vec<u8> {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(u8::from_str_radix(&hex, 16).unwrap() as char);
            }
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
            }
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out.into_bytes()
}

/// A file name as browsers put it in a multipart form: `"`, CR and LF
/// percent-encoded, everything else (NUL included) as raw bytes.
fn as_browser_sends(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in name {
        match b {
            b'"' => out.extend_from_slice(b"%22"),
            b'\r' => out.extend_from_slice(b"%0D"),
            b'\n' => out.extend_from_slice(b"%0A"),
            other => out.push(*other),
        }
    }
    out
}

async fn suspicious_names_are_stored_and_shown_safely(tier: Tier) {
    let app = TestApp::spawn(tier).await;
    let b = app.browser();
    let me = email();
    upload_ok(&app, &b, &me, "first.jpg", &jpeg(16, 16)).await;
    let names = suspicious_names();
    assert!(names.len() >= 10);
    for raw in &names {
        let shown = String::from_utf8_lossy(raw).into_owned();
        let csrf = b.csrf().await;
        let r = b.upload_raw(&[("csrf", &csrf)], Some((&as_browser_sends(raw), &jpeg(16, 16)))).await;
        assert_eq!(r.status(), 303, "{shown:?} is stored");
        assert!(
            r.headers().get_all("set-cookie").iter().all(|v| !v.to_str().unwrap_or("").starts_with("x=")),
            "no header injection"
        );
        let id = app.latest_upload(&me).await.unwrap();
        let stored = app.services.store.upload(id).await.unwrap().unwrap();
        let name = stored.name.as_str();
        assert!(
            !name.chars().any(|c| c.is_control() || ('\u{202A}'..='\u{202E}').contains(&c)),
            "{name:?} keeps no control characters"
        );
        assert!(name.chars().count() <= 200);
    }
    let (_, html) = b.text("/gallery?page=1").await;
    assert!(!html.contains("<img src=x onerror"), "HTML in a name is escaped");
    assert!(html.contains("&#60;img src=x onerror=alert(1)&#62;.jpg"), "and still shown as text: {html}");
    // Keys are made from ids; no part of any name reaches the store.
    for key in app.blob_keys().await {
        let last = key.rsplit('/').next().unwrap();
        assert!(last.chars().all(|c| c.is_ascii_digit()), "blob key {key:?}");
    }
    app.shutdown().await;
}

async fn size_and_pixel_limits_answer_413(tier: Tier) {
    let app = TestApp::spawn_with(
        tier,
        |c| {
            c.max_upload_bytes = 200_000;
            c.max_pixels = 1_000_000;
        },
        1,
    )
    .await;
    let b = app.browser();
    let me = email();
    upload_ok(&app, &b, &me, "small.png", &png(10, 10)).await;
    let before = app.upload_count().await;
    let r = b.upload(Some(&me), "wide.jpg", &jpeg(1200, 1000)).await;
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("megapixels"));
    // Noise does not compress: a PNG over the byte limit.
    let noise = image::RgbImage::from_fn(400, 400, |_, _| image::Rgb(rand::random()));
    let mut big = std::io::Cursor::new(Vec::new());
    noise.write_to(&mut big, image::ImageFormat::Png).unwrap();
    let r = b.upload(Some(&me), "big.png", big.get_ref()).await;
    assert_eq!(r.status(), 413);
    let page = r.text().await.unwrap();
    assert!(page.contains("; the limit is 196 KB"), "{page}");
    assert_eq!(app.upload_count().await, before);
    app.shutdown().await;
}

/// A picture that takes the worker a while, so it can be killed mid-job.
fn slow_picture() -> (String, Vec<u8>) {
    if let Some(dir) = corpus() {
        let p = dir.join("photos/p01_seeding_5312x2988_prog420.jpg");
        if p.is_file() {
            return ("p01.jpg".into(), std::fs::read(p).unwrap());
        }
    }
    let noise =
        image::RgbImage::from_fn(4000, 3000, |x, y| image::Rgb([(x ^ y) as u8, rand::random(), (y / 12) as u8]));
    let img = turbojpeg::Image {
        pixels: noise.as_raw().as_slice(),
        width: 4000,
        pitch: 12000,
        height: 3000,
        format: turbojpeg::PixelFormat::RGB,
    };
    ("noise.jpg".into(), turbojpeg::compress(img, 95, turbojpeg::Subsamp::None).unwrap().to_vec())
}

async fn a_worker_killed_mid_job_leaves_it_to_the_next_once(tier: Tier) {
    let mut app = TestApp::spawn_with(tier, |c| c.job_lease_secs = 2, 0).await;
    let b = app.browser();
    let me = email();
    let (name, bytes) = slow_picture();
    let mut killed_mid_job = None;
    for _ in 0..5 {
        let id = upload_ok(&app, &b, &me, &name, &bytes).await;
        let mut worker = app.worker_process();
        let pid = worker.id();
        let started = std::time::Instant::now();
        let mut processing = false;
        while started.elapsed() < Duration::from_secs(30) {
            let u = app.services.store.upload(id).await.unwrap().unwrap();
            if u.state == flipstack_core::domain::UploadState::Processing
                && u.lease_owner.as_deref().is_some_and(|o| o.contains(&format!("-{pid}-")))
            {
                processing = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        worker.kill().unwrap(); // SIGKILL
        worker.wait().unwrap();
        let u = app.services.store.upload(id).await.unwrap().unwrap();
        if processing && u.state == flipstack_core::domain::UploadState::Processing {
            killed_mid_job = Some(id);
            break;
        }
        eprintln!("the worker finished before it could be killed; trying again");
        app.wait_finished(id, Duration::from_secs(60)).await;
    }
    let id = killed_mid_job.expect("a worker was killed in the middle of a job");
    app.start_worker().await;
    let done = app.wait_done(id).await;
    assert_eq!(done.claims, 2, "taken by the killed worker, then once more");
    let events = app.services.store.events_for_upload(id).await.unwrap();
    let completions = events.iter().filter(|e| e.kind == flipstack_core::domain::EventKind::Done).count();
    assert_eq!(completions, 1, "finished exactly once: {events:?}");
    let flipped = b.get(&format!("/images/{id}/flipped")).await.bytes().await.unwrap();
    assert_is_flip(&name, &bytes, &flipped);
    app.shutdown().await;
}

async fn pages_and_errors_are_real_pages(tier: Tier) {
    let app = TestApp::spawn(tier).await;
    let b = app.browser();
    let r = b.get("/").await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/form");
    let r = b.get("/form").await;
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"));
    assert!(r.text().await.unwrap().contains("name=\"email\""), "signed out: the form asks for an e-mail");
    let r = b.get("/no/such/page").await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("Page not found"));
    let r = b.client.delete(b.url("/form")).send().await.unwrap();
    assert!(r.status() == 405 || r.status() == 404);
    let health: serde_json::Value = reqwest::get(format!("{}/healthz", app.base)).await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    app.shutdown().await;
}

#[test]
fn every_command_explains_itself() {
    let commands: &[&[&str]] = &[
        &["--help"],
        &["up", "--help"],
        &["serve", "--help"],
        &["work", "--help"],
        &["db", "--help"],
        &["db", "dump", "--help"],
        &["db", "restore", "--help"],
        &["db", "migrate", "--help"],
        &["console", "--help"],
        &["provision", "--help"],
        &["provision", "plan", "--help"],
        &["provision", "up", "--help"],
        &["provision", "down", "--help"],
        &["provision", "status", "--help"],
        &["provision", "check-release", "--help"],
    ];
    for args in commands {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flipstack")).args(*args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Usage:"), "{args:?}: {text}");
        let first = text.lines().next().unwrap_or("");
        assert!(first.len() > 15, "{args:?} starts with a sentence saying what it does: {first:?}");
    }
}

async fn delete_removes_the_picture_everywhere(tier: Tier) {
    let app = TestApp::spawn(tier).await;
    let b = app.browser();
    let me = email();
    let keep = upload_ok(&app, &b, &me, "keep.jpg", &jpeg(64, 48)).await;
    let gone = upload_ok(&app, &b, &me, "gone.jpg", &jpeg(48, 64)).await;
    app.wait_done(keep).await;
    app.wait_done(gone).await;
    let other = second_server(&app).await;
    let elsewhere = Browser::new(&other.base);
    elsewhere.set_cookie("fs_session", &b.cookie("fs_session").unwrap());
    assert!(
        elsewhere.text("/gallery").await.1.contains(&format!("upload-{gone}")),
        "the other instance shows it first"
    );
    let keys = app.blob_keys().await;
    assert!(
        keys.iter().filter(|k| k.ends_with(&format!("/{gone}"))).count() >= 2,
        "original and flipped are stored: {keys:?}"
    );

    // Another person cannot delete it; without the form's token nothing happens either.
    let stranger = app.browser();
    upload_ok(&app, &stranger, &email(), "s.png", &png(8, 8)).await;
    let csrf = stranger.csrf().await;
    stranger.post_form(&format!("/uploads/{gone}/delete"), &[("csrf", &csrf)]).await;
    assert_eq!(b.get(&format!("/images/{gone}/original")).await.status(), 200);
    assert_eq!(b.post_form(&format!("/uploads/{gone}/delete"), &[]).await.status(), 403);

    let (status, confirm) = b.text(&format!("/uploads/{gone}/delete?page=1")).await;
    assert_eq!(status, 200);
    assert!(confirm.contains("Delete this picture?") && confirm.contains("gone.jpg"));
    let csrf = hidden_value(&confirm, "csrf").unwrap();
    let r = b.post_form(&format!("/uploads/{gone}/delete"), &[("csrf", &csrf), ("page", "1")]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/gallery?page=1", "back to the page it was on");

    for variant in ["original", "flipped", "original-thumb", "flipped-thumb"] {
        assert_eq!(b.get(&format!("/images/{gone}/{variant}")).await.status(), 404, "{variant}");
    }
    assert!(
        app.blob_keys().await.iter().all(|k| !k.ends_with(&format!("/{gone}"))),
        "its objects are removed from the blob store"
    );
    assert!(app.services.store.upload(gone).await.unwrap().is_none(), "and its row");
    let (_, html) = b.text("/gallery").await;
    assert!(!html.contains(&format!("upload-{gone}")) && html.contains(&format!("upload-{keep}")));
    // Every instance: the other server's cache and image route agree.
    let started = std::time::Instant::now();
    loop {
        let (_, there) = elsewhere.text("/gallery").await;
        if !there.contains(&format!("upload-{gone}")) {
            assert!(there.contains(&format!("upload-{keep}")));
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "the other instance still lists the deleted picture");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(elsewhere.get(&format!("/images/{gone}/flipped")).await.status(), 404);
    assert_eq!(elsewhere.get(&format!("/images/{keep}/flipped")).await.status(), 200);
    drop(other);
    app.shutdown().await;
}

async fn several_pictures_in_one_plain_form_post(tier: Tier) {
    let app = TestApp::spawn(tier).await;
    let b = app.browser();
    let me = email();
    let csrf = b.csrf().await;
    let (one, two) = (png(20, 10), jpeg(16, 24));
    let files: [(&[u8], &[u8]); 2] = [(b"one.png", &one), (b"two.jpg", &two)];
    let r = b.upload_parts(&[("csrf", &csrf), ("email", &me)], &files, false).await;
    assert_eq!(r.status(), 303, "two pictures in one post, as a browser without JavaScript sends them");
    assert_eq!(app.upload_count().await, 2);
    // Mixed: the good one is stored, the bad one named with its reason.
    let csrf = b.csrf().await;
    let text = b"not a picture".to_vec();
    let files: [(&[u8], &[u8]); 2] = [(b"three.png", &one), (b"notes.jpg", &text)];
    let r = b.upload_parts(&[("csrf", &csrf)], &files, false).await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("1 picture(s) were uploaded") && page.contains("notes.jpg: This file is not a picture"),
        "{page}"
    );
    assert_eq!(app.upload_count().await, 3);
    app.shutdown().await;
}

async fn the_upload_pages_script_gets_json_answers(tier: Tier) {
    let app = TestApp::spawn(tier).await;
    let b = app.browser();
    let me = email();
    let csrf = b.csrf().await;
    let pic = png(12, 12);
    let r = b.upload_parts(&[("csrf", &csrf), ("email", &me)], &[(b"a.png", &pic)], true).await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["ok"], true, "{body}");
    assert_eq!(body["ids"].as_array().unwrap().len(), 1);
    // Signed in by that upload: the token changed, and the answer carries the new one.
    let fresh = body["csrf"].as_str().unwrap().to_owned();
    assert_ne!(fresh, csrf);
    let r = b.upload_parts(&[("csrf", &fresh), ("email", &me)], &[(b"b.png", &pic)], true).await;
    assert_eq!(r.status(), 200, "the next file goes through with the new token");
    let r = b.upload_parts(&[("csrf", &fresh)], &[(b"bad.png", b"<html>")], true).await;
    assert_eq!(r.status(), 415);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["ok"], false);
    assert!(body["error"].as_str().unwrap().contains("not a picture"));
    app.shutdown().await;
}

/// A HEIC upload: the original is kept byte for byte, the flip is HEIC (or
/// JPEG where libheif has no HEVC encoder, as the page says), and the
/// gallery shows JPEG views of both.
async fn heic_uploads_are_shown_as_jpeg_and_kept_as_heic(tier: Tier) {
    use flipstack_core::domain::ImageFormat;
    use flipstack_core::imaging;
    let app = TestApp::spawn(tier).await;
    let b = app.browser();
    let me = email();
    let heic = small_heic();
    let id = upload_ok(&app, &b, &me, "IMG_0001.HEIC", &heic).await;
    app.wait_done(id).await;
    let stored_as = imaging::flipped_format(ImageFormat::Heic);
    let (_, page) = b.text("/gallery").await;
    assert!(page.contains(&format!("/images/{id}/original-thumb")), "the gallery shows the thumbnails");
    // Full size, in the viewer, is the JPEG view.
    let (_, viewer) = b.text(&format!("/uploads/{id}/view?page=1")).await;
    assert!(viewer.contains(&format!("/images/{id}/original-view")), "the viewer's full size is the JPEG view");
    assert!(viewer.contains(&format!("/images/{id}/flipped-view")));
    assert!(page.contains("Download original (HEIC)"));
    assert!(page.contains(&format!("Download flipped ({})", stored_as.display_name())));
    let r = b.get(&format!("/images/{id}/original")).await;
    assert_eq!(r.headers()["content-type"], "image/heic");
    assert_eq!(r.bytes().await.unwrap().as_ref(), heic.as_slice(), "the original is kept byte for byte");
    let r = b.get(&format!("/images/{id}/flipped")).await;
    assert_eq!(r.headers()["content-type"], stored_as.mime());
    let flipped = r.bytes().await.unwrap();
    let shown = imaging::decode_displayed(&heic, ImageFormat::Heic).unwrap();
    let got = imaging::decode_displayed(&flipped, stored_as).unwrap();
    let diff = imaging::mean_abs_diff(&image::imageops::flip_vertical(&shown), &got).unwrap();
    assert!(diff < 4.0 && imaging::mean_abs_diff(&shown, &got).unwrap() > diff, "the flip: {diff:.2}");
    for view in ["original-view", "flipped-view", "original-thumb", "flipped-thumb"] {
        let r = b.get(&format!("/images/{id}/{view}")).await;
        assert_eq!(r.status(), 200, "{view}");
        assert_eq!(r.headers()["content-type"], "image/jpeg", "{view}");
        let bytes = r.bytes().await.unwrap();
        imaging::decode_displayed(&bytes, ImageFormat::Jpeg).unwrap_or_else(|e| panic!("{view}: {e}"));
    }
    app.shutdown().await;
}

async fn screen_sizes_are_made_by_the_worker_and_for_older_uploads_on_request(tier: Tier) {
    use flipstack_core::blob::BlobKind;
    let app = TestApp::spawn(tier).await;
    let b = app.browser();
    let me = email();
    let id = upload_ok(&app, &b, &me, "wide.jpg", &jpeg(2000, 1500)).await;
    app.wait_done(id).await;
    let (_, page) = b.text("/gallery").await;
    for variant in ["original-medium 1024w", "original-large 1600w", "flipped-medium 1024w", "flipped-large 1600w"] {
        assert!(page.contains(&format!("/images/{id}/{variant}")), "srcset offers {variant}: {page}");
    }
    let kinds = [BlobKind::OriginalMedium, BlobKind::FlippedMedium, BlobKind::OriginalLarge, BlobKind::FlippedLarge];
    // The worker stores them right after marking the upload done.
    let started = std::time::Instant::now();
    for kind in kinds {
        while !app.services.blobs.exists(kind, id).await.unwrap() {
            assert!(started.elapsed() < Duration::from_secs(60), "the worker stored {kind:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // An upload from before screen sizes existed: they are made on the first
    // request, stored, and the same as the worker's.
    let made_by_worker = app.services.blobs.get_bytes(BlobKind::FlippedLarge, id).await.unwrap().unwrap();
    for kind in kinds {
        app.services.blobs.delete(kind, id).await.unwrap();
    }
    let r = b.get(&format!("/images/{id}/flipped-large")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    let served = r.bytes().await.unwrap();
    assert_eq!(served, made_by_worker, "made again, the same picture");
    let header = turbojpeg::read_header(&served).unwrap();
    assert_eq!((header.width, header.height), (1600, 1200));
    for kind in kinds {
        assert!(app.services.blobs.exists(kind, id).await.unwrap(), "{kind:?} stored on the first request");
    }
    // Sizes a picture does not have, and other people, get nothing.
    let small = upload_ok(&app, &b, &me, "small.png", &png(300, 200)).await;
    app.wait_done(small).await;
    assert_eq!(b.get(&format!("/images/{small}/original-medium")).await.status(), 404);
    let stranger = app.browser();
    assert_eq!(stranger.get(&format!("/images/{id}/original-medium")).await.status(), 403);
    app.shutdown().await;
}
