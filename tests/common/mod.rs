//! The integration-test harness: the real server on 127.0.0.1:0 with a real
//! worker, on one of three tiers, driven over HTTP by a browser-like client
//! with a cookie jar.
//!
//! - `embedded`: SQLite, in-process cache, local folder, database queue.
//! - `mariadb`: a MariaDB primary and GTID replica, and memcached.
//! - `aws`: the mariadb tier with S3 and SQS on moto_server.
//!
//! The services come from `scripts/services.sh` (see `scripts/test.sh`), found
//! through `FLIPSTACK_TEST_*` variables. `FLIPSTACK_TEST_TIERS` says which
//! tiers to run (default: embedded); a requested tier whose services are
//! missing fails loudly.

#![allow(dead_code)]

pub mod webdriver;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flipstack_core::domain::{Email, ImageFormat, UploadId, UploadState};
use flipstack_core::store::{ReadFrom, Upload};
use flipstack_core::{Config, Services};
use flipstack_server::RunningServer;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Embedded,
    Mariadb,
    Aws,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Embedded => "embedded",
            Tier::Mariadb => "mariadb",
            Tier::Aws => "aws",
        }
    }

    /// Whether this run asked for the tier (the embedded one always runs).
    pub fn requested(self) -> bool {
        self == Tier::Embedded
            || std::env::var("FLIPSTACK_TEST_TIERS").unwrap_or_default().split(',').any(|t| t.trim() == self.name())
    }

    /// Fails a test of a tier the run did not ask for, so it can never pass
    /// without running. The runner skips these tests instead: the default
    /// nextest profile (.config/nextest.toml) filters out the `mariadb::`/`aws::`
    /// tests and those named `mariadb_*`/`aws_*`; scripts/test.sh runs them all.
    pub fn require(self) {
        assert!(
            self.requested(),
            "tier {} was not requested (FLIPSTACK_TEST_TIERS={:?}): run scripts/test.sh for every tier, or `cargo nextest run`, which skips it",
            self.name(),
            std::env::var("FLIPSTACK_TEST_TIERS").unwrap_or_default()
        );
    }
}

/// Runs each listed `async fn name(tier: Tier)` once per tier, as separate tests.
#[macro_export]
macro_rules! tier_tests {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name($crate::common::Tier::Embedded).await }
            )*
        }
        mod mariadb {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::common::Tier::Mariadb.require();
                super::$name($crate::common::Tier::Mariadb).await
            })*
        }
        mod aws {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                $crate::common::Tier::Aws.require();
                super::$name($crate::common::Tier::Aws).await
            })*
        }
    };
}

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the requested test tier needs the services of scripts/services.sh (run scripts/test.sh)"
        )
    })
}

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

/// A fresh database on the test primary (replicated to the replica).
pub async fn fresh_database(primary: &str) -> String {
    use mysql_async::prelude::Queryable;
    let name = unique("fs_");
    let pool = mysql_async::Pool::new(primary);
    let mut conn = pool.get_conn().await.expect("connecting to the test MariaDB primary");
    conn.query_drop(format!("CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")).await.unwrap();
    drop(conn);
    pool.disconnect().await.ok();
    name
}

/// A fresh SQS queue with a dead-letter queue, redriven as production is, on moto.
pub async fn fresh_queue(endpoint: &str, visibility_secs: u32) -> String {
    let aws = flipstack_core::aws::AwsSettings { region: "us-east-1".into(), endpoint: Some(endpoint.into()) };
    let sqs = aws_sdk_sqs::Client::new(&flipstack_core::aws::sdk_config(&aws).await);
    let name = unique("fs-");
    let dlq =
        sqs.create_queue().queue_name(format!("{name}-dlq")).send().await.unwrap().queue_url().unwrap().to_owned();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let redrive = format!(
        "{{\"deadLetterTargetArn\":\"{arn}\",\"maxReceiveCount\":\"{}\"}}",
        flipstack_core::queue::REDRIVE_AFTER_RECEIVES
    );
    sqs.create_queue()
        .queue_name(&name)
        .attributes(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy, redrive)
        .attributes(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout, visibility_secs.to_string())
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned()
}

