//! The JPEG flip, through libjpeg-turbo only.
//!
//! 1. Lossless, in the DCT domain, when libjpeg-turbo can do it perfectly
//!    (no edge blocks dropped or left unflipped). The flip is of the picture
//!    *as displayed*: with EXIF orientation `D`, the stored pixels get
//!    `D⁻¹ ∘ V ∘ D` and the tag is kept (a vertical flip for orientations
//!    1–4, a horizontal one for 5–8). When that is imperfect but the file
//!    already relies on its orientation tag, the stored pixels are transposed
//!    (always perfect) and the tag rewritten to match.
//! 2. Otherwise decode → flip → encode, at the source's chroma subsampling
//!    and at the quality its quantisation tables show; upright pictures go
//!    through YUV planes (no colour conversion, no chroma resampling).
//!    EXIF (orientation set to 1 when the pixels were turned), ICC, XMP and
//!    comments are carried over.
//!
//! Both read the file under the upload limits (pixels, scans, warnings are
//! errors).

use turbojpeg::raw;

use super::flip::{FlipError, Flipped, Thumbnails, thumb_size, unreadable};
use super::inspect::Limits;
use super::orient::{Turn, flip_rows, turn_pixels};
use super::tj::{TjDecoder, TjEncoder, TjTransformer, TransformError};
use super::{exif, jpeg};
use crate::domain::ImageFormat;

/// Quality of JPEG thumbnails: small files, no visible blocks at 480 px.
const THUMB_QUALITY: u8 = 82;
/// When the tables say nothing usable.
const FALLBACK_QUALITY: u8 = 92;

fn orientation(input: &[u8]) -> u8 {
    exif::jpeg_exif(input).map(exif::orientation_lenient).unwrap_or(1)
}

fn internal(e: String) -> FlipError {
    FlipError::Internal(e)
}

/// Lossless if a perfect transform exists, else re-encoded.
pub fn flip_jpeg(input: &[u8], limits: &Limits) -> Result<Flipped, FlipError> {
    match lossless(input, limits)? {
        Some(f) => Ok(f),
        None => reencode(input, limits),
    }
}

/// The lossless flip, or `None` when no perfect transform gives it.
pub fn lossless(input: &[u8], limits: &Limits) -> Result<Option<Flipped>, FlipError> {
    let frame = jpeg::frame(input).ok_or_else(|| unreadable("JPEG", "its frame header could not be read"))?;
    let o = orientation(input);
    let shown = Turn::from_exif(o);
    let (mw, mh) = frame.imcu();
    let (w, h) = (frame.width, frame.height);
    let (dw, dh) = if shown.transposes() { (h, w) } else { (w, h) };
    let mut t = TjTransformer::new(limits.max_scans, limits.max_pixels).map_err(internal)?;

    // The stored-pixel turn that flips the displayed picture, tag kept.
    let keep = shown.inverse().after(Turn::VFLIP).after(shown);
    if keep.is_perfect(w, h, mw, mh) {
        match t.transform(input, keep.tjxop(), frame.progressive) {
            Ok(bytes) => {
                let method = if keep == Turn::VFLIP { "jpeg-lossless-vflip" } else { "jpeg-lossless-hflip" };
                return Ok(Some(Flipped { bytes, width: dw, height: dh, method }));
            }
            Err(TransformError::NotPerfect) => {}
            Err(TransformError::Failed(e)) => return Err(unreadable("JPEG", e)),
        }
    }
    // The file already depends on viewers honouring its tag, so a new tag
    // asks nothing more of them: transpose (always perfect) and retag so
    // that `new ∘ transpose = V ∘ shown`.
    if o != 1 {
        let new_tag = Turn::VFLIP.after(shown).after(Turn::TRANSPOSE.inverse());
        match t.transform(input, Turn::TRANSPOSE.tjxop(), frame.progressive) {
            Ok(mut bytes) => {
                let rewritten = jpeg::exif_tiff_mut(&mut bytes)
                    .map(|tiff| exif::rewrite_orientation(tiff, new_tag.exif(), true).is_ok())
                    .unwrap_or(false);
                if rewritten {
                    return Ok(Some(Flipped { bytes, width: dw, height: dh, method: "jpeg-lossless-transpose" }));
                }
            }
            Err(TransformError::NotPerfect) => {}
            Err(TransformError::Failed(e)) => return Err(unreadable("JPEG", e)),
        }
    }
    Ok(None)
}

