//! The listeners: how connections are taken, bounded and closed, over plain HTTP or TLS.
//!
//! A client that opens connections and then sends nothing, or a header a byte at a time
//! (slowloris), would otherwise hold a task and a file descriptor each for ever, until
//! the process runs out of descriptors and the log can no longer open a file. So every
//! connection has [`Limits::header_read_timeout`] to send each request's head (this also
//! closes keep-alive connections idle that long), and at most [`Limits::max_connections`]
//! are open at once: at the cap the accept loop waits for a slot, so a flood queues in
//! the kernel's backlog instead of in our memory.

use axum::extract::Request;
use axum::Router;
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// How long a stopping server waits for open connections (event streams, say).
const GRACE: Duration = Duration::from_secs(30);

/// What one listener allows its clients.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time for a connection's first request, and for each later request's head.
    pub header_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(20),
            max_connections: 4096,
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, over TLS when `tls` is given (it may be
/// reloaded meanwhile; every answer then carries `Strict-Transport-Security`). On
/// shutdown no new connection is taken and in-flight requests get [`GRACE`] to finish.
pub async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<RustlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let handle = axum_server::Handle::new();
    let stopping = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping.graceful_shutdown(Some(GRACE));
    });
    crate::metrics::connections_allowed(limits.max_connections);
    let app = match tls {
        Some(_) => app.layer(axum::middleware::map_response(strict_transport)),
        None => app,
    };
    let connections = MakeConnection::new(app, limits.max_connections);
    let mut server = axum_server::from_tcp(listener)?
        .handle(handle)
        // Hyper's protocol detection and an HTTP/2 client's first request have no timeout
        // of their own.
        .first_request_timeout(limits.header_read_timeout);
    server
        .http_builder()
        .http1()
        .header_read_timeout(limits.header_read_timeout);
    match tls {
        None => {
            let server = server.acceptor(NoDelayAcceptor::new());
            server.serve(connections).await
        }
        Some(tls) => {
            // The handshake has rustls's own timeout (10 s) in `RustlsAcceptor`.
            let acceptor = RustlsAcceptor::new(tls).acceptor(NoDelayAcceptor::new());
            server.acceptor(acceptor).serve(connections).await
        }
    }
}

/// A year; no `includeSubDomains`, since the parent domain's other hosts are not ours.
async fn strict_transport(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        axum::http::header::STRICT_TRANSPORT_SECURITY,
        axum::http::HeaderValue::from_static("max-age=31536000"),
    );
    response
}

type Waiting = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// Makes each accepted connection's service; not ready while every slot is taken, which
/// holds the accept loop.
struct MakeConnection {
    app: Router,
    slots: Arc<Semaphore>,
    waiting: Option<Waiting>,
    held: Option<Slot>,
}

impl MakeConnection {
    fn new(app: Router, max: usize) -> MakeConnection {
        MakeConnection {
            app,
            slots: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
            waiting: None,
            held: None,
        }
    }
}

impl tower_service::Service<SocketAddr> for MakeConnection {
    type Response = Connection;
    type Error = AcquireError;
    type Future = std::future::Ready<Result<Connection, AcquireError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), AcquireError>> {
        if self.held.is_some() {
            return Poll::Ready(Ok(()));
        }
        let slots = &self.slots;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(slots.clone().acquire_owned()));
        let permit = std::task::ready!(waiting.as_mut().poll(cx));
        self.waiting = None;
        self.held = Some(Slot::taken(permit?));
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: SocketAddr) -> Self::Future {
        std::future::ready(Ok(Connection {
            app: self.app.clone(),
            _slot: self.held.take().map(Arc::new),
        }))
    }
}

/// A taken slot; freed when the connection's service (with its last request) is gone.
struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    fn taken(permit: OwnedSemaphorePermit) -> Slot {
        crate::metrics::connection_opened();
        Slot { _permit: permit }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        crate::metrics::connection_closed();
    }
}

/// One connection's service: the app, and the slot it holds.
#[derive(Clone)]
struct Connection {
    app: Router,
    _slot: Option<Arc<Slot>>,
}

impl tower_service::Service<Request<hyper::body::Incoming>> for Connection {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = <Router as tower_service::Service<Request<hyper::body::Incoming>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::<Request<hyper::body::Incoming>>::poll_ready(&mut self.app, cx)
    }

    fn call(&mut self, req: Request<hyper::body::Incoming>) -> Self::Future {
        tower_service::Service::call(&mut self.app, req)
    }
}
