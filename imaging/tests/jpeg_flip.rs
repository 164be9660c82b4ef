//! Issue 7's acceptance for the flip: lossless JPEG flips that undo exactly,
//! EXIF-oriented photos flipped as displayed, ICC kept, every GIF frame
//! flipped, thumbnails of both.
//!
//! The shared corpus (`../shared/testdata`, or `FLIPSTACK_TESTDATA`) is used
//! when it is there, and the tests say so; the generated fixtures run always.

mod support;

use std::path::PathBuf;

use flipstack_domain::domain::ImageFormat;
use flipstack_imaging::{self as imaging, Limits, exif, flip_jpeg, jpeg, orient::Turn};
use turbojpeg::raw;

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
    if dir.join("photos/MANIFEST.tsv").is_file() {
        eprintln!("corpus: using {}", dir.display());
        dir
    } else {
        panic!(
            "the photo corpus is not at {}: set FLIPSTACK_TESTDATA, or run the default nextest profile, which skips the corpus_* tests",
            dir.display()
        )
    }
}

/// Every JPEG of the corpus with the manifest's notes.
fn corpus_jpegs(dir: &std::path::Path) -> Vec<(String, Vec<u8>, String)> {
    let manifest = std::fs::read_to_string(dir.join("photos/MANIFEST.tsv")).unwrap();
    manifest
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols.get(1) == Some(&"JPEG")).then(|| {
                let bytes = std::fs::read(dir.join("photos").join(cols[0])).unwrap();
                (cols[0].to_owned(), bytes, cols[5].to_owned())
            })
        })
        .collect()
}

fn orientation(jpeg: &[u8]) -> u8 {
    exif::jpeg_exif(jpeg).map(exif::orientation_lenient).unwrap_or(1)
}

/// Every DCT coefficient, per component, as libjpeg-turbo reads them.
fn coefficients(jpeg: &[u8]) -> Vec<Vec<i16>> {
    unsafe extern "C" fn collect(
        coeffs: *mut i16,
        array: raw::tjregion,
        _plane: raw::tjregion,
        component: i32,
        _transform_id: i32,
        t: *mut raw::tjtransform,
    ) -> i32 {
        // SAFETY: `data` is the Vec below, alive for the whole call; the
        // array holds w × h coefficients (libjpeg-turbo's contract).
        unsafe {
            let out = &mut *((*t).data as *mut Vec<Vec<i16>>);
            let n = (array.w * array.h) as usize;
            while out.len() <= component as usize {
                out.push(Vec::new());
            }
            out[component as usize].extend_from_slice(std::slice::from_raw_parts(coeffs, n));
        }
        0
    }
    let mut out: Vec<Vec<i16>> = Vec::new();
    unsafe {
        let h = raw::tj3Init(raw::TJINIT_TJINIT_TRANSFORM as i32);
        assert!(!h.is_null());
        let t = raw::tjtransform {
            r: raw::tjregion { x: 0, y: 0, w: 0, h: 0 },
            op: raw::TJXOP_TJXOP_NONE as i32,
            options: raw::TJXOPT_NOOUTPUT as i32,
            data: (&mut out as *mut Vec<Vec<i16>>).cast(),
            customFilter: Some(collect),
        };
        let mut buf: *mut u8 = std::ptr::null_mut();
        let mut size: raw::size_t = 0;
        let rc = raw::tj3Transform(h, jpeg.as_ptr(), jpeg.len() as _, 1, &mut buf, &mut size, &t);
        raw::tj3Free(buf.cast());
        raw::tj3Destroy(h);
        assert_eq!(rc, 0, "coefficients could not be read");
    }
    out
}

fn max_and_mean_diff(a: &image::RgbaImage, b: &image::RgbaImage) -> (u8, f64) {
    assert_eq!(a.dimensions(), b.dimensions(), "sizes differ");
    let mut max = 0u8;
    let mut sum = 0u64;
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = x.abs_diff(*y);
        max = max.max(d);
        sum += d as u64;
    }
    (max, sum as f64 / a.as_raw().len() as f64)
}

