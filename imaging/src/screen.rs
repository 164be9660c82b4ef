//! Screen sizes: the pictures between the thumbnail and the original that
//! the gallery and the viewer offer in `srcset`, so a phone or a HiDPI
//! screen gets one sharp enough for its slot without the original. Each is
//! made for the displayed original and for its flip (the flip of the
//! displayed picture is its rows reversed, so both come from one decode),
//! never larger than the original, and only where it is larger than the
//! size below it.

use super::flip::{FlipError, THUMB_LONG_SIDE, decode_with_image_crate, fit_long_side, still};
use super::flip_jpeg::{Upright, decode_at_least, encode_pair};
use super::inspect::Limits;
use super::orient::flip_rows;
use super::thumb::resize;
use super::webp_encode;
use flipstack_domain::domain::ImageFormat;

/// JPEG quality of screen sizes: no visible blocks at their size, and a
/// third of what the thumbnails' 82 costs per pixel at 1024 px and above.
const JPEG_QUALITY: u8 = 78;
/// WebP quality of screen sizes (pictures that may have alpha).
const WEBP_QUALITY: f32 = 78.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScreenSize {
    /// For grid slots on HiDPI screens and phones.
    Medium,
    /// For the viewer and the largest slots.
    Large,
}

impl ScreenSize {
    pub const ALL: [ScreenSize; 2] = [ScreenSize::Medium, ScreenSize::Large];

    pub fn long_side(self) -> u32 {
        match self {
            ScreenSize::Medium => 1024,
            ScreenSize::Large => 1600,
        }
    }

    /// As it appears in image URLs: `original-medium`, `flipped-large`.
    pub fn name(self) -> &'static str {
        match self {
            ScreenSize::Medium => "medium",
            ScreenSize::Large => "large",
        }
    }
}

/// The screen sizes a displayed `width`×`height` picture has, smallest
/// first: each larger than the thumbnail and than the size before it, so
/// none repeats another and none is larger than the original. The gallery's
/// `srcset` and the worker use this one rule.
pub fn screen_sizes(width: u32, height: u32) -> Vec<(ScreenSize, u32, u32)> {
    let mut below = fit_long_side(width, height, THUMB_LONG_SIDE);
    let mut out = Vec::new();
    for size in ScreenSize::ALL {
        let (w, h) = fit_long_side(width, height, size.long_side());
        if w.max(h) > below.0.max(below.1) {
            out.push((size, w, h));
            below = (w, h);
        }
    }
    out
}

/// What screen sizes of a `format` upload are stored as: JPEG where the
/// upload has no alpha (JPEG, and HEIC/AVIF through their JPEG views),
/// lossy WebP with alpha for the rest.
pub fn screen_format(format: ImageFormat) -> ImageFormat {
    match format {
        ImageFormat::Jpeg | ImageFormat::Heic | ImageFormat::Avif => ImageFormat::Jpeg,
        ImageFormat::Png | ImageFormat::Gif | ImageFormat::Webp => ImageFormat::Webp,
    }
}

/// Screen sizes are made from the upload itself, except for HEIC and AVIF,
/// whose JPEG view (already decoded once, and fast to decode scaled) is the
/// source: `true` when `format` takes its view.
pub fn made_from_view(format: ImageFormat) -> bool {
    super::display_format(format).is_some()
}

/// One screen size of the original and of the flip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScreenPicture {
    pub size: ScreenSize,
    pub width: u32,
    pub height: u32,
    pub original: Vec<u8>,
    pub flipped: Vec<u8>,
}

