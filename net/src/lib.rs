//! Sluice network layer: the Kafka protocol (framing, headers, error codes, one handler
//! per API) and the shard-per-core server that owns partitions end to end.

pub mod client;
pub mod config;
pub mod controller;
pub mod coordinator_host;
pub mod error;
pub mod group;
pub mod handlers;
pub mod limits;
pub mod mesh;
pub mod metadata_cache;
pub mod protocol;
pub mod recent;
pub mod replica;
pub mod replication;
pub mod reqmetrics;
pub mod runner;
pub mod server;
pub mod shard;
mod shard_host;
pub mod throttle;
pub mod ticker;
pub mod txn;
pub mod zerocopy;

/// The layering of this crate's modules, checked on the sources: the shard and what it is
/// made of (replicas, controller, metadata, coordinators) never reach the connection
/// server or the request handlers, the handlers never reach the server, and the
/// coordinators never reach the shard; only `runner` ties a shard to its server. A `use crate::...` (or path) that breaks this
/// fails here, before it grows into an import cycle.
#[cfg(test)]
mod layering {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
        fn walk(dir: &Path, root: &Path, graph: &mut BTreeMap<String, BTreeSet<String>>) {
            for entry in std::fs::read_dir(dir).expect("net/src is readable") {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    walk(&path, root, graph);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let relative = path.strip_prefix(root).expect("under net/src");
                let first = relative.iter().next().expect("a path").to_string_lossy();
                let module = first.trim_end_matches(".rs").to_string();
                let text = std::fs::read_to_string(&path).expect("a source file");
                let edges = graph.entry(module.clone()).or_default();
                for line in text.lines() {
                    let code = line.split("//").next().unwrap_or("");
                    for (at, _) in code.match_indices("crate::") {
                        let rest = &code[at + "crate::".len()..];
                        let name: String = rest
                            .chars()
                            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                            .collect();
                        if !name.is_empty() && name != module {
                            edges.insert(name);
                        }
                    }
                }
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut graph = BTreeMap::new();
        walk(&root, &root, &mut graph);
        graph
    }

    fn reachable(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(module) = stack.pop() {
            for next in graph.get(&module).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    }

    #[test]
    fn the_shard_never_reaches_the_server_or_the_handlers() {
        let graph = module_graph();
        assert!(graph.contains_key("shard") && graph.contains_key("handlers"), "{graph:?}");
        let core_modules = [
            "shard",
            "shard_host",
            "replica",
            "controller",
            "metadata_cache",
            "coordinator_host",
            "group",
            "txn",
        ];
        for core in core_modules {
            let reached = reachable(&graph, core);
            for protocol in ["server", "handlers"] {
                assert!(!reached.contains(protocol), "{core} reaches {protocol}: {graph:?}");
            }
        }
        assert!(!reachable(&graph, "handlers").contains("server"), "handlers reach the server");
        // The coordinators are state machines over `CoordinatorHost`, which the shard
        // implements: they never reach the shard itself.
        for coordinator in ["group", "txn", "coordinator_host"] {
            assert!(
                !reachable(&graph, coordinator).contains("shard"),
                "{coordinator} reaches the shard"
            );
        }
    }
}