/// The flip decodes to the vertical flip of the displayed original; returns
/// the largest and mean per-channel difference.
fn displayed_flip_diff(original: &[u8], flipped: &[u8]) -> (u8, f64) {
    let shown = imaging::decode_displayed(original, ImageFormat::Jpeg).unwrap();
    let expected = image::imageops::flip_vertical(&shown);
    let got = imaging::decode_displayed(flipped, ImageFormat::Jpeg).unwrap();
    let (max, mean) = max_and_mean_diff(&expected, &got);
    // Not the unflipped picture either.
    let (_, unflipped) = max_and_mean_diff(&shown, &got);
    assert!(unflipped > mean, "the output looks like the original");
    (max, mean)
}

/// IDCT rounding and libjpeg-turbo's chroma upsampling (whose rounding
/// alternates along a row) are not mirror-symmetric, so a lossless flip
/// decodes to the flip of the decoded original within a step or two.
const IDCT_ROUNDING: u8 = 3;

/// The lossless checks of issue 7: pixel-equal up to rounding, and flipping
/// the flip gives back the original's coefficients, tables and tag.
fn assert_lossless(name: &str, original: &[u8], out: &imaging::Flipped) {
    assert!(out.method.starts_with("jpeg-lossless"), "{name}: a perfect transform exists but {} ran", out.method);
    let (max, mean) = displayed_flip_diff(original, &out.bytes);
    assert!(
        max <= IDCT_ROUNDING && mean < 0.5,
        "{name}: lossless flip differs from the flipped original by up to {max} (mean {mean:.3})"
    );
    let again = imaging::flip(&out.bytes, ImageFormat::Jpeg, &limits()).unwrap();
    assert!(again.method.starts_with("jpeg-lossless"), "{name}: {}", again.method);
    assert_eq!(
        orientation(&again.bytes),
        orientation(original),
        "{name}: flipped twice, the orientation tag is not the original's"
    );
    assert_eq!(jpeg::quant_tables(&again.bytes), jpeg::quant_tables(original), "{name}: quantisation tables changed");
    assert!(
        coefficients(&again.bytes) == coefficients(original),
        "{name}: flipped twice, the coefficients are not the original's"
    );
    eprintln!("{name}: {} (max {max}, mean {mean:.4}); twice = original's coefficients", out.method);
}

fn subsamp_of(jpeg: &[u8]) -> turbojpeg::Subsamp {
    turbojpeg::read_header(jpeg).unwrap().subsamp
}

#[test]
fn corpus_jpegs_flip_losslessly_where_a_perfect_transform_exists() {
    // Photos of 2 MP and up through the two-core flip, whatever the load.
    imaging::SecondCore::Always.set();
    let dir = corpus();
    let (mut lossless, mut reencoded) = (0, 0);
    for (name, bytes, notes) in corpus_jpegs(&dir) {
        let out = imaging::flip(&bytes, ImageFormat::Jpeg, &limits()).unwrap();
        let o = orientation(&bytes);
        // The manifest says whether jpegtran's vertical flip is perfect; a
        // photo with an orientation tag can always be flipped losslessly as
        // displayed (a transpose is always perfect).
        let perfect = notes.contains("-perfect: ok") || o != 1;
        if perfect {
            assert_lossless(&name, &bytes, &out);
            lossless += 1;
        } else {
            assert!(out.method.starts_with("jpeg-reencode"), "{name}: {}", out.method);
            let (max, mean) = displayed_flip_diff(&bytes, &out.bytes);
            assert!(mean < 2.0, "{name}: re-encoded flip differs by {mean:.2} on average");
            assert_eq!(subsamp_of(&out.bytes), subsamp_of(&bytes), "{name}: subsampling");
            assert_eq!(
                jpeg::estimate_quality(&out.bytes),
                jpeg::estimate_quality(&bytes),
                "{name}: quality not matched"
            );
            eprintln!(
                "{name}: {} at quality {:?} (max {max}, mean {mean:.3}), {} → {} bytes",
                out.method,
                jpeg::estimate_quality(&bytes),
                bytes.len(),
                out.bytes.len()
            );
            reencoded += 1;
        }
    }
    assert_eq!(lossless + reencoded, 10, "the corpus has 10 JPEGs");
    assert!(lossless >= 6, "only {lossless} lossless flips");
}

