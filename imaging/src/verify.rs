//! The second half of the upload check, for what only a decoder can see: a
//! JPEG's scan data is entropy-decoded (at 1/8 scale, so it costs little) with
//! warnings treated as errors, so a damaged file is refused at upload instead
//! of being flipped into a half-grey picture. It decodes the still picture
//! (see [`super::inspect::still_picture`]): what the worker will flip.

use std::borrow::Cow;

use super::inspect::{ImageInfo, Limits, Rejection, still_picture};
use super::tj::TjDecoder;
use flipstack_domain::domain::ImageFormat;

pub fn verify(bytes: &[u8], info: &ImageInfo, limits: &Limits) -> Result<(), Rejection> {
    match info.format {
        ImageFormat::Jpeg => {
            let still = if info.needs_repair { still_picture(bytes, limits)?.1 } else { Cow::Borrowed(bytes) };
            let mut d = TjDecoder::new(limits.max_scans, limits.max_pixels).map_err(|e| corrupt(&e))?;
            d.decode(&still, 1, 8, turbojpeg::raw::TJPF_TJPF_RGB, 3).map_err(|e| corrupt(&e))?;
            Ok(())
        }
        // Their container was checked box by box; refused here, not as a failed
        // job, when this machine has no libheif to decode them.
        ImageFormat::Heic | ImageFormat::Avif => {
            super::heif::available().map_err(|_| Rejection::NoDecoder { format: info.format.display_name() })
        }
        // Their structure was checked chunk by chunk (with checksums for PNG);
        // the worker's decoder reports the rest as a failed job.
        ImageFormat::Png | ImageFormat::Gif | ImageFormat::Webp => Ok(()),
    }
}

fn corrupt(detail: &str) -> Rejection {
    Rejection::Corrupt { format: "JPEG", detail: format!("its picture data could not be decoded ({})", detail.trim()) }
}
