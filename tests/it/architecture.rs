//! The rooms of `src/` and their arrows, computed from the code: every `crate::<room>`
//! path outside comments is an arrow from the file's room to that room. The arrows must
//! form no cycle, and nothing may point at the command line. Inside a room, the files
//! beside one another form no cycle either.

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
            let code = code_of(&std::fs::read_to_string(&path).unwrap());
            let targets = graph.entry(from.clone()).or_default();
            targets.extend(rooms_named(&code).into_iter().filter(|to| *to != from));
        }
    }
    graph
}

/// A file's text without its line comments; a `//` right after a `:` (a URL's `://` in a
/// string) does not start one, or the rest of its line would hide a path.
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| {
            let mut from = 0;
            while let Some(i) = line[from..].find("//") {
                let at = from + i;
                if !line[..at].ends_with(':') {
                    return &line[..at];
                }
                from = at + 2;
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths named right after a `crate::` or `super::`: `a::b`, or each path of a group
/// (`{a::b, c::{d, e}}` → `a::b`, `c::{d, e}`), however it is spread over lines.
fn paths_after(rest: &str) -> Vec<&str> {
    let Some(group) = rest.strip_prefix('{') else {
        return vec![rest];
    };
    let (mut depth, mut start, mut items) = (0, 0, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

/// The rooms `code` names through `crate::…`, grouped imports included.
fn rooms_named(code: &str) -> BTreeSet<String> {
    let mut rooms = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        for p in paths_after(&code[i + 7..]) {
            let to: String = p
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !to.is_empty() {
                rooms.insert(to);
            }
        }
    }
    rooms
}

#[test]
fn grouped_imports_and_urls_hide_no_arrow() {
    let code = code_of(
        "let u = \"http://x\"; use crate::cli::Args;\n\
         use crate::{\n    http::{a, b},\n    // store is a comment\n    sync::Run,\n};\n\
         idledger_crate::x; // crate::metrics in a comment",
    );
    let named: Vec<String> = rooms_named(&code).into_iter().collect();
    assert_eq!(named, ["cli", "http", "sync"]);
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

/// A file's module path under `src/` (`src/http/users.rs` → `http::users`,
/// `src/http/mod.rs` → `http`).
fn module_of(path: &Path, src: &Path) -> Vec<String> {
    let rel = path.strip_prefix(src).unwrap().with_extension("");
    let mut segments: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if segments.last().is_some_and(|s| s == "mod") {
        segments.pop();
    }
    segments
}

/// Arrows between files that sit beside one another (one parent module): each names the
/// other through `crate::…` or `super::…`, grouped imports (`use super::{a, b}`) included.
/// A parent and its children may name each other (a `mod.rs` declares them).
fn sibling_arrows() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(f, &src)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let me = module_of(file, &src);
        // The crate's roots, and the rooms themselves (their arrows are the rooms' test).
        if me.len() < 2 {
            continue;
        }
        // `super` is the parent of the module the file makes (`graph::types` → `graph`).
        let parent: Vec<String> = me[..me.len() - 1].to_vec();
        let here = graph.entry(me.join("::")).or_default();
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for (root, base) in [("crate::", Vec::new()), ("super::", parent.clone())] {
            for (i, _) in code.match_indices(root) {
                if i > 0 && code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let rest = &code[i + root.len()..];
                for p in paths_after(rest) {
                    let mut target = base.clone();
                    target.extend(
                        p.split("::")
                            .map(|s| {
                                s.chars()
                                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                                    .collect::<String>()
                            })
                            .take_while(|s| !s.is_empty()),
                    );
                    // The longest prefix that is a file's module.
                    while !target.is_empty() && !modules.contains(&target) {
                        target.pop();
                    }
                    let beside = target.len() == me.len()
                        && target[..target.len().saturating_sub(1)] == me[..me.len() - 1]
                        && target != me;
                    if beside {
                        here.insert(target.join("::"));
                    }
                }
            }
        }
    }
    graph
}

#[test]
fn the_files_of_a_room_form_no_cycle() {
    let graph = sibling_arrows();
    assert!(
        graph.values().map(BTreeSet::len).sum::<usize>() > 20,
        "the arrows between files were not found: {graph:?}"
    );
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(c) = cycle(&graph, node, &mut Vec::new(), &mut done) {
            panic!(
                "an import cycle between files of one room: {}",
                c.join(" → ")
            );
        }
    }
}
