//! The HTTP listener: hyper's connection driver with the limits a server
//! facing strangers needs (warp's own `serve` sets none of them):
//!
//! - a request's headers must arrive within `header_timeout` (slowloris);
//! - a connection with no request in flight and no traffic for
//!   `idle_timeout` is closed (idle keep-alive, a client that connects and
//!   says nothing);
//! - every request ends within `request_deadline`, body and answer included;
//! - at most `max_connections` connections, and `max_per_client` from one
//!   peer address: past either the new connection is closed at once;
//! - graceful shutdown: stop accepting, let requests in flight end.
//!
//! The peer address travels to the filters as a request extension
//! ([`PeerAddr`]), which no client can set.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;
use warp::http::{HeaderValue, StatusCode};

/// The TCP peer of a request (the load balancer, behind one).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The peer address of a request, as `warp::addr::remote` gives it under `warp::serve`.
pub fn remote() -> impl warp::Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Clone {
    use warp::Filter;
    warp::ext::optional::<PeerAddr>().map(|p: Option<PeerAddr>| p.map(|p| p.0))
}

#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_deadline: Duration,
    pub max_connections: usize,
    pub max_per_client: usize,
}

impl ListenerLimits {
    pub fn from_config(c: &flipstack_core::Config) -> ListenerLimits {
        ListenerLimits {
            header_timeout: Duration::from_secs(c.header_timeout_secs),
            idle_timeout: Duration::from_secs(c.idle_timeout_secs),
            request_deadline: Duration::from_secs(c.request_deadline_secs),
            max_connections: c.max_connections as usize,
            max_per_client: c.max_connections_per_client as usize,
        }
    }
}

/// Connections open now, in all and per peer address.
pub struct ConnectionCounts {
    total: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    metrics: Arc<flipstack_core::metrics::Metrics>,
}

