//! The process's allocator: mimalloc. The cached gallery's answer allocates
//! and frees a few dozen small objects per request across the runtime's
//! threads, and glibc's malloc was a tenth of the server's time there
//! (BENCHMARKS.md §7).
//!
//! mimalloc's defaults keep freed memory committed for a while and commit
//! its arenas eagerly on Linux, which doubled the server's resident memory
//! under a burst of large uploads (`bench/upload_rss.py`). Its purge delay
//! and eager arena commit are set lower here, before the first allocation
//! (an ELF constructor runs before Rust's runtime allocates anything); a
//! `MIMALLOC_*` variable in the environment still overrides them.
//!
//! A worker is the other way round: it frees and allocates the same few
//! megabytes per job (the original, the flip, its thumbnails), and purged at
//! once they are faulted in again on the next job, so `flipstack work` keeps
//! freed memory for a second ([`keep_freed_memory_between_jobs`]).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static SET_OPTIONS: extern "C" fn() = set_options;

/// `mi_option_e` in the mimalloc (v3) that `libmimalloc-sys` builds, which
/// names no constant for these two.
#[cfg(target_os = "linux")]
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
#[cfg(target_os = "linux")]
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

#[cfg(target_os = "linux")]
extern "C" fn set_options() {
    // SAFETY: plain stores into mimalloc's option table, which it reads
    // when it first needs each option; nothing has allocated yet.
    unsafe {
        libmimalloc_sys::mi_option_set_default(PURGE_DELAY, 0);
        libmimalloc_sys::mi_option_set_default(ARENA_EAGER_COMMIT, 0);
    }
}

/// How long a worker keeps freed memory before returning it, in ms.
#[cfg(target_os = "linux")]
const WORKER_PURGE_DELAY_MS: std::ffi::c_long = 1000;

/// For `flipstack work`, before it starts threads: freed memory is kept for
/// the next job (mimalloc's purge delayed; glibc's thresholds and one arena,
/// [`flipstack_core::imaging::keep_memory_between_flips`]). A
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
pub fn keep_freed_memory_between_jobs() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain store into mimalloc's option table, read at each purge.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, WORKER_PURGE_DELAY_MS) };
    }
    flipstack_core::imaging::keep_memory_between_flips();
}
