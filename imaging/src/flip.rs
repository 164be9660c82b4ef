//! The worker's flip: a vertical flip (top row becomes bottom row) of the
//! picture as it is displayed. The output has the input's format. JPEG goes
//! through libjpeg-turbo ([`super::flip_jpeg`]: lossless where possible);
//! PNG and WebP are decoded by the `image` crate, PNG re-encoded by it and
//! WebP by libwebp ([`super::webp_encode`]: lossy stays lossy at the source's
//! quality, lossless stays lossless), alpha and ICC kept; every
//! frame of an animated GIF is flipped exactly (palettes, delays and
//! disposal kept). The worker also gets thumbnails of the original and of
//! the flip. Decoders run with limits (pixels, memory, scans, frames), so a
//! hostile file fails its job instead of the worker.

use std::borrow::Cow;
use std::io::Cursor;

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::imageops::FilterType as Resample;
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageReader};

use super::decode::displayed_orientation;
use super::inspect::{Limits, still_picture};
use super::webp_encode::{self, Bitstream};
use super::{flip_heif, flip_jpeg};
use flipstack_domain::domain::ImageFormat;

/// Thumbnails are this many pixels on their long side (never enlarged).
pub const THUMB_LONG_SIDE: u32 = 480;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flipped {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// How it was made: `jpeg-lossless-vflip`, `jpeg-lossless-hflip`,
    /// `jpeg-lossless-transpose`, `jpeg-reencode-yuv`, `jpeg-reencode`,
    /// `png`, `webp-lossy`, `webp-lossless`, `gif-frames`.
    pub method: &'static str,
}

/// Thumbnails of the displayed picture and of its flip (one size for both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbnails {
    pub original: Vec<u8>,
    pub flipped: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// What they are encoded as: [`thumbnail_format`] of the upload's format.
    pub format: ImageFormat,
}

/// Full-size pictures a browser shows, for uploads in formats browsers do
/// not all show (HEIC, AVIF): the displayed original and the flip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Display {
    pub original: Vec<u8>,
    pub flipped: Vec<u8>,
    /// What they are encoded as: [`display_format`] of the upload's format.
    pub format: ImageFormat,
}

/// The flip and, when they could be made, the thumbnails (and, for HEIC
/// and AVIF, the gallery's derivatives).
#[derive(Debug)]
pub struct Processed {
    pub flipped: Flipped,
    pub thumbnails: Result<Thumbnails, FlipError>,
    pub display: Option<Display>,
}

/// The format of the gallery's derivatives of a `format` upload, when it
/// has them: JPEG for HEIC and AVIF, which not every browser shows.
pub fn display_format(format: ImageFormat) -> Option<ImageFormat> {
    match format {
        ImageFormat::Heic | ImageFormat::Avif => Some(ImageFormat::Jpeg),
        _ => None,
    }
}

/// The format the flip of a `format` upload is stored in: the upload's own,
/// or JPEG for HEIC/AVIF when this libheif has no encoder for it.
pub fn flipped_format(format: ImageFormat) -> ImageFormat {
    flip_heif::flipped_format(format)
}

/// The format thumbnails of an upload are stored in: JPEG stays JPEG; the
/// others become PNG (alpha kept; a GIF's thumbnail is its first frame).
pub fn thumbnail_format(format: ImageFormat) -> ImageFormat {
    match format {
        ImageFormat::Jpeg | ImageFormat::Heic | ImageFormat::Avif => ImageFormat::Jpeg,
        ImageFormat::Png | ImageFormat::Gif | ImageFormat::Webp => ImageFormat::Png,
    }
}

/// The thumbnail size for a displayed `width`×`height` picture.
pub(crate) fn thumb_size(width: u32, height: u32) -> (u32, u32) {
    fit_long_side(width, height, THUMB_LONG_SIDE)
}

/// A `width`×`height` picture scaled to `long_side` pixels on its long
/// side, never enlarged.
pub fn fit_long_side(width: u32, height: u32, long_side: u32) -> (u32, u32) {
    let long = width.max(height).max(1);
    if long <= long_side {
        return (width.max(1), height.max(1));
    }
    let scale = |d: u32| ((d as u64 * long_side as u64 + long as u64 / 2) / long as u64).max(1) as u32;
    (scale(width), scale(height))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlipError {
    /// The picture cannot be flipped, now or later; the reason is for its owner.
    #[error("{0}")]
    Unreadable(String),
    /// Something on this machine went wrong; another attempt may succeed.
    #[error("{0}")]
    Internal(String),
}

/// The still picture the worker works on: for a JPEG, the file without
/// what follows the picture (MPF pictures, a motion photo's video), skipped
/// segments and unusable EXIF (see [`still_picture`]). A file the upload
/// check would refuse is left as it is: the decoders' limits still hold.
pub(crate) fn still<'a>(input: &'a [u8], format: ImageFormat, limits: &Limits) -> Cow<'a, [u8]> {
    if format != ImageFormat::Jpeg {
        return Cow::Borrowed(input);
    }
    match still_picture(input, limits) {
        Ok((_, still)) => still,
        Err(_) => Cow::Borrowed(input),
    }
}

