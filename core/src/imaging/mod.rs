//! Imaging: the upload check ([`inspect`] while the bytes stream in, then
//! [`verify`]) and the worker's flip ([`flip`]). Image work is CPU-bound and
//! synchronous; callers run it on the blocking pool, never on async threads.

pub mod decode;
pub mod exif;
pub mod flip;
pub mod flip_jpeg;
pub mod inspect;
pub mod jpeg;
pub mod orient;
mod tj;
pub mod verify;

pub use decode::{decode_displayed, mean_abs_diff};
pub use flip::{
    FlipError, Flipped, Processed, THUMB_LONG_SIDE, Thumbnails, flip, flip_with_thumbnails, thumbnail_format,
    thumbnails,
};
pub use inspect::{ImageInfo, Inspector, Limits, Rejection, check_name};
pub use verify::verify;
