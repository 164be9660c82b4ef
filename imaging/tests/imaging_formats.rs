//! WebP (lossy stays lossy, lossless stays exact) and HEIC/AVIF (every
//! orientation, by the container's irot/imir or by EXIF), on fixtures the
//! test makes with libwebp and libheif. Each is accepted by the upload
//! check, and its flip is the vertical flip of the picture as displayed:
//! exact for lossless, for lossy no worse than encoding the displayed
//! picture again at the source's quality.

mod support;

use flipstack_domain::domain::ImageFormat;
use flipstack_imaging::heif::{self, Codec, Encode};
use flipstack_imaging::orient::{Turn, turn_pixels};
use flipstack_imaging::webp_encode;
use flipstack_imaging::{self as imaging, ImageInfo, Inspector, Limits, Rejection};

fn limits() -> Limits {
    Limits::new(50_000_000, 1000)
}

fn check(bytes: &[u8]) -> Result<ImageInfo, Rejection> {
    let l = limits();
    let mut i = Inspector::new(l);
    for chunk in bytes.chunks(1000) {
        i.feed(chunk)?;
    }
    let info = i.finish()?;
    imaging::verify(bytes, &info, &l)?;
    Ok(info)
}

/// A picture with a top, a bottom, a left and a right, smooth enough for
/// lossy codecs to keep its shape.
fn picture(w: u32, h: u32, channels: usize) -> Vec<u8> {
    let mut px = Vec::with_capacity((w * h) as usize * channels);
    let mut state = 0x9E37_79B9u32;
    for y in 0..h {
        for x in 0..w {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            // A little grain, as photos have.
            let grain = (state >> 29) as u8;
            let bar = x < w / 5 && y < h / 2;
            px.extend_from_slice(&[
                (y * 250 / h) as u8 + grain,
                if bar { 230 } else { (x * 200 / w) as u8 + grain },
                if bar { 20 } else { 120 + ((x / 9 + y / 7) % 30) as u8 },
            ]);
            if channels == 4 {
                px.push(if x > w * 4 / 5 { 128 } else { 255 });
            }
        }
    }
    px
}

fn rgba(img: &image::RgbaImage) -> &[u8] {
    img.as_raw()
}

fn flipv(img: &image::RgbaImage) -> image::RgbaImage {
    image::imageops::flip_vertical(img)
}

fn mad(a: &image::RgbaImage, b: &image::RgbaImage) -> f64 {
    imaging::mean_abs_diff(a, b).unwrap_or_else(|| panic!("sizes differ: {:?} {:?}", a.dimensions(), b.dimensions()))
}

// ---------------------------------------------------------------- WebP

#[test]
fn lossy_webp_stays_lossy_at_its_quality() {
    let (w, h) = (240, 160);
    for (channels, quality) in [(4usize, 80.0f32), (4, 50.0), (4, 92.0)] {
        let px = picture(w, h, channels);
        let src = webp_encode::encode(&px, w, h, Some(quality), None).unwrap();
        let info = check(&src).unwrap();
        assert_eq!((info.format, info.width, info.height), (ImageFormat::Webp, w, h));
        let out = imaging::flip(&src, ImageFormat::Webp, &limits()).unwrap();
        assert_eq!(out.method, "webp-lossy");
        let ratio = out.bytes.len() as f64 / src.len() as f64;
        assert!(
            ratio <= 1.5,
            "q{quality}: the flip is {ratio:.2}× the original ({} → {} bytes)",
            src.len(),
            out.bytes.len()
        );
        assert!(matches!(webp_encode::bitstream(&out.bytes), Some(webp_encode::Bitstream::Lossy(_))));
        // Against the exact flip of what the original shows …
        let shown = imaging::decode_displayed(&src, ImageFormat::Webp).unwrap();
        let got = imaging::decode_displayed(&out.bytes, ImageFormat::Webp).unwrap();
        let err = mad(&got, &flipv(&shown));
        // … no worse than encoding that flip afresh at the source's own quality.
        let exact = flipv(&shown);
        let again = webp_encode::encode(rgba(&exact), w, h, Some(quality), None).unwrap();
        let again_err = mad(&imaging::decode_displayed(&again, ImageFormat::Webp).unwrap(), &exact);
        assert!(err <= again_err * 1.05 + 0.05, "q{quality}: flip error {err:.3}, re-encode error {again_err:.3}");
        assert!(mad(&got, &shown) > err, "q{quality}: the output looks like the original, not its flip");
        eprintln!(
            "lossy q{quality}: {} → {} bytes ({ratio:.2}×), error {err:.3} vs {again_err:.3}",
            src.len(),
            out.bytes.len()
        );
    }
}