/// TJSAMP_* → how many luma rows share a chroma row.
fn vertical_subsampling(subsamp: i32) -> u32 {
    match subsamp {
        2 | 4 => 2,
        6 => 4,
        _ => 1,
    }
}

/// The source's subsampling, turned with the picture when it was transposed.
fn turned_subsamp(subsamp: i32, transposed: bool) -> i32 {
    let s = if subsamp < 0 { raw::TJSAMP_TJSAMP_420 as i32 } else { subsamp };
    if !transposed {
        return s;
    }
    match s {
        1 => 4, // 4:2:2 ↔ 4:4:0
        4 => 1,
        5 => 6, // 4:1:1 ↔ 4:4:1
        6 => 5,
        other => other,
    }
}

/// Decode → flip → encode with libjpeg-turbo.
pub fn reencode(input: &[u8], limits: &Limits) -> Result<Flipped, FlipError> {
    let o = orientation(input);
    let turn = Turn::VFLIP.after(Turn::from_exif(o));
    let quality = jpeg::estimate_quality(input).unwrap_or(FALLBACK_QUALITY);
    let mut d = TjDecoder::new(limits.max_scans, limits.max_pixels).map_err(internal)?;
    let header = d.header(input).map_err(|e| unreadable("JPEG", e))?;
    let gray = header.colorspace == raw::TJCS_TJCS_GRAY as i32;
    let cmyk = header.colorspace == raw::TJCS_TJCS_CMYK as i32 || header.colorspace == raw::TJCS_TJCS_YCCK as i32;
    let ycc = header.colorspace == raw::TJCS_TJCS_YCbCr as i32;

    let (bytes, width, height, method) = if o == 1
        && (gray || ycc)
        && header.subsamp >= 0
        && header.height % vertical_subsampling(header.subsamp) == 0
    {
        // Rows of every plane line up with whole chroma rows: flipping the
        // planes is exact.
        let mut yuv = d.decode_yuv(input).map_err(|e| unreadable("JPEG", e))?;
        for (plane, &w) in yuv.planes.iter_mut().zip(&yuv.widths) {
            flip_rows(plane, w);
        }
        let cs = if gray { raw::TJCS_TJCS_GRAY } else { raw::TJCS_TJCS_YCbCr };
        let mut e = TjEncoder::new(quality, header.subsamp, cs as i32).map_err(internal)?;
        set_density(&mut e, input, false)?;
        let bytes = e.compress_yuv(&yuv).map_err(internal)?;
        (bytes, yuv.width, yuv.height, "jpeg-reencode-yuv")
    } else {
        let (pf, channels, cs) = if gray {
            (raw::TJPF_TJPF_GRAY, 1, raw::TJCS_TJCS_GRAY as i32)
        } else if cmyk {
            (raw::TJPF_TJPF_CMYK, 4, header.colorspace)
        } else {
            (raw::TJPF_TJPF_RGB, 3, raw::TJCS_TJCS_YCbCr as i32)
        };
        // Upright: the decoder writes the rows last first, which is the flip.
        d.set_bottom_up(o == 1).map_err(internal)?;
        let (pixels, w, h) = d.decode(input, 1, 1, pf as i32, channels).map_err(|e| unreadable("JPEG", e))?;
        let (pixels, w, h) = if o == 1 { (pixels, w, h) } else { turn_pixels(&pixels, w, h, channels, turn) };
        let subsamp =
            if gray { raw::TJSAMP_TJSAMP_GRAY as i32 } else { turned_subsamp(header.subsamp, turn.transposes()) };
        let mut e = TjEncoder::new(quality, subsamp, cs).map_err(internal)?;
        set_density(&mut e, input, turn.transposes())?;
        let bytes = e.compress(&pixels, w, h, pf as i32, channels).map_err(internal)?;
        (bytes, w, h, "jpeg-reencode")
    };

    let mut extra = jpeg::metadata_segments(input);
    if o != 1 {
        // The pixels are upright now: say so.
        for seg in extra.iter_mut() {
            // marker (2), length (2), "Exif\0\0" (6), then the TIFF data.
            if seg.get(1) == Some(&0xE1) && seg.get(4..10) == Some(b"Exif\0\0") {
                // An unusable block is carried as it is: the worker read it
                // as upright too.
                let _ = exif::rewrite_orientation(&mut seg[10..], 1, turn.transposes());
            }
        }
    }
    Ok(Flipped { bytes: jpeg::insert_segments(bytes, &extra), width, height, method })
}

