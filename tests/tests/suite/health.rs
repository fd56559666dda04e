//! `cache.health()` on each topology (#16): the nodes and their roles on a Redis Cluster, the
//! primary the Sentinels name and the Sentinels themselves on Sentinel, nothing of the kind on
//! one server. Runs against whatever `CACHE_TEST_TOPOLOGY` selects (`scripts/test` runs all
//! three); the node-down case is in `topology.rs`, on a cluster of its own.

use std::collections::BTreeSet;

use cache_core::{
    health::{HealthTopology, NodeRole},
    HealthStatus,
};

/// `127.0.0.1:<port>` of each URL `redis://127.0.0.1:<port>/`.
fn addresses(urls: &[String]) -> BTreeSet<String> {
    urls.iter()
        .map(|u| {
            u.trim_start_matches("redis://")
                .trim_end_matches('/')
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_lists_the_nodes_and_their_roles_on_every_topology() {
    let cache = tests::redis_cache();
    let h = cache.health().await;
    assert_eq!(h.status, HealthStatus::Ok, "{h:#?}");
    let json = serde_json::to_value(&h).expect("serializes");
    match tests::topology() {
        tests::Topology::Single => {
            assert_eq!(h.topology, Some(HealthTopology::Single));
            assert!(h.nodes.is_empty() && h.sentinel.is_none(), "{h:#?}");
            assert_eq!(json["topology"], "single");
        }
        tests::Topology::Cluster => {
            assert_eq!(h.topology, Some(HealthTopology::Cluster));
            let cluster = tests::shared_cluster();
            let listed: BTreeSet<String> = h.nodes.iter().map(|n| n.address.clone()).collect();
            assert_eq!(listed, addresses(&cluster.urls()), "{h:#?}");
            let primaries: Vec<_> = h
                .nodes
                .iter()
                .filter(|n| n.role == NodeRole::Primary)
                .collect();
            let replicas: Vec<_> = h
                .nodes
                .iter()
                .filter(|n| n.role == NodeRole::Replica)
                .collect();
            assert_eq!((primaries.len(), replicas.len()), (3, 3), "{h:#?}");
            assert_eq!(
                primaries.iter().map(|n| n.slots.unwrap_or(0)).sum::<u32>(),
                16384,
                "every slot served"
            );
            let primary_addrs: BTreeSet<&str> =
                primaries.iter().map(|n| n.address.as_str()).collect();
            for r in &replicas {
                assert!(
                    r.primary
                        .as_deref()
                        .is_some_and(|p| primary_addrs.contains(p)),
                    "{r:?}"
                );
                assert_eq!(r.slots, None);
            }
            for n in &h.nodes {
                assert!(n.reachable && n.ping_ms.is_some(), "{n:?}");
                assert!(n.error.is_none(), "{n:?}");
            }
            assert_eq!(json["topology"], "cluster");
            let fields: BTreeSet<&str> = json["nodes"][0]
                .as_object()
                .expect("a node")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                fields,
                BTreeSet::from([
                    "address",
                    "role",
                    "primary",
                    "slots",
                    "reachable",
                    "ping_ms",
                    "error"
                ])
            );
            assert!(json["nodes"][0]["role"] == "primary" && json["nodes"][5]["role"] == "replica");
        }
        tests::Topology::Sentinel => {
            assert_eq!(h.topology, Some(HealthTopology::Sentinel));
            let setup = tests::shared_sentinel();
            let s = h.sentinel.as_ref().expect("the sentinel view");
            assert_eq!(s.master, tests::SENTINEL_MASTER);
            let port = setup.current_primary_port().expect("a primary");
            assert_eq!(s.primary, Some(format!("127.0.0.1:{port}")), "{h:#?}");
            assert_eq!(s.sentinels.len(), 3);
            for sentinel in &s.sentinels {
                assert!(
                    sentinel.reachable && sentinel.ping_ms.is_some(),
                    "{sentinel:?}"
                );
            }
            let roles: Vec<(NodeRole, bool)> =
                h.nodes.iter().map(|n| (n.role, n.reachable)).collect();
            assert_eq!(
                roles,
                [(NodeRole::Primary, true), (NodeRole::Replica, true)],
                "{h:#?}"
            );
            assert_eq!(h.nodes[0].address, format!("127.0.0.1:{port}"));
            assert_eq!(h.nodes[1].primary, s.primary);
            assert_eq!(json["sentinel"]["primary"], format!("127.0.0.1:{port}"));
            assert_eq!(json["sentinel"]["master"], tests::SENTINEL_MASTER);
            let fields: BTreeSet<&str> = json["sentinel"]["sentinels"][0]
                .as_object()
                .expect("a sentinel")
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                fields,
                BTreeSet::from(["address", "reachable", "ping_ms", "error"])
            );
        }
    }
}

#[tokio::test]
async fn health_of_the_embedded_backend_has_no_topology() {
    let h = tests::memory_cache().health().await;
    assert_eq!(h.topology, None);
    assert!(h.nodes.is_empty() && h.sentinel.is_none());
}