/// Private services (their own folder and ports) for tests that stop and
/// start them, so the shared ones stay up for everyone else.
pub struct PrivateServices {
    pub dir: tempfile::TempDir,
    pub env: std::collections::HashMap<String, String>,
}

impl PrivateServices {
    pub fn start(only: &str) -> PrivateServices {
        let dir = tempfile::tempdir().unwrap();
        let script = env("FLIPSTACK_TEST_SERVICES");
        let ok = std::process::Command::new(&script)
            .args(["up", dir.path().to_str().unwrap(), "--only", only])
            .status()
            .expect("running services.sh");
        assert!(ok.success(), "services.sh up failed");
        let text = std::fs::read_to_string(dir.path().join("env")).unwrap();
        let env = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .flat_map(|l| l.split(' '))
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
            .collect();
        PrivateServices { dir, env }
    }

    pub fn get(&self, key: &str) -> String {
        self.env.get(key).cloned().unwrap_or_else(|| panic!("private services have no {key}"))
    }

    /// `stop`, `start` or `restart` one of `primary`, `replica`, `memcached`.
    pub fn control(&self, action: &str, name: &str) {
        let ok = std::process::Command::new(env("FLIPSTACK_TEST_SERVICES"))
            .args([action, name, self.dir.path().to_str().unwrap()])
            .status()
            .unwrap();
        assert!(ok.success(), "services.sh {action} {name} failed");
    }
}

impl Drop for PrivateServices {
    fn drop(&mut self) {
        let _ = std::process::Command::new(env("FLIPSTACK_TEST_SERVICES"))
            .args(["down", self.dir.path().to_str().unwrap()])
            .status();
    }
}

/// The configuration of one test app on a tier, in `data_dir`.
pub async fn config_for(tier: Tier, data_dir: &Path) -> Config {
    // reqwest has no crypto provider of its own (one TLS stack: rustls on ring).
    flipstack_core::tls::install_crypto_provider();
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.to_owned(),
        job_lease_secs: 3,
        queue_poll_ms: 20,
        job_timeout_secs: 60,
        cache_ttl_secs: 300,
        // Every test client is 127.0.0.1 and the tests share one memcached:
        // the limits get tests of their own (tests/strangers.rs).
        galleries_per_client_per_hour: 1_000_000,
        uploads_per_client_per_hour: 1_000_000,
        uploads_per_person_per_hour: 1_000_000,
        signin_mails_per_client_per_hour: 1_000_000,
        max_connections_per_client: 100_000,
        max_uploads_per_client: 10_000,
        ..Config::default()
    };
    if tier != Tier::Embedded {
        let db = fresh_database(&env("FLIPSTACK_TEST_MYSQL_PRIMARY")).await;
        c.database_url = Some(format!("{}/{db}", env("FLIPSTACK_TEST_MYSQL_PRIMARY")));
        c.replica_urls = vec![format!("{}/{db}", env("FLIPSTACK_TEST_MYSQL_REPLICA"))];
        c.cache_url = format!("memcache://{}", env("FLIPSTACK_TEST_MEMCACHED"));
    }
    if tier == Tier::Aws {
        let endpoint = env("FLIPSTACK_TEST_AWS_ENDPOINT");
        c.blob_url = Some(format!("s3://{}/{}", env("FLIPSTACK_TEST_BUCKET"), unique("t")));
        c.queue_url = fresh_queue(&endpoint, 3).await;
        c.aws_endpoint_url = Some(endpoint);
    }
    c
}

pub struct Worker {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// A running flipstack: the server in this process, workers as asked.
pub struct TestApp {
    pub tier: Tier,
    pub config: Config,
    pub services: Arc<Services>,
    pub server: Option<RunningServer>,
    pub base: String,
    pub admin_token: String,
    pub data: tempfile::TempDir,
    workers: Vec<Worker>,
}

impl TestApp {
    /// The server and one in-process worker.
    pub async fn spawn(tier: Tier) -> TestApp {
        Self::spawn_with(tier, |_| {}, 1).await
    }

