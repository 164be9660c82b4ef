//! The HEIC/AVIF flip: libheif decodes the primary picture with the
//! container's rotation and mirroring applied (`irot`, `imir`); EXIF
//! orientation is applied only when the container has neither (the HEIF
//! rule: the container's transforms win, and cameras that write both write
//! the same turn twice). The displayed picture is flipped and written in
//! the original's format where libheif has an encoder for it, else as JPEG;
//! browsers show neither HEIC nor (everywhere) AVIF, so JPEG derivatives of
//! the original and of the flip are made for the gallery, with thumbnails.

use super::flip::{Display, FlipError, Flipped, Thumbnails, thumb_size};
use super::heif::{self, Codec, Decoded};
use super::inspect::{Limits, still_picture};
use super::orient::{Turn, flip_rows, turn_pixels};
use super::thumb::{box_down, resize};
use super::tj::TjEncoder;
use super::{exif, jpeg};
use flipstack_domain::domain::ImageFormat;
use turbojpeg::raw;

/// libheif's quality for the flipped HEIC/AVIF (its scale, 0–100).
const HEIF_QUALITY: u8 = 80;
/// The gallery's JPEG derivatives (and the flip, where no encoder exists).
const DISPLAY_QUALITY: u8 = 90;
const THUMB_QUALITY: u8 = 82;

pub(crate) fn codec(format: ImageFormat) -> Option<Codec> {
    match format {
        ImageFormat::Heic => Some(Codec::Hevc),
        ImageFormat::Avif => Some(Codec::Av1),
        _ => None,
    }
}

/// The format the flip of a `format` picture is written in.
pub fn flipped_format(format: ImageFormat) -> ImageFormat {
    match codec(format) {
        Some(c) if heif::can_encode(c) => format,
        Some(_) => ImageFormat::Jpeg,
        None => format,
    }
}

/// The picture as displayed: decoded, container transforms applied by
/// libheif, EXIF orientation when the container has no transforms.
pub fn decode_displayed(input: &[u8], limits: &Limits) -> Result<Decoded, FlipError> {
    let container_turn = still_picture(input, limits).map(|(i, _)| i.orientation).unwrap_or(1);
    let mut d = heif::decode(input, limits.max_pixels)
        .map_err(|e| FlipError::Unreadable(format!("the picture could not be decoded: {e}")))?;
    let exif_o = d.exif.as_deref().map(exif::orientation_lenient).unwrap_or(1);
    if container_turn == 1 && exif_o != 1 {
        let (px, w, h) = turn_pixels(&d.pixels, d.width, d.height, d.channels, Turn::from_exif(exif_o));
        (d.pixels, d.width, d.height) = (px, w, h);
    }
    Ok(d)
}

fn jpeg_of(
    pixels: &[u8],
    width: u32,
    height: u32,
    channels: usize,
    quality: u8,
    icc: Option<&[u8]>,
) -> Result<Vec<u8>, FlipError> {
    let pf = if channels == 4 { raw::TJPF_TJPF_RGBA } else { raw::TJPF_TJPF_RGB };
    let mut e =
        TjEncoder::new(quality, raw::TJSAMP_TJSAMP_420, raw::TJCS_TJCS_YCbCr as i32).map_err(FlipError::Internal)?;
    let bytes = e.compress(pixels, width, height, pf, channels).map_err(FlipError::Internal)?;
    Ok(match icc {
        Some(icc) => jpeg::insert_segments(bytes, &jpeg::icc_segments(icc)),
        None => bytes,
    })
}

/// The flip, the gallery's derivatives and the thumbnails.
pub fn flip_heif(
    input: &[u8],
    format: ImageFormat,
    limits: &Limits,
) -> Result<(Flipped, Display, Result<Thumbnails, FlipError>), FlipError> {
    let d = decode_displayed(input, limits)?;
    let (w, h, ch) = (d.width, d.height, d.channels);
    let icc = d.icc.as_deref();
    let original_view = jpeg_of(&d.pixels, w, h, ch, DISPLAY_QUALITY, icc)?;
    let thumbs = thumbnails(&d);
    let mut flipped_px = d.pixels;
    flip_rows(&mut flipped_px, w as usize * ch);
    let flipped_view = jpeg_of(&flipped_px, w, h, ch, DISPLAY_QUALITY, icc)?;
    let (bytes, method) = match codec(format).filter(|c| heif::can_encode(*c)) {
        Some(c) => {
            // The pixels are upright now: the EXIF block says so, or goes.
            let exif = d.exif.and_then(|mut t| exif::rewrite_orientation(&mut t, 1, false).ok().map(|_| t));
            let bytes = heif::encode(&heif::Encode {
                pixels: &flipped_px,
                width: w,
                height: h,
                channels: ch,
                codec: c,
                quality: HEIF_QUALITY,
                icc,
                exif: exif.as_deref(),
                orientation: 1,
            })
            .map_err(FlipError::Internal)?;
            (bytes, if c == Codec::Hevc { "heic-x265" } else { "avif-aom" })
        }
        None => (flipped_view.clone(), "heif-to-jpeg"),
    };
    let display = Display { original: original_view, flipped: flipped_view, format: ImageFormat::Jpeg };
    Ok((Flipped { bytes, width: w, height: h, method }, display, thumbs))
}

fn thumbnails(d: &Decoded) -> Result<Thumbnails, FlipError> {
    let (tw, th) = thumb_size(d.width, d.height);
    let f = (d.width.max(d.height) / tw.max(th).max(1)).max(1) as usize;
    let small = box_down(&d.pixels, d.width as usize, d.height as usize, d.channels, f, f);
    let mut a = resize(&small.data, small.width, small.height, d.channels, tw as usize, th as usize)
        .map_err(FlipError::Internal)?;
    let original = jpeg_of(&a, tw, th, d.channels, THUMB_QUALITY, d.icc.as_deref())?;
    flip_rows(&mut a, tw as usize * d.channels);
    let flipped = jpeg_of(&a, tw, th, d.channels, THUMB_QUALITY, d.icc.as_deref())?;
    Ok(Thumbnails { original, flipped, width: tw, height: th, format: ImageFormat::Jpeg })
}
