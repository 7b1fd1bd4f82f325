//! HTTPS for the API: a listener that completes each TLS handshake on its
//! own task (bounded in number and time), so a slow or silent client holds
//! one permit, never the accept loop. Each connection is accepted with the
//! TLS settings current at that moment, so a renewed certificate serves
//! the next connection without a restart.
//!
//! Open connections are bounded too ([`MAX_CONNECTIONS`]; more wait in the
//! kernel's backlog). One that sends nothing within [`FIRST_BYTE_TIMEOUT`]
//! of its handshake, or later moves no byte either way for
//! [`IDLE_TIMEOUT`], is closed: axum serves connections without a header
//! timeout, so without these a client with no token could hold
//! connections, and the node's file descriptors, for ever.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait for the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;
/// Connections open at once, handshakes included.
pub const MAX_CONNECTIONS: usize = 1024;
/// A connection that moves no byte in either direction for this long is
/// closed. Longer than the slowest answer (a pulled set's listing may take
/// 10 minutes) and far longer than an event stream's keep-alive (15 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long a connection may send nothing after its handshake: a client
/// that does not start a request holds a place for this long at most.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);

/// A TCP listener that yields only connections whose TLS handshake completed.
pub struct TlsListener {
    rx: mpsc::Receiver<(Bounded<TlsStream<TcpStream>>, SocketAddr)>,
    addr: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: watch::Receiver<Arc<rustls::ServerConfig>>) -> std::io::Result<TlsListener> {
        let addr = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok(connection) = open.clone().acquire_owned().await else { return };
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors and the like: wait, do not spin.
                        tracing::warn!(error = %e, "API accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = TlsAcceptor::from(config.borrow().clone());
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((Bounded::new(tls, connection), peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "API TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "API TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, addr, accept_task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Bounded<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accept task ended (the listener is being dropped): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// A connection that holds its place among the [`MAX_CONNECTIONS`] until
/// it is dropped, and fails with `TimedOut` if it sent nothing within
/// [`FIRST_BYTE_TIMEOUT`], or once no byte moved either way for
/// [`IDLE_TIMEOUT`].
pub struct Bounded<T> {
    io: T,
    _open: OwnedSemaphorePermit,
    idle: Pin<Box<tokio::time::Sleep>>,
}

impl<T> Bounded<T> {
    fn new(io: T, open: OwnedSemaphorePermit) -> Self {
        Bounded { io, _open: open, idle: Box::pin(tokio::time::sleep(FIRST_BYTE_TIMEOUT)) }
    }

    fn moved(&mut self) {
        self.idle.as_mut().reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
    }

    /// Whether the connection has been idle too long (registers the waker otherwise).
    fn check_idle(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        match self.idle.as_mut().poll(cx) {
            Poll::Ready(()) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the connection is idle")),
            Poll::Pending => Ok(()),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Bounded<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                self.moved();
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                self.check_idle(cx)?;
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Bounded<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                self.check_idle(cx)?;
                Poll::Pending
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_after_its_handshake_is_closed_soon() {
        let open = Arc::new(Semaphore::new(1));
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut conn = Bounded::new(ours, open.clone().try_acquire_owned().expect("a place"));
        let read = tokio::spawn(async move {
            let mut b = [0u8; 1];
            conn.read(&mut b).await
        });
        tokio::time::advance(FIRST_BYTE_TIMEOUT + Duration::from_secs(1)).await;
        let err = read.await.expect("joins").expect_err("timed out");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(open.available_permits(), 1, "its place is free again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_moves_nothing_is_closed_and_gives_its_place_back() {
        let open = Arc::new(Semaphore::new(1));
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut conn = Bounded::new(ours, open.clone().try_acquire_owned().expect("a place"));
        assert_eq!(open.available_permits(), 0, "it holds its place");
        // Bytes either way keep it open past the timeout.
        for _ in 0..3 {
            theirs.write_all(b"x").await.expect("write");
            let mut b = [0u8; 1];
            conn.read_exact(&mut b).await.expect("read");
            conn.write_all(b"y").await.expect("answer");
            tokio::time::advance(IDLE_TIMEOUT / 2).await;
        }
        // Then nothing: the next read fails once the timeout passed.
        let read = tokio::spawn(async move {
            let mut b = [0u8; 1];
            let r = conn.read(&mut b).await;
            drop(conn);
            r
        });
        tokio::time::advance(IDLE_TIMEOUT + Duration::from_secs(1)).await;
        let err = read.await.expect("joins").expect_err("timed out");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(open.available_permits(), 1, "its place is free again");
    }
}
