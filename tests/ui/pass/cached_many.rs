use std::collections::{BTreeSet, HashMap, HashSet};

use cache_core::{cached_many, Cache};

#[derive(Debug)]
pub struct DbError;

#[cached_many(key = "user:<ids>", ttl = "5m", tags = ["org:<org_id>", "user:<ids>"])]
async fn users(org_id: u64, ids: Vec<u64>) -> Result<HashMap<u64, String>, DbError> {
    Ok(ids.into_iter().map(|id| (id, format!("{org_id}/{id}"))).collect())
}

#[cached_many(key = "name:<names>", stale = "1h", lock = "distributed", cache_absent = "1m")]
async fn by_name(names: &[String]) -> HashMap<String, u64> {
    names.iter().map(|n| (n.clone(), n.len() as u64)).collect()
}

#[cached_many(key = "h:<ids>")]
async fn hashed(ids: HashSet<u64>) -> HashMap<u64, u64> {
    ids.into_iter().map(|id| (id, id)).collect()
}

#[cached_many(key = "b:<ids>")]
async fn ordered(ids: BTreeSet<u64>) -> HashMap<u64, u64> {
    ids.into_iter().map(|id| (id, id)).collect()
}

pub struct Repo {
    cache: Cache,
}

impl Repo {
    #[cached_many(key = "repo:<ids>", cache = self.cache)]
    async fn load(&self, ids: Vec<u64>) -> HashMap<u64, u64> {
        ids.into_iter().map(|id| (id, id * 2)).collect()
    }
}

fn main() {
    let _ = users(1, vec![1, 2]);
    let _ = users_uncached(1, vec![1, 2]);
    let _ = users_invalidate(1, vec![1, 2]);
    let _ = by_name(&[]);
    let _ = hashed(HashSet::new());
    let _ = ordered(BTreeSet::new());
    let repo = Repo { cache: Cache::in_memory() };
    let _ = repo.load(vec![1]);
    let _ = repo.load_invalidate(vec![1]);
}
