//! The body of every response that passes the layer: bytes from the cache, or the handler's
//! own body passed through.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

/// The error type of [`ResponseBody`]: the handler's body error, boxed.
///
/// ```
/// let e: cache_core::http::BoxError = "the handler's body failed".into();
/// assert_eq!(e.to_string(), "the handler's body failed");
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of a response that passed through [`ResponseCacheLayer`](super::ResponseCacheLayer):
/// a stored body, or the handler's own (streamed through when it was not stored).
///
/// ```
/// use http_body::Body;
/// let body = cache_core::http::ResponseBody::from(bytes::Bytes::from_static(b"hello"));
/// assert_eq!(body.size_hint().exact(), Some(5));
/// ```
pub struct ResponseBody(Inner);

/// A stored body is one frame of bytes held as is (no box, no dynamic call: a hit serves it
/// with no allocation); only the handler's own body, of a type the layer does not know, is
/// boxed.
enum Inner {
    Bytes(Option<Bytes>),
    Handler(UnsyncBoxBody<Bytes, BoxError>),
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

impl ResponseBody {
    /// The handler's body, as it comes.
    pub(super) fn wrap<B>(body: B) -> ResponseBody
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        ResponseBody(Inner::Handler(body.map_err(Into::into).boxed_unsync()))
    }

    pub(super) fn empty() -> ResponseBody {
        ResponseBody(Inner::Bytes(None))
    }
}

impl From<Bytes> for ResponseBody {
    fn from(bytes: Bytes) -> ResponseBody {
        // An empty body is no frame at all, as `http_body_util::Full` sends it.
        ResponseBody(Inner::Bytes(Some(bytes).filter(|b| !b.is_empty())))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.0 {
            Inner::Bytes(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Handler(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Bytes(bytes) => bytes.is_none(),
            Inner::Handler(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Bytes(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Handler(body) => body.size_hint(),
        }
    }
}
