//! Lease primitives (ARCHITECTURE.md): owners, the locks of the embedded backend, and the
//! wake-ups on the release of a lock held in Redis. The `lock` capability and the pipeline's
//! fill lock are both built on them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};

use crate::base::error::{Error, Result};
use crate::base::key;
use crate::base::limits;
use crate::engine::Handle;
use crate::store::redis::RedisBackend;

/// How long a pub/sub feed that could not start is not tried again.
const FEED_RETRY: Duration = Duration::from_secs(1);

/// The lease state of a cache root.
#[derive(Default)]
pub(crate) struct Leases {
    memory: MemoryLocks,
    waiting: Arc<Waiting>,
}

impl Leases {
    /// The locks of the embedded backend.
    pub(crate) fn memory(&self) -> &MemoryLocks {
        &self.memory
    }

    /// This process's waiters for locks, and their wake-up feed.
    pub(crate) fn waiting(&self) -> &Arc<Waiting> {
        &self.waiting
    }
}

/// What one try at a lock found.
pub(crate) enum Attempt {
    /// Taken, with this fencing token.
    Taken(u64),
    /// Held by another owner, whose lease has this long left (`None`: unknown).
    Held(Option<Duration>),
}

// ---- owners and jitter ---------------------------------------------------------------------

/// A lock owner: 128 bits from the OS's random source, one per acquire.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner(pub(crate) u128);

impl Owner {
    pub(crate) fn random() -> Result<Owner> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| Error::Config {
            setting: "OS random source",
            reason: format!("no random bytes for a lock owner: {e}"),
        })?;
        Ok(Owner(u128::from_le_bytes(bytes)))
    }

    pub(crate) fn hex(self) -> String {
        key::lower_hex(&self.0.to_be_bytes())
    }
}

/// Spreads waiters' sleeps (xorshift; not for secrets), so that processes woken together do
/// not retry in step.
pub(crate) struct Jitter(pub(crate) u64);

impl Jitter {
    /// `d`, give or take a quarter.
    pub(crate) fn around(&mut self, d: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let quarter = (d.as_micros() / 4).max(1) as u64;
        d - Duration::from_micros(quarter) + Duration::from_micros(self.0 % (2 * quarter))
    }
}

pub(crate) fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

// ---- the memory backend ----------------------------------------------------------------------

/// The locks of an in-memory cache root: owner and lease end per lock key.
pub(crate) struct MemoryLocks {
    held: Mutex<HashMap<String, (Owner, Instant)>>,
    /// One counter for every lock of the root: strictly increasing per name as well.
    last_token: AtomicU64,
}

impl Default for MemoryLocks {
    fn default() -> Self {
        MemoryLocks {
            held: Mutex::default(),
            // As on Redis: tokens start at the clock in microseconds.
            last_token: AtomicU64::new(crate::base::codec::now_us()),
        }
    }
}

impl MemoryLocks {
    pub(crate) fn take(&self, key: &str, owner: Owner, ttl: Duration) -> Attempt {
        let now = Instant::now();
        let mut held = locked(&self.held);
        if let Some((_, until)) = held.get(key)
            && *until > now
        {
            return Attempt::Held(Some(*until - now));
        }
        // Leases that ran out unreleased (their guards dropped outside a runtime, or leaked)
        // are swept now and then, so the map stays the size of the locks in use.
        if held.len() >= 1024 && held.len().is_power_of_two() {
            held.retain(|_, (_, until)| *until > now);
        }
        held.insert(key.to_owned(), (owner, limits::deadline(now, ttl)));
        Attempt::Taken(self.last_token.fetch_add(1, Ordering::Relaxed) + 1)
    }

    pub(crate) fn release(&self, key: &str, owner: Owner) -> bool {
        let mut held = locked(&self.held);
        match held.get(key) {
            Some((o, until)) if *o == owner => {
                let live = *until > Instant::now();
                held.remove(key);
                live
            }
            _ => false,
        }
    }

