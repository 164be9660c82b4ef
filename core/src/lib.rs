//! flipstack's adapters and services: the ports beside the store (cache,
//! blobs, queue, mail, metrics) with their adapters, the gallery's read path,
//! rate limits, wake-ups, and `Services`, which connects them all once per
//! process. It knows no HTTP and no terminal; the server and the worker build
//! on it and meet only through it.
//!
//! The crates beneath are re-exported under their old module names, so the
//! services' code names one namespace: `domain`, `config`, `error`, `records`
//! and `tls` (flipstack-domain), `imaging` (flipstack-imaging), `store`
//! (flipstack-store).

pub mod aws;
pub mod backup;
pub mod blob;
pub mod cache;
pub mod gallery;
pub mod limits;
pub mod mail;
pub mod metrics;
pub mod process_stats;
pub mod queue;
pub mod screens;
pub mod services;
pub mod status;
pub mod trace;
pub mod wake;

pub use flipstack_domain::{Config, backups, config, domain, error, records, tls};
pub use flipstack_imaging as imaging;
pub use flipstack_store as store;
pub use services::Services;