#[test]
fn corpus_exif_photos_flip_as_displayed() {
    let dir = corpus();
    let mut seen = 0;
    for (name, bytes, _) in corpus_jpegs(&dir) {
        let o = orientation(&bytes);
        if o == 1 {
            continue;
        }
        let out = imaging::flip(&bytes, ImageFormat::Jpeg, &limits()).unwrap();
        let (max, mean) = displayed_flip_diff(&bytes, &out.bytes);
        assert!(max <= IDCT_ROUNDING, "{name}: {max} {mean}");
        let shown = Turn::from_exif(o);
        let (w, h) = (
            turbojpeg::read_header(&bytes).unwrap().width as u32,
            turbojpeg::read_header(&bytes).unwrap().height as u32,
        );
        let displayed = if shown.transposes() { (h, w) } else { (w, h) };
        assert_eq!((out.width, out.height), displayed, "{name}");
        match out.method {
            // The stored pixels got the displayed flip's counterpart; the tag stays.
            "jpeg-lossless-vflip" | "jpeg-lossless-hflip" => {
                assert_eq!(orientation(&out.bytes), o, "{name}: tag changed")
            }
            // The stored pixels were transposed; the tag now says how to show them.
            "jpeg-lossless-transpose" => {
                let new = Turn::from_exif(orientation(&out.bytes));
                assert_eq!(new.after(Turn::TRANSPOSE), Turn::VFLIP.after(shown), "{name}")
            }
            other => panic!("{name}: {other}"),
        }
        eprintln!("{name}: orientation {o} → {} with tag {}", out.method, orientation(&out.bytes));
        seen += 1;
    }
    assert_eq!(seen, 3, "the corpus has three EXIF-oriented photos");
}

#[test]
fn corpus_the_adobe_rgb_photo_keeps_its_icc_profile() {
    let dir = corpus();
    let bytes = std::fs::read(dir.join("photos/p06_rocket_640x427_base444_adobergb.jpg")).unwrap();
    let icc = jpeg::icc_profile(&bytes).expect("the source has an ICC profile");
    let out = imaging::flip(&bytes, ImageFormat::Jpeg, &limits()).unwrap();
    assert_eq!(jpeg::icc_profile(&out.bytes), Some(icc.clone()), "flip dropped the ICC profile");
    let thumbs = imaging::thumbnails(&bytes, ImageFormat::Jpeg, &limits()).unwrap();
    assert_eq!(jpeg::icc_profile(&thumbs.original), Some(icc.clone()));
    assert_eq!(jpeg::icc_profile(&thumbs.flipped), Some(icc));
}

#[test]
fn corpus_every_frame_of_the_animated_gif_is_flipped() {
    use image::AnimationDecoder;
    let dir = corpus();
    let bytes = std::fs::read(dir.join("photos/p14_mountain_anim6_320x240.gif")).unwrap();
    let out = imaging::flip(&bytes, ImageFormat::Gif, &limits()).unwrap();
    let frames = |b: &[u8]| {
        image::codecs::gif::GifDecoder::new(std::io::Cursor::new(b.to_vec()))
            .unwrap()
            .into_frames()
            .collect_frames()
            .unwrap()
    };
    let (before, after) = (frames(&bytes), frames(&out.bytes));
    assert_eq!(before.len(), 6);
    assert_eq!(after.len(), before.len());
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        let expected = image::imageops::flip_vertical(a.buffer());
        assert!(expected == *b.buffer(), "frame {i} is not the flip of the original's");
        assert_ne!(a.buffer(), b.buffer(), "frame {i} was not changed");
        assert_eq!(a.delay(), b.delay(), "frame {i} delay");
    }
}