pub fn flip(input: &[u8], format: ImageFormat, limits: &Limits) -> Result<Flipped, FlipError> {
    let input = &*still(input, format, limits);
    match format {
        ImageFormat::Jpeg => flip_jpeg::flip_jpeg(input, limits),
        ImageFormat::Png | ImageFormat::Webp => {
            let (img, icc) = decode_with_image_crate(input, format, limits)?;
            encode_flipped(img.flipv(), icc, format, input)
        }
        ImageFormat::Gif => flip_gif(input, limits),
        ImageFormat::Heic | ImageFormat::Avif => flip_heif::flip_heif(input, format, limits).map(|(f, _, _)| f),
    }
}

/// The flip and both thumbnails, decoding the picture once where the
/// format allows. A thumbnail failure does not fail the flip.
pub fn flip_with_thumbnails(input: &[u8], format: ImageFormat, limits: &Limits) -> Result<Processed, FlipError> {
    let input = &*still(input, format, limits);
    match format {
        ImageFormat::Png | ImageFormat::Webp => {
            let (img, icc) = decode_with_image_crate(input, format, limits)?;
            let thumbnails = image_thumbnails(&img, icc.clone());
            let flipped = encode_flipped(img.flipv(), icc, format, input)?;
            Ok(Processed { flipped, thumbnails, display: None })
        }
        ImageFormat::Jpeg => {
            let (flipped, thumbnails) = flip_jpeg::flip_jpeg_with_thumbnails(input, limits)?;
            Ok(Processed { flipped, thumbnails, display: None })
        }
        ImageFormat::Gif => {
            let flipped = flip(input, format, limits)?;
            Ok(Processed { flipped, thumbnails: thumbnails(input, format, limits), display: None })
        }
        ImageFormat::Heic | ImageFormat::Avif => {
            let (flipped, display, thumbnails) = flip_heif::flip_heif(input, format, limits)?;
            Ok(Processed { flipped, thumbnails, display: Some(display) })
        }
    }
}

/// Thumbnails alone (about [`THUMB_LONG_SIDE`] pixels on the long side).
pub fn thumbnails(input: &[u8], format: ImageFormat, limits: &Limits) -> Result<Thumbnails, FlipError> {
    let input = &*still(input, format, limits);
    match format {
        ImageFormat::Jpeg => flip_jpeg::thumbnails(input, limits),
        ImageFormat::Png | ImageFormat::Webp => {
            let (img, icc) = decode_with_image_crate(input, format, limits)?;
            image_thumbnails(&img, icc)
        }
        ImageFormat::Gif => {
            // The first frame, composited on the canvas.
            let (img, _) = decode_with_image_crate(input, format, limits)?;
            image_thumbnails(&img, None)
        }
        ImageFormat::Heic | ImageFormat::Avif => flip_heif::flip_heif(input, format, limits).and_then(|(_, _, t)| t),
    }
}

pub(crate) fn unreadable(format: &str, e: impl std::fmt::Display) -> FlipError {
    FlipError::Unreadable(format!("the {format} picture could not be decoded: {e}"))
}

fn image_limits(limits: &Limits) -> image::Limits {
    let mut l = image::Limits::default();
    l.max_image_width = Some(65_535);
    l.max_image_height = Some(65_535);
    // Room for the picture at 16 bits × 4 channels plus its flipped copy.
    l.max_alloc = Some(limits.max_pixels.saturating_mul(16));
    l
}

fn image_format(format: ImageFormat) -> (image::ImageFormat, &'static str) {
    match format {
        ImageFormat::Png => (image::ImageFormat::Png, "PNG"),
        ImageFormat::Gif => (image::ImageFormat::Gif, "GIF"),
        ImageFormat::Webp | ImageFormat::Jpeg | ImageFormat::Heic | ImageFormat::Avif => {
            (image::ImageFormat::WebP, "WebP")
        }
    }
}

/// Decodes with the `image` crate under the limits, orientation applied;
/// returns the picture as displayed and its ICC profile.
pub(crate) fn decode_with_image_crate(
    input: &[u8],
    format: ImageFormat,
    limits: &Limits,
) -> Result<(DynamicImage, Option<Vec<u8>>), FlipError> {
    let (format, name) = image_format(format);
    let mut reader = ImageReader::with_format(Cursor::new(input), format);
    reader.limits(image_limits(limits));
    let mut decoder = reader.into_decoder().map_err(|e| unreadable(name, e))?;
    let (w, h) = decoder.dimensions();
    if w as u64 * h as u64 > limits.max_pixels {
        return Err(FlipError::Unreadable(format!("the {name} picture is {w}×{h}, over the pixel limit")));
    }
    let orientation = displayed_orientation(&mut decoder);
    let icc = decoder.icc_profile().ok().flatten();
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| unreadable(name, e))?;
    img.apply_orientation(orientation);
    Ok((img, icc))
}

/// When a lossy WebP's quantisers cannot be read: libwebp's default.
const FALLBACK_WEBP_QUALITY: f32 = 75.0;
/// Added to the quality read from a lossy WebP: the reading is within a few
/// points, and a flip is better a little larger than a little worse.
const WEBP_QUALITY_MARGIN: f32 = 2.0;