    pub(crate) fn extend(&self, key: &str, owner: Owner, ttl: Duration) -> bool {
        let now = Instant::now();
        match locked(&self.held).get_mut(key) {
            Some((o, until)) if *o == owner && *until > now => {
                *until = limits::deadline(now, ttl);
                true
            }
            _ => false,
        }
    }
}

// ---- waiting ---------------------------------------------------------------------------------

/// Wake-ups on the release of one Redis key used as a lock by any process: for the fill lock
/// of get-or-compute (`pipeline/fill_lock.rs`), whose release script publishes on the key's
/// channel as [`Lock`](crate::lock::Lock)'s does. Waiting this way is not a poll: the caller
/// still sleeps with a bounded backoff, as a safety net for a missed message.
pub(crate) struct ReleaseWatch {
    queue: Arc<Queue>,
    // Field order is drop order: the subscription goes before the place in the queue.
    _subscription: Option<Subscription>,
    _place: Place,
}

impl ReleaseWatch {
    /// Subscribes to `key`'s release messages; returns once the subscription is live (or
    /// there is no feed, and then only the backoff wakes the caller).
    pub(crate) async fn new(cache: &Handle, redis: &RedisBackend, key: &str) -> ReleaseWatch {
        let waiting = cache.leases().waiting();
        let place = waiting.join(key);
        let queue = place.queue();
        let subscription = waiting.subscribe(redis, key).await;
        ReleaseWatch {
            queue,
            _subscription: subscription,
            _place: place,
        }
    }

    /// Resolves at the next release; make it before looking at the key, so that a release
    /// between the look and the wait still wakes.
    pub(crate) fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.queue.released.notified()
    }
}

/// The waiters of a cache root, per lock key, and the pub/sub feed that wakes them when
/// another process releases a lock.
#[derive(Default)]
pub(crate) struct Waiting {
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    feed: Mutex<Feed>,
}

#[derive(Default)]
struct Feed {
    commands: Option<mpsc::UnboundedSender<FeedCommand>>,
    failed_at: Option<Instant>,
}

/// The contenders of this process for one lock.
#[derive(Default)]
pub(crate) struct Queue {
    /// Held by the contender whose turn it is to try (tokio's mutex is fair: first come,
    /// first served).
    pub(crate) turn: tokio::sync::Mutex<()>,
    /// Woken when the lock is released.
    pub(crate) released: Notify,
}

/// A contender's place in its lock's queue; the queue goes when its last contender leaves.
pub(crate) struct Place {
    waiting: Arc<Waiting>,
    key: String,
    queue: Option<Arc<Queue>>,
}

impl Place {
    pub(crate) fn queue(&self) -> Arc<Queue> {
        self.queue.clone().unwrap_or_default()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut queues = locked(&self.waiting.queues);
        // Clones are made in `join` (under this mutex) and by `Place::queue`, whose clone is
        // dropped before its `Place`; so when the count is the map's and this place's, no
        // other contender is left.
        if let Some(queue) = self.queue.take()
            && Arc::strong_count(&queue) == 2
        {
            queues.remove(&self.key);
        }
    }
}

enum FeedCommand {
    Subscribe(String, oneshot::Sender<()>),
    Unsubscribe(String),
}

/// Interest in one lock's release messages, given up on drop.
pub(crate) struct Subscription {
    commands: mpsc::UnboundedSender<FeedCommand>,
    channel: String,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let channel = std::mem::take(&mut self.channel);
        let _ = self.commands.send(FeedCommand::Unsubscribe(channel));
    }
}

impl Waiting {
    pub(crate) fn join(self: &Arc<Self>, key: &str) -> Place {
        let queue = locked(&self.queues)
            .entry(key.to_owned())
            .or_default()
            .clone();
        Place {
            waiting: self.clone(),
            key: key.to_owned(),
            queue: Some(queue),
        }
    }

    /// Wakes this process's contenders for the lock `key`.
    pub(crate) fn wake(&self, key: &str) {
        if let Some(queue) = locked(&self.queues).get(key) {
            queue.released.notify_waiters();
        }
    }

