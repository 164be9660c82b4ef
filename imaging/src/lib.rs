//! Imaging: the upload check ([`inspect`] while the bytes stream in, then
//! [`verify`]) and the worker's flip ([`flip`]). JPEG goes through
//! libjpeg-turbo, HEIC/AVIF through libheif ([`heif`]), WebP out through
//! libwebp ([`webp_encode`]), the rest through the `image` crate. Image work is CPU-bound and
//! synchronous; callers run it on the blocking pool, never on async threads.

mod cores;
pub mod decode;
pub mod exif;
pub mod flip;
pub mod flip_heif;
pub mod flip_jpeg;
pub mod heif;
pub mod inspect;
pub mod jpeg;
pub mod orient;
pub mod screen;
mod thumb;
mod tj;
pub mod trailer;
pub mod verify;
pub mod webp_encode;

pub use cores::SecondCore;
pub use decode::{decode_displayed, mean_abs_diff};
pub use flip::{
    Display, FlipError, Flipped, Processed, THUMB_LONG_SIDE, Thumbnails, display_format, fit_long_side, flip,
    flip_with_thumbnails, flipped_format, thumbnail_format, thumbnails,
};
pub use inspect::{ImageInfo, Inspector, Limits, Rejection, Repairs, check_name, still_picture};
pub use screen::{ScreenPicture, ScreenSize, screen_format, screen_pictures, screen_sizes};
pub use verify::verify;

/// Makes glibc keep freed memory for the next picture instead of returning
/// it to the kernel after each one. libjpeg-turbo allocates a whole
/// picture's coefficients (tens of MB) per flip; by default glibc maps them
/// fresh and unmaps them afterwards, and the page faults cost about a third
/// of a lossless flip (8 MP: 26 → 38 flips/s on one core). The process then
/// keeps up to 256 MiB of freed memory. It also keeps one allocator arena
/// for all threads: a worker's flip runs on whichever blocking thread is
/// free, and each thread's own arena kept its memory from the next flip on
/// another thread (a worker faulted in 3.4 k pages per 8 MP job; 0.7 k
/// with one arena and mimalloc's purge delayed, `src/allocator.rs`). Meant
/// for processes that flip pictures (workers, benchmarks), not the server,
/// called before they start threads; a no-op elsewhere than Linux with
/// glibc, and after the first call.
pub fn keep_memory_between_flips() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator thresholds; it is called
        // once, and glibc's allocator stays consistent across the change.
        unsafe {
            // Below 32 MiB (glibc's ceiling for this setting) from the heap…
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
            // … and freed memory kept up to 256 MiB before it is trimmed…
            libc::mallopt(libc::M_TRIM_THRESHOLD, 256 * 1024 * 1024);
            // … in one arena, whichever thread flips.
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    });
}
