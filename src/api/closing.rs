//! Connections that end with the node: a listener wrapper whose
//! connections fail every read and write once the node has been shutting
//! down for [`GRACE`]. Without it a client that stops reading (an event
//! stream it no longer consumes) would keep its connection task, and
//! through it the node's state and the store's lock, after the node stopped:
//! axum waits for every connection in a graceful shutdown, and hyper does
//! not poll a response body whose client does not read.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// How long answers under way may still finish after the shutdown began.
pub const GRACE: Duration = Duration::from_secs(2);

/// A listener whose connections are [`Closing`].
pub struct ClosingListener<L> {
    inner: L,
    shutdown: watch::Receiver<bool>,
}

impl<L> ClosingListener<L> {
    pub fn new(inner: L, shutdown: watch::Receiver<bool>) -> Self {
        ClosingListener { inner, shutdown }
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for ClosingListener<L> {
    type Io = Closing<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        (Closing::new(io, self.shutdown.clone()), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection that fails with `ConnectionAborted` once the node has been
/// shutting down for [`GRACE`].
pub struct Closing<T> {
    io: T,
    ended: Signal,
    over: bool,
}

impl<T> Closing<T> {
    fn new(io: T, mut shutdown: watch::Receiver<bool>) -> Self {
        let ended = Box::pin(async move {
            // A dropped sender means the node is gone too.
            let _ = shutdown.wait_for(|s| *s).await;
            tokio::time::sleep(GRACE).await;
        });
        Closing { io, ended, over: false }
    }

    /// Whether the connection must end now (registers the waker otherwise).
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.over && self.ended.as_mut().poll(cx).is_ready() {
            self.over = true;
        }
        match self.over {
            true => Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the node shut down")),
            false => Ok(()),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Closing<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Closing<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
