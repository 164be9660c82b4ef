//! What the service tells its operators' tools: request durations by route
//! and status and the process's own numbers on `/metrics`, a worker's
//! `/metrics` on an address of its own, log lines as JSON, and traces over
//! OTLP/HTTP that follow an upload from its request into a worker process.

mod common;

use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use common::*;

async fn metrics_text(base: &str) -> (u16, String) {
    let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn has_series(text: &str, prefix: &str) -> bool {
    text.lines().any(|l| !l.starts_with('#') && l.starts_with(prefix))
}

/// A child process killed when the test ends, passed or not: a leaked server
/// would hold its port and whatever its parent had open.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

const PROCESS_SERIES: &[&str] = &[
    "process_cpu_seconds_total ",
    "process_resident_memory_bytes ",
    "process_open_fds ",
    "process_max_fds ",
    "process_threads ",
    "process_start_time_seconds ",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_are_timed_by_route_and_status_and_the_process_is_measured() {
    let app = TestApp::spawn_with(Tier::Embedded, |_| {}, 0).await;
    let b = app.browser();
    assert_eq!(b.get("/form").await.status(), 200);
    assert_eq!(b.get("/wp-login.php").await.status(), 404);
    let (status, text) = metrics_text(&app.base).await;
    assert_eq!(status, 200);
    assert!(
        has_series(&text, r#"flipstack_http_request_seconds_count{route="/form",status="200"} 1"#),
        "the form's request is counted under its route:\n{text}"
    );
    assert!(
        has_series(&text, r#"flipstack_http_request_seconds_bucket{le="0.00025",route="/form",status="200"}"#)
            || has_series(&text, r#"flipstack_http_request_seconds_bucket{route="/form",status="200",le="0.00025"}"#),
        "with buckets from a quarter millisecond:\n{text}"
    );
    assert!(
        has_series(&text, r#"flipstack_http_request_seconds_count{route="other",status="404"} 1"#),
        "a stranger's path is `other`, never a series of its own:\n{text}"
    );
    assert!(!text.contains("wp-login"), "no path is a label");
    for series in PROCESS_SERIES {
        assert!(has_series(&text, series), "{series}is on the page:\n{text}");
    }
    assert!(text.trim_end().ends_with("# EOF"), "one page, ended once");
    app.shutdown().await;
}

/// `flipstack work` with its own metrics address: it flips an upload and its
/// page says so, with the process's numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_serves_its_own_metrics_on_the_address_it_is_given() {
    let app = TestApp::spawn_with(Tier::Embedded, |_| {}, 0).await;
    let port = free_port();
    let _worker = Killed(
        Command::new(env!("CARGO_BIN_EXE_flipstack"))
            .arg("work")
            .envs(app.config.to_env())
            .env("FLIPSTACK_WORKER_METRICS_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("starting flipstack work"),
    );
    let b = app.browser();
    let me = format!("telemetry-{:08x}@example.com", rand::random::<u32>());
    assert_eq!(b.upload(Some(&me), "p.png", &png(32, 24)).await.status(), 303);
    let id = app.latest_upload(&me).await.expect("the upload is recorded");
    app.wait_done(id).await;

    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let text = loop {
        let (status, text) = metrics_text(&base).await;
        assert_eq!(status, 200);
        // The job's count is set once the completion is recorded; give it a moment.
        if has_series(&text, r#"flipstack_jobs_total{outcome="done"} 1"#) || started.elapsed() > Duration::from_secs(10)
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(has_series(&text, r#"flipstack_jobs_total{outcome="done"} 1"#), "the worker's own job:\n{text}");
    assert!(has_series(&text, "process_cpu_seconds_total "), "{text}");
    let other = reqwest::get(format!("{base}/gallery")).await.unwrap();
    assert_eq!(other.status(), 404, "only /metrics is served there");
    app.shutdown().await;
}

#[test]
fn with_log_format_json_every_line_is_one_json_object() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Killed(
        Command::new(env!("CARGO_BIN_EXE_flipstack"))
            .args(["serve", "--log-format", "json"])
            .env("FLIPSTACK_DATA_DIR", data.path())
            .env("FLIPSTACK_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting flipstack serve"),
    );
    let stderr = server.0.stderr.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let listening = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = lines.recv_timeout(left) else {
            panic!("no `server listening` line within 60 s; the lines were:\n{}", seen.join("\n"));
        };
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        assert!(event["timestamp"].is_string() && event["level"].is_string() && event["target"].is_string(), "{line}");
        seen.push(line);
        if event["fields"]["message"] == "server listening" {
            break event;
        }
    };
    drop(server);
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["fields"]["addr"], format!("127.0.0.1:{port}"), "the fields are kept as fields");
}

/// An OTLP/HTTP receiver on a free loopback port, as a collector is one:
/// it takes `POST /v1/traces` (protobuf), answers 200 with an empty
/// `ExportTraceServiceResponse`, and keeps every span it was sent.
struct OtlpReceiver {
    endpoint: String,
    spans: Arc<Mutex<Vec<Span>>>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl OtlpReceiver {
    fn start() -> OtlpReceiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (kept, seen) = (spans.clone(), paths.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let (kept, seen) = (kept.clone(), seen.clone());
                std::thread::spawn(move || serve_otlp(conn, &kept, &seen));
            }
        });
        OtlpReceiver { endpoint, spans, paths }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

/// One keep-alive connection of the exporter: requests until it closes.
fn serve_otlp(mut conn: std::net::TcpStream, kept: &Mutex<Vec<Span>>, seen: &Mutex<Vec<String>>) {
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        seen.lock().unwrap().push(request_line.split(' ').take(2).collect::<Vec<_>>().join(" "));
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP trace export (protobuf)");
        let mut spans = kept.lock().unwrap();
        for resource in request.resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        drop(spans);
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `flipstack up` with an OTLP endpoint: the upload's request and the job
/// of the worker process that flips it are one trace, the job a child of
/// the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_spans_the_upload_request_and_the_workers_job() {
    let receiver = OtlpReceiver::start();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut up = Killed(
        Command::new(env!("CARGO_BIN_EXE_flipstack"))
            .arg("up")
            .env("FLIPSTACK_DATA_DIR", data.path())
            .env("FLIPSTACK_LISTEN", format!("127.0.0.1:{port}"))
            .env("FLIPSTACK_OTLP_ENDPOINT", &receiver.endpoint)
            // The SDK's batch delay (5 s by default), so the test need not wait for it.
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting flipstack up"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let b = Browser::new(&base);
    let started = Instant::now();
    while reqwest::get(format!("{base}/healthz")).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "flipstack up did not listen within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let me = format!("traced-{:08x}@example.com", rand::random::<u32>());
    assert_eq!(b.upload(Some(&me), "traced.png", &png(40, 30)).await.status(), 303);

    let started = Instant::now();
    let (request, job) = loop {
        let spans = receiver.spans();
        let request = spans.iter().find(|s| s.name == "POST /upload").cloned();
        let job =
            request.as_ref().and_then(|r| spans.iter().find(|s| s.name == "flip" && s.trace_id == r.trace_id).cloned());
        if let (Some(request), Some(job)) = (request, job) {
            break (request, job);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no upload request and flip job in one trace within 60 s; the receiver got {:?} with spans {:?}",
            receiver.paths.lock().unwrap(),
            spans.iter().map(|s| (s.name.clone(), hex(&s.trace_id))).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(receiver.paths.lock().unwrap()[0], "POST /v1/traces");
    assert_eq!(job.parent_span_id, request.span_id, "the job is the request's child");
    assert_ne!(job.span_id, request.span_id);
    assert!(
        request.attributes.iter().any(|a| a.key == "http.response.status_code"),
        "the request span records its status: {:?}",
        request.attributes
    );
    // SIGTERM: the pool stops its workers before `up` exits.
    Command::new("kill").args(["-TERM", &up.0.id().to_string()]).status().unwrap();
    let started = Instant::now();
    while up.0.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