#[test]
fn corpus_thumbnails_show_the_displayed_picture_and_its_flip() {
    // Photos of 2 MP and up through the two-core flip, whatever the load.
    imaging::SecondCore::Always.set();
    let dir = corpus();
    let mut names: Vec<_> = std::fs::read_dir(dir.join("photos"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e != "tsv"))
        .collect();
    names.sort();
    for path in names {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(&path).unwrap();
        let format = match path.extension().unwrap().to_str().unwrap() {
            "jpg" => ImageFormat::Jpeg,
            "png" => ImageFormat::Png,
            "gif" => ImageFormat::Gif,
            _ => ImageFormat::Webp,
        };
        let p = imaging::flip_with_thumbnails(&bytes, format, &limits()).unwrap();
        let t = p.thumbnails.unwrap_or_else(|e| panic!("{name}: {e}"));
        check_thumbnails(&name, &bytes, format, &t);
    }
}

fn check_thumbnails(name: &str, original: &[u8], format: ImageFormat, t: &imaging::Thumbnails) {
    assert_eq!(t.format, imaging::thumbnail_format(format));
    let shown = imaging::decode_displayed(original, format).unwrap();
    let long = shown.width().max(shown.height());
    assert_eq!(t.width.max(t.height), long.min(imaging::THUMB_LONG_SIDE), "{name}");
    // Same shape as the displayed picture, to the nearest pixel.
    let scale = t.width.max(t.height) as f64 / long as f64;
    let expected = ((shown.width() as f64 * scale).round() as u32, (shown.height() as f64 * scale).round() as u32);
    assert_eq!((t.width, t.height), expected, "{name}: thumbnail shape");
    let small = imaging::decode_displayed(&t.original, t.format).unwrap();
    let small_flipped = imaging::decode_displayed(&t.flipped, t.format).unwrap();
    assert_eq!(small.dimensions(), (t.width, t.height), "{name}");
    // Upright like the displayed original (orientation applied) …
    let reference = image::imageops::resize(&shown, t.width, t.height, image::imageops::FilterType::Triangle);
    let (_, like) = max_and_mean_diff(&reference, &small);
    let (_, turned) = max_and_mean_diff(&image::imageops::flip_vertical(&reference), &small);
    assert!(like < 8.0 && like < turned, "{name}: thumbnail is not the displayed picture ({like:.2} vs {turned:.2})");
    // … and the flipped one is its flip: exactly for PNG; for JPEG up to the
    // thumbnails' own compression error, which differs once the block grid
    // no longer lines up with the flipped picture.
    let (_, mean) = max_and_mean_diff(&image::imageops::flip_vertical(&small), &small_flipped);
    let tolerance = if t.format == ImageFormat::Jpeg { 4.0 } else { 0.0 };
    assert!(mean <= tolerance, "{name}: flipped thumbnail differs by {mean:.2}");
    eprintln!(
        "{name}: thumbnails {}x{} {:?}, {} + {} bytes",
        t.width,
        t.height,
        t.format,
        t.original.len(),
        t.flipped.len()
    );
}

// ---- generated fixtures: run with or without the corpus ----

/// A picture with a clear top and bottom and detail in every block.
fn pattern(w: u32, h: u32) -> Vec<u8> {
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let n = (x * 31 + y * 17) ^ (x * y);
            px.extend_from_slice(&[(y * 250 / h) as u8, (x * 250 / w) as u8, (n % 200) as u8]);
        }
    }
    px
}

