//! Configuration: every key has an environment variable (`FLIPSTACK_<KEY>`), the
//! same key in an optional TOML file, and (in the binary) a flag where it makes
//! sense. Flags win over the environment, the environment over the file, the
//! file over the embedded defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize};

use crate::backups::Period;

/// The libheif the imaging crate loads unless `libheif` names another: the
/// soname Debian's and Fedora's dynamic loaders find.
pub const DEFAULT_LIBHEIF: &str = "libheif.so.1";

/// Every key of the configuration; `FLIPSTACK_` + the key in capitals is its
/// environment variable.
pub const KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "replica_urls",
    "cache_url",
    "blob_url",
    "queue_url",
    "mail_url",
    "mail_from",
    "aws_endpoint_url",
    "aws_region",
    "admin_token",
    "public_url",
    "worker_metrics_listen",
    "otlp_endpoint",
    "cookie_secure",
    "max_upload_bytes",
    "max_pixels",
    "max_frames",
    "workers_min",
    "workers_max",
    "backlog_per_worker",
    "scale_in_secs",
    "job_lease_secs",
    "job_max_attempts",
    "job_timeout_secs",
    "queue_poll_ms",
    "requeue_after_secs",
    "orphan_grace_secs",
    "backup_every",
    "backup_keep",
    "cache_ttl_secs",
    "replica_wait_ms",
    "replica_max_lag_ms",
    "metrics_namespace",
    "header_timeout_secs",
    "idle_timeout_secs",
    "body_min_bytes_per_sec",
    "request_deadline_secs",
    "max_connections",
    "max_connections_per_client",
    "max_uploads_per_client",
    "spool_budget_bytes",
    "trusted_proxy_hops",
    "galleries_per_client_per_hour",
    "uploads_per_client_per_hour",
    "uploads_per_person_per_hour",
    "signin_mails_per_client_per_hour",
    "signin_mails_per_address_per_hour",
    "quota_bytes_per_person",
    "max_files_per_upload",
    "form_field_bytes",
    "form_preamble_bytes",
    "form_part_header_bytes",
    "startup_wait_secs",
    "scale_in_protection_group",
    "libheif",
    "notice_every",
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// Where the embedded defaults keep their files.
    pub data_dir: PathBuf,
    /// Primary database: `sqlite://PATH` or `mysql://user:pass@host:port/db`.
    pub database_url: Option<String>,
    /// Read replicas (`mysql://…`), comma-separated in the environment.
    #[serde(deserialize_with = "comma_list")]
    pub replica_urls: Vec<String>,
    /// Gallery cache: `memory://` or `memcache://host:port[,host:port…]`.
    pub cache_url: String,
    /// Blob store: `file://PATH` or `s3://bucket[/prefix]`.
    pub blob_url: Option<String>,
    /// Job queue: `db://` (the uploads table) or an SQS queue URL.
    pub queue_url: String,
    /// Mailer: `outbox://PATH`, `smtps://user:pass@host:port` (TLS), `smtp://…` (STARTTLS
    /// required) or `smtp+insecure://…` (plaintext, only on a trusted network).
    pub mail_url: Option<String>,
    /// Sender of the sign-in mails.
    pub mail_from: String,
    /// Endpoint override for every AWS client (moto_server, LocalStack).
    pub aws_endpoint_url: Option<String>,
    pub aws_region: String,
    /// Bearer token of the admin API; generated once into `<data>/admin-token` when unset.
    pub admin_token: Option<String>,
    /// The address people reach the server at, used in mailed links.
    pub public_url: Option<String>,
    /// Where a worker process serves its own `GET /metrics`; none by default
    /// (`flipstack up` gives each of its workers a free loopback port).
    pub worker_metrics_listen: Option<SocketAddr>,
    /// An OTLP/HTTP receiver (`http://collector:4318`): traces go to its
    /// `/v1/traces`, a span per request and per job; none by default.
    pub otlp_endpoint: Option<String>,
    /// Mark cookies `Secure`; on by default when `public_url` is https.
    pub cookie_secure: Option<bool>,
    pub max_upload_bytes: u64,
    pub max_pixels: u64,
    /// Most frames an animated GIF may have.
    pub max_frames: u32,
    /// Local worker pool of `flipstack up`.
    pub workers_min: u32,
    pub workers_max: u32,
    /// Scaling target: queued jobs per worker.
    pub backlog_per_worker: u32,
    /// The local pool scales in only after the backlog stayed low this long.
    pub scale_in_secs: u64,
    pub job_lease_secs: u64,
    pub job_max_attempts: u32,
    pub job_timeout_secs: u64,
    /// How often an idle worker looks at the database queue.
    pub queue_poll_ms: u64,
    /// SQS: a job still waiting this long after its message was sent is sent again.
    pub requeue_after_secs: u64,
    /// The hourly orphan sweep deletes blobs with no upload row once they are this old.
    pub orphan_grace_secs: u64,
    /// How often the fleet backs the database up into the blob store's
    /// `backups/`; none (`off`) by default.
    #[serde(deserialize_with = "crate::backups::optional_period")]
    pub backup_every: Option<Period>,
    /// Backups kept: the oldest beyond this many are deleted after each one.
    pub backup_keep: u32,
    pub cache_ttl_secs: u64,
    /// How long a replica read waits for the person's last write (MASTER_GTID_WAIT).
    pub replica_wait_ms: u64,
    /// A replica further behind than this is skipped until it catches up.
    pub replica_max_lag_ms: u64,
    /// CloudWatch namespace of the metrics sent when running on AWS.
    pub metrics_namespace: String,
    /// A client must send a request's headers within this time.
    pub header_timeout_secs: u64,
    /// A connection with no request and no traffic for this long is closed; so
    /// is an upload body that sends nothing for this long.
    pub idle_timeout_secs: u64,
    /// An upload body slower than this on average (after its first 10 s) is stopped.
    pub body_min_bytes_per_sec: u64,
    /// Longest a request may take in all, body included.
    pub request_deadline_secs: u64,
    /// Open connections at most, in all and from one client address.
    pub max_connections: u32,
    pub max_connections_per_client: u32,
    /// Uploads one client address may send at the same time.
    pub max_uploads_per_client: u32,
    /// Disk the upload spool may take; an upload past it is answered 503.
    pub spool_budget_bytes: u64,
    /// Proxies in front of the server whose `X-Forwarded-For` entry is trusted
    /// (1 behind the AWS load balancer); 0 takes the peer address.
    pub trusted_proxy_hops: u32,
    /// Rate limits (per hour): new galleries and sign-in mails per client
    /// address; uploads per client address and per person; mails per address.
    pub galleries_per_client_per_hour: u32,
    pub uploads_per_client_per_hour: u32,
    pub uploads_per_person_per_hour: u32,
    pub signin_mails_per_client_per_hour: u32,
    pub signin_mails_per_address_per_hour: u32,
    /// Storage a person's pictures may take (originals and flips).
    pub quota_bytes_per_person: u64,
    /// The upload form: most files in one post (the whole body may be this
    /// many times `max_upload_bytes`, plus 64 KiB); bytes of a field that is
    /// not a file; bytes before the first boundary; bytes of one part's headers.
    pub max_files_per_upload: u32,
    pub form_field_bytes: u32,
    pub form_preamble_bytes: u32,
    pub form_part_header_bytes: u32,
    /// At start, how long a process keeps retrying a service (database, cache,
    /// queue) that does not answer yet before it gives up with an error.
    pub startup_wait_secs: u64,
    /// The worker's Auto Scaling group: when set, a worker protects its
    /// instance from scale-in while it holds a job (set by `provision up`).
    pub scale_in_protection_group: Option<String>,
    /// libheif's file (a name the dynamic loader finds, or a path), loaded at
    /// first use for HEIC/AVIF; without it those uploads are refused (415).
    pub libheif: String,
    /// Completion notices: at most one mail per person this often.
    pub notice_every: Period,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            replica_urls: Vec::new(),
            cache_url: "memory://".into(),
            blob_url: None,
            queue_url: "db://".into(),
            mail_url: None,
            mail_from: "flipstack <flipstack@localhost.localdomain>".into(),
            aws_endpoint_url: None,
            aws_region: "us-east-1".into(),
            admin_token: None,
            public_url: None,
            worker_metrics_listen: None,
            otlp_endpoint: None,
            cookie_secure: None,
            max_upload_bytes: 25 * 1024 * 1024,
            max_pixels: 50_000_000,
            max_frames: 1000,
            workers_min: 1,
            workers_max: 2,
            backlog_per_worker: 4,
            scale_in_secs: 30,
            job_lease_secs: 30,
            job_max_attempts: 3,
            job_timeout_secs: 60,
            queue_poll_ms: 100,
            requeue_after_secs: 120,
            orphan_grace_secs: 3600,
            backup_every: None,
            backup_keep: 7,
            cache_ttl_secs: 600,
            replica_wait_ms: 75,
            replica_max_lag_ms: 2000,
            metrics_namespace: "flipstack".into(),
            header_timeout_secs: 10,
            idle_timeout_secs: 30,
            body_min_bytes_per_sec: 1024,
            request_deadline_secs: 600,
            max_connections: 4096,
            max_connections_per_client: 64,
            max_uploads_per_client: 4,
            spool_budget_bytes: 2 * 1024 * 1024 * 1024,
            trusted_proxy_hops: 0,
            galleries_per_client_per_hour: 20,
            uploads_per_client_per_hour: 1000,
            uploads_per_person_per_hour: 1000,
            signin_mails_per_client_per_hour: 30,
            signin_mails_per_address_per_hour: 6,
            quota_bytes_per_person: 10 * 1024 * 1024 * 1024,
            max_files_per_upload: 20,
            form_field_bytes: 1024,
            form_preamble_bytes: 4 * 1024,
            form_part_header_bytes: 16 * 1024,
            startup_wait_secs: 300,
            scale_in_protection_group: None,
            libheif: DEFAULT_LIBHEIF.into(),
            notice_every: Period::from_secs(600).expect("ten minutes is a period"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    #[error("configuration: the file {0} does not exist (leave out --config to use the defaults)")]
    MissingFile(PathBuf),
    #[error("configuration: {0}")]
    Value(String),
}

