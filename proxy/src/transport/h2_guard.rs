//! A guard against HTTP/2 control-frame floods, below hyper and h2.
//!
//! h2 answers each PING and SETTINGS frame with an acknowledgement and
//! reads the next frame only once the last one is queued, so a flood is
//! bounded in memory, but it is never refused: a client that reads its
//! acknowledgements can send PING or SETTINGS frames for ever. This IO
//! wrapper reads the frame headers of a client's connection as its bytes
//! pass (the payloads are skipped), takes a token from a bucket for every
//! PING or SETTINGS frame that is not an acknowledgement, and when the
//! bucket is empty sends GOAWAY with `ENHANCE_YOUR_CALM` (the last stream
//! the client opened as the last stream id) and ends the connection with
//! an error. It also follows the frames the server writes, so that the
//! GOAWAY goes out between two of them, never inside one.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use outrigger_proxy_policy::rate_limit::TokenBucket;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 §3.4), before its first frame.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
/// RFC 9113 §7: the peer may be generating excessive load.
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The 9-byte header of one frame (RFC 9113 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHead {
    fn parse(b: &[u8; FRAME_HEADER_LEN]) -> Self {
        Self {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    /// A PING or SETTINGS frame that asks for an acknowledgement.
    pub fn is_control(&self) -> bool {
        matches!(self.kind, PING | SETTINGS) && self.flags & ACK == 0
    }
}

/// Where a byte stream of frames is: pure, fed bytes as they pass.
#[derive(Clone, Debug)]
pub struct FrameScanner {
    /// Bytes of a preface still to skip.
    preface: usize,
    head: [u8; FRAME_HEADER_LEN],
    have: usize,
    /// Payload bytes of the current frame still to skip.
    payload: usize,
}

impl FrameScanner {
    /// A client's stream (the preface, then frames).
    pub fn client() -> Self {
        Self::skipping(PREFACE_LEN)
    }

    /// A server's stream (frames only).
    pub fn server() -> Self {
        Self::skipping(0)
    }

    fn skipping(preface: usize) -> Self {
        Self {
            preface,
            head: [0; FRAME_HEADER_LEN],
            have: 0,
            payload: 0,
        }
    }

    /// Whether the bytes so far end exactly between two frames.
    pub fn at_boundary(&self) -> bool {
        self.preface == 0 && self.have == 0 && self.payload == 0
    }

    /// Reads `bytes`, calling `on_head` for each frame header completed.
    pub fn feed(&mut self, mut bytes: &[u8], mut on_head: impl FnMut(FrameHead)) {
        while !bytes.is_empty() {
            if self.preface > 0 {
                let n = self.preface.min(bytes.len());
                self.preface -= n;
                bytes = &bytes[n..];
            } else if self.payload > 0 {
                let n = self.payload.min(bytes.len());
                self.payload -= n;
                bytes = &bytes[n..];
            } else {
                let n = (FRAME_HEADER_LEN - self.have).min(bytes.len());
                self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == FRAME_HEADER_LEN {
                    self.have = 0;
                    let head = FrameHead::parse(&self.head);
                    self.payload = head.len as usize;
                    on_head(head);
                }
            }
        }
    }
}

/// A GOAWAY frame: `last_stream`, `code`, and a reason as debug data.
pub fn goaway(last_stream: u32, code: u32, reason: &[u8]) -> Vec<u8> {
    let len = 8 + reason.len() as u32;
    let mut f = Vec::with_capacity(FRAME_HEADER_LEN + len as usize);
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(&[GOAWAY, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&(last_stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(reason);
    f
}

/// A server-side HTTP/2 connection's IO, its control frames budgeted.
pub struct H2Guard<I> {
    io: I,
    incoming: FrameScanner,
    outgoing: FrameScanner,
    bucket: TokenBucket,
    last_stream: u32,
    flooded: bool,
    /// Whether the server (hyper, draining) has sent a GOAWAY of its own:
    /// then no second one, whose last stream id could be higher than the
    /// first's (RFC 9113 §6.8 forbids raising it).
    server_goaway: bool,
    /// Whether the GOAWAY was tried (once).
    told: bool,
    peer: std::net::SocketAddr,
}

impl<I> H2Guard<I> {
    /// At most `per_second` PING and SETTINGS frames a second from
    /// `peer`, as a bucket of as many.
    pub fn new(io: I, per_second: u32, peer: std::net::SocketAddr) -> Self {
        Self {
            io,
            incoming: FrameScanner::client(),
            outgoing: FrameScanner::server(),
            bucket: TokenBucket::new(per_second, per_second, Duration::from_secs(1)),
            last_stream: 0,
            flooded: false,
            server_goaway: false,
            told: false,
            peer,
        }
    }
}

fn flood_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "HTTP/2 control-frame flood (PING or SETTINGS past the limit): GOAWAY ENHANCE_YOUR_CALM",
    )
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for H2Guard<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.flooded {
            // The frames read so far were handed on; this read ends the
            // connection, with a GOAWAY if it can go out whole, now.
            if !this.told {
                this.told = true;
                tracing::warn!(peer = %this.peer, "HTTP/2 control-frame flood: GOAWAY ENHANCE_YOUR_CALM, closing");
                if this.outgoing.at_boundary() && !this.server_goaway {
                    let frame = goaway(this.last_stream, ENHANCE_YOUR_CALM, b"control frame flood");
                    // As much of it as the socket takes now: the connection
                    // ends with this read either way.
                    let mut sent = 0;
                    while sent < frame.len() {
                        match Pin::new(&mut this.io).poll_write(cx, &frame[sent..]) {
                            Poll::Ready(Ok(n)) if n > 0 => sent += n,
                            _ => break,
                        }
                    }
                    if sent == frame.len() {
                        let _ = Pin::new(&mut this.io).poll_flush(cx);
                    }
                }
            }
            return Poll::Ready(Err(flood_error()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        let (bucket, last_stream, flooded) =
            (&this.bucket, &mut this.last_stream, &mut this.flooded);
        this.incoming.feed(&buf.filled()[before..], |head| {
            if head.kind == HEADERS {
                *last_stream = (*last_stream).max(head.stream);
            } else if head.is_control() && bucket.take().is_err() {
                *flooded = true;
            }
        });
        res
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for H2Guard<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            let goaway_sent = &mut this.server_goaway;
            this.outgoing
                .feed(&buf[..n], |head| *goaway_sent |= head.kind == GOAWAY);
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = res {
            for b in bufs {
                let take = n.min(b.len());
                let goaway_sent = &mut this.server_goaway;
                this.outgoing
                    .feed(&b[..take], |head| *goaway_sent |= head.kind == GOAWAY);
                n -= take;
                if n == 0 {
                    break;
                }
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

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frame_heads_are_found_across_any_split_of_the_bytes() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[0; 6]));
        bytes.extend(frame(HEADERS, 0x5, 3, b"\x82\x86\x84"));
        bytes.extend(frame(PING, ACK, 0, &[7; 8]));
        bytes.extend(frame(PING, 0, 0, &[1; 8]));
        let want = vec![
            (SETTINGS, 0, 0, 6),
            (HEADERS, 0x5, 3, 3),
            (PING, ACK, 0, 8),
            (PING, 0, 0, 8),
        ];
        for chunk in 1..=bytes.len() {
            let mut s = FrameScanner::client();
            let mut seen = Vec::new();
            for piece in bytes.chunks(chunk) {
                s.feed(piece, |h| seen.push((h.kind, h.flags, h.stream, h.len)));
            }
            assert_eq!(seen, want, "chunks of {chunk}");
            assert!(s.at_boundary());
        }
        let mut s = FrameScanner::server();
        s.feed(&frame(PING, 0, 0, &[1; 8])[..12], |_| {});
        assert!(!s.at_boundary(), "mid-payload");
    }

    #[test]
    fn only_pings_and_settings_that_want_an_ack_are_control_frames() {
        let head = |kind, flags| FrameHead {
            len: 0,
            kind,
            flags,
            stream: 0,
        };
        assert!(head(PING, 0).is_control());
        assert!(head(SETTINGS, 0).is_control());
        assert!(!head(PING, ACK).is_control());
        assert!(!head(SETTINGS, ACK).is_control());
        assert!(!head(HEADERS, 0).is_control());
    }

    #[test]
    fn a_goaway_frame_is_laid_out_as_rfc_9113_says() {
        let f = goaway(7, ENHANCE_YOUR_CALM, b"x");
        assert_eq!(
            f,
            [0, 0, 9, 7, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 11, b'x']
        );
    }

    /// Over a real pipe: past the budget the next read fails and the
    /// client is sent GOAWAY ENHANCE_YOUR_CALM naming its last stream.
    #[tokio::test(start_paused = true)]
    async fn past_the_budget_the_client_gets_goaway_and_the_read_fails() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (server, mut client) = tokio::io::duplex(1 << 16);
        let mut guard = H2Guard::new(server, 3, ([127, 0, 0, 1], 1).into());
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        hello.extend(frame(HEADERS, 0x5, 5, b"\x82"));
        hello.extend(frame(PING, 0, 0, &[0; 8]));
        client.write_all(&hello).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = guard.read(&mut buf).await.unwrap();
        assert_eq!(n, hello.len(), "within the budget (2 of 3)");
        // One more is the budget; the one after that is a flood.
        let mut more = frame(PING, 0, 0, &[0; 8]);
        more.extend(frame(SETTINGS, 0, 0, &[]));
        client.write_all(&more).await.unwrap();
        assert!(
            guard.read(&mut buf).await.is_ok(),
            "the frames read are handed on"
        );
        let err = guard.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        let want = goaway(5, ENHANCE_YOUR_CALM, b"control frame flood");
        let mut sent = vec![0u8; want.len()];
        client.read_exact(&mut sent).await.unwrap();
        assert_eq!(sent, want);
    }

    /// A server already going away (a drain's GOAWAY, last stream 1) is
    /// never followed by the guard's own GOAWAY, whose last stream (the
    /// client's, 5) would be higher: the connection just ends.
    #[tokio::test(start_paused = true)]
    async fn after_the_servers_goaway_a_flood_ends_the_connection_without_a_second() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (server, mut client) = tokio::io::duplex(1 << 16);
        let mut guard = H2Guard::new(server, 1, ([127, 0, 0, 1], 1).into());
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(HEADERS, 0x5, 5, b"\x82"));
        client.write_all(&hello).await.unwrap();
        let mut buf = vec![0u8; 4096];
        assert_eq!(guard.read(&mut buf).await.unwrap(), hello.len());
        let drain = goaway(1, 0, b"");
        guard.write_all(&drain).await.unwrap();
        let mut flood = frame(PING, 0, 0, &[0; 8]);
        flood.extend(frame(PING, 0, 0, &[0; 8]));
        client.write_all(&flood).await.unwrap();
        assert!(guard.read(&mut buf).await.is_ok());
        let err = guard.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        drop(guard);
        let mut sent = Vec::new();
        client.read_to_end(&mut sent).await.unwrap();
        assert_eq!(sent, drain, "the server's GOAWAY only");
    }

    /// The budget is a rate: a client that pings steadily within it is
    /// never refused.
    #[tokio::test(start_paused = true)]
    async fn pings_within_the_rate_pass_for_ever() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (server, mut client) = tokio::io::duplex(1 << 16);
        let mut guard = H2Guard::new(server, 3, ([127, 0, 0, 1], 1).into());
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        assert_eq!(guard.read(&mut buf).await.unwrap(), 24);
        for _ in 0..10 {
            let three: Vec<u8> = (0..3).flat_map(|_| frame(PING, 0, 0, &[0; 8])).collect();
            client.write_all(&three).await.unwrap();
            let n = guard.read(&mut buf).await.unwrap();
            assert_eq!(n, three.len());
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        client.write_all(&frame(PING, 0, 0, &[0; 8])).await.unwrap();
        assert!(guard.read(&mut buf).await.is_ok(), "still within the rate");
    }
}