fn make_jpeg(w: u32, h: u32, quality: i32, subsamp: turbojpeg::Subsamp) -> Vec<u8> {
    let px = pattern(w, h);
    turbojpeg::compress(
        turbojpeg::Image {
            pixels: px.as_slice(),
            width: w as usize,
            pitch: w as usize * 3,
            height: h as usize,
            format: turbojpeg::PixelFormat::RGB,
        },
        quality,
        subsamp,
    )
    .unwrap()
    .to_vec()
}

fn fake_icc() -> Vec<u8> {
    (0..3000u32).map(|i| (i * 13 % 256) as u8).collect()
}

#[test]
fn generated_upright_jpegs_take_the_right_path() {
    use turbojpeg::Subsamp::*;
    let icc = fake_icc();
    // (width, height, subsampling, expected method)
    let cases = [
        (64, 48, Sub2x2, "jpeg-lossless-vflip"),
        (64, 40, Sub2x1, "jpeg-lossless-vflip"),
        (40, 24, Gray, "jpeg-lossless-vflip"),
        (64, 50, Sub2x2, "jpeg-reencode-yuv"),
        (64, 45, Sub2x1, "jpeg-reencode-yuv"),
        (61, 43, None, "jpeg-reencode-yuv"),
        // An odd height with vertical chroma subsampling: the planes cannot
        // be flipped exactly, so through RGB.
        (64, 49, Sub2x2, "jpeg-reencode"),
    ];
    for (w, h, s, expected) in cases {
        let plain = make_jpeg(w, h, 83, s);
        let src = jpeg::insert_segments(plain, &jpeg::icc_segments(&icc));
        let name = format!("{w}x{h} {s:?}");
        let out = imaging::flip(&src, ImageFormat::Jpeg, &limits()).unwrap();
        assert_eq!(out.method, expected, "{name}");
        assert_eq!((out.width, out.height), (w, h), "{name}");
        assert_eq!(jpeg::icc_profile(&out.bytes).as_deref(), Some(&icc[..]), "{name}: ICC");
        if expected.starts_with("jpeg-lossless") {
            assert_lossless(&name, &src, &out);
        } else {
            let (_, mean) = displayed_flip_diff(&src, &out.bytes);
            assert!(mean < 5.0, "{name}: {mean}");
            assert_eq!(subsamp_of(&out.bytes), s, "{name}: subsampling");
            assert_eq!(jpeg::estimate_quality(&out.bytes), Some(83), "{name}: quality");
        }
        // The forced re-encode works on every one of them, too.
        let re = flip_jpeg::reencode(&src, &limits()).unwrap();
        let (_, mean) = displayed_flip_diff(&src, &re.bytes);
        assert!(mean < 5.0, "{name}: forced re-encode {mean}");
    }
}

