//! Tracking feeds (ARCHITECTURE.md §4): a task per root and per [`Feed`] that keeps `CLIENT
//! TRACKING` connections open to every node holding keys, applies what Redis reports, and
//! tells its owner when tracking is on and when it is lost (a gap). Two owners: the L1
//! (local.rs, `L1_FEED`: every key under the root) and the scopes' generations (clear.rs,
//! `GENERATIONS_FEED`: the generation keys only).
//!
//! - The feed connects only while the circuit breaker is closed (while it is open, this
//!   instance's invalidations wait in its recovery queue, and the breaker's probes are the
//!   only connection attempts). Tracking is on once every connection answered `CLIENT
//!   TRACKING on BCAST` with the breaker still closed: then `live`.
//! - A gap: a connection lost or not answering as a primary, a cluster's primaries changed, a
//!   Sentinel failover, the breaker opened. Then `gap`, and tracking again, with backoff.
//! - Pushes are applied where the connection reads them, in order with the replies on it
//!   (the L1 writers' barrier relies on it); only the end of a connection reaches the task.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::engine::Shared;
use crate::store::Backend;
use crate::store::breaker::BreakerState;
use crate::store::redis::Tracking;

/// What a feed tracks: the prefix for `CLIENT TRACKING on BCAST PREFIX`, and the channel to
/// subscribe to, if any.
pub(crate) struct Subscription {
    pub(crate) prefix: String,
    pub(crate) channel: Option<String>,
}

/// What a feed tracks and what it does with what it hears.
pub(crate) struct Feed {
    /// Who it is for, in logs.
    pub(crate) name: &'static str,
    /// What a server that refuses tracking means for it, in logs.
    pub(crate) refused: &'static str,
    /// What to track; `None`: nothing (the task ends).
    pub(crate) subscription: fn(&Shared) -> Option<Subscription>,
    /// One push (an invalidation, a channel message), applied as the connection reads it.
    pub(crate) receive: fn(&Shared, redis::PushInfo),
    /// Tracking is on and the breaker closed, with the breaker's open count then.
    pub(crate) live: fn(&Shared, &Arc<Tracking>, u64),
    /// Tracking is lost: what changes meanwhile is not heard of.
    pub(crate) gap: fn(&Shared),
}

/// How often the tracking connections are checked (each answers `ROLE` as a primary; on a
/// cluster, the primaries are those tracked): a connection that died without closing, a
/// failover or a new primary is noticed within about this (plus the command timeout).
const FEED_CHECK: Duration = Duration::from_millis(250);

/// Runs `feed` for the root `shared` until the root is dropped.
pub(crate) async fn run(shared: Weak<Shared>, timeout: Duration, feed: &'static Feed) {
    let mut backoff = Duration::from_millis(20);
    let mut refusal_logged = false;
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let Backend::Redis(redis) = &strong.backend else {
            return;
        };
        let Some(Subscription { prefix, channel }) = (feed.subscription)(&strong) else {
            return;
        };
        // The circuit breaker's changes: an outage is a gap too (see below).
        let mut breaker = redis.breaker().subscribe();
        drop(strong);
        // Not before the breaker is closed: while it is open, this instance's invalidations
        // wait in its recovery queue, and connecting would only add to its probes.
        let opens = loop {
            let status = *breaker.borrow_and_update();
            if status.state == BreakerState::Closed {
                break status.opens;
            }
            if breaker.changed().await.is_err() {
                return; // the cache is gone
            }
        };
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let Backend::Redis(redis) = &strong.backend else {
            return;
        };
        let (lost, mut connection_lost) = tokio::sync::mpsc::unbounded_channel::<()>();
        let applier = shared.clone();
        let pushes = move |push: redis::PushInfo| {
            if push.kind == redis::PushKind::Disconnection {
                let _ = lost.send(());
            } else if let Some(shared) = applier.upgrade() {
                (feed.receive)(&shared, push);
            }
            Ok::<(), ()>(())
        };
        let tracking = redis.track(&prefix, channel.as_deref(), pushes).await;
        drop(strong);
        let tracking = match tracking.map(Arc::new) {
            Ok(tracking) => tracking,
            Err(e) => {
                let reason = e.to_string();
                if matches!(e, crate::base::error::Error::Config { .. }) && !refusal_logged {
                    // Once: the server (or the ACL user) will refuse the same way every time.
                    refusal_logged = true;
                    tracing::error!(feed = feed.name, %reason, "no client tracking; {}", feed.refused);
                } else {
                    tracing::debug!(feed = feed.name, %reason, "tracking: cannot connect, retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(20);
        let status = *breaker.borrow_and_update();
        if status.state != BreakerState::Closed || status.opens != opens {
            continue; // it opened while tracking was being set up: wait for it to close
        }
        let Some(strong) = shared.upgrade() else {
            return;
        };
        (feed.live)(&strong, &tracking, opens);
        drop(strong);
        // Checked beside, so that pushes are applied while a check waits for its answers.
        let (gap, mut gap_noticed) = tokio::sync::oneshot::channel::<()>();
        let checker = tokio::spawn(check_tracking(
            shared.clone(),
            tracking.clone(),
            timeout,
            gap,
        ));
        loop {
            tokio::select! {
                _ = connection_lost.recv() => break,
                changed = breaker.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let status = *breaker.borrow_and_update();
                    if status.state != BreakerState::Closed || status.opens != opens {
                        // The breaker opened: a gap. Track again once it has closed.
                        break;
                    }
                }
                _ = &mut gap_noticed => break,
            }
        }
        checker.abort();
        drop(tracking);
        let Some(strong) = shared.upgrade() else {
            return;
        };
        (feed.gap)(&strong);
    }
}

/// Checks the tracking connections every [`FEED_CHECK`] until one fails (or the cache is
/// gone), then reports the gap.
async fn check_tracking(
    shared: Weak<Shared>,
    tracking: Arc<Tracking>,
    timeout: Duration,
    gap: tokio::sync::oneshot::Sender<()>,
) {
    loop {
        tokio::time::sleep(FEED_CHECK).await;
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let Backend::Redis(redis) = &strong.backend else {
            return;
        };
        let intact = tokio::time::timeout(timeout, redis.tracking_intact(&tracking)).await;
        if !matches!(intact, Ok(true)) {
            let _ = gap.send(());
            return;
        }
    }
}
