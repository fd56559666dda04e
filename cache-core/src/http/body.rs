//! The body of every response that passes the layer: bytes from the cache, or the handler's
//! own body passed through.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

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
pub struct ResponseBody(UnsyncBoxBody<Bytes, BoxError>);

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
        ResponseBody(body.map_err(Into::into).boxed_unsync())
    }

    pub(super) fn empty() -> ResponseBody {
        ResponseBody(Empty::new().map_err(|never| match never {}).boxed_unsync())
    }
}

impl From<Bytes> for ResponseBody {
    fn from(bytes: Bytes) -> ResponseBody {
        ResponseBody(
            Full::new(bytes)
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}