fn set_density(e: &mut TjEncoder, input: &[u8], transposed: bool) -> Result<(), FlipError> {
    if let Some((units, x, y)) = jpeg::jfif_density(input) {
        let (x, y) = if transposed { (y, x) } else { (x, y) };
        e.set_density(units, x, y).map_err(internal)?;
    }
    Ok(())
}

/// Thumbnails of the displayed picture and of its flip, from one scaled
/// decode (libjpeg-turbo's DCT scaling does most of the shrinking).
pub fn thumbnails(input: &[u8], limits: &Limits) -> Result<Thumbnails, FlipError> {
    let o = orientation(input);
    let shown = Turn::from_exif(o);
    let mut d = TjDecoder::new(limits.max_scans, limits.max_pixels).map_err(internal)?;
    let header = d.header(input).map_err(|e| unreadable("JPEG", e))?;
    let (dw, dh) = if shown.transposes() { (header.height, header.width) } else { (header.width, header.height) };
    let (tw, th) = thumb_size(dw, dh);
    // The smallest of 1/8, 1/4, 1/2, 1 that is still at least the thumbnail.
    let long = header.width.max(header.height) as u64;
    let target = tw.max(th) as u64;
    let k = [1u64, 2, 4, 8].into_iter().find(|k| (long * k).div_ceil(8) >= target).unwrap_or(8);
    let gray = header.colorspace == raw::TJCS_TJCS_GRAY as i32;
    let cmyk = header.colorspace == raw::TJCS_TJCS_CMYK as i32 || header.colorspace == raw::TJCS_TJCS_YCCK as i32;
    // libjpeg-turbo wants the fraction in lowest terms: 1/8, 1/4, 1/2, 1/1.
    let (num, denom) = (1, 8 / k as i32);
    let (pixels, w, h, channels) = if gray {
        let (p, w, h) =
            d.decode(input, num, denom, raw::TJPF_TJPF_GRAY as i32, 1).map_err(|e| unreadable("JPEG", e))?;
        (p, w, h, 1)
    } else if cmyk {
        let (p, w, h) =
            d.decode(input, num, denom, raw::TJPF_TJPF_CMYK as i32, 4).map_err(|e| unreadable("JPEG", e))?;
        // Adobe's inverted CMYK, roughly: enough for a preview.
        let rgb = p
            .chunks_exact(4)
            .flat_map(|c| {
                let k = c[3] as u32;
                [c[0], c[1], c[2]].map(|v| (v as u32 * k / 255) as u8)
            })
            .collect();
        (rgb, w, h, 3)
    } else {
        let (p, w, h) = d.decode(input, num, denom, raw::TJPF_TJPF_RGB as i32, 3).map_err(|e| unreadable("JPEG", e))?;
        (p, w, h, 3)
    };
    let (pixels, w, h) = turn_pixels(&pixels, w, h, channels, shown);
    let mut small = super::flip::resize_packed(&pixels, w, h, channels, tw, th)?;
    let icc = jpeg::icc_profile(input).map(|icc| jpeg::icc_segments(&icc)).unwrap_or_default();
    let (pf, subsamp, cs) = if channels == 1 {
        (raw::TJPF_TJPF_GRAY, raw::TJSAMP_TJSAMP_GRAY, raw::TJCS_TJCS_GRAY)
    } else {
        (raw::TJPF_TJPF_RGB, raw::TJSAMP_TJSAMP_420, raw::TJCS_TJCS_YCbCr)
    };
    let mut e = TjEncoder::new(THUMB_QUALITY, subsamp as i32, cs as i32).map_err(internal)?;
    let mut encode = |px: &[u8]| -> Result<Vec<u8>, FlipError> {
        let bytes = e.compress(px, tw, th, pf as i32, channels).map_err(internal)?;
        Ok(jpeg::insert_segments(bytes, &icc))
    };
    let original = encode(&small)?;
    flip_rows(&mut small, tw as usize * channels);
    let flipped = encode(&small)?;
    Ok(Thumbnails { original, flipped, width: tw, height: th, format: ImageFormat::Jpeg })
}
