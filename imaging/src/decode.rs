//! A picture decoded as it is displayed (EXIF orientation applied; for
//! HEIC/AVIF the container's rotation and mirroring), as RGBA:
//! what tests compare flips against, and a common starting point for work
//! that needs pixels rather than a file.

use super::exif;
use flipstack_domain::domain::ImageFormat;

pub fn decode_displayed(bytes: &[u8], format: ImageFormat) -> Result<image::RgbaImage, String> {
    let mut img = match format {
        ImageFormat::Jpeg => {
            let d = turbojpeg::decompress(bytes, turbojpeg::PixelFormat::RGBA).map_err(|e| e.to_string())?;
            let rgba = image::RgbaImage::from_raw(d.width as u32, d.height as u32, d.pixels)
                .ok_or("decoded JPEG has the wrong size")?;
            let mut img = image::DynamicImage::ImageRgba8(rgba);
            let o = exif::jpeg_exif(bytes).map(exif::orientation_lenient).unwrap_or(1);
            if let Some(o) = image::metadata::Orientation::from_exif(o) {
                img.apply_orientation(o);
            }
            img
        }
        ImageFormat::Heic | ImageFormat::Avif => {
            let limits = super::Limits::new(u32::MAX as u64, 1);
            let d = super::flip_heif::decode_displayed(bytes, &limits).map_err(|e| e.to_string())?;
            let img = if d.channels == 4 {
                image::RgbaImage::from_raw(d.width, d.height, d.pixels).map(image::DynamicImage::ImageRgba8)
            } else {
                image::RgbImage::from_raw(d.width, d.height, d.pixels).map(image::DynamicImage::ImageRgb8)
            };
            img.ok_or("decoded HEIF has the wrong size")?
        }
        other => {
            let f = match other {
                ImageFormat::Png => image::ImageFormat::Png,
                ImageFormat::Gif => image::ImageFormat::Gif,
                _ => image::ImageFormat::WebP,
            };
            let mut decoder = image::ImageReader::with_format(std::io::Cursor::new(bytes), f)
                .into_decoder()
                .map_err(|e| e.to_string())?;
            let o = displayed_orientation(&mut decoder);
            let mut img = image::DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?;
            img.apply_orientation(o);
            img
        }
    };
    Ok(std::mem::take(&mut img).into_rgba8())
}

/// The orientation of a PNG or WebP as the upload check reads it: its EXIF
/// through [`exif::orientation_lenient`] (unusable EXIF is upright), one
/// rule for the check, the flip and the tests.
pub(crate) fn displayed_orientation(decoder: &mut impl image::ImageDecoder) -> image::metadata::Orientation {
    let o = match decoder.exif_metadata() {
        Ok(Some(raw)) => exif::orientation_lenient(raw.strip_prefix(b"Exif\0\0").unwrap_or(&raw)),
        _ => 1,
    };
    image::metadata::Orientation::from_exif(o).unwrap_or(image::metadata::Orientation::NoTransforms)
}

/// Mean absolute difference per channel between two pictures of one size.
pub fn mean_abs_diff(a: &image::RgbaImage, b: &image::RgbaImage) -> Option<f64> {
    if a.dimensions() != b.dimensions() {
        return None;
    }
    let sum: u64 = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y) as u64).sum();
    Some(sum as f64 / a.as_raw().len().max(1) as f64)
}
