//! What phones and cameras make, as small fixtures the test builds: EXIF
//! orientations outside 1–8 and looping directories, padding after the end,
//! an APP segment whose length is off, Multi-Picture Format files and motion
//! photos with their video. Each is accepted, and its flip is the exact
//! vertical flip of the still picture as displayed; what else follows a
//! picture is still refused.

mod support;

use flipstack_domain::domain::ImageFormat;
use flipstack_imaging::{self as imaging, ImageInfo, Inspector, Limits, Rejection, exif, jpeg};

fn limits() -> Limits {
    Limits::new(50_000_000, 1000)
}

/// The upload check as the server runs it: stream in pieces, then verify.
fn check(bytes: &[u8]) -> Result<ImageInfo, Rejection> {
    let l = limits();
    for piece in [1, 7, 4096] {
        let mut i = Inspector::new(l);
        for chunk in bytes.chunks(piece) {
            i.feed(chunk)?;
        }
        let info = i.finish()?;
        imaging::verify(bytes, &info, &l)?;
        if piece == 4096 {
            return Ok(info);
        }
    }
    unreachable!()
}

/// A picture with a top and a bottom: a gradient down, a bar on the left.
fn jpeg_of(w: usize, h: usize, shade: u8) -> Vec<u8> {
    let mut px = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let p = &mut px[(y * w + x) * 3..][..3];
            p[0] = (y * 255 / h) as u8;
            p[1] = if x < w / 4 { 220 } else { shade };
            p[2] = (x * 255 / w) as u8;
        }
    }
    let img = turbojpeg::Image {
        pixels: px.as_slice(),
        width: w,
        pitch: w * 3,
        height: h,
        format: turbojpeg::PixelFormat::RGB,
    };
    turbojpeg::compress(img, 90, turbojpeg::Subsamp::Sub2x2).unwrap().to_vec()
}

fn app_segment(marker: u8, payload: &[u8]) -> Vec<u8> {
    let mut s = vec![0xFF, marker];
    s.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    s.extend_from_slice(payload);
    s
}

/// The first picture with an MPF index (APP2) listing it and `others`,
/// followed by them: what cameras write for previews and stereo pairs.
fn mpf_file(first: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let n = 1 + others.len();
    // The index's size does not depend on the offsets it holds.
    let index = |sizes: &[(u32, u32)]| -> Vec<u8> {
        let mut t = b"MPF\0MM\0*".to_vec();
        t.extend_from_slice(&8u32.to_be_bytes());
        t.extend_from_slice(&3u16.to_be_bytes());
        let entries_at = 8 + 2 + 3 * 12 + 4;
        for (tag, typ, count, value) in [
            (0xB000u16, 7u16, 4u32, u32::from_be_bytes(*b"0100")),
            (0xB001, 4, 1, n as u32),
            (0xB002, 7, 16 * n as u32, entries_at),
        ] {
            t.extend_from_slice(&tag.to_be_bytes());
            t.extend_from_slice(&typ.to_be_bytes());
            t.extend_from_slice(&count.to_be_bytes());
            t.extend_from_slice(&value.to_be_bytes());
        }
        t.extend_from_slice(&0u32.to_be_bytes());
        for (i, (size, offset)) in sizes.iter().enumerate() {
            t.extend_from_slice(&(if i == 0 { 0x2003_0000u32 } else { 0x0001_0001 }).to_be_bytes());
            t.extend_from_slice(&size.to_be_bytes());
            t.extend_from_slice(&offset.to_be_bytes());
            t.extend_from_slice(&[0; 4]);
        }
        app_segment(0xE2, &t)
    };
    let placeholder = index(&vec![(0, 0); n]);
    let first_len = first.len() + placeholder.len();
    // Offsets count from the index's TIFF header: SOI, APP2 marker and
    // length, "MPF\0".
    let header_at = 2 + 4 + 4;
    let mut sizes = vec![(first_len as u32, 0u32)];
    let mut at = first_len;
    for o in others {
        sizes.push((o.len() as u32, (at - header_at) as u32));
        at += o.len();
    }
    let mut out = first[..2].to_vec();
    out.extend_from_slice(&index(&sizes));
    out.extend_from_slice(&first[2..]);
    for o in others {
        out.extend_from_slice(o);
    }
    out
}

