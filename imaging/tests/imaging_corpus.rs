//! The imaging layer against real photos and hostile files.
//!
//! The shared corpus (`../shared/testdata`, or `FLIPSTACK_TESTDATA`) is used
//! when it is there, and the test says so; generated fixtures run always, so a
//! fresh clone without the corpus still tests every path.

use std::path::PathBuf;

use flipstack_domain::domain::ImageFormat;
use flipstack_imaging::{self as imaging, ImageInfo, Inspector, Limits, Rejection, exif};

fn limits() -> Limits {
    Limits::new(50_000_000, 1000)
}

/// The photo corpus. Only the `corpus_*` tests call it: the default nextest
/// profile skips them, and scripts/test.sh skips them when the corpus is absent,
/// so the runner reports them as skipped instead of passing them empty.
fn corpus() -> PathBuf {
    let dir = std::env::var_os("FLIPSTACK_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"));
    if dir.join("photos").is_dir() && dir.join("bad").is_dir() {
        eprintln!("corpus: using {}", dir.display());
        dir
    } else {
        panic!(
            "the photo corpus is not at {}: set FLIPSTACK_TESTDATA, or run the default nextest profile, which skips the corpus_* tests",
            dir.display()
        )
    }
}

/// The upload check as the server runs it: stream in pieces, then verify.
fn check(bytes: &[u8]) -> Result<ImageInfo, Rejection> {
    check_named("", bytes)
}

fn check_named(name: &str, bytes: &[u8]) -> Result<ImageInfo, Rejection> {
    let l = limits();
    let mut i = Inspector::new(l);
    for piece in bytes.chunks(64 * 1024) {
        i.feed(piece)?;
    }
    let info = i.finish()?;
    imaging::check_name(name, info.format)?;
    imaging::verify(bytes, &info, &l)?;
    Ok(info)
}

/// Checks that `flipped` is the vertical flip of the displayed `original`.
fn assert_flipped(name: &str, original: &[u8], info: &ImageInfo, flipped: &imaging::Flipped) {
    let shown = imaging::decode_displayed(original, info.format).unwrap();
    let expected = image::imageops::flip_vertical(&shown);
    let got = imaging::decode_displayed(&flipped.bytes, info.format).unwrap();
    let diff = imaging::mean_abs_diff(&expected, &got).expect("flipped size differs from the displayed original's");
    // Lossy sources (JPEG, lossy WebP) give lossy flips.
    let lossy = info.format == ImageFormat::Jpeg
        || matches!(imaging::webp_encode::bitstream(original), Some(imaging::webp_encode::Bitstream::Lossy(_)));
    if lossy {
        assert!(diff < 4.0, "{name}: mean difference {diff:.2} is more than lossy coding's error");
    } else {
        assert_eq!(diff, 0.0, "{name}: the flip is not exact");
    }
    // And it is not the unflipped picture (every test picture has a top and a bottom).
    if !lossy || diff < 4.0 {
        let same = imaging::mean_abs_diff(&shown, &got).unwrap();
        assert!(same > diff, "{name}: the output looks like the original, not its flip");
    }
}

#[test]
fn generated_fixtures_flip_exactly() {
    let mut img = image::RgbaImage::new(64, 48);
    for (x, y, p) in img.enumerate_pixels_mut() {
        *p = image::Rgba([(x * 4) as u8, (y * 5) as u8, 90, if x < 32 { 255 } else { 100 }]);
    }
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let png = png.into_inner();
    let info = check(&png).unwrap();
    let out = imaging::flip(&png, info.format, &limits()).unwrap();
    assert_flipped("generated.png", &png, &info, &out);

    let rgb = image::DynamicImage::ImageRgba8(img.clone()).into_rgb8();
    let jpeg = turbojpeg::compress(
        turbojpeg::Image {
            pixels: rgb.as_raw().as_slice(),
            width: 64,
            pitch: 64 * 3,
            height: 48,
            format: turbojpeg::PixelFormat::RGB,
        },
        90,
        turbojpeg::Subsamp::Sub2x2,
    )
    .unwrap()
    .to_vec();
    let info = check(&jpeg).unwrap();
    let out = imaging::flip(&jpeg, info.format, &limits()).unwrap();
    assert_flipped("generated.jpg", &jpeg, &info, &out);
}

