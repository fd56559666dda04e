//! [`Cache::key_report`](crate::Cache::key_report) (which has an example): how many keys, and
//! roughly how many bytes, each group of a handle's keys holds. A bounded `SCAN` (never `KEYS`, which blocks the server) with `MEMORY USAGE`
//! on a sample of the keys.

use serde::Serialize;

use crate::base::error::Result;
use crate::engine::Handle;
use crate::store::Backend;

/// Keys of one group: those whose key, after the handle's prefix, starts with the same segment
/// (`user` for `cache:user:42`; `~tag` for tag versions; `""` for keys with no `:`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct KeyGroup {
    /// The segment.
    pub name: String,
    /// Keys seen.
    pub keys: u64,
    /// Keys whose memory was measured.
    pub sampled: u64,
    /// Their total memory, in bytes (`MEMORY USAGE`; on the embedded backend, what the
    /// capacity counts).
    pub sampled_bytes: u64,
    /// `sampled_bytes / sampled * keys`.
    pub estimated_bytes: u64,
}

/// What [`Cache::key_report`](crate::Cache::key_report) found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct KeyReport {
    /// The prefix scanned (the handle's).
    pub prefix: String,
    /// Keys seen.
    pub scanned: u64,
    /// False if the scan stopped at [`max_keys`](KeyReportBuilder::max_keys).
    pub complete: bool,
    /// By group, largest estimated size first.
    pub groups: Vec<KeyGroup>,
}

/// Groups beyond this many share `_other`.
const MAX_GROUPS: usize = 1_000;
/// Keys measured in each group before sampling thins out.
const ALWAYS_SAMPLED: u64 = 16;

/// A key report being set up: see [`Cache::key_report`](crate::Cache::key_report).
#[must_use = "a key report does nothing until `.run().await`"]
pub struct KeyReportBuilder<'a> {
    cache: &'a Handle,
    max_keys: u64,
    sample_every: u64,
    scan_count: u32,
    progress: Option<Box<dyn FnMut(u64) + Send + 'a>>,
}

impl std::fmt::Debug for KeyReportBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyReportBuilder")
            .field("max_keys", &self.max_keys)
            .field("sample_every", &self.sample_every)
            .finish()
    }
}

impl Handle {
    pub(crate) fn key_report(&self) -> KeyReportBuilder<'_> {
        KeyReportBuilder {
            cache: self,
            max_keys: 100_000,
            sample_every: 100,
            scan_count: 1_000,
            progress: None,
        }
    }
}

impl<'a> KeyReportBuilder<'a> {
    /// Stops after this many keys (the report then says `complete: false`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// cache.mset(&[("a", 1u8), ("b", 2), ("c", 3)], None).await?;
    /// let r = cache.key_report().max_keys(2).run().await?;
    /// assert!(!r.complete && r.scanned == 2);
    /// # Ok(()) }
    /// ```
    pub fn max_keys(mut self, n: u64) -> Self {
        self.max_keys = n;
        self
    }

    /// Measures one key in `n` (after the first 16 of each group); 1 measures every key.
    ///
    /// ```
    /// let cache = cache_core::Cache::in_memory();
    /// let _ = cache.key_report().sample_every(10);
    /// ```
    pub fn sample_every(mut self, n: u64) -> Self {
        self.sample_every = n.max(1);
        self
    }

