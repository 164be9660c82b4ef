//! A picture decoded as it is displayed (EXIF orientation applied), as RGBA:
//! what tests compare flips against, and a common starting point for work
//! that needs pixels rather than a file.

use super::exif;
use crate::domain::ImageFormat;

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
        other => {
            let f = match other {
                ImageFormat::Png => image::ImageFormat::Png,
                ImageFormat::Gif => image::ImageFormat::Gif,
                _ => image::ImageFormat::WebP,
            };
            let mut decoder = image::ImageReader::with_format(std::io::Cursor::new(bytes), f)
                .into_decoder()
                .map_err(|e| e.to_string())?;
            let o =
                image::ImageDecoder::orientation(&mut decoder).unwrap_or(image::metadata::Orientation::NoTransforms);
            let mut img = image::DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())?;
            img.apply_orientation(o);
            img
        }
    };
    Ok(std::mem::take(&mut img).into_rgba8())
}

/// Mean absolute difference per channel between two pictures of one size.
pub fn mean_abs_diff(a: &image::RgbaImage, b: &image::RgbaImage) -> Option<f64> {
    if a.dimensions() != b.dimensions() {
        return None;
    }
    let sum: u64 = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y) as u64).sum();
    Some(sum as f64 / a.as_raw().len().max(1) as f64)
}
