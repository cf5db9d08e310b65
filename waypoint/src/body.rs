//! A response body that counts what it carries and runs a callback when it
//! ends (or is dropped), so a request's metrics include the whole streamed
//! body and its connection-pool permits live exactly as long as it does.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::upstream::{Body, BoxError};

/// Called once with the number of body bytes sent.
pub type Finish = Box<dyn FnOnce(u64) + Send + Sync>;

/// A body wrapper: counts data bytes, holds `guards` until it is done, calls
/// `finish` at the end.
pub struct Metered {
    inner: Body,
    bytes: u64,
    guards: Vec<Box<dyn Send + Sync>>,
    finish: Option<Finish>,
}

impl Metered {
    /// Wraps `inner`.
    pub fn new(inner: Body, guards: Vec<Box<dyn Send + Sync>>, finish: Option<Finish>) -> Self {
        Metered {
            inner,
            bytes: 0,
            guards,
            finish,
        }
    }

    fn done(&mut self) {
        self.guards.clear();
        if let Some(f) = self.finish.take() {
            f(self.bytes);
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.done();
    }
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.done(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
