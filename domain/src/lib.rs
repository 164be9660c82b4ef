//! flipstack's domain: the types that validate at the edge, the records the
//! store returns and the admin API sends, the configuration, and what the
//! error types of every port share. No I/O of its own beyond reading the
//! configuration (`Config::load`: a TOML file and the environment), no
//! async runtime: every other crate builds on it, the console among them.

pub mod backups;
pub mod config;
pub mod domain;
pub mod error;
pub mod records;
pub mod status;
pub mod tls;

pub use config::Config;
