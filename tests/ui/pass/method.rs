//! An inherent method with `&self`: the cache is a field, the receiver is not
//! in the key unless named, and the companions are methods too.
#![deny(warnings)]

use cache_core::{cached, Cache};

struct Repo {
    cache: Cache,
    tenant: String,
}

impl Repo {
    #[cached(cache = self.cache, key = "name:<id>")]
    async fn name(&self, id: u64) -> String {
        format!("{}:{id}", self.tenant)
    }

    #[cached(cache = self.cache, key = "tenant:<self.tenant>:name:<id>")]
    async fn tenant_name(&self, id: u64) -> String {
        format!("{}:{id}", self.tenant)
    }

    async fn all(&self) {
        let _: String = self.name(1).await;
        let _: String = self.name_uncached(1).await;
        let _: String = self.name_refresh(1).await;
        let _: Result<bool, cache_core::Error> = self.name_invalidate(1).await;
        let _: String = self.tenant_name(1).await;
    }
}

fn main() {
    let repo = Repo {
        cache: Cache::in_memory(),
        tenant: "acme".to_owned(),
    };
    let _ = repo.all();
}
