//! The rooms of `src/` and their arrows, computed from the code: every `crate::<room>`
//! path outside comments is an arrow from the file's room to that room. The arrows must
//! form no cycle, and nothing may point at the command line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The room of a file: its first path segment under `src/` (`src/http/users.rs` → `http`).
fn room(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// Rooms each room's code names through `crate::…`.
fn arrows() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let from = room(&path, &src);
            let targets = graph.entry(from.clone()).or_default();
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let code = line.split("//").next().unwrap_or("");
                for (i, _) in code.match_indices("crate::") {
                    let to: String = code[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !to.is_empty() && to != from {
                        targets.insert(to);
                    }
                }
            }
        }
    }
    graph
}

/// A cycle through `node`, if any (depth-first, with the path so far).
fn cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(i) = path.iter().position(|n| n == node) {
        let mut found = path[i..].to_vec();
        found.push(node.to_owned());
        return Some(found);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_owned());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(c) = cycle(graph, next, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(node.to_owned());
    None
}

#[test]
fn the_rooms_of_src_form_no_cycle_and_nothing_imports_the_cli() {
    let graph = arrows();
    assert!(graph.len() > 10, "{graph:?}");
    // The graph, for whoever runs this with --nocapture.
    for (from, to) in &graph {
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        println!("{from} → {}", to.join(", "));
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = cycle(&graph, node, &mut Vec::new(), &mut done) {
            panic!("an import cycle: {}", c.join(" → "));
        }
    }
    for (from, to) in &graph {
        assert!(
            !to.contains("cli") || from == "main",
            "{from} imports the command line"
        );
    }
    // The rooms at the bottom point nowhere up: `metrics` and `durable` import no room at
    // all, and the store and the keyring reach only them (the writer records its commits;
    // files are made durable one way).
    for bottom in ["metrics", "durable"] {
        assert!(graph[bottom].is_empty(), "{bottom} → {:?}", graph[bottom]);
    }
    for leaf in ["store", "secrets"] {
        assert!(
            graph[leaf]
                .iter()
                .all(|to| to == "metrics" || to == "durable"),
            "{leaf} → {:?}",
            graph[leaf]
        );
    }
}
