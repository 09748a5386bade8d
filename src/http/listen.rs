//! The listeners: how connections are taken, bounded and closed, over plain HTTP or TLS.
//!
//! A client that opens connections and then sends nothing, or a header a byte at a time
//! (slowloris), would otherwise hold a task and a file descriptor each for ever, until
//! the process runs out of descriptors and the log can no longer open a file. So every
//! connection has [`Limits::header_read_timeout`] to send each request's head (this also
//! closes keep-alive connections idle that long), and at most [`Limits::max_connections`]
//! are open at once: at the cap the accept loop waits for a slot, so a flood queues in
//! the kernel's backlog instead of in our memory. A peer that stops taking what it is
//! sent (a stalled event stream, export or backup) is cut off after
//! [`Limits::write_stall_timeout`]: a response it holds would otherwise hold its task,
//! its stream slot or blocking thread, and outlive the revocation of its token.

use axum::extract::Request;
use axum::Router;
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// How long a stopping server waits for open connections (event streams, say).
const GRACE: Duration = Duration::from_secs(30);

/// What one listener allows its clients.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time for a connection's first request, and for each later request's head.
    pub header_read_timeout: Duration,
    /// Time a peer may take no byte of what it is sent before it is cut off.
    pub write_stall_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(20),
            write_stall_timeout: Duration::from_secs(60),
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
    // HTTP/2 has no wait for a next request's head to time: an idle connection is pinged
    // instead, and one that does not answer in as long is closed (else a client served
    // once could keep its slot in silence for ever).
    server
        .http_builder()
        .http2()
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    let sockets = WriteStallAcceptor(limits.write_stall_timeout);
    match tls {
        None => server.acceptor(sockets).serve(connections).await,
        Some(tls) => {
            // The handshake has rustls's own timeout (10 s) in `RustlsAcceptor`.
            let acceptor = RustlsAcceptor::new(tls).acceptor(sockets);
            server.acceptor(acceptor).serve(connections).await
        }
    }
}

/// Accepts TCP connections with `TCP_NODELAY`, each under a write stall timeout.
#[derive(Clone, Copy)]
struct WriteStallAcceptor(Duration);

impl<S> Accept<TcpStream, S> for WriteStallAcceptor {
    type Stream = WriteStall<TcpStream>;
    type Service = S;
    type Future = std::future::Ready<std::io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let stalled = WriteStall {
            inner: stream,
            limit: self.0,
            since: None,
        };
        std::future::ready(stalled.inner.set_nodelay(true).map(|_| (stalled, service)))
    }
}

/// A connection whose writes fail once the peer has taken nothing for `limit`.
struct WriteStall<S> {
    inner: S,
    limit: Duration,
    /// Running while a write waits for the peer; gone once one goes through.
    since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteStall<S> {
    fn waited<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.since = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = self.limit;
                let since = self
                    .since
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match since.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the peer took nothing of what it was sent",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteStall<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStall<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.waited(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.waited(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.waited(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