    /// Called after each page of the scan with the number of keys seen so far.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let cache = cache_core::Cache::in_memory();
    /// let mut pages = 0;
    /// cache.key_report().on_progress(|_| pages += 1).run().await?;
    /// assert_eq!(pages, 1);
    /// # Ok(()) }
    /// ```
    pub fn on_progress(mut self, f: impl FnMut(u64) + Send + 'a) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Runs the scan. Backend failures are errors (nothing partial is returned).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_core::Error> {
    /// let report = cache_core::Cache::in_memory().key_report().run().await?;
    /// assert!(report.complete && report.groups.is_empty());
    /// # Ok(()) }
    /// ```
    pub async fn run(mut self) -> Result<KeyReport> {
        let prefix = self.cache.key_prefix().to_owned();
        let mut groups = Groups::default();
        let mut scanned = 0u64;
        let mut complete = true;
        match self.cache.backend_ref() {
            Backend::Memory(m) => {
                let limit = usize::try_from(self.max_keys.saturating_add(1)).unwrap_or(usize::MAX);
                let mut keys = m.keys_with_prefix(&prefix, limit);
                if keys.len() as u64 > self.max_keys {
                    keys.truncate(self.max_keys as usize);
                    complete = false;
                }
                for (key, size) in keys {
                    scanned += 1;
                    let g = groups.of(&key[prefix.len()..]);
                    g.keys += 1;
                    g.sampled += 1;
                    g.sampled_bytes += size;
                }
                if let Some(p) = self.progress.as_mut() {
                    p(scanned);
                }
            }
            Backend::Redis(r) => {
                let pattern = format!("{}*", glob_escape(&prefix));
                // One server, or each primary of a cluster (a scan sees one node).
                'nodes: for node in r.keyspace_nodes().await? {
                    let mut cursor = 0u64;
                    loop {
                        let mut cmd = redis::cmd("SCAN");
                        cmd.arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(self.scan_count);
                        let (next, page): (u64, Vec<Vec<u8>>) =
                            r.run_on(node.as_ref(), "SCAN", cmd).await?;
                        let mut to_measure = Vec::new();
                        for raw in page {
                            if scanned >= self.max_keys {
                                complete = false;
                                break;
                            }
                            scanned += 1;
                            let key = String::from_utf8_lossy(&raw).into_owned();
                            let rest = key.get(prefix.len()..).unwrap_or("");
                            let index = groups.index(rest);
                            let g = &mut groups.list[index];
                            g.keys += 1;
                            if g.keys <= ALWAYS_SAMPLED || scanned.is_multiple_of(self.sample_every)
                            {
                                to_measure.push((index, raw));
                            }
                        }
                        let sizes: Vec<Option<u64>> = match &node {
                            _ if to_measure.is_empty() => Vec::new(),
                            None => {
                                let mut pipe = redis::pipe();
                                for (_, raw) in &to_measure {
                                    pipe.cmd("MEMORY").arg("USAGE").arg(raw);
                                }
                                r.run_pipe("MEMORY USAGE", pipe).await?
                            }
                            // A pipeline on a cluster must stay in one slot: one at a time.
                            Some(_) => {
                                let mut sizes = Vec::with_capacity(to_measure.len());
                                for (_, raw) in &to_measure {
                                    let mut cmd = redis::cmd("MEMORY");
                                    cmd.arg("USAGE").arg(raw);
                                    sizes.push(r.run_on(node.as_ref(), "MEMORY USAGE", cmd).await?);
                                }
                                sizes
                            }
                        };
                        for ((index, _), size) in to_measure.iter().zip(sizes) {
                            if let Some(size) = size {
                                let g = &mut groups.list[*index];
                                g.sampled += 1;
                                g.sampled_bytes += size;
                            }
                        }
                        if let Some(p) = self.progress.as_mut() {
                            p(scanned);
                        }
                        cursor = next;
                        if !complete {
                            break 'nodes;
                        }
                        if cursor == 0 {
                            break;
                        }
                        if scanned >= self.max_keys {
                            complete = false;
                            break 'nodes;
                        }
                    }
                }
            }
        }
        let mut list = groups.list;
        for g in &mut list {
            if g.sampled > 0 {
                g.estimated_bytes =
                    (g.sampled_bytes as f64 / g.sampled as f64 * g.keys as f64).round() as u64;
            }
        }
        list.sort_by(|a, b| {
            b.estimated_bytes
                .cmp(&a.estimated_bytes)
                .then(a.name.cmp(&b.name))
        });
        Ok(KeyReport {
            prefix,
            scanned,
            complete,
            groups: list,
        })
    }
}

#[derive(Default)]
struct Groups {
    list: Vec<KeyGroup>,
    index: std::collections::HashMap<String, usize>,
}

impl Groups {
    fn index(&mut self, rest: &str) -> usize {
        let name = rest.split_once(':').map_or("", |(first, _)| first);
        if let Some(i) = self.index.get(name) {
            return *i;
        }
        let name = if self.list.len() >= MAX_GROUPS - 1 {
            "_other"
        } else {
            name
        };
        if let Some(i) = self.index.get(name) {
            return *i;
        }
        self.list.push(KeyGroup {
            name: name.to_owned(),
            ..Default::default()
        });
        self.index.insert(name.to_owned(), self.list.len() - 1);
        self.list.len() - 1
    }

    fn of(&mut self, rest: &str) -> &mut KeyGroup {
        let i = self.index(rest);
        &mut self.list[i]
    }
}

/// `prefix` with the glob characters of `SCAN MATCH` escaped.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