#[test]
fn generated_exif_jpegs_flip_as_displayed() {
    use turbojpeg::Subsamp::*;
    // (width, height, subsampling, orientation, expected method)
    let cases = [
        (64, 48, Sub2x2, 6, "jpeg-lossless-hflip"),
        (56, 48, Sub2x2, 6, "jpeg-lossless-transpose"),
        (64, 48, Sub2x2, 3, "jpeg-lossless-vflip"),
        (64, 50, Sub2x2, 3, "jpeg-lossless-transpose"),
        (64, 48, Sub2x1, 8, "jpeg-lossless-hflip"),
        (60, 48, Sub2x1, 5, "jpeg-lossless-transpose"),
        (64, 48, Sub2x2, 2, "jpeg-lossless-vflip"),
        (64, 48, Sub2x2, 7, "jpeg-lossless-hflip"),
    ];
    for (w, h, s, o, expected) in cases {
        let src = jpeg::insert_segments(make_jpeg(w, h, 90, s), &[support::exif_segment(o, 0)]);
        let name = format!("{w}x{h} {s:?} orientation {o}");
        let out = imaging::flip(&src, ImageFormat::Jpeg, &limits()).unwrap();
        assert_eq!(out.method, expected, "{name}");
        assert_lossless(&name, &src, &out);
        let shown = Turn::from_exif(o as u8);
        let new = Turn::from_exif(orientation(&out.bytes));
        let stored = if out.method == "jpeg-lossless-transpose" {
            Turn::TRANSPOSE
        } else {
            shown.inverse().after(Turn::VFLIP).after(shown)
        };
        assert_eq!(new.after(stored), Turn::VFLIP.after(shown), "{name}: tag");

        // Re-encoded instead, the pixels come out upright and the tag says 1.
        let re = flip_jpeg::reencode(&src, &limits()).unwrap();
        assert_eq!(orientation(&re.bytes), 1, "{name}: re-encoded tag");
        let (_, mean) = displayed_flip_diff(&src, &re.bytes);
        assert!(mean < 5.0, "{name}: re-encoded {mean}");
        let (dw, dh) = if shown.transposes() { (h, w) } else { (w, h) };
        assert_eq!((re.width, re.height), (dw, dh), "{name}");
        assert_eq!(turbojpeg::read_header(&re.bytes).unwrap().width as u32, dw);
    }
}

#[test]
fn decoder_limits_hold_on_every_path() {
    let src = make_jpeg(64, 48, 90, turbojpeg::Subsamp::Sub2x2);
    let tight = Limits::new(1000, 10);
    for result in [
        imaging::flip(&src, ImageFormat::Jpeg, &tight).map(|_| ()),
        flip_jpeg::reencode(&src, &tight).map(|_| ()),
        imaging::thumbnails(&src, ImageFormat::Jpeg, &tight).map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(imaging::FlipError::Unreadable(_))),
            "64x48 passed a 1000-pixel limit: {result:?}"
        );
    }
    // A progressive file with more scans than allowed.
    let mut c = turbojpeg::Compressor::new().unwrap();
    c.set_quality(80).unwrap();
    let px = pattern(32, 32);
    let img = turbojpeg::Image {
        pixels: px.as_slice(),
        width: 32,
        pitch: 96,
        height: 32,
        format: turbojpeg::PixelFormat::RGB,
    };
    let progressive = {
        let base = c.compress_to_vec(img).unwrap();
        let mut t = turbojpeg::Transformer::new().unwrap();
        let mut tr = turbojpeg::Transform::op(turbojpeg::TransformOp::None);
        tr.progressive = true;
        t.transform_to_vec(&tr, &base).unwrap()
    };
    let mut few_scans = limits();
    few_scans.max_scans = 2;
    assert!(imaging::flip(&progressive, ImageFormat::Jpeg, &few_scans).is_err());
    assert!(imaging::flip(&progressive, ImageFormat::Jpeg, &limits()).is_ok());
}

#[test]
fn generated_thumbnails() {
    // Big enough to be shrunk, with an EXIF turn.
    let src =
        jpeg::insert_segments(make_jpeg(1200, 800, 85, turbojpeg::Subsamp::Sub2x2), &[support::exif_segment(6, 0)]);
    let t = imaging::thumbnails(&src, ImageFormat::Jpeg, &limits()).unwrap();
    assert_eq!((t.width, t.height), (320, 480), "turned to the displayed shape");
    check_thumbnails("generated 1200x800 orientation 6", &src, ImageFormat::Jpeg, &t);

    // A PNG with alpha keeps it in its thumbnails; a small picture is not enlarged.
    let mut img = image::RgbaImage::new(900, 300);
    for (x, y, p) in img.enumerate_pixels_mut() {
        *p = image::Rgba([(x % 256) as u8, (y * 255 / 300) as u8, 90, if x < 450 { 255 } else { 80 }]);
    }
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let png = png.into_inner();
    let p = imaging::flip_with_thumbnails(&png, ImageFormat::Png, &limits()).unwrap();
    let t = p.thumbnails.unwrap();
    assert_eq!((t.width, t.height, t.format), (480, 160, ImageFormat::Png));
    let small = image::load_from_memory(&t.original).unwrap().into_rgba8();
    assert!(small.get_pixel(10, 10)[3] > 250 && small.get_pixel(470, 10)[3] < 100, "alpha kept");
    check_thumbnails("generated.png", &png, ImageFormat::Png, &t);

    let tiny = make_jpeg(40, 30, 90, turbojpeg::Subsamp::Sub2x2);
    let t = imaging::thumbnails(&tiny, ImageFormat::Jpeg, &limits()).unwrap();
    assert_eq!((t.width, t.height), (40, 30));
}

