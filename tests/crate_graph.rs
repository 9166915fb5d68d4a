//! The layers are held by the crate graph, read from `Cargo.lock`: the clinical core reaches no
//! database driver, async runtime or network client, even through another crate, and only the
//! store crate links a database driver.

use std::collections::{BTreeMap, BTreeSet};

/// Package name → the names of its dependencies (normal, build and dev), from the lock file.
fn lock_graph() -> BTreeMap<String, Vec<String>> {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))
        .expect("read Cargo.lock");
    let mut graph: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for package in lock.split("[[package]]").skip(1) {
        let mut name = None;
        let mut deps = Vec::new();
        let mut in_deps = false;
        for line in package.lines().map(str::trim) {
            if let Some(n) = line.strip_prefix("name = ") {
                name = Some(n.trim_matches('"').to_string());
            } else if line.starts_with("dependencies = [") {
                in_deps = true;
            } else if in_deps && line == "]" {
                in_deps = false;
            } else if in_deps {
                let dep = line.trim_matches(|c| c == '"' || c == ',');
                // "sha2 0.10.9" names a version when several are locked.
                deps.push(dep.split(' ').next().unwrap_or(dep).to_string());
            }
        }
        if let Some(name) = name {
            graph.entry(name).or_default().extend(deps);
        }
    }
    graph
}

fn reaches(graph: &BTreeMap<String, Vec<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(p) = stack.pop() {
        for d in graph.get(&p).into_iter().flatten() {
            if seen.insert(d.clone()) {
                stack.push(d.clone());
            }
        }
    }
    seen
}

const DRIVERS: &[&str] = &["sqlx", "rusqlite", "libsqlite3-sys", "tokio-postgres"];
const RUNTIME_AND_NETWORK: &[&str] = &["tokio", "mio", "hyper", "reqwest", "lettre", "axum"];

#[test]
fn the_core_reaches_no_database_runtime_or_network() {
    let graph = lock_graph();
    for core in ["carepath-dsl", "carepath-core"] {
        let reached = reaches(&graph, core);
        assert!(
            !reached.is_empty() || core == "carepath-dsl",
            "{core} not in Cargo.lock"
        );
        let bad: Vec<&&str> = DRIVERS
            .iter()
            .chain(RUNTIME_AND_NETWORK)
            .filter(|c| reached.contains(**c))
            .collect();
        assert!(bad.is_empty(), "{core} depends on {bad:?}");
    }
}

#[test]
fn only_the_store_links_a_database_driver_directly() {
    let graph = lock_graph();
    let ours: Vec<&String> = graph.keys().filter(|p| p.starts_with("carepath")).collect();
    assert!(ours.len() >= 6, "{ours:?}");
    for p in ours {
        let direct = &graph[p];
        let drivers: Vec<&String> = direct
            .iter()
            .filter(|d| DRIVERS.contains(&d.as_str()))
            .collect();
        // The binary and the test binary open pools through the store, so they need no driver.
        if p == "carepath-store" {
            assert!(!drivers.is_empty(), "the store lost its drivers");
        } else {
            assert!(drivers.is_empty(), "{p} links {drivers:?} directly");
        }
    }
}