/// A small MP4 as a camera writes it: ftyp, moov, mdat.
fn mp4() -> Vec<u8> {
    let mut v = Vec::new();
    let mut put = |kind: &[u8; 4], body: &[u8]| {
        v.extend_from_slice(&((body.len() + 8) as u32).to_be_bytes());
        v.extend_from_slice(kind);
        v.extend_from_slice(body);
    };
    put(b"ftyp", b"mp42\0\0\0\0isommp42");
    put(b"moov", &[0x11; 40]);
    put(b"mdat", &[0x5A; 300]);
    v
}

/// A motion photo: the still picture with Google's XMP announcing the video,
/// then the video.
fn motion_photo(still: &[u8], video: &[u8], announced: usize) -> Vec<u8> {
    let xmp = format!(
        r#"<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:Camera="http://ns.google.com/photos/1.0/camera/" xmlns:Container="http://ns.google.com/photos/1.0/container/" xmlns:Item="http://ns.google.com/photos/1.0/container/item/" Camera:MotionPhoto="1" Camera:MotionPhotoVersion="1"><Container:Directory><rdf:Seq><rdf:li rdf:parseType="Resource"><Container:Item Item:Mime="image/jpeg" Item:Semantic="Primary" Item:Length="0" Item:Padding="0"/></rdf:li><rdf:li rdf:parseType="Resource"><Container:Item Item:Mime="video/mp4" Item:Semantic="MotionPhoto" Item:Length="{announced}"/></rdf:li></rdf:Seq></Container:Directory></rdf:Description></rdf:RDF></x:xmpmeta>"#
    );
    let mut payload = imaging::trailer::XMP_PREFIX.to_vec();
    payload.extend_from_slice(xmp.as_bytes());
    let mut out = jpeg::insert_segments(still.to_vec(), &[app_segment(0xE1, &payload)]);
    out.extend_from_slice(video);
    out
}