#[test]
fn generated_thumbnails_come_from_the_flip_pass() {
    use turbojpeg::Subsamp::{Gray, Sub2x1, Sub2x2};
    // Each path the worker's flip can take, with the thumbnails it makes on
    // the way: DCT cells (vflip, hflip with EXIF 6, a transpose that swaps
    // sampling factors and tables), YUV planes, RGB pixels.
    let cases = [
        (2048, 1536, Sub2x2, None, "jpeg-lossless-vflip"),
        (4096, 768, Sub2x2, None, "jpeg-lossless-vflip"),
        (2048, 1536, Sub2x1, Some(6), "jpeg-lossless-hflip"),
        (2040, 1536, Sub2x1, Some(6), "jpeg-lossless-transpose"),
        (2048, 1530, Sub2x2, None, "jpeg-reencode-yuv"),
        (2048, 1531, Sub2x2, None, "jpeg-reencode"),
        (1000, 1536, Gray, None, "jpeg-lossless-vflip"),
    ];
    for (w, h, s, o, method) in cases {
        let mut src = make_jpeg(w, h, 88, s);
        if let Some(o) = o {
            src = jpeg::insert_segments(src, &[support::exif_segment(o, 0)]);
        }
        let name = format!("{w}x{h} {s:?} orientation {o:?}");
        let p = imaging::flip_with_thumbnails(&src, ImageFormat::Jpeg, &limits()).unwrap();
        assert_eq!(p.flipped.method, method, "{name}");
        let t = p.thumbnails.unwrap();
        check_thumbnails(&name, &src, ImageFormat::Jpeg, &t);
        // The same as the thumbnails made by decoding the file again.
        let again = imaging::thumbnails(&src, ImageFormat::Jpeg, &limits()).unwrap();
        assert_eq!((again.width, again.height), (t.width, t.height), "{name}");
        let a = imaging::decode_displayed(&again.original, ImageFormat::Jpeg).unwrap();
        let b = imaging::decode_displayed(&t.original, ImageFormat::Jpeg).unwrap();
        let (_, mean) = max_and_mean_diff(&a, &b);
        assert!(mean < 6.0, "{name}: differs from a scaled decode by {mean:.2}");
    }
}

/// An APP1 EXIF segment (big-endian TIFF) with an orientation in IFD0 and
/// the picture's size in its EXIF IFD, the tags libjpeg-turbo rewrites when
/// a transform changes the size.
fn exif_with_size(orientation: u16, width: u32, height: u32) -> Vec<u8> {
    let entry = |t: &mut Vec<u8>, tag: u16, kind: u16, value: u32| {
        t.extend_from_slice(&tag.to_be_bytes());
        t.extend_from_slice(&kind.to_be_bytes());
        t.extend_from_slice(&1u32.to_be_bytes());
        if kind == 3 {
            t.extend_from_slice(&(value as u16).to_be_bytes());
            t.extend_from_slice(&[0, 0]);
        } else {
            t.extend_from_slice(&value.to_be_bytes());
        }
    };
    let mut t = b"MM\0*".to_vec();
    t.extend_from_slice(&8u32.to_be_bytes());
    // IFD0 at 8: two entries (8 + 2 + 24 + 4 = 38), the EXIF IFD at 38.
    t.extend_from_slice(&2u16.to_be_bytes());
    entry(&mut t, 0x0112, 3, orientation as u32);
    entry(&mut t, 0x8769, 4, 38);
    t.extend_from_slice(&0u32.to_be_bytes());
    t.extend_from_slice(&2u16.to_be_bytes());
    entry(&mut t, 0xA002, 4, width);
    entry(&mut t, 0xA003, 4, height);
    t.extend_from_slice(&0u32.to_be_bytes());
    let mut s = vec![0xFF, 0xE1];
    s.extend_from_slice(&((t.len() + 8) as u16).to_be_bytes());
    s.extend_from_slice(b"Exif\0\0");
    s.extend_from_slice(&t);
    s
}

