//! flipstack's core: configuration, domain types, and the ports (traits) with
//! their adapters. It knows no HTTP and no terminal; the server, the worker,
//! the console and the provisioner build on it and meet only through it.

pub mod aws;
pub mod blob;
pub mod cache;
pub mod config;
pub mod domain;
pub mod error;
pub mod gallery;
pub mod imaging;
pub mod limits;
pub mod mail;
pub mod metrics;
pub mod process_stats;
pub mod queue;
pub mod screens;
pub mod services;
pub mod status;
pub mod store;
pub mod tls;
pub mod wake;

pub use config::Config;
pub use services::Services;
