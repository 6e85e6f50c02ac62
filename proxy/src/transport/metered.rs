//! An IO that tells an [`Observer`] of the bytes it reads and writes as
//! they pass: counted into metrics ([`Meter`]), or noted as activity for an
//! idle timeout (`transport::idle::Activity`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What an [`Observed`] IO reports to; called only for a non-zero count.
pub trait Observer {
    /// `n` bytes were received from the peer.
    fn read(&self, n: usize);
    /// `n` bytes were sent to the peer.
    fn written(&self, n: usize);
}

pub struct Observed<I, O> {
    io: I,
    observer: O,
}

impl<I, O: Observer> Observed<I, O> {
    pub fn new(io: I, observer: O) -> Self {
        Self { io, observer }
    }
}

/// Bytes counted into two counters.
pub struct Meter {
    read: Counter,
    written: Counter,
}

impl Observer for Meter {
    fn read(&self, n: usize) {
        self.read.inc_by(n as u64);
    }

    fn written(&self, n: usize) {
        self.written.inc_by(n as u64);
    }
}

/// An IO whose bytes are counted as they pass.
pub type MeteredIo<I> = Observed<I, Meter>;

impl<I> Observed<I, Meter> {
    /// `read` counts bytes received from the peer, `written` bytes sent to it.
    pub fn metered(io: I, read: Counter, written: Counter) -> Self {
        Self::new(io, Meter { read, written })
    }
}

impl<I: AsyncRead + Unpin, O: Observer + Unpin> AsyncRead for Observed<I, O> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.observer.read(n);
        }
        res
    }
}

impl<I: AsyncWrite + Unpin, O: Observer + Unpin> AsyncWrite for Observed<I, O> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                self.observer.written(n);
            }
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            if n > 0 {
                self.observer.written(n);
            }
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_both_directions() {
        let (mut peer, io) = tokio::io::duplex(64);
        let (read, written) = (Counter::default(), Counter::default());
        let mut io = MeteredIo::metered(io, read.clone(), written.clone());
        peer.write_all(b"12345").await.unwrap();
        let mut buf = [0u8; 5];
        io.read_exact(&mut buf).await.unwrap();
        io.write_all(b"abc").await.unwrap();
        assert_eq!(read.get(), 5);
        assert_eq!(written.get(), 3);
    }
}