impl Config {
    /// Layers defaults, the TOML file, `FLIPSTACK_*` variables and the flags.
    /// `flags` serialises to a map of the keys that were given (absent ones
    /// must be skipped, not null).
    /// Where the server keeps the admin token it made when none is configured.
    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join("admin-token")
    }

    /// The admin token: the configured one, else the one the server made into
    /// [`Config::admin_token_path`]; `None` when there is neither.
    pub fn existing_admin_token(&self) -> Option<String> {
        let made = || std::fs::read_to_string(self.admin_token_path()).ok();
        self.admin_token
            .clone()
            .filter(|t| !t.trim().is_empty())
            .or_else(made)
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    }

    pub fn load(file: Option<&Path>, flags: impl Serialize) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let config: Config = figment
            .merge(Env::prefixed("FLIPSTACK_").only(KEYS))
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Value(msg));
        if self.workers_min > self.workers_max {
            return bad(format!(
                "workers_min ({}) is above workers_max ({}); set FLIPSTACK_WORKERS_MIN ≤ FLIPSTACK_WORKERS_MAX",
                self.workers_min, self.workers_max
            ));
        }
        if self.max_upload_bytes == 0 || self.max_pixels == 0 {
            return bad("max_upload_bytes and max_pixels must be above zero".into());
        }
        if self.orphan_grace_secs < 60 {
            return bad("orphan_grace_secs must be at least 60: an upload's original is written before its row".into());
        }
        if self.backup_keep == 0 {
            return bad("backup_keep must be at least 1 (FLIPSTACK_BACKUP_KEEP); to take no backups leave FLIPSTACK_BACKUP_EVERY unset".into());
        }
        if self.job_lease_secs < 2 {
            return bad("job_lease_secs must be at least 2 (the lease is renewed every third of it)".into());
        }
        if self.header_timeout_secs == 0 || self.idle_timeout_secs == 0 || self.request_deadline_secs == 0 {
            return bad("header_timeout_secs, idle_timeout_secs and request_deadline_secs must be above zero".into());
        }
        if self.max_files_per_upload == 0 || self.form_field_bytes < 256 || self.form_part_header_bytes < 1024 {
            return bad("max_files_per_upload must be above zero, form_field_bytes at least 256 and form_part_header_bytes at least 1024".into());
        }
        if self.max_connections == 0 || self.max_connections_per_client == 0 || self.max_uploads_per_client == 0 {
            return bad(
                "max_connections, max_connections_per_client and max_uploads_per_client must be above zero".into()
            );
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(7 * 86_400)).contains(&self.notice_every.as_duration()) {
            return bad(format!(
                "notice_every ({}) must be between 1s and 7 days (168h); set FLIPSTACK_NOTICE_EVERY to e.g. 10m",
                self.notice_every
            ));
        }
        if let Some(url) = &self.public_url
            && url::Url::parse(url).is_err()
        {
            return bad(format!("public_url {url:?} is not a URL; use e.g. https://photos.example.com"));
        }
        if let Some(url) = &self.otlp_endpoint
            && !url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            return bad(format!(
                "otlp_endpoint {url:?} is not an http(s) URL; use the OTLP/HTTP receiver's base, e.g. http://127.0.0.1:4318"
            ));
        }
        Ok(())
    }

    /// Where spans are sent: the OTLP/HTTP receiver's `/v1/traces`.
    pub fn otlp_traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?.trim_end_matches('/');
        Some(if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") })
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("flipstack.db").display()))
    }

    pub fn blob_url(&self) -> String {
        self.blob_url.clone().unwrap_or_else(|| format!("file://{}", self.data_dir.join("blobs").display()))
    }

    pub fn mail_url(&self) -> String {
        self.mail_url.clone().unwrap_or_else(|| format!("outbox://{}", self.data_dir.join("outbox").display()))
    }

    pub fn public_url(&self) -> String {
        let url = self.public_url.clone().unwrap_or_else(|| format!("http://{}", self.listen));
        url.trim_end_matches('/').to_owned()
    }

    pub fn cookie_secure(&self) -> bool {
        self.cookie_secure.unwrap_or_else(|| self.public_url().starts_with("https://"))
    }

    /// The pairs to hand a child process (`flipstack work` under `flipstack up`)
    /// so that it sees exactly this configuration.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let value = serde_json::to_value(self).unwrap_or_default();
        let mut out = Vec::new();
        if let serde_json::Value::Object(map) = value {
            for (key, v) in map {
                let text = match v {
                    serde_json::Value::Null => continue,
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Array(items) => {
                        items.iter().filter_map(|i| i.as_str()).collect::<Vec<_>>().join(",")
                    }
                    other => other.to_string(),
                };
                out.push((format!("FLIPSTACK_{}", key.to_ascii_uppercase()), text));
            }
        }
        out
    }
}

