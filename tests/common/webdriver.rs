//! A small W3C WebDriver client (the commands the browser tests use), over the
//! HTTP client the tests already have, driving Debian's Chromium through
//! chromedriver. Chromium runs headless with a fresh profile and without the
//! background networking this machine's closed network refuses.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Chromedriver {
    child: std::process::Child,
    pub base: String,
}

impl Chromedriver {
    /// Starts chromedriver on a free loopback port.
    pub async fn start() -> Chromedriver {
        flipstack_core::tls::install_crypto_provider();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("chromedriver")
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver is installed (scripts/test.sh installs chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(format!("{base}/status")).await
                && r.status() == 200
            {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Chromedriver { child, base }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Session {
    http: reqwest::Client,
    url: String,
    _profile: tempfile::TempDir,
}

#[derive(Clone, Debug)]
pub struct Element(String);

impl Session {
    pub async fn new(driver: &Chromedriver) -> Session {
        Self::start(driver, None).await
    }

    /// A session whose screen is `width`×`height` CSS pixels at `pixel_ratio`
    /// device pixels each (Chromium's device emulation); a phone-like
    /// (touch, mobile viewport) screen when `mobile`.
    pub async fn emulating(driver: &Chromedriver, width: u32, height: u32, pixel_ratio: f64, mobile: bool) -> Session {
        let metrics = json!({"deviceMetrics": {
            "width": width, "height": height, "pixelRatio": pixel_ratio, "mobile": mobile, "touch": mobile
        }});
        Self::start(driver, Some(metrics)).await
    }

    async fn start(driver: &Chromedriver, emulation: Option<Value>) -> Session {
        let profile = tempfile::tempdir().unwrap();
        let mut options = json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900",
                format!("--user-data-dir={}", profile.path().display()),
            ]
        });
        if let Some(e) = emulation {
            options["mobileEmulation"] = e;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": options
        }}});
        let http = reqwest::Client::new();
        let r: Value =
            http.post(format!("{}/session", driver.base)).json(&caps).send().await.unwrap().json().await.unwrap();
        let id = r["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {r}")).to_owned();
        Session { http, url: format!("{}/session/{id}", driver.base), _profile: profile }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        if let Some(err) = v["value"]["error"].as_str() {
            panic!("WebDriver {path}: {err}: {}", v["value"]["message"]);
        }
        v["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({"url": url})).await;
    }

    pub async fn current_url(&self) -> String {
        self.get("/url").await.as_str().unwrap_or_default().to_owned()
    }

    pub async fn find(&self, css: &str) -> Element {
        let v = self.post("/element", json!({"using": "css selector", "value": css})).await;
        Element(v[ELEMENT].as_str().unwrap().to_owned())
    }

    pub async fn count(&self, css: &str) -> usize {
        self.post("/elements", json!({"using": "css selector", "value": css})).await.as_array().map_or(0, Vec::len)
    }

    pub async fn click(&self, e: &Element) {
        self.post(&format!("/element/{}/click", e.0), json!({})).await;
    }

    pub async fn type_into(&self, e: &Element, text: &str) {
        self.post(&format!("/element/{}/value", e.0), json!({"text": text})).await;
    }

    /// Chooses files in an `<input type=file>`.
    pub async fn choose_files(&self, e: &Element, paths: &[&Path]) {
        let joined =
            paths.iter().map(|p| p.canonicalize().unwrap().display().to_string()).collect::<Vec<_>>().join("\n");
        self.type_into(e, &joined).await;
    }

    pub async fn text(&self, e: &Element) -> String {
        self.get(&format!("/element/{}/text", e.0)).await.as_str().unwrap_or_default().to_owned()
    }

    pub async fn script(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []})).await
    }

    /// Runs a script that calls `done(value)` (the last argument) when finished.
    pub async fn async_script(&self, script: &str) -> Value {
        let wrapped = format!("const done = arguments[arguments.length - 1]; {script}");
        self.post("/execute/async", json!({"script": wrapped, "args": []})).await
    }

    /// Sets a cookie for the current page's origin.
    pub async fn add_cookie(&self, name: &str, value: &str) {
        self.post("/cookie", json!({"cookie": {"name": name, "value": value, "path": "/"}})).await;
    }

    /// Presses and releases one key (a WebDriver key code such as
    /// `"\u{E014}"`, the right arrow) on whatever has the focus.
    pub async fn press_key(&self, key: &str) {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}
        ]}]});
        self.post("/actions", actions).await;
    }

    pub async fn alert_text(&self) -> String {
        self.get("/alert/text").await.as_str().unwrap_or_default().to_owned()
    }

    pub async fn accept_alert(&self) {
        self.post("/alert/accept", json!({})).await;
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.post("/window/rect", json!({"width": width, "height": height})).await;
    }

    pub async fn screenshot(&self, to: &Path) {
        let b64 = self.get("/screenshot").await.as_str().unwrap().to_owned();
        let png = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, png).unwrap();
    }

    /// Waits (bounded) until `script` returns true.
    pub async fn wait_until(&self, what: &str, script: &str, within: Duration) {
        let started = Instant::now();
        loop {
            if self.script(script).await == json!(true) {
                return;
            }
            assert!(started.elapsed() < within, "waited {within:?} for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn close(self) {
        let _ = self.http.delete(&self.url).send().await;
    }
}