/// Every screen size of an upload in `format`, from `input`: the upload, or
/// for HEIC/AVIF its JPEG view ([`made_from_view`]). Empty for a picture no
/// larger than its thumbnail.
pub fn screen_pictures(input: &[u8], format: ImageFormat, limits: &Limits) -> Result<Vec<ScreenPicture>, FlipError> {
    let source_format = if made_from_view(format) { ImageFormat::Jpeg } else { format };
    let input = &*still(input, source_format, limits);
    if source_format == ImageFormat::Jpeg {
        // libjpeg-turbo's DCT scaling does the first halvings.
        let largest = |w, h| fit_long_side(w, h, ScreenSize::Large.long_side());
        let up = decode_at_least(input, limits, largest)?.upright();
        let Upright { pixels, width, height, channels, flipped, display } = up;
        let mut out = Vec::new();
        for (size, w, h) in screen_sizes(display.0, display.1) {
            let px = resize(&pixels, width as usize, height as usize, channels, w as usize, h as usize)
                .map_err(FlipError::Internal)?;
            let (original, flip) = encode_pair(px, w, h, channels, flipped, JPEG_QUALITY, input)?;
            out.push(ScreenPicture { size, width: w, height: h, original, flipped: flip });
        }
        return Ok(out);
    }
    let (img, icc) = decode_with_image_crate(input, format, limits)?;
    let (width, height) = (img.width(), img.height());
    let rgba = img.into_rgba8();
    let mut out = Vec::new();
    for (size, w, h) in screen_sizes(width, height) {
        let mut px = resize(rgba.as_raw(), width as usize, height as usize, 4, w as usize, h as usize)
            .map_err(FlipError::Internal)?;
        let webp = |px: &[u8]| webp_encode::encode(px, w, h, Some(WEBP_QUALITY), icc.as_deref());
        let original = webp(&px).map_err(FlipError::Internal)?;
        flip_rows(&mut px, w as usize * 4);
        let flipped = webp(&px).map_err(FlipError::Internal)?;
        out.push(ScreenPicture { size, width: w, height: h, original, flipped });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_grow_and_never_pass_the_original() {
        let s = screen_sizes(3264, 2448);
        assert_eq!(s, vec![(ScreenSize::Medium, 1024, 768), (ScreenSize::Large, 1600, 1200)]);
        // Between the thumbnail and the medium size: one size, the picture's own.
        assert_eq!(screen_sizes(640, 427), vec![(ScreenSize::Medium, 640, 427)]);
        // Not larger than its thumbnail: none.
        assert!(screen_sizes(451, 300).is_empty());
        assert_eq!(screen_sizes(1365, 1074), vec![(ScreenSize::Medium, 1024, 806), (ScreenSize::Large, 1365, 1074)]);
    }

    fn gradient_jpeg(w: usize, h: usize) -> Vec<u8> {
        let pixels: Vec<u8> = (0..w * h).flat_map(|i| [(i % w * 255 / w) as u8, (i / w * 255 / h) as u8, 90]).collect();
        let img = turbojpeg::Image {
            pixels: pixels.as_slice(),
            width: w,
            pitch: w * 3,
            height: h,
            format: turbojpeg::PixelFormat::RGB,
        };
        turbojpeg::compress(img, 90, turbojpeg::Subsamp::Sub2x2).unwrap().to_vec()
    }

    #[test]
    fn a_jpeg_gets_both_sizes_of_itself_and_of_its_flip() {
        let jpeg = gradient_jpeg(2000, 1500);
        let limits = Limits::new(50_000_000, 10);
        let made = screen_pictures(&jpeg, ImageFormat::Jpeg, &limits).unwrap();
        let sizes: Vec<_> = made.iter().map(|p| (p.size, p.width, p.height)).collect();
        assert_eq!(sizes, screen_sizes(2000, 1500));
        for p in &made {
            let o = turbojpeg::decompress(&p.original, turbojpeg::PixelFormat::GRAY).unwrap();
            let f = turbojpeg::decompress(&p.flipped, turbojpeg::PixelFormat::GRAY).unwrap();
            assert_eq!((o.width as u32, o.height as u32), (p.width, p.height));
            // Top to bottom: the flip's first row is the original's last.
            let row = |img: &turbojpeg::Image<Vec<u8>>, y: usize| -> f64 {
                img.pixels[y * img.pitch..y * img.pitch + img.width].iter().map(|&v| v as f64).sum::<f64>()
                    / img.width as f64
            };
            let last = o.height - 1;
            assert!((row(&o, 0) - row(&f, last)).abs() < 3.0 && (row(&o, last) - row(&f, 0)).abs() < 3.0);
            assert!(row(&o, last) - row(&o, 0) > 50.0, "the gradient runs down the original");
        }
    }
}