/// Accepts a list, or a comma-separated string (as environment variables give).
fn comma_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
        OneOrMany::Many(v) => v,
    })
}

#[cfg(test)]
// figment's Jail returns its own (large) error type from test closures.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn layers_file_then_env_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "flipstack.toml",
                r#"
                    listen = "127.0.0.1:7000"
                    cache_url = "memcache://127.0.0.1:1"
                    max_pixels = 10
                "#,
            )?;
            jail.set_env("FLIPSTACK_LISTEN", "127.0.0.1:7001");
            jail.set_env("FLIPSTACK_REPLICA_URLS", "mysql://a/x, mysql://b/x");
            jail.set_env("FLIPSTACK_UNRELATED_TEST_KNOB", "ignored");
            let mut flags = BTreeMap::new();
            flags.insert("max_pixels", 20);
            let c = Config::load(Some(Path::new("flipstack.toml")), flags).map_err(|e| e.to_string())?;
            assert_eq!(c.listen.port(), 7001, "env wins over file");
            assert_eq!(c.cache_url, "memcache://127.0.0.1:1", "file wins over defaults");
            assert_eq!(c.max_pixels, 20, "flags win over everything");
            assert_eq!(c.replica_urls, vec!["mysql://a/x", "mysql://b/x"]);
            Ok(())
        });
    }

    #[test]
    fn derived_urls_follow_the_data_dir() {
        let c = Config { data_dir: PathBuf::from("/srv/fs"), ..Config::default() };
        assert_eq!(c.database_url(), "sqlite:///srv/fs/flipstack.db");
        assert_eq!(c.blob_url(), "file:///srv/fs/blobs");
        assert_eq!(c.mail_url(), "outbox:///srv/fs/outbox");
        assert_eq!(c.public_url(), "http://127.0.0.1:5000");
        assert!(!c.cookie_secure());
    }

    #[test]
    fn to_env_round_trips() {
        let c = Config {
            replica_urls: vec!["mysql://a/x".into(), "mysql://b/x".into()],
            admin_token: Some("t".into()),
            ..Config::default()
        };
        figment::Jail::expect_with(|jail| {
            for (k, v) in c.to_env() {
                jail.set_env(k, v);
            }
            let back = Config::load(None, BTreeMap::<String, String>::new()).map_err(|e| e.to_string())?;
            assert_eq!(back, c);
            Ok(())
        });
    }

    #[test]
    fn the_notice_period_is_read_as_people_write_it_and_validated() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FLIPSTACK_NOTICE_EVERY", "30s");
            let c = Config::load(None, BTreeMap::<String, String>::new()).map_err(|e| e.to_string())?;
            assert_eq!(c.notice_every.secs(), 30);
            for (value, says) in
                [("10x", "30s, 15m, 6h, 1d"), ("0", "at least 1 second"), ("8d", "between 1s and 7 days")]
            {
                jail.set_env("FLIPSTACK_NOTICE_EVERY", value);
                let err = Config::load(None, BTreeMap::<String, String>::new()).unwrap_err().to_string();
                assert!(err.contains(says) && err.to_lowercase().contains("notice_every"), "{value}: {err}");
            }
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.create_file("flipstack.toml", "notice_every = 90")?;
            let c = Config::load(Some(Path::new("flipstack.toml")), BTreeMap::<String, String>::new())
                .map_err(|e| e.to_string())?;
            assert_eq!(c.notice_every.secs(), 90, "seconds unquoted in TOML");
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = Config::load(Some(Path::new("/nonexistent/flipstack.toml")), BTreeMap::<String, String>::new())
            .unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }
}
