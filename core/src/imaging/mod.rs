//! Imaging: the upload check ([`inspect`] while the bytes stream in, then
//! [`verify`]) and the worker's flip ([`flip`]). Image work is CPU-bound and
//! synchronous; callers run it on the blocking pool, never on async threads.

pub mod decode;
pub mod exif;
pub mod flip;
pub mod inspect;
mod tj;
pub mod verify;

pub use decode::{decode_displayed, mean_abs_diff};
pub use flip::{FlipError, Flipped, flip};
pub use inspect::{ImageInfo, Inspector, Limits, Rejection, check_name};
pub use verify::verify;
