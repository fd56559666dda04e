//! The L1 steps of a get-or-compute read: the near cache (the engine's) asked first, and filled
//! with what the backend read found, through the caller's `Mode`.

use std::any::Any;
use std::sync::Arc;

use bytes::Bytes;

use crate::base::codec;
use crate::engine::local::{Local, Mark};
use crate::pipeline::Pipeline;
use crate::pipeline::glue::Mode;

impl Pipeline {
    /// The L1 step of a get-or-compute read: the value, or the L1 and the mark to fill it
    /// with after the backend read.
    pub(crate) fn local_begin<O, M: Mode<O>>(
        &self,
        full: &str,
        mode: &M,
    ) -> Result<M::Stored, (Option<&Local>, Option<Mark>)> {
        let Some(local) = self.local().filter(|_| mode.use_local()) else {
            return Err((None, None));
        };
        let fingerprint = codec::fingerprint::<M::Stored>();
        let keep = |v: &M::Stored| {
            let copy = mode.local_clone(v)?;
            Some(Arc::new(copy) as Arc<dyn Any + Send + Sync>)
        };
        self.local_read::<M::Stored>(local, full, fingerprint, |v| mode.local_clone(v), keep)
            .map(|hit| hit.value)
            .map_err(|mark| (Some(local), Some(mark)))
    }

    /// Keeps a get-or-compute hit in the L1 (decoded, when the mode can clone it).
    pub(crate) fn local_fill_from<O, M: Mode<O>>(
        &self,
        local: Option<&Local>,
        mark: Option<Mark>,
        full: &str,
        bytes: Option<&Bytes>,
        mode: &M,
        value: &M::Stored,
    ) {
        if let (Some(local), Some(mark)) = (local, mark) {
            let fingerprint = codec::fingerprint::<M::Stored>();
            let decoded = mode.local_clone(value).map(|v| (fingerprint, v));
            self.local_fill(local, full, bytes, mark, decoded);
        }
    }
}
