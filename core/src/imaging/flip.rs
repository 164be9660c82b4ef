//! The worker's flip: a vertical flip (top row becomes bottom row) of the
//! picture as it is displayed, so EXIF orientation is applied first. The
//! output has the input's format; alpha is kept; every frame of an animated
//! GIF is flipped exactly (palettes, delays and disposal kept). Decoders run
//! with limits (pixels, memory, scans, frames), so a hostile file fails its
//! job instead of the worker.

use std::io::Cursor;

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::codecs::webp::WebPEncoder;
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageReader};

use super::exif;
use super::inspect::Limits;
use super::tj::TjDecoder;
use crate::domain::ImageFormat;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flipped {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// How it was made: `jpeg-reencode`, `png`, `webp-lossless`, `gif-frames`.
    pub method: &'static str,
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

pub fn flip(input: &[u8], format: ImageFormat, limits: &Limits) -> Result<Flipped, FlipError> {
    match format {
        ImageFormat::Jpeg => flip_jpeg(input, limits),
        ImageFormat::Png => flip_with_image_crate(input, image::ImageFormat::Png, limits),
        ImageFormat::Webp => flip_with_image_crate(input, image::ImageFormat::WebP, limits),
        ImageFormat::Gif => flip_gif(input, limits),
    }
}

fn unreadable(format: &str, e: impl std::fmt::Display) -> FlipError {
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

/// Decode → orient → flip → encode with libjpeg-turbo, at the source's
/// chroma subsampling.
fn flip_jpeg(input: &[u8], limits: &Limits) -> Result<Flipped, FlipError> {
    let orientation = exif::jpeg_exif(input).map(exif::orientation_lenient).unwrap_or(1);
    let mut d = TjDecoder::new(limits.max_scans, limits.max_pixels).map_err(FlipError::Internal)?;
    let header = d.header(input).map_err(|e| unreadable("JPEG", e))?;
    let gray = header.colorspace == turbojpeg::raw::TJCS_TJCS_GRAY as i32;
    let (pf, channels) =
        if gray { (turbojpeg::raw::TJPF_TJPF_GRAY as i32, 1) } else { (turbojpeg::raw::TJPF_TJPF_RGB as i32, 3) };
    let (pixels, w, h) = d.decode(input, 1, 1, pf, channels).map_err(|e| unreadable("JPEG", e))?;
    let mut img = if gray {
        DynamicImage::ImageLuma8(
            image::GrayImage::from_raw(w, h, pixels)
                .ok_or_else(|| FlipError::Internal("decoded buffer size".into()))?,
        )
    } else {
        DynamicImage::ImageRgb8(
            image::RgbImage::from_raw(w, h, pixels).ok_or_else(|| FlipError::Internal("decoded buffer size".into()))?,
        )
    };
    if let Some(o) = image::metadata::Orientation::from_exif(orientation) {
        img.apply_orientation(o);
    }
    let img = img.flipv();
    let subsamp = if gray { turbojpeg::Subsamp::Gray } else { source_subsamp(header.subsamp, orientation >= 5) };
    let (width, height) = (img.width(), img.height());
    let bytes = if gray {
        let luma = img.into_luma8();
        let image = turbojpeg::Image {
            pixels: luma.as_raw().as_slice(),
            width: width as usize,
            pitch: width as usize,
            height: height as usize,
            format: turbojpeg::PixelFormat::GRAY,
        };
        turbojpeg::compress(image, 92, subsamp)
    } else {
        let rgb = img.into_rgb8();
        let image = turbojpeg::Image {
            pixels: rgb.as_raw().as_slice(),
            width: width as usize,
            pitch: width as usize * 3,
            height: height as usize,
            format: turbojpeg::PixelFormat::RGB,
        };
        turbojpeg::compress(image, 92, subsamp)
    }
    .map_err(|e| FlipError::Internal(format!("JPEG encoding failed: {e}")))?;
    Ok(Flipped { bytes: bytes.to_vec(), width, height, method: "jpeg-reencode" })
}

/// The source's chroma subsampling, turned with the picture when EXIF turned it.
fn source_subsamp(tjsamp: i32, transposed: bool) -> turbojpeg::Subsamp {
    use turbojpeg::Subsamp::*;
    let s = match tjsamp {
        0 => None,
        1 => Sub2x1,
        2 => Sub2x2,
        4 => Sub1x2,
        5 => Sub4x1,
        6 => Sub1x4,
        _ => Sub2x2,
    };
    if !transposed {
        return s;
    }
    match s {
        Sub2x1 => Sub1x2,
        Sub1x2 => Sub2x1,
        Sub4x1 => Sub1x4,
        Sub1x4 => Sub4x1,
        other => other,
    }
}

fn flip_with_image_crate(input: &[u8], format: image::ImageFormat, limits: &Limits) -> Result<Flipped, FlipError> {
    let name = if format == image::ImageFormat::Png { "PNG" } else { "WebP" };
    let mut reader = ImageReader::with_format(Cursor::new(input), format);
    reader.limits(image_limits(limits));
    let mut decoder = reader.into_decoder().map_err(|e| unreadable(name, e))?;
    let (w, h) = decoder.dimensions();
    if w as u64 * h as u64 > limits.max_pixels {
        return Err(FlipError::Unreadable(format!("the {name} picture is {w}×{h}, over the pixel limit")));
    }
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let icc = decoder.icc_profile().ok().flatten();
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| unreadable(name, e))?;
    img.apply_orientation(orientation);
    let img = img.flipv();
    let (width, height) = (img.width(), img.height());
    let mut out = Vec::new();
    let method = if format == image::ImageFormat::Png {
        let mut enc = PngEncoder::new_with_quality(&mut out, CompressionType::Default, FilterType::Adaptive);
        if let Some(icc) = icc {
            let _ = enc.set_icc_profile(icc);
        }
        enc.write_image(img.as_bytes(), width, height, img.color().into())
            .map_err(|e| FlipError::Internal(format!("PNG encoding failed: {e}")))?;
        "png"
    } else {
        // image-webp encodes losslessly only: the flipped picture is pixel-exact,
        // at the cost of a larger file than a lossy source.
        let img = if img.color().has_alpha() {
            DynamicImage::ImageRgba8(img.into_rgba8())
        } else {
            DynamicImage::ImageRgb8(img.into_rgb8())
        };
        let mut enc = WebPEncoder::new_lossless(&mut out);
        if let Some(icc) = icc {
            let _ = enc.set_icc_profile(icc);
        }
        enc.write_image(img.as_bytes(), width, height, img.color().into())
            .map_err(|e| FlipError::Internal(format!("WebP encoding failed: {e}")))?;
        "webp-lossless"
    };
    Ok(Flipped { bytes: out, width, height, method })
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
        loop {
            let Some(frame) = decoder.read_next_frame().map_err(|e| unreadable("GIF", e))? else {
                break;
            };
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
