//! The chaos suite: the production tier (MariaDB primary + replica,
//! memcached; S3/SQS on moto, or the database as the queue) with two
//! `flipstack serve` and two `flipstack work` processes, people uploading
//! back to back, and one fault at a time landing while uploads are in flight:
//! a worker or a server SIGKILLed and started again (as systemd would), and
//! memcached, the replica and the primary stopped for a few seconds. Then a
//! settle phase. The report: accepted, done, failed, unfinished, duplicates
//! seen, failed requests outside the primary's outage, re-sends, settle time.
//!
//! The short form runs in the test command; `FLIPSTACK_CHAOS_SECS=120` gives
//! the longer one whose numbers are in BENCHMARKS.md.
//!
//! Also here: a backlog older than the re-send period never gets copies
//! (issue 17), and `FLIPSTACK_BENCH_BACKLOG=2000`'s drain-rate benchmark.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use flipstack_core::{Config, Services};

/// The queue the chaos runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueKind {
    Sqs,
    Database,
}

fn secs_from_env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The production tier's configuration on private MariaDB and memcached
/// (this test stops them), with the shared moto for S3 and SQS.
async fn chaos_config(services: &PrivateServices, queue: QueueKind, data: &Path) -> Config {
    let mut c = config_for(Tier::Embedded, data).await;
    let primary = services.get("FLIPSTACK_TEST_MYSQL_PRIMARY");
    let db = fresh_database(&primary).await;
    c.database_url = Some(format!("{primary}/{db}"));
    c.replica_urls = vec![format!("{}/{db}", services.get("FLIPSTACK_TEST_MYSQL_REPLICA"))];
    c.cache_url = format!("memcache://{}", services.get("FLIPSTACK_TEST_MEMCACHED"));
    c.admin_token = Some(format!("chaos-{:016x}", rand::random::<u64>()));
    // Short enough that a re-send storm would show within the run.
    c.requeue_after_secs = 3;
    c.job_lease_secs = 3;
    // The pictures on S3 in both variants, as in production; each process
    // has a data folder (spool) of its own, as each machine does.
    let endpoint = env("FLIPSTACK_TEST_AWS_ENDPOINT");
    c.blob_url = Some(format!("s3://{}/chaos{:08x}", env("FLIPSTACK_TEST_BUCKET"), rand::random::<u32>()));
    if queue == QueueKind::Sqs {
        c.queue_url = fresh_queue(&endpoint, 3).await;
    }
    c.aws_endpoint_url = Some(endpoint);
    c
}

/// The configuration as environment variables, with a data folder of its own.
fn process_env(config: &Config, data: &Path, name: &str) -> Vec<(String, String)> {
    let dir = data.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut env = config.to_env();
    env.push(("FLIPSTACK_DATA_DIR".into(), dir.display().to_string()));
    env
}

/// One supervised `flipstack` process, started again when it dies.
struct Supervised {
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: std::path::PathBuf,
    child: Child,
}

