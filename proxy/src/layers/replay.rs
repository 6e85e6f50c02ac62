//! A request body that can be sent more than once, for retries.
//!
//! The first try streams the client's body as it arrives (nothing waits for
//! the whole body) and keeps a copy of what passed, up to a limit. A retry
//! gets a clone that replays the copy and then, if the first try did not
//! read the body to its end, goes on reading the client's body from where
//! the first try stopped. Past the limit the copy is dropped and the body
//! can no longer be replayed: such a request is not retried.
//!
//! Only one clone reads at a time: a clone takes the shared state when it is
//! first polled and gives it back when dropped. [`ReplayBody::try_clone`]
//! refuses while another clone still holds it (a connection task that has not
//! let go of the previous try's body yet).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::svc::{Body, BoxError};

/// Bodies up to this size are kept for replay: 64 KiB.
pub const MAX_REPLAY_BYTES: usize = 64 * 1024;

pub struct ReplayBody {
    shared: Arc<Mutex<Option<State>>>,
    /// The state, while this clone is the one reading.
    state: Option<State>,
    /// How many buffered chunks this clone has replayed.
    replayed: usize,
    /// Seen the end (data and trailers) on this clone.
    done: bool,
}

struct State {
    /// The rest of the client's body; `None` once it has ended.
    rest: Option<Body>,
    /// Every chunk read from the client so far (cleared on overflow).
    chunks: Vec<Bytes>,
    len: usize,
    trailers: Option<HeaderMap>,
    limit: usize,
    overflowed: bool,
}

impl ReplayBody {
    pub fn new(body: Body, limit: usize) -> Self {
        let state = State {
            rest: Some(body),
            chunks: Vec::new(),
            len: 0,
            trailers: None,
            limit,
            overflowed: false,
        };
        Self {
            shared: Arc::new(Mutex::new(Some(state))),
            state: None,
            replayed: 0,
            done: false,
        }
    }

    /// A body for one more try, or `None` when the body cannot be replayed:
    /// it outgrew the limit, or a previous try still holds it.
    pub fn try_clone(&self) -> Option<Self> {
        let guard = self.shared.lock().expect("replay lock");
        match &*guard {
            Some(s) if !s.overflowed => Some(Self {
                shared: self.shared.clone(),
                state: None,
                replayed: 0,
                done: false,
            }),
            _ => None,
        }
    }
}

impl Drop for ReplayBody {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            if let Ok(mut g) = self.shared.lock() {
                *g = Some(state);
            }
        }
    }
}

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.state.is_none() {
            let taken = this.shared.lock().expect("replay lock").take();
            match taken {
                Some(s) => this.state = Some(s),
                None => {
                    return Poll::Ready(Some(Err("request body is held by another try".into())))
                }
            }
        }
        let state = this.state.as_mut().expect("taken above");
        // First what earlier tries already read.
        if this.replayed < state.chunks.len() {
            if state.overflowed {
                return Poll::Ready(Some(Err("request body too large to replay".into())));
            }
            let chunk = state.chunks[this.replayed].clone();
            this.replayed += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Some(rest) = state.rest.as_mut() else {
            this.done = true;
            return Poll::Ready(state.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        };
        match Pin::new(rest).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                state.rest = None;
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !state.overflowed {
                        state.len += data.len();
                        if state.len > state.limit {
                            state.overflowed = true;
                            state.chunks = Vec::new();
                        } else {
                            state.chunks.push(data.clone());
                        }
                    }
                    this.replayed = state.chunks.len();
                } else if let Some(t) = frame.trailers_ref() {
                    state.trailers = Some(t.clone());
                    state.rest = None;
                    this.done = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.done {
            return true;
        }
        match &self.state {
            Some(s) => self.replayed >= s.chunks.len() && s.rest.is_none() && s.trailers.is_none(),
            None => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            Some(State { rest: Some(r), .. }) if self.replayed == 0 => r.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn chunks(parts: &[&'static str], trailers: Option<HeaderMap>) -> Body {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        if let Some(t) = trailers {
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    async fn read(b: ReplayBody) -> (String, Option<HeaderMap>) {
        let collected = b.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (
            String::from_utf8(collected.to_bytes().to_vec()).unwrap(),
            trailers,
        )
    }

    #[tokio::test]
    async fn a_clone_replays_the_whole_body_and_trailers() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        let first = ReplayBody::new(chunks(&["ab", "cd"], Some(t.clone())), 1024);
        let second = first.try_clone().unwrap();
        assert_eq!(read(first).await, ("abcd".into(), Some(t.clone())));
        let third = second.try_clone().unwrap();
        assert_eq!(read(second).await, ("abcd".into(), Some(t.clone())));
        assert_eq!(read(third).await, ("abcd".into(), Some(t)));
    }

    #[tokio::test]
    async fn a_try_that_read_part_of_the_body_hands_on_the_rest() {
        let mut first = ReplayBody::new(chunks(&["ab", "cd", "ef"], None), 1024);
        let second = first.try_clone().unwrap();
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        drop(first);
        assert_eq!(read(second).await.0, "abcdef");
    }

    #[tokio::test]
    async fn an_unread_body_is_read_by_the_retry() {
        let first = ReplayBody::new(chunks(&["x", "y"], None), 1024);
        let second = first.try_clone().unwrap();
        drop(first);
        assert_eq!(read(second).await.0, "xy");
    }

    #[tokio::test]
    async fn past_the_limit_the_body_streams_on_but_cannot_be_replayed() {
        let first = ReplayBody::new(chunks(&["aaaa", "bbbb", "cc"], None), 6);
        let probe = first.try_clone().unwrap();
        assert_eq!(read(first).await.0, "aaaabbbbcc");
        assert!(probe.try_clone().is_none());
    }

    #[tokio::test]
    async fn a_clone_cannot_be_made_while_another_holds_the_body() {
        let mut first = ReplayBody::new(chunks(&["a", "b"], None), 1024);
        let _ = first.frame().await;
        assert!(first.try_clone().is_none(), "first still reads");
        drop(first);
    }

    #[tokio::test]
    async fn an_empty_body_ends_at_once() {
        let first = ReplayBody::new(chunks(&[], None), 1024);
        let second = first.try_clone().unwrap();
        assert_eq!(read(first).await.0, "");
        assert_eq!(read(second).await.0, "");
    }
}
