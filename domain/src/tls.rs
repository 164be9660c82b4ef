//! The one TLS crypto provider of the process: rustls on ring. Every rustls
//! user (reqwest in the blob store and the console, the AWS SDK's client,
//! MariaDB, SMTP) runs on it, so aws-lc-rs is never compiled. reqwest is built
//! without a provider of its own and panics if none is installed, so every
//! place that builds a reqwest client calls [`install_crypto_provider`] first.

/// Installs ring as the process's default rustls provider; later calls (and a
/// provider someone installed before) are left as they are.
pub fn install_crypto_provider() {
    // Err means a default is already installed: that one stays, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