#[test]
fn lossless_webp_stays_lossless_and_exact() {
    let (w, h) = (120, 90);
    let px = picture(w, h, 4);
    let src = webp_encode::encode(&px, w, h, None, None).unwrap();
    check(&src).unwrap();
    let out = imaging::flip(&src, ImageFormat::Webp, &limits()).unwrap();
    assert_eq!(out.method, "webp-lossless");
    let shown = imaging::decode_displayed(&src, ImageFormat::Webp).unwrap();
    let got = imaging::decode_displayed(&out.bytes, ImageFormat::Webp).unwrap();
    assert_eq!(mad(&got, &flipv(&shown)), 0.0, "the lossless flip is exact");
    assert_eq!(webp_encode::bitstream(&out.bytes), Some(webp_encode::Bitstream::Lossless));
}

// ---------------------------------------------------------------- HEIC / AVIF

const HEIF_QUALITY: u8 = 80;

fn heif_file(codec: Codec, px: &[u8], w: u32, h: u32, container: u8, exif: Option<u16>) -> Vec<u8> {
    let tiff = exif.map(|o| support::orientation_tiff(o, 0));
    let mut file = heif::encode(&Encode {
        pixels: px,
        width: w,
        height: h,
        channels: 3,
        codec,
        quality: HEIF_QUALITY,
        icc: None,
        exif: tiff.as_deref(),
        orientation: container,
    })
    .unwrap();
    // libheif 1.15 writes `ispe` as the size after a quarter turn; the
    // standard (and cameras) give the coded size, before any turn. Put it
    // right, in place (nothing moves).
    if Turn::from_exif(container).transposes() {
        let at = file.windows(4).position(|w| w == b"ispe").expect("an ispe box") + 8;
        let (width, height) = (file[at..at + 4].to_vec(), file[at + 4..at + 8].to_vec());
        file[at..at + 4].copy_from_slice(&height);
        file[at + 4..at + 8].copy_from_slice(&width);
    }
    file
}

fn to_rgba(px: &[u8], w: u32, h: u32) -> image::RgbaImage {
    image::DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, px.to_vec()).unwrap()).into_rgba8()
}