#[test]
fn generated_large_jpegs_flip_in_two_halves_joined_at_a_restart_marker() {
    use turbojpeg::Subsamp::{Gray, None, Sub2x1, Sub2x2};
    // Pictures of 2 MP and more are flipped by two threads, each writing
    // half of the rows; the halves join at a restart marker. The 8192 px
    // wide one needs several restart intervals per half (a restart interval
    // holds at most 65 535 MCUs), so the lower half's markers are renumbered.
    // (By default only while a core is idle; here always.)
    imaging::SecondCore::Always.set();
    let cases = [
        (2048, 1536, Sub2x2, 1, "jpeg-lossless-vflip"),
        (2048, 1536, Sub2x1, 6, "jpeg-lossless-hflip"),
        (2048, 1024, Gray, 1, "jpeg-lossless-vflip"),
        (8192, 2048, None, 1, "jpeg-lossless-vflip"),
    ];
    for (w, h, s, o, method) in cases {
        let exif = exif_with_size(o, w, h);
        let src = jpeg::insert_segments(make_jpeg(w, h, 85, s), std::slice::from_ref(&exif));
        let name = format!("{w}x{h} {s:?} orientation {o}");
        let p = imaging::flip_with_thumbnails(&src, ImageFormat::Jpeg, &limits()).unwrap();
        let out = &p.flipped;
        assert_eq!(out.method, method, "{name}");
        let segs = jpeg::segments(&out.bytes).unwrap();
        assert!(segs.iter().any(|s| s.marker == 0xDD), "{name}: not split (no restart interval)");
        // The EXIF as it was: the halves' own sizes do not leak into it.
        let exif_out = segs.iter().find(|s| s.marker == 0xE1).map(|s| out.bytes[s.range.clone()].to_vec());
        assert_eq!(exif_out.as_deref(), Some(&exif[..]), "{name}: EXIF changed");
        // Pixel for pixel the flip, and flipped again (split again) the
        // original's coefficients: the join loses nothing.
        assert_lossless(&name, &src, out);
        check_thumbnails(&name, &src, ImageFormat::Jpeg, &p.thumbnails.unwrap());
    }
    // Under 2 MP: one thread, no restart markers.
    let small = make_jpeg(1600, 1200, 85, Sub2x2);
    let out = imaging::flip(&small, ImageFormat::Jpeg, &limits()).unwrap();
    assert!(!jpeg::segments(&out.bytes).unwrap().iter().any(|s| s.marker == 0xDD));
    // Split or whole, the same coefficients.
    let src = make_jpeg(2048, 1536, 85, Sub2x2);
    let split = imaging::flip(&src, ImageFormat::Jpeg, &limits()).unwrap();
    imaging::SecondCore::Never.set();
    let whole = imaging::flip(&src, ImageFormat::Jpeg, &limits()).unwrap();
    assert!(!jpeg::segments(&whole.bytes).unwrap().iter().any(|s| s.marker == 0xDD), "never split");
    assert_ne!(split.bytes, whole.bytes);
    assert!(coefficients(&split.bytes) == coefficients(&whole.bytes), "split and whole flips differ");
}