    pub async fn spawn_with(tier: Tier, tweak: impl FnOnce(&mut Config), workers: usize) -> TestApp {
        init_logging();
        let data = tempfile::tempdir().unwrap();
        let mut config = config_for(tier, data.path()).await;
        tweak(&mut config);
        Self::spawn_config(tier, config, data, workers).await
    }

    pub async fn spawn_config(tier: Tier, config: Config, data: tempfile::TempDir, workers: usize) -> TestApp {
        flipstack_core::tls::install_crypto_provider();
        let services = Services::connect(config.clone()).await.expect("connecting the test app's services");
        let server = flipstack_server::start(services.clone(), config.listen).await.expect("starting the server");
        let base = format!("http://{}", server.addr);
        let admin_token = server.admin_token.clone();
        let mut app =
            TestApp { tier, config, services, server: Some(server), base, admin_token, data, workers: Vec::new() };
        for _ in 0..workers {
            app.start_worker().await;
        }
        app
    }

    /// A worker in this process, with services of its own (as a separate process would have).
    pub async fn start_worker(&mut self) {
        let services = Services::connect(self.config.clone()).await.unwrap();
        let options = flipstack_worker::WorkerOptions::from_services(&services);
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = flipstack_worker::run(services, options, s).await {
                eprintln!("worker ended: {e}");
            }
        });
        self.workers.push(Worker { stop, task });
    }

    pub async fn stop_workers(&mut self) {
        for w in self.workers.drain(..) {
            w.stop().await;
        }
    }

    /// `flipstack work` as a child process of the test, with this app's configuration.
    pub fn worker_process(&self) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_flipstack"))
            .arg("work")
            .envs(self.config.to_env())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("starting flipstack work")
    }

    pub fn browser(&self) -> Browser {
        Browser::new(&self.base)
    }

    pub fn admin(&self) -> reqwest::Client {
        flipstack_core::tls::install_crypto_provider();
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
    }

    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.admin().get(format!("{}{path}", self.base)).bearer_auth(&self.admin_token).send().await.unwrap()
    }

    pub async fn admin_post(&self, path: &str) -> reqwest::Response {
        self.admin().post(format!("{}{path}", self.base)).bearer_auth(&self.admin_token).send().await.unwrap()
    }

    /// The newest upload of an address.
    pub async fn latest_upload(&self, email: &str) -> Option<UploadId> {
        let person = self.services.store.person_by_email(&Email::parse(email).unwrap()).await.unwrap()?;
        let read = self.services.store.gallery_page(person.id, 0, 1, ReadFrom::Primary).await.unwrap();
        read.page.items.first().map(|i| i.id)
    }

    pub async fn upload_count(&self) -> u64 {
        self.services.store.upload_stats().await.unwrap().by_state.values().sum()
    }

    /// Waits (bounded) for an upload to reach `done` or `failed`.
    pub async fn wait_finished(&self, id: UploadId, within: Duration) -> Upload {
        let started = Instant::now();
        loop {
            let u = self.services.store.upload(id).await.unwrap().expect("the upload exists");
            if u.state.is_terminal() {
                return u;
            }
            assert!(started.elapsed() < within, "upload {id} still {:?} after {within:?}", u.state);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_done(&self, id: UploadId) -> Upload {
        let u = self.wait_finished(id, Duration::from_secs(120)).await;
        assert_eq!(u.state, UploadState::Done, "upload {id} failed: {:?}", u.failure_reason);
        u
    }

    /// One number from `GET /metrics`: the sum of every series whose name and
    /// labels start with `series` (e.g. `flipstack_db_queries_total{target="primary",origin="request"}`).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base)).await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(series))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }

    /// The sign-in links mailed to an address once there are at least
    /// `count` (mail is sent in the background), waiting at most 10 s.
    pub async fn wait_mailed_links(&self, email: &str, count: usize) -> Vec<String> {
        let started = Instant::now();
        loop {
            let links = self.mailed_links(email);
            if links.len() >= count || started.elapsed() > Duration::from_secs(10) {
                return links;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The mails in the outbox to an address so far, oldest first, with
    /// their quoted-printable lines joined again.
    pub fn mails_to(&self, email: &str) -> Vec<String> {
        let outbox = self.config.data_dir.join("outbox");
        let mut mails: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(&outbox)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let text = std::fs::read_to_string(e.path()).ok()?;
                        Some((e.metadata().ok()?.modified().ok()?, text))
                    })
                    .collect()
            })
            .unwrap_or_default();
        mails.sort();
        mails
            .into_iter()
            .filter(|(_, m)| m.lines().any(|l| l.starts_with("To:") && l.contains(email)))
            .map(|(_, m)| m.replace("=\r\n", "").replace("=\n", "").replace("=3D", "="))
            .collect()
    }

    /// The sign-in links mailed to an address so far, oldest first.
    pub fn mailed_links(&self, email: &str) -> Vec<String> {
        self.mails_to(email)
            .into_iter()
            .filter_map(|unfolded| {
                let start = unfolded.find("/signin/link?token=")?;
                let token: String = unfolded[start + 19..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect();
                Some(format!("/signin/link?token={token}"))
            })
            .collect()
    }

    pub async fn blob_keys(&self) -> Vec<String> {
        self.services.blobs.list().await.unwrap()
    }

    pub async fn shutdown(mut self) {
        self.stop_workers().await;
        if let Some(s) = self.server.take() {
            // The test's own browsers keep idle connections open: do not wait for them.
            s.shutdown_within(Duration::from_secs(2)).await;
        }
    }
}

/// `flipstack serve` as a second process over the same configuration.
pub struct SecondServer {
    child: std::process::Child,
    pub base: String,
}

impl Drop for SecondServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn second_server(app: &TestApp) -> SecondServer {
    second_server_with(app, &[]).await
}

/// [`second_server`] with more variables in its environment.
pub async fn second_server_with(app: &TestApp, env: &[(&str, &str)]) -> SecondServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_flipstack"))
        .arg("serve")
        .envs(app.config.to_env())
        .envs(env.iter().copied())
        .env("FLIPSTACK_LISTEN", format!("127.0.0.1:{port}"))
        .env("FLIPSTACK_ADMIN_TOKEN", &app.admin_token)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while reqwest::get(format!("{base}/healthz")).await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(started.elapsed() < Duration::from_secs(30), "the second server starts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    SecondServer { child, base }
}

/// A browser: a cookie jar, no automatic redirects (tests look at them).
pub struct Browser {
    pub client: reqwest::Client,
    pub base: String,
    jar: Arc<reqwest::cookie::Jar>,
}

impl Browser {
    pub fn new(base: &str) -> Browser {
        Self::with_headers(base, &[])
    }

    /// A browser whose every request carries these headers (e.g. an
    /// `X-Forwarded-For` as a load balancer would add it).
    pub fn with_headers(base: &str, headers: &[(&str, &str)]) -> Browser {
        flipstack_core::tls::install_crypto_provider();
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let mut defaults = reqwest::header::HeaderMap::new();
        for (k, v) in headers {
            defaults.append(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                reqwest::header::HeaderValue::from_str(v).unwrap(),
            );
        }
        let client = reqwest::Client::builder()
            // The server closes a connection that sends no request for its header
            // timeout (10 s); a pooled one kept idle longer races that close.
            .pool_idle_timeout(Duration::from_secs(5))
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(defaults)
            .build()
            .unwrap();
        Browser { client, base: base.to_owned(), jar }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn text(&self, path: &str) -> (u16, String) {
        let r = self.get(path).await;
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The CSRF token of the page's forms (visiting it sets the cookies it needs).
    pub async fn csrf(&self) -> String {
        let (_, page) = self.text("/form").await;
        hidden_value(&page, "csrf").expect("the form has a csrf field")
    }

    /// Uploads as [`Browser::upload`] does, telling a server that did not
    /// answer (or whose form had no token) by an error instead of a panic.
    pub async fn try_upload(&self, email: &str, filename: &str, bytes: &[u8]) -> Result<reqwest::Response, String> {
        let form = self.client.get(self.url("/form")).send().await.map_err(|e| format!("the form: {e}"))?;
        let page = form.text().await.map_err(|e| format!("the form: {e}"))?;
        let csrf = hidden_value(&page, "csrf").ok_or_else(|| format!("a form without a csrf field: {page:.200}"))?;
        self.try_upload_parts(&[("csrf", &csrf), ("email", email)], &[(filename.as_bytes(), bytes)], false)
            .await
            .map_err(|e| format!("the upload: {e}"))
    }

    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        self.client.post(self.url(path)).form(fields).send().await.unwrap()
    }

    /// Uploads as the page's form does: csrf, then email (when given), then the file.
    pub async fn upload(&self, email: Option<&str>, filename: &str, bytes: &[u8]) -> reqwest::Response {
        let csrf = self.csrf().await;
        let mut fields = vec![("csrf", csrf.as_str())];
        if let Some(e) = email {
            fields.push(("email", e));
        }
        self.upload_raw(&fields, Some((filename.as_bytes(), bytes))).await
    }

    /// A multipart form built by hand, so file names go on the wire exactly as given.
    pub async fn upload_raw(&self, fields: &[(&str, &str)], file: Option<(&[u8], &[u8])>) -> reqwest::Response {
        self.upload_parts(fields, file.as_slice(), false).await
    }

    /// Any number of `file` parts; `json` asks for the answer the page's script gets.
    pub async fn upload_parts(
        &self,
        fields: &[(&str, &str)],
        files: &[(&[u8], &[u8])],
        json: bool,
    ) -> reqwest::Response {
        self.try_upload_parts(fields, files, json).await.unwrap()
    }

    pub async fn try_upload_parts(
        &self,
        fields: &[(&str, &str)],
        files: &[(&[u8], &[u8])],
        json: bool,
    ) -> reqwest::Result<reqwest::Response> {
        let boundary = format!("----flipstacktest{:016x}", rand::random::<u64>());
        let mut body = Vec::new();
        for (k, v) in fields {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").as_bytes(),
            );
        }
        for (name, bytes) in files {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"").as_bytes(),
            );
            body.extend_from_slice(name);
            body.extend_from_slice(b"\"\r\nContent-Type: application/octet-stream\r\n\r\n");
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let mut req = self
            .client
            .post(self.url("/upload"))
            .header("content-type", format!("multipart/form-data; boundary={boundary}"))
            .body(body);
        if json {
            req = req.header("accept", "application/json");
        }
        req.send().await
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        use reqwest::cookie::CookieStore;
        let header = self.jar.cookies(&self.base.parse().unwrap())?;
        header.to_str().ok()?.split("; ").find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(String::from))
    }

    pub fn set_cookie(&self, name: &str, value: &str) {
        self.jar.add_cookie_str(&format!("{name}={value}; Path=/"), &self.base.parse().unwrap());
    }
}