impl Supervised {
    fn start(args: &[&str], env: Vec<(String, String)>, log: std::path::PathBuf) -> Supervised {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let child = spawn_flipstack(&args, &env, &log);
        Supervised { args, env, log, child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// Starts it again if it exited; true when it did.
    fn restart_if_dead(&mut self) -> bool {
        if self.child.try_wait().ok().flatten().is_some() {
            self.child = spawn_flipstack(&self.args, &self.env, &self.log);
            return true;
        }
        false
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_flipstack(args: &[String], env: &[(String, String)], log: &Path) -> Child {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_flipstack"))
        .args(args)
        .envs(env.iter().cloned())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("starting flipstack")
}

/// What uploaders and the fault injector share.
#[derive(Default)]
struct Board {
    stop: AtomicBool,
    /// Uploads answered 303.
    accepted: AtomicU64,
    /// Failed (not 303, or no answer from a server that was up) while the primary was down.
    failed_in_outage: AtomicU64,
    /// Failed at any other time: must stay 0.
    failed_outside: AtomicU64,
    /// Cut off by a SIGKILL of the server that had them (the client sends them again).
    cut_by_kill: AtomicU64,
    /// Set from the primary's stop until an upload is accepted after its start.
    primary_down: AtomicBool,
    primary_started: AtomicBool,
    /// Per server: bumped on each kill, and whether it answers again.
    generation: [AtomicUsize; 2],
    ready: [AtomicBool; 2],
    next: AtomicUsize,
}

impl Board {
    /// A server that answers, round robin (what a load balancer does).
    fn pick(&self) -> Option<usize> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..2).map(|i| (start + i) % 2).find(|&i| self.ready[i].load(Ordering::SeqCst))
    }

    /// A failed request; `began_in_outage`: it was sent while the primary was down.
    fn failed(&self, what: String, began_in_outage: bool) {
        if began_in_outage || self.primary_down.load(Ordering::SeqCst) {
            self.failed_in_outage.fetch_add(1, Ordering::Relaxed);
        } else {
            eprintln!("chaos: a request failed outside the primary's outage: {what}");
            self.failed_outside.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn uploader(board: Arc<Board>, bases: Arc<[String; 2]>, lane: u32) {
    // One person per server: a browser signed in on one server is so on the
    // other too, but each keeps its own cookie jar here.
    let person =
        |i: usize| (Browser::new(&bases[i]), format!("chaos-{lane}-{i}-{:08x}@example.com", rand::random::<u32>()));
    let mut people: Vec<(Browser, String)> = (0..2).map(person).collect();
    let picture = png(24 + lane, 20);
    while !board.stop.load(Ordering::SeqCst) {
        let Some(i) = board.pick() else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let generation = board.generation[i].load(Ordering::SeqCst);
        let began_in_outage = board.primary_down.load(Ordering::SeqCst);
        let (b, me) = &people[i];
        let answer = tokio::time::timeout(Duration::from_secs(20), b.try_upload(me, "chaos.png", &picture)).await;
        let killed = board.generation[i].load(Ordering::SeqCst) != generation;
        match answer {
            Ok(Ok(r)) if r.status() == 303 => {
                board.accepted.fetch_add(1, Ordering::Relaxed);
                if board.primary_started.load(Ordering::SeqCst) {
                    board.primary_down.store(false, Ordering::SeqCst);
                }
            }
            Ok(Ok(r)) => {
                let status = r.status();
                let body = page_text(&r.text().await.unwrap_or_default());
                board.failed(format!("server {i} answered {status}: {body}"), began_in_outage);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(_)) if killed => {
                board.cut_by_kill.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => board.failed(format!("server {i}: {e}"), began_in_outage),
            Err(_) => board.failed(format!("server {i} did not answer within 20 s"), began_in_outage),
        }
        if killed {
            // A new visitor: the old one's connection went with the server.
            people[i] = person(i);
        }
    }
}

/// What a page says: the text of its body, tags dropped, cut to 300 characters.
fn page_text(html: &str) -> String {
    let body = html.find("<body").map_or(html, |at| &html[at..]);
    let mut out = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(300).collect()
}

async fn wait_ready(base: &str, within: Duration) -> bool {
    flipstack_core::tls::install_crypto_provider();
    let started = Instant::now();
    while started.elapsed() < within {
        if reqwest::get(format!("{base}/livez")).await.is_ok_and(|r| r.status() == 200) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[derive(Debug, Default)]
struct Report {
    accepted: u64,
    rows: u64,
    done: u64,
    failed: u64,
    unfinished: u64,
    /// Uploads with more than one `done` event.
    done_twice: u64,
    /// The most queue messages seen beyond the distinct unfinished jobs.
    queue_surplus_max: i64,
    queue_visible_end: u64,
    failed_in_outage: u64,
    failed_outside: u64,
    cut_by_kill: u64,
    resent: usize,
    faults: Vec<&'static str>,
    /// Why the failed ones failed (the first few).
    failure_reasons: Vec<String>,
    settle: Duration,
}

async fn sql_count(pool: &mysql_async::Pool, query: &str) -> u64 {
    use mysql_async::prelude::Queryable;
    let mut c = pool.get_conn().await.unwrap();
    c.query_first::<u64, _>(query).await.unwrap().unwrap_or(0)
}

/// The most queue messages (visible + in flight) beyond the distinct unfinished jobs, now.
async fn queue_surplus(observer: &Services) -> Option<i64> {
    let unfinished = observer.store.upload_stats().await.ok()?.unfinished() as i64;
    let depth = observer.queue.depth().await.ok()?;
    Some((depth.visible + depth.in_flight) as i64 - unfinished)
}

async fn chaos(queue: QueueKind) -> Report {
    init_logging();
    let secs = secs_from_env("FLIPSTACK_CHAOS_SECS", 24);
    let services = PrivateServices::start("mariadb,memcached");
    let data = tempfile::tempdir().unwrap();
    let config = chaos_config(&services, queue, data.path()).await;
    // Migrated once here, so the processes start together on a ready schema.
    let observer = Services::connect(config.clone()).await.expect("connecting the observer");
    let ports: Vec<u16> =
        (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let bases: Arc<[String; 2]> = Arc::new([0, 1].map(|i| format!("http://127.0.0.1:{}", ports[i])));
    let mut servers: Vec<Supervised> = (0..2)
        .map(|i| {
            let mut e = process_env(&config, data.path(), &format!("server{i}"));
            e.push(("FLIPSTACK_LISTEN".into(), format!("127.0.0.1:{}", ports[i])));
            Supervised::start(&["serve"], e, data.path().join(format!("server{i}.log")))
        })
        .collect();
    let mut workers: Vec<Supervised> = (0..2)
        .map(|i| {
            let e = process_env(&config, data.path(), &format!("worker{i}"));
            Supervised::start(&["work"], e, data.path().join(format!("worker{i}.log")))
        })
        .collect();
    let board = Arc::new(Board::default());
    for (i, base) in bases.iter().enumerate() {
        assert!(wait_ready(base, Duration::from_secs(60)).await, "server {i} starts");
        board.ready[i].store(true, Ordering::SeqCst);
    }
    let lanes: Vec<_> = (0..4).map(|lane| tokio::spawn(uploader(board.clone(), bases.clone(), lane))).collect();

    // One fault at a time, a few seconds apart, while the uploads go on.
    const FAULTS: [&str; 7] = [
        "kill worker",
        "kill server",
        "memcached outage",
        "kill worker",
        "replica outage",
        "kill server",
        "primary outage",
    ];
    let mut report = Report::default();
    let started = Instant::now();
    let mut next_fault = Instant::now() + Duration::from_secs(2);
    let mut step = 0usize;
    let mut surplus_max = 0i64;
    let mut last_sample = Instant::now();
    let outage = Duration::from_secs(3);
    while started.elapsed() < Duration::from_secs(secs) || step < FAULTS.len() {
        assert!(started.elapsed() < Duration::from_secs(secs + 120), "the faults took too long");
        if Instant::now() >= next_fault {
            let fault = FAULTS[step % FAULTS.len()];
            let which = (step / FAULTS.len() + step) % 2;
            eprintln!("chaos: {:>5.1} s: {fault} ({which})", started.elapsed().as_secs_f64());
            match fault {
                "kill worker" => workers[which].kill(),
                "kill server" => {
                    board.ready[which].store(false, Ordering::SeqCst);
                    board.generation[which].fetch_add(1, Ordering::SeqCst);
                    servers[which].kill();
                }
                "memcached outage" => {
                    services.control("stop", "memcached");
                    tokio::time::sleep(outage).await;
                    services.control("start", "memcached");
                }
                "replica outage" => {
                    services.control("stop", "replica");
                    tokio::time::sleep(outage).await;
                    services.control("start", "replica");
                }
                _ => {
                    board.primary_started.store(false, Ordering::SeqCst);
                    board.primary_down.store(true, Ordering::SeqCst);
                    services.control("stop", "primary");
                    tokio::time::sleep(outage).await;
                    services.control("start", "primary");
                    board.primary_started.store(true, Ordering::SeqCst);
                }
            }
            report.faults.push(fault);
            step += 1;
            next_fault = Instant::now() + Duration::from_millis(rand::random_range(2500..4000));
        }
        // The supervisor: what died starts again (systemd's Restart=always).
        for w in workers.iter_mut() {
            w.restart_if_dead();
        }
        for (i, s) in servers.iter_mut().enumerate() {
            if s.restart_if_dead() {
                let base = bases[i].clone();
                let board = board.clone();
                tokio::spawn(async move {
                    if wait_ready(&base, Duration::from_secs(60)).await {
                        board.ready[i].store(true, Ordering::SeqCst);
                    }
                });
            }
        }
        if queue == QueueKind::Sqs && last_sample.elapsed() > Duration::from_millis(500) {
            if let Some(s) = queue_surplus(&observer).await {
                surplus_max = surplus_max.max(s);
            }
            last_sample = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    board.stop.store(true, Ordering::SeqCst);
    for l in lanes {
        l.await.unwrap();
    }

    // Settle: every accepted upload finishes, bounded.
    // The backlog left by the faults drains at the workers' rate, so the
    // settle phase lasts as long as it keeps shrinking (a long form leaves
    // more), and ends as stuck after a minute without progress.
    let settling = Instant::now();
    let (mut fewest, mut progress_at) = (u64::MAX, Instant::now());
    loop {
        for w in workers.iter_mut() {
            w.restart_if_dead();
        }
        let stats = observer.store.upload_stats().await;
        if let Ok(s) = &stats {
            if s.unfinished() == 0 {
                break;
            }
            if s.unfinished() < fewest {
                (fewest, progress_at) = (s.unfinished(), Instant::now());
            }
        }
        if queue == QueueKind::Sqs
            && let Some(s) = queue_surplus(&observer).await
        {
            surplus_max = surplus_max.max(s);
        }
        if progress_at.elapsed() > Duration::from_secs(60) || settling.elapsed() > Duration::from_secs(600) {
            eprintln!("chaos: not settled: no progress for 60 s or 600 s in all: {stats:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.settle = settling.elapsed();

    let pool = mysql_async::Pool::new(config.database_url.as_deref().unwrap());
    report.rows = sql_count(&pool, "SELECT COUNT(*) FROM uploads").await;
    report.done = sql_count(&pool, "SELECT COUNT(*) FROM uploads WHERE state = 'done'").await;
    report.failed = sql_count(&pool, "SELECT COUNT(*) FROM uploads WHERE state = 'failed'").await;
    report.unfinished = sql_count(&pool, "SELECT COUNT(*) FROM uploads WHERE state IN ('pending', 'processing')").await;
    report.done_twice = sql_count(
        &pool,
        "SELECT COUNT(*) FROM (SELECT upload_id FROM events WHERE kind = 'done' GROUP BY upload_id HAVING COUNT(*) > 1) t",
    )
    .await;
    {
        use mysql_async::prelude::Queryable;
        let mut c = pool.get_conn().await.unwrap();
        report.failure_reasons =
            c.query("SELECT COALESCE(failure_reason, '') FROM uploads WHERE state = 'failed' LIMIT 5").await.unwrap();
    }
    let done_events = sql_count(&pool, "SELECT COUNT(DISTINCT upload_id) FROM events WHERE kind = 'done'").await;
    assert_eq!(done_events, report.done, "every done upload has its done event");
    pool.disconnect().await.ok();
    if queue == QueueKind::Sqs {
        report.queue_visible_end = observer.queue.depth().await.map(|d| d.visible).unwrap_or(u64::MAX);
    }
    report.queue_surplus_max = surplus_max;
    report.accepted = board.accepted.load(Ordering::SeqCst);
    report.failed_in_outage = board.failed_in_outage.load(Ordering::SeqCst);
    report.failed_outside = board.failed_outside.load(Ordering::SeqCst);
    report.cut_by_kill = board.cut_by_kill.load(Ordering::SeqCst);
    drop(workers);
    drop(servers);
    if report.failed_outside > 0 {
        // Why they failed, from the servers' own words.
        for i in 0..2 {
            let log = std::fs::read_to_string(data.path().join(format!("server{i}.log"))).unwrap_or_default();
            for line in log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).take(30) {
                eprintln!("chaos: server {i}: {line}");
            }
        }
    }
    report.resent = (0..2)
        .map(|i| {
            std::fs::read_to_string(data.path().join(format!("worker{i}.log")))
                .unwrap_or_default()
                .matches("re-sent a job whose message was missing")
                .count()
        })
        .sum();
    eprintln!(
        "chaos report ({queue:?} queue, {secs} s of uploads, faults: {}): accepted {} (rows {}), done {}, failed {}, \
         unfinished {}, done twice {}, queue surplus max {} (visible at the end {}), re-sent {}, \
         failed requests outside the primary outage {} (in it {}, cut by a server kill {}), settle {:.1} s; \
         failures: {:?}",
        report.faults.join(", "),
        report.accepted,
        report.rows,
        report.done,
        report.failed,
        report.unfinished,
        report.done_twice,
        report.queue_surplus_max,
        report.queue_visible_end,
        report.resent,
        report.failed_outside,
        report.failed_in_outage,
        report.cut_by_kill,
        report.settle.as_secs_f64(),
        report.failure_reasons
    );
    report
}

fn assert_chaos_held(r: &Report) {
    assert!(r.accepted > 0, "uploads were accepted: {r:?}");
    assert!(r.rows >= r.accepted, "no accepted upload was lost: {r:?}");
    assert_eq!(r.done, r.rows, "every accepted upload ended done: {r:?}");
    assert_eq!(r.done_twice, 0, "no upload was done twice: {r:?}");
    assert_eq!(r.failed_outside, 0, "no request failed outside the primary's outage: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aws_chaos_on_sqs_every_accepted_upload_ends_done_once() {
    Tier::Aws.require();
    let r = chaos(QueueKind::Sqs).await;
    assert_chaos_held(&r);
    // Settled: at most the pending jobs' messages and a few late copies.
    assert!(r.queue_visible_end <= r.unfinished + 3, "the queue holds no pile of copies at the end: {r:?}");
    // A copy comes only of a send the fault cut short of its confirmation:
    // a server killed, or the primary gone, between the send and its record,
    // at most one upload in flight per person uploading (four) each time.
    let cutting = r.faults.iter().filter(|f| **f == "kill server" || **f == "primary outage").count() as i64;
    let bound = 4 * cutting + 4;
    assert!(r.queue_surplus_max <= bound, "the queue never held more than {bound} messages beyond the jobs: {r:?}");
    assert!(r.resent as i64 <= bound, "at most {bound} re-sends, each logged: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_chaos_on_the_database_queue_every_accepted_upload_ends_done_once() {
    Tier::Mariadb.require();
    let r = chaos(QueueKind::Database).await;
    assert_chaos_held(&r);
}

// ---- one reconciler for the fleet ---------------------------------------------

tier_tests!(one_process_of_the_fleet_holds_the_reconciler_lock);

async fn one_process_of_the_fleet_holds_the_reconciler_lock(tier: Tier) {
    init_logging();
    let data = tempfile::tempdir().unwrap();
    let config = config_for(tier, data.path()).await;
    let first = Services::connect(config.clone()).await.unwrap();
    let second = Services::connect(config).await.unwrap();
    let duty = flipstack_worker::RECONCILER_DUTY;
    let mut held = first.store.try_lead(duty).await.unwrap().expect("the first process takes the free lock");
    assert!(held.still_held().await);
    assert!(second.store.try_lead(duty).await.unwrap().is_none(), "a second process does not get it");
    assert!(second.store.try_lead("another-duty").await.unwrap().is_some(), "each duty has its own lock");
    // Given up (the holder stopped or died), another process takes it over.
    drop(held);
    let started = Instant::now();
    let taken = loop {
        if let Some(l) = second.store.try_lead(duty).await.unwrap() {
            break l;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the lock is freed once its holder lets go");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(taken);
}

// ---- a backlog older than the re-send period ---------------------------------

/// Uploads `count` small pictures through the server, 8 at a time.
async fn upload_many(app: &TestApp, count: usize) {
    let lanes = 8;
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let base = app.base.clone();
        tasks.push(tokio::spawn(async move {
            let b = Browser::new(&base);
            let me = format!("backlog-{lane}-{:08x}@example.com", rand::random::<u32>());
            let picture = png(16, 12);
            // Lane `lane` takes every `lanes`-th upload: `count` in all.
            for _ in (lane..count).step_by(lanes) {
                assert_eq!(b.upload(Some(&me), "b.png", &picture).await.status(), 303);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Drains what is queued with `workers` workers, sampling the queue; returns
/// (drain time, the most messages seen beyond the distinct unfinished jobs).
async fn drain(app: &mut TestApp, workers: usize, jobs: u64) -> (Duration, i64) {
    let started = Instant::now();
    for _ in 0..workers {
        app.start_worker().await;
    }
    let mut surplus_max = 0i64;
    loop {
        let unfinished = app.services.store.upload_stats().await.unwrap().unfinished();
        let depth = app.services.queue.depth().await.unwrap();
        surplus_max = surplus_max.max((depth.visible + depth.in_flight) as i64 - unfinished as i64);
        if unfinished == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60 + jobs / 4), "{jobs} jobs drain: {unfinished} left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (started.elapsed(), surplus_max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aws_a_backlog_older_than_the_resend_period_gets_no_copies() {
    Tier::Aws.require();
    const JOBS: usize = 500;
    let mut app = TestApp::spawn_with(Tier::Aws, |c| c.requeue_after_secs = 1, 0).await;
    upload_many(&app, JOBS).await;
    assert_eq!(app.services.store.upload_stats().await.unwrap().unfinished(), JOBS as u64);
    // Older than the re-send period several times over before any worker runs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (took, surplus_max) = drain(&mut app, 2, JOBS as u64).await;
    let depth = app.services.queue.depth().await.unwrap();
    eprintln!(
        "backlog of {JOBS}: drained in {:.1} s, most messages beyond the jobs {surplus_max}, left {depth:?}",
        took.as_secs_f64()
    );
    assert!(surplus_max <= 4, "the queue held ~1 message per job (at most {surplus_max} extra)");
    assert!(depth.visible + depth.in_flight <= 2, "no copies left once drained: {depth:?}");
    app.shutdown().await;
}

/// `FLIPSTACK_BENCH_BACKLOG=2000`: the drain rate of a backlog older than the
/// re-send period beside the same workers' rate with one message per job (a
/// backlog the re-send rule cannot reach: what they do on a queue that holds
/// only fresh jobs), and beside uploads arriving while they run. Numbers in
/// BENCHMARKS.md; nothing timed is asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a benchmark: FLIPSTACK_BENCH_BACKLOG=2000 cargo nextest run --test chaos --run-ignored only bench_backlog_drain_rate (aws tier's services)"]
async fn bench_backlog_drain_rate() {
    let jobs = std::env::var("FLIPSTACK_BENCH_BACKLOG").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(2000);
    // The benchmark runs on the aws tier: start the services and set FLIPSTACK_TEST_TIERS.
    Tier::Aws.require();
    let rate = |d: Duration| jobs as f64 / d.as_secs_f64();
    // A backlog of `jobs`, then two workers drain it; `requeue_after` decides
    // whether the wait makes it older than the re-send period.
    let backlog = |requeue_after: u64| async move {
        let mut app = TestApp::spawn_with(Tier::Aws, |c| c.requeue_after_secs = requeue_after, 0).await;
        let started = Instant::now();
        upload_many(&app, jobs).await;
        let uploads = started.elapsed();
        tokio::time::sleep(Duration::from_secs(4)).await;
        let (took, surplus_max) = drain(&mut app, 2, jobs as u64).await;
        app.shutdown().await;
        (uploads, took, surplus_max)
    };
    // In the order one-per-job, old, old, one-per-job, so that a drift of the
    // services over the run (moto slows as it holds more) weighs on both alike.
    let (uploads, fresh_a, fresh_extra_a) = backlog(3600).await;
    let (_, old_a, old_extra_a) = backlog(1).await;
    let (_, old_b, old_extra_b) = backlog(1).await;
    let (_, fresh_b, fresh_extra_b) = backlog(3600).await;
    let (fresh, old) = ((fresh_a + fresh_b) / 2, (old_a + old_b) / 2);
    let (fresh_extra, old_extra) = (fresh_extra_a.max(fresh_extra_b), old_extra_a.max(old_extra_b));
    eprintln!(
        "bench: drains one-per-job {:.1} s, old {:.1} s, old {:.1} s, one-per-job {:.1} s",
        fresh_a.as_secs_f64(),
        old_a.as_secs_f64(),
        old_b.as_secs_f64(),
        fresh_b.as_secs_f64()
    );
    // Uploads arriving while the workers run: the queue stays near empty.
    let mut app = TestApp::spawn_with(Tier::Aws, |c| c.requeue_after_secs = 1, 2).await;
    let started = Instant::now();
    upload_many(&app, jobs).await;
    let (rest, _) = drain(&mut app, 0, jobs as u64).await;
    let live = started.elapsed();
    app.shutdown().await;
    eprintln!(
        "bench: {jobs} jobs, 2 workers. uploads alone {:.1} s ({:.1}/s). \
         one message per job (re-send period 3600 s), mean of two: {:.1} s = {:.1} jobs/s, most extra messages {fresh_extra}. \
         backlog older than the re-send period (1 s, waited 4 s), mean of two: {:.1} s = {:.1} jobs/s, most extra messages {old_extra}. \
         old / one-per-job = {:.2}. uploads arriving while they run: {:.1} s = {:.1} jobs/s ({:.1} s after the last upload)",
        uploads.as_secs_f64(),
        rate(uploads),
        fresh.as_secs_f64(),
        rate(fresh),
        old.as_secs_f64(),
        rate(old),
        rate(old) / rate(fresh),
        live.as_secs_f64(),
        rate(live),
        rest.as_secs_f64()
    );
}