/// Accepted; shown as libheif turns the stored picture by its container
/// (which the check must read the same way) and then by EXIF where the
/// container has no turn; and flipped as shown.
fn heif_case(name: &str, format: ImageFormat, file: &[u8], o: u8) {
    let info = check(file).unwrap_or_else(|r| panic!("{name}: refused: {r}"));
    let stored = heif::decode_stored(file, u64::MAX).unwrap();
    assert_eq!((info.format, info.width, info.height), (format, stored.width, stored.height), "{name}");
    let container = heif::decode(file, u64::MAX).unwrap();
    let by_container = turn_pixels(&stored.pixels, stored.width, stored.height, 3, Turn::from_exif(info.orientation));
    assert_eq!(
        (by_container.1, by_container.2, by_container.0 == container.pixels),
        (container.width, container.height, true),
        "{name}: the check reads the container's turn ({}) as libheif applies it",
        info.orientation
    );
    // Phones write the same turn into EXIF: applied once, by the container.
    // Without a container turn, EXIF's is applied.
    let turn = if info.orientation == 1 { Turn::from_exif(o) } else { Turn::IDENTITY };
    let (tpx, tw, th) = turn_pixels(&container.pixels, container.width, container.height, 3, turn);
    let expected = to_rgba(&tpx, tw, th);
    let shown = imaging::decode_displayed(file, format).unwrap();
    assert_eq!(mad(&shown, &expected), 0.0, "{name}: shown as the container, then EXIF, say");
    let processed = imaging::flip_with_thumbnails(file, format, &limits()).unwrap();
    let out = processed.flipped;
    assert_eq!((out.width, out.height), (tw, th), "{name}");
    let stored_as = imaging::flipped_format(format);
    let got = imaging::decode_displayed(&out.bytes, stored_as).unwrap();
    let err = mad(&got, &flipv(&shown));
    // No worse than encoding the exact flip afresh at the source's quality.
    let exact = flipv(&shown);
    let exact_rgb = image::DynamicImage::ImageRgba8(exact.clone()).into_rgb8();
    let codec = if format == ImageFormat::Avif { Codec::Av1 } else { Codec::Hevc };
    let again = heif_file(codec, exact_rgb.as_raw(), tw, th, 1, None);
    let again_err = mad(&imaging::decode_displayed(&again, format).unwrap(), &exact);
    assert!(err <= again_err * 1.1 + 0.1, "{name}: flip error {err:.2}, re-encode error {again_err:.2}");
    assert!(mad(&got, &shown) > err, "{name}: the output looks like the original, not its flip");
    // The flip has no turn of its own left.
    if stored_as == format {
        assert_eq!(check(&out.bytes).unwrap().orientation, 1, "{name}: the flip is stored upright");
    }
    // The gallery's views and thumbnails are JPEGs of the shown pictures.
    let display = processed.display.expect("HEIC/AVIF uploads get browser views");
    assert_eq!(display.format, ImageFormat::Jpeg);
    let view = imaging::decode_displayed(&display.original, ImageFormat::Jpeg).unwrap();
    assert!(mad(&view, &shown) < 4.0, "{name}: the original's view");
    let view = imaging::decode_displayed(&display.flipped, ImageFormat::Jpeg).unwrap();
    assert!(mad(&view, &flipv(&shown)) < 4.0, "{name}: the flip's view");
    let thumbs = processed.thumbnails.unwrap();
    assert_eq!((thumbs.width, thumbs.height, thumbs.format), (tw, th, ImageFormat::Jpeg), "{name}");
    eprintln!("{name}: {} bytes → {} by {}, error {err:.2} vs {again_err:.2}", file.len(), out.bytes.len(), out.method);
}

#[test]
fn heic_in_every_orientation_by_container_or_exif() {
    let (w, h) = (96, 64);
    let src = picture(w, h, 3);
    for o in 1..=8u8 {
        // As phones write it: irot/imir, and EXIF saying the same (applied once).
        let file = heif_file(Codec::Hevc, &src, w, h, o, Some(o as u16));
        heif_case(&format!("HEIC irot/imir {o}"), ImageFormat::Heic, &file, o);
        assert_eq!(check(&file).unwrap().orientation == 1, o == 1, "irot/imir {o} are there");
        // EXIF alone: applied, as for JPEG.
        let file = heif_file(Codec::Hevc, &src, w, h, 1, Some(o as u16));
        heif_case(&format!("HEIC EXIF {o}"), ImageFormat::Heic, &file, o);
        assert_eq!(check(&file).unwrap().orientation, 1);
    }
}

#[test]
fn avif_is_accepted_and_flipped() {
    let (w, h) = (96, 64);
    let src = picture(w, h, 3);
    for o in [1u8, 6] {
        let file = heif_file(Codec::Av1, &src, w, h, o, None);
        heif_case(&format!("AVIF irot/imir {o}"), ImageFormat::Avif, &file, 1);
    }
}

#[test]
fn heif_pixel_limits_and_damage_are_refused_before_decoding() {
    let (w, h) = (96, 64);
    let file = heif_file(Codec::Hevc, &picture(w, h, 3), w, h, 1, None);
    let mut tight = Inspector::new(Limits::new(1000, 10));
    let r = file.chunks(100).try_for_each(|c| tight.feed(c)).and_then(|_| tight.finish().map(|_| ()));
    assert_eq!(r, Err(Rejection::TooManyPixels { width: 96, height: 64, limit: 1000 }));
    assert_eq!(check(&file[..file.len() - 10]), Err(Rejection::Truncated));
    let mut no_meta = file.clone();
    let at = no_meta.windows(4).position(|w| w == b"meta").unwrap();
    no_meta[at..at + 4].copy_from_slice(b"free");
    assert!(matches!(check(&no_meta), Err(Rejection::Corrupt { .. })));
}