fn encode_flipped(
    img: DynamicImage,
    icc: Option<Vec<u8>>,
    format: ImageFormat,
    source: &[u8],
) -> Result<Flipped, FlipError> {
    let (width, height) = (img.width(), img.height());
    let mut out = Vec::new();
    let method = if format == ImageFormat::Png {
        let mut enc = PngEncoder::new_with_quality(&mut out, CompressionType::Default, FilterType::Adaptive);
        if let Some(icc) = icc {
            let _ = enc.set_icc_profile(icc);
        }
        enc.write_image(img.as_bytes(), width, height, img.color().into())
            .map_err(|e| FlipError::Internal(format!("PNG encoding failed: {e}")))?;
        "png"
    } else {
        let quality = match webp_encode::bitstream(source) {
            Some(Bitstream::Lossy(q)) => {
                Some(q.map_or(FALLBACK_WEBP_QUALITY, |q| (q + WEBP_QUALITY_MARGIN).min(100.0)))
            }
            _ => None,
        };
        let rgba = img.into_rgba8();
        out =
            webp_encode::encode(rgba.as_raw(), width, height, quality, icc.as_deref()).map_err(FlipError::Internal)?;
        if quality.is_some() { "webp-lossy" } else { "webp-lossless" }
    };
    Ok(Flipped { bytes: out, width, height, method })
}

/// PNG thumbnails (alpha kept) of a decoded, displayed picture.
fn image_thumbnails(img: &DynamicImage, icc: Option<Vec<u8>>) -> Result<Thumbnails, FlipError> {
    let (tw, th) = thumb_size(img.width(), img.height());
    // 8 bits per channel is plenty for a preview; 16-bit PNGs are halved.
    let small = if img.color().has_alpha() {
        DynamicImage::ImageRgba8(img.resize_exact(tw, th, Resample::CatmullRom).into_rgba8())
    } else {
        DynamicImage::ImageRgb8(img.resize_exact(tw, th, Resample::CatmullRom).into_rgb8())
    };
    let png = |img: &DynamicImage| -> Result<Vec<u8>, FlipError> {
        let mut out = Vec::new();
        let mut enc = PngEncoder::new_with_quality(&mut out, CompressionType::Default, FilterType::Adaptive);
        if let Some(icc) = icc.clone() {
            let _ = enc.set_icc_profile(icc);
        }
        enc.write_image(img.as_bytes(), tw, th, img.color().into())
            .map_err(|e| FlipError::Internal(format!("PNG thumbnail encoding failed: {e}")))?;
        Ok(out)
    };
    Ok(Thumbnails {
        original: png(&small)?,
        flipped: png(&small.flipv())?,
        width: tw,
        height: th,
        format: ImageFormat::Png,
    })
}

/// Flips every frame in its palette indices and mirrors its position on the
/// canvas: exact, with palettes, transparency, delays and disposal untouched.
fn flip_gif(input: &[u8], limits: &Limits) -> Result<Flipped, FlipError> {
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::Indexed);
    let budget = std::num::NonZeroU64::new(limits.max_pixels.saturating_mul(4).max(1)).expect("non-zero");
    opts.set_memory_limit(gif::MemoryLimit::Bytes(budget));
    let mut decoder = opts.read_info(Cursor::new(input)).map_err(|e| unreadable("GIF", e))?;
    let (w, h) = (decoder.width(), decoder.height());
    if w as u64 * h as u64 > limits.max_pixels {
        return Err(FlipError::Unreadable(format!("the GIF canvas is {w}×{h}, over the pixel limit")));
    }
    let palette = decoder.global_palette().map(<[u8]>::to_vec).unwrap_or_default();
    let mut out = Vec::new();
    {
        let mut encoder =
            gif::Encoder::new(&mut out, w, h, &palette).map_err(|e| FlipError::Internal(e.to_string()))?;
        let mut frames = 0u32;
        while let Some(frame) = decoder.read_next_frame().map_err(|e| unreadable("GIF", e))? {
            let mut f = frame.clone();
            frames += 1;
            if frames > limits.max_frames || frames as u64 * w as u64 * h as u64 > limits.max_total_pixels {
                return Err(FlipError::Unreadable(format!("the animation has more than {} frames", frames - 1)));
            }
            if frames == 1 {
                // The loop count is read with the first frame's extensions.
                encoder.set_repeat(decoder.repeat()).map_err(|e| FlipError::Internal(e.to_string()))?;
            }
            let fw = f.width as usize;
            let flipped: Vec<u8> = f.buffer.chunks(fw.max(1)).rev().flatten().copied().collect();
            f.buffer = flipped.into();
            f.top = h.saturating_sub(f.top.saturating_add(f.height));
            f.interlaced = false;
            encoder.write_frame(&f).map_err(|e| FlipError::Internal(e.to_string()))?;
        }
        if frames == 0 {
            return Err(FlipError::Unreadable("the GIF has no frames".into()));
        }
    }
    Ok(Flipped { bytes: out, width: w as u32, height: h as u32, method: "gif-frames" })
}