    /// Subscribes to the release messages of lock `key` (its channel has the key's name);
    /// returns once the subscription is live, or `None` when there is no feed (waiters then
    /// poll with their backoff).
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        redis: &RedisBackend,
        key: &str,
    ) -> Option<Subscription> {
        let commands = self.feed(redis).await?;
        let (ack, acked) = oneshot::channel();
        commands
            .send(FeedCommand::Subscribe(key.to_owned(), ack))
            .ok()?;
        let subscription = Subscription {
            commands,
            channel: key.to_owned(),
        };
        // A feed that does not answer in time is not waited for: its wake-ups may come late.
        let _ = tokio::time::timeout(redis.command_timeout(), acked).await;
        Some(subscription)
    }

    /// The running feed's command queue, starting the feed if there is none.
    async fn feed(
        self: &Arc<Self>,
        redis: &RedisBackend,
    ) -> Option<mpsc::UnboundedSender<FeedCommand>> {
        {
            let feed = locked(&self.feed);
            if let Some(commands) = feed.commands.as_ref().filter(|c| !c.is_closed()) {
                return Some(commands.clone());
            }
            if feed.failed_at.is_some_and(|at| at.elapsed() < FEED_RETRY) {
                return None;
            }
        }
        let pubsub = redis.pubsub().await;
        let mut feed = locked(&self.feed);
        if let Some(commands) = feed.commands.as_ref().filter(|c| !c.is_closed()) {
            return Some(commands.clone()); // another waiter started one meanwhile
        }
        match pubsub {
            Ok(pubsub) => {
                let (commands, received) = mpsc::unbounded_channel();
                tokio::spawn(run_feed(
                    Arc::downgrade(self),
                    pubsub,
                    received,
                    redis.command_timeout(),
                ));
                feed.commands = Some(commands.clone());
                feed.failed_at = None;
                Some(commands)
            }
            Err(error) => {
                tracing::debug!(%error, "no pub/sub connection for lock wake-ups; waiters poll");
                feed.failed_at = Some(Instant::now());
                None
            }
        }
    }
}

/// The feed: one pub/sub connection per cache root, subscribed to the channels of the locks
/// that this process's contenders wait for. Ends when its connection does (the next waiter
/// starts another) or when the cache root is gone.
async fn run_feed(
    waiting: Weak<Waiting>,
    pubsub: redis::aio::PubSub,
    mut commands: mpsc::UnboundedReceiver<FeedCommand>,
    timeout: Duration,
) {
    use futures_util::StreamExt;
    let (mut sink, mut messages) = pubsub.split();
    let mut interest: HashMap<String, usize> = HashMap::new();
    loop {
        let next_message = messages.next();
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(FeedCommand::Subscribe(channel, ack)) => {
                    let count = interest.entry(channel.clone()).or_insert(0);
                    *count += 1;
                    if *count == 1 && !answered(timeout, sink.subscribe(&channel)).await {
                        // Refused (an ACL without the channel) or no answer: waiters poll,
                        // and the next feed is not tried for a while.
                        if let Some(waiting) = waiting.upgrade() {
                            locked(&waiting.feed).failed_at = Some(Instant::now());
                        }
                        return;
                    }
                    let _ = ack.send(());
                }
                Some(FeedCommand::Unsubscribe(channel)) => {
                    if let Some(count) = interest.get_mut(&channel) {
                        *count -= 1;
                        if *count == 0 {
                            interest.remove(&channel);
                            if !answered(timeout, sink.unsubscribe(&channel)).await {
                                return;
                            }
                        }
                    }
                }
            },
            message = next_message => match message {
                None => return,
                Some(message) => match waiting.upgrade() {
                    Some(waiting) => waiting.wake(message.get_channel_name()),
                    None => return,
                },
            },
        }
    }
}

/// True if `request` succeeded within `timeout`; a feed whose connection does not answer
/// ends, and the next waiter starts another.
async fn answered(
    timeout: Duration,
    request: impl std::future::Future<Output = redis::RedisResult<()>>,
) -> bool {
    matches!(tokio::time::timeout(timeout, request).await, Ok(Ok(())))
}