impl ConnectionCounts {
    pub fn new(metrics: Arc<flipstack_core::metrics::Metrics>) -> ConnectionCounts {
        ConnectionCounts { total: AtomicUsize::new(0), per_client: Mutex::new(HashMap::new()), metrics }
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn admit(self: &Arc<Self>, ip: IpAddr, limits: &ListenerLimits) -> Option<ConnectionSlot> {
        let mut per = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let mine = per.get(&ip).copied().unwrap_or(0);
        if self.total.load(Ordering::Relaxed) >= limits.max_connections || mine >= limits.max_per_client {
            self.metrics.connections_refused.inc();
            return None;
        }
        per.insert(ip, mine + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(ConnectionSlot { counts: self.clone(), ip })
    }
}

/// One admitted connection; gives its place back when dropped.
struct ConnectionSlot {
    counts: Arc<ConnectionCounts>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.counts.total.fetch_sub(1, Ordering::Relaxed);
        let mut per = self.counts.per_client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
    }
}

/// The service a connection runs: warp's routes as a hyper service.
pub trait HttpService:
    hyper::service::Service<
        warp::http::Request<hyper::Body>,
        Response = warp::http::Response<hyper::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> HttpService for S where
    S: hyper::service::Service<
            warp::http::Request<hyper::Body>,
            Response = warp::http::Response<hyper::Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Serves `service` (`warp::service(routes)`) on `listener` until `stop`
/// turns true; then lets open connections finish their requests. The
/// returned future ends when all have.
pub async fn serve(
    listener: TcpListener,
    service: impl HttpService,
    limits: ListenerLimits,
    counts: Arc<ConnectionCounts>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            changed = stop.changed() => if changed.is_err() || *stop.borrow() { break },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: pause instead of spinning.
                        tracing::warn!(error = %e, "could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(slot) = counts.admit(peer.ip(), &limits) else {
                    tracing::debug!(%peer, "connection refused: too many open connections");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                conns.spawn(connection(stream, peer, slot, service.clone(), limits, counts.clone(), stop.clone()));
            }
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    _slot: ConnectionSlot,
    service: impl HttpService,
    limits: ListenerLimits,
    counts: Arc<ConnectionCounts>,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Activity::new();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let deadline = limits.request_deadline;
    let svc = {
        let in_flight = in_flight.clone();
        hyper::service::service_fn(move |mut req: warp::http::Request<hyper::Body>| {
            req.extensions_mut().insert(PeerAddr(peer));
            let busy = InFlight::new(in_flight.clone());
            let mut inner = service.clone();
            let span = request_span(&req);
            let answered = span.clone();
            async move {
                let _busy = busy;
                let r = match tokio::time::timeout(deadline, inner.call(req)).await {
                    Ok(r) => r,
                    Err(_) => Ok(too_slow()),
                };
                if let Ok(response) = &r {
                    answered.record("http.response.status_code", response.status().as_u16());
                }
                r
            }
            .instrument(span)
        })
    };
    let mut http = hyper::server::conn::Http::new();
    http.http1_only(true).http1_header_read_timeout(limits.header_timeout).max_buf_size(64 * 1024);
    let conn = http.serve_connection(Tracked { io: stream, activity: activity.clone() }, svc);
    tokio::pin!(conn);
    let tick = (limits.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    let mut quiet = Quiet::new(&activity);
    let mut shutting_down = *stop.borrow();
    if shutting_down {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    // hyper 0.14 does not class its header timeout under `is_timeout`.
                    if e.is_timeout() || e.to_string().contains("timeout") {
                        counts.metrics.connections_timed_out.inc();
                    }
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = stop.changed(), if !shutting_down => {
                if changed.is_err() || *stop.borrow() {
                    shutting_down = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = ticker.tick() => {
                if quiet.for_now(&activity) >= limits.idle_timeout && in_flight.load(Ordering::Relaxed) == 0 {
                    counts.metrics.connections_timed_out.inc();
                    tracing::debug!(%peer, "closing an idle connection");
                    return;
                }
            }
        }
    }
}

/// A span per request while traces are exported (none otherwise): named by
/// method and route pattern (`GET /gallery`, never a stranger's path), and
/// continuing the caller's trace when the request carries a `traceparent`.
fn request_span(req: &warp::http::Request<hyper::Body>) -> tracing::Span {
    if !flipstack_core::trace::exporting() {
        return tracing::Span::none();
    }
    let route = crate::route_name(req.uri().path());
    let name = format!("{} {route}", req.method());
    let span = tracing::info_span!(
        "request",
        otel.name = name.as_str(),
        otel.kind = "server",
        http.request.method = req.method().as_str(),
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(parent) = req.headers().get("traceparent").and_then(|v| v.to_str().ok()) {
        flipstack_core::trace::continue_trace(&span, parent);
    }
    span
}

fn too_slow() -> warp::http::Response<hyper::Body> {
    let mut r =
        warp::http::Response::new(hyper::Body::from("The request took too long and was stopped. Please try again."));
    *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
    r.headers_mut().insert("content-type", HeaderValue::from_static("text/plain; charset=utf-8"));
    r.headers_mut().insert("connection", HeaderValue::from_static("close"));
    r
}

/// Requests of a connection being answered now.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(n: Arc<AtomicUsize>) -> InFlight {
        n.fetch_add(1, Ordering::Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a connection moves bytes: a count bumped on each read or write
/// (no clock read on the request path); the connection's ticker notices when
/// it stops changing.
#[derive(Clone)]
struct Activity(Arc<AtomicU64>);

impl Activity {
    fn new() -> Activity {
        Activity(Arc::new(AtomicU64::new(0)))
    }

    fn touch(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How long a connection has been quiet, as seen from its ticker.
struct Quiet {
    seen: u64,
    since: Instant,
}

impl Quiet {
    fn new(activity: &Activity) -> Quiet {
        Quiet { seen: activity.count(), since: Instant::now() }
    }

    /// Quiet for this long now (zero when bytes moved since the last look).
    fn for_now(&mut self, activity: &Activity) -> Duration {
        let count = activity.count();
        if count != self.seen {
            self.seen = count;
            self.since = Instant::now();
        }
        self.since.elapsed()
    }
}

/// The TCP stream, noting each byte that moves.
struct Tracked {
    io: TcpStream,
    activity: Activity,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