#[test]
fn corpus_every_photo_passes_the_check_and_flips() {
    let dir = corpus();
    let mut names: Vec<_> = std::fs::read_dir(dir.join("photos")).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    let mut seen = 0;
    for path in names {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".tsv") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let info = check_named(&name, &bytes).unwrap_or_else(|r| panic!("{name} refused: {r}"));
        let out = imaging::flip(&bytes, info.format, &limits()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((out.width, out.height), info.displayed_size(), "{name}");
        assert_flipped(&name, &bytes, &info, &out);
        eprintln!(
            "corpus: {name}: {:?} {}x{} orientation {} -> {} ({} bytes)",
            info.format,
            info.width,
            info.height,
            info.orientation,
            out.method,
            out.bytes.len()
        );
        seen += 1;
    }
    assert!(seen >= 14, "expected the 14 corpus photos, saw {seen}");
}

/// The corpus files README.tsv says a browser-lenient server accepts: EXIF
/// that is damaged, loops or holds an orientation outside 1–8 is read as
/// upright, and a megabyte of comments is within the upload size limit.
const ACCEPTED_HOSTILE: [&str; 5] = [
    "exif_ifd_loop.jpg",
    "exif_bad_offsets.jpg",
    "exif_orientation_0.jpg",
    "exif_orientation_9999.jpg",
    "comment_1mib.jpg",
];

#[test]
fn corpus_every_hostile_file_is_refused_with_a_reason_or_accepted_upright() {
    let dir = corpus();
    let (mut refused, mut accepted) = (0, 0);
    for entry in std::fs::read_dir(dir.join("bad")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".tsv") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let started = std::time::Instant::now();
        match check_named(&name, &bytes) {
            Ok(info) if ACCEPTED_HOSTILE.contains(&name.as_str()) => {
                assert_eq!(info.orientation, 1, "{name}: read as upright");
                let out = imaging::flip(&bytes, info.format, &limits()).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!((out.width, out.height), info.displayed_size(), "{name}");
                assert_flipped(&name, &bytes, &info, &out);
                // Whatever viewer shows the flip shows it upright: no unusable
                // EXIF and at most the comments the limit allows are carried.
                let o = exif::jpeg_exif(&out.bytes).map(exif::orientation_strict);
                assert!(matches!(o, None | Some(Ok(1))), "{name}: flipped EXIF {o:?}");
                assert!(out.bytes.len() < 200_000, "{name}: the flip is {} bytes", out.bytes.len());
                eprintln!("corpus: {name}: accepted upright, flipped by {} ({:?})", out.method, started.elapsed());
                accepted += 1;
            }
            Ok(info) => panic!("{name} was accepted as {info:?}"),
            Err(r) => {
                assert!(!ACCEPTED_HOSTILE.contains(&name.as_str()), "{name} was refused: {r}");
                assert!((400..500).contains(&r.status()), "{name}: status {}", r.status());
                eprintln!("corpus: {name}: {} {} ({:?})", r.status(), r, started.elapsed());
                refused += 1;
            }
        }
    }
    assert_eq!(accepted, ACCEPTED_HOSTILE.len(), "every file meant to be accepted was seen");
    // Every file the corpus README lists (name-only rows have no file) was seen.
    let readme = std::fs::read_to_string(dir.join("bad/README.tsv")).unwrap();
    let listed = readme.lines().skip(1).filter(|l| l.split('\t').nth(1).is_some_and(|b| b != "-")).count();
    assert_eq!(refused + accepted, listed, "README.tsv lists {listed} files; {} were checked", refused + accepted);
}

#[test]
fn corpus_the_worker_survives_hostile_files_that_reach_it() {
    // Defence in depth: files the upload check refuses must still fail
    // cleanly (no panic, bounded time) if one reaches a worker.
    let dir = corpus();
    for entry in std::fs::read_dir(dir.join("bad")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(&path).unwrap();
        for format in ImageFormat::ALL {
            let _ = imaging::flip(&bytes, format, &limits());
        }
        if let Some(tiff) = exif::jpeg_exif(&bytes) {
            let o = exif::orientation_lenient(tiff);
            assert!((1..=8).contains(&o), "{name}: orientation {o}");
        }
    }
}