/// The value of a hidden input in a page.
pub fn hidden_value(page: &str, name: &str) -> Option<String> {
    let at = page.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &page[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// The shared corpus, when it is there.
pub fn corpus() -> Option<PathBuf> {
    let dir = std::env::var_os("FLIPSTACK_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata"));
    if dir.join("photos").is_dir() && dir.join("bad").is_dir() {
        eprintln!("corpus: using {}", dir.display());
        Some(dir)
    } else {
        eprintln!("corpus: {} not found; using generated pictures only", dir.display());
        None
    }
}

/// Pictures to upload: the corpus photos when present, generated ones always.
pub fn photos() -> Vec<(String, Vec<u8>)> {
    let mut out = generated_photos();
    if let Some(dir) = corpus() {
        let mut names: Vec<PathBuf> =
            std::fs::read_dir(dir.join("photos")).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names.into_iter().filter(|p| p.extension().is_some_and(|e| e != "tsv")) {
            out.push((p.file_name().unwrap().to_string_lossy().into(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

/// A picture with a clear top and bottom, alpha in one half.
pub fn gradient(w: u32, h: u32) -> image::RgbaImage {
    image::RgbaImage::from_fn(w, h, |x, y| {
        image::Rgba([(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, 80, if x < w / 2 { 255 } else { 128 }])
    })
}

pub fn png(w: u32, h: u32) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    gradient(w, h).write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let rgb = image::DynamicImage::ImageRgba8(gradient(w, h)).into_rgb8();
    let img = turbojpeg::Image {
        pixels: rgb.as_raw().as_slice(),
        width: w as usize,
        pitch: w as usize * 3,
        height: h as usize,
        format: turbojpeg::PixelFormat::RGB,
    };
    turbojpeg::compress(img, 90, turbojpeg::Subsamp::Sub2x2).unwrap().to_vec()
}

pub fn generated_photos() -> Vec<(String, Vec<u8>)> {
    let mut gif = Vec::new();
    {
        let mut enc = gif::Encoder::new(&mut gif, 40, 30, &[0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]).unwrap();
        enc.set_repeat(gif::Repeat::Infinite).unwrap();
        for f in 0..3u8 {
            let buffer: Vec<u8> = (0..30u32).flat_map(|y| std::iter::repeat_n(((y / 10) as u8 + f) % 4, 40)).collect();
            enc.write_frame(&gif::Frame {
                width: 40,
                height: 30,
                delay: 10,
                buffer: buffer.into(),
                ..Default::default()
            })
            .unwrap();
        }
    }
    let mut webp = std::io::Cursor::new(Vec::new());
    gradient(48, 32).write_to(&mut webp, image::ImageFormat::WebP).unwrap();
    vec![
        ("generated.png".into(), png(64, 48)),
        ("generated.jpg".into(), jpeg(96, 64)),
        ("generated.gif".into(), gif),
        ("generated.webp".into(), webp.into_inner()),
    ]
}

pub fn format_of(bytes: &[u8]) -> ImageFormat {
    let mut i = flipstack_core::imaging::Inspector::new(flipstack_core::imaging::Limits::new(100_000_000, 10_000));
    i.feed(bytes).unwrap();
    i.finish().unwrap().format
}

/// Checks that `flipped` shows the vertical flip of `original` as displayed:
/// exact for lossless formats, within JPEG error for JPEG.
pub fn assert_is_flip(name: &str, original: &[u8], flipped: &[u8]) {
    use flipstack_core::imaging::{decode_displayed, mean_abs_diff};
    let format = format_of(original);
    let shown = decode_displayed(original, format).unwrap();
    let expected = image::imageops::flip_vertical(&shown);
    let got =
        decode_displayed(flipped, format).unwrap_or_else(|e| panic!("{name}: the flipped file does not decode: {e}"));
    let diff = mean_abs_diff(&expected, &got)
        .unwrap_or_else(|| panic!("{name}: flipped size {:?} is not {:?}", got.dimensions(), expected.dimensions()));
    let unflipped = mean_abs_diff(&shown, &got).unwrap();
    // Lossy sources (JPEG, lossy WebP) give lossy flips.
    let lossy = format == ImageFormat::Jpeg
        || matches!(
            flipstack_core::imaging::webp_encode::bitstream(original),
            Some(flipstack_core::imaging::webp_encode::Bitstream::Lossy(_))
        );
    if lossy {
        assert!(diff < 4.0, "{name}: {diff:.2} mean difference from the exact flip is more than lossy coding's error");
    } else {
        assert_eq!(diff, 0.0, "{name}: the flip is not exact");
    }
    assert!(unflipped > diff, "{name}: the result looks like the original, not its flip");
}

/// A PNG whose structure and checksums are sound but whose compressed pixel
/// data is garbage: it passes the upload check and fails in the decoder.
pub fn poison_png() -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut h = crc32fast::Hasher::new();
        h.update(kind);
        h.update(data);
        out.extend_from_slice(&h.finalize().to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&64u32.to_be_bytes());
    ihdr.extend_from_slice(&64u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0xff, 0xff, 0xff, 0x00, 0x13, 0x37, 0xde, 0xad, 0xbe, 0xef]);
    chunk(&mut png, b"IEND", &[]);
    png
}