/// Accepted, upright as `orientation`, and its flip is the still picture's.
fn accepted_and_flipped(name: &str, file: &[u8], still: &[u8], orientation: u8) -> imaging::Flipped {
    let info = check(file).unwrap_or_else(|r| panic!("{name} refused: {r}"));
    assert_eq!((info.format, info.orientation), (ImageFormat::Jpeg, orientation), "{name}");
    let out = imaging::flip(file, info.format, &limits()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let shown = imaging::decode_displayed(still, ImageFormat::Jpeg).unwrap();
    let expected = image::imageops::flip_vertical(&shown);
    let got = imaging::decode_displayed(&out.bytes, ImageFormat::Jpeg).unwrap();
    let diff = imaging::mean_abs_diff(&expected, &got).expect("same size");
    let unflipped = imaging::mean_abs_diff(&shown, &got).unwrap();
    assert!(diff < 1.0 && unflipped > 10.0, "{name}: diff {diff:.2} from the flip, {unflipped:.2} from the original");
    // The flip is one plain still picture: nothing after it, no index or
    // video claimed, no unusable EXIF.
    assert!(out.bytes.ends_with(&[0xFF, 0xD9]), "{name}: the flip ends at its picture's end");
    let text = String::from_utf8_lossy(&out.bytes);
    assert!(!text.contains("MPF\0") && !text.contains("MotionPhoto"), "{name}: the flip claims extras");
    if let Some(tiff) = exif::jpeg_exif(&out.bytes) {
        assert_eq!(exif::orientation_strict(tiff), Ok(orientation), "{name}: the flip's EXIF");
    }
    // Thumbnails come from the still picture too.
    imaging::thumbnails(file, info.format, &limits()).unwrap_or_else(|e| panic!("{name}: thumbnails: {e}"));
    eprintln!("{name}: accepted, flipped by {} ({} bytes)", out.method, out.bytes.len());
    out
}

#[test]
fn damaged_exif_is_read_as_upright() {
    let base = jpeg_of(64, 48, 40);
    for (name, seg) in [
        ("orientation 0", support::exif_segment(0, 0)),
        ("orientation 9999", support::exif_segment(9999, 0)),
        ("looping IFD (says 6)", support::exif_segment(6, 8)),
        ("next IFD far outside", support::exif_segment(6, 0x7fff_0000)),
    ] {
        let file = jpeg::insert_segments(base.clone(), std::slice::from_ref(&seg));
        let info = check(&file).unwrap_or_else(|r| panic!("{name} refused: {r}"));
        assert!(info.needs_repair, "{name}");
        accepted_and_flipped(name, &file, &base, 1);
    }
    // A good tag is still honoured.
    let six = jpeg::insert_segments(base.clone(), &[support::exif_segment(6, 0)]);
    let info = check(&six).unwrap();
    assert_eq!((info.orientation, info.needs_repair, info.displayed_size()), (6, false, (48, 64)));
}

#[test]
fn padding_after_the_end_is_accepted() {
    let base = jpeg_of(64, 48, 40);
    for pad in [&[0u8][..], &[0xFF], &[0, 0, 0, 0, 0xFF, 0xFF]] {
        let mut file = base.clone();
        file.extend_from_slice(pad);
        let info = check(&file).unwrap();
        assert!(info.needs_repair);
        accepted_and_flipped(&format!("{} bytes of padding", pad.len()), &file, &base, 1);
    }
}

#[test]
fn an_app_segment_whose_length_is_off_is_skipped() {
    let base = jpeg_of(64, 48, 40);
    // An APP5 segment that says 12 bytes but holds 20: the decoder skips to
    // the next marker, and so does the check.
    let mut seg = vec![0xFF, 0xE5, 0x00, 0x0C];
    seg.extend_from_slice(b"vendor-data-0123456789");
    let mut file = base[..2].to_vec();
    file.extend_from_slice(&seg);
    file.extend_from_slice(&base[2..]);
    let info = check(&file).unwrap();
    assert!(info.needs_repair);
    accepted_and_flipped("APP5 length off", &file, &base, 1);
}

#[test]
fn mpf_files_keep_the_first_picture() {
    let first = jpeg_of(64, 48, 40);
    let preview = jpeg_of(32, 24, 200);
    let file = mpf_file(&first, &[preview.clone(), jpeg_of(16, 16, 90)]);
    accepted_and_flipped("MPF with two more pictures", &file, &first, 1);
    // More after the pictures the index lists: refused.
    let mut extra = file.clone();
    extra.extend_from_slice(b"<html><script>alert(1)</script></html>");
    assert!(matches!(check(&extra), Err(Rejection::TrailingData(_))));
    // A picture the index does not list (one more appended): refused.
    let mut unlisted = file.clone();
    unlisted.extend_from_slice(&preview);
    assert!(matches!(check(&unlisted), Err(Rejection::TrailingData(_))), "{:?}", check(&unlisted));
    // The index points somewhere that is not a picture.
    let mut broken = mpf_file(&first, std::slice::from_ref(&preview));
    let at = broken.len() - preview.len();
    broken[at + 1] = 0x00;
    assert!(check(&broken).is_err());
    // Cut off inside the second picture.
    assert!(check(&file[..file.len() - 100]).is_err());
}

#[test]
fn motion_photos_keep_the_still_picture() {
    let still = jpeg_of(64, 48, 40);
    let video = mp4();
    let file = motion_photo(&still, &video, video.len());
    accepted_and_flipped("motion photo", &file, &still, 1);
    // The video's announced length must be right.
    assert!(check(&motion_photo(&still, &video, video.len() + 1)).is_err());
    // Something else after the video is refused.
    let mut zip = file.clone();
    zip.extend_from_slice(b"PK\x03\x04 a hidden archive");
    assert!(check(&zip).is_err());
    // Something that is not a video where the XMP promises one is refused.
    let html = motion_photo(&still, b"\0\0\0<html><script>alert(1)</script>", 35);
    assert!(check(&html).is_err());
    // And without the XMP, a video after the picture is other data.
    let mut bare = still.clone();
    bare.extend_from_slice(&video);
    assert!(matches!(check(&bare), Err(Rejection::TrailingData(_))));
}

#[test]
fn other_data_after_the_picture_is_still_refused() {
    let mut polyglot = jpeg_of(64, 48, 40);
    polyglot.extend_from_slice(b"<html><body><script>alert(1)</script></body></html>PK\x03\x04");
    assert!(matches!(check(&polyglot), Err(Rejection::TrailingData(_))));
}

#[test]
fn a_megabyte_of_comments_is_accepted_and_not_carried_into_the_flip() {
    let base = jpeg_of(64, 48, 40);
    let comments: Vec<Vec<u8>> = (0..16).map(|i| app_segment(0xFE, &vec![b'A' + i as u8; 65_000])).collect();
    let file = jpeg::insert_segments(base.clone(), &comments);
    assert!(file.len() > 1_000_000);
    let out = accepted_and_flipped("1 MB of comments", &file, &base, 1);
    assert!(out.bytes.len() < base.len() + 70_000, "the flip carries {} bytes", out.bytes.len());
}
