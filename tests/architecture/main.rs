//! The shape of `src/` that `docs/ARCHITECTURE.md` describes, checked from
//! the code itself: the import graph has no cycle, between top-level
//! modules or between files, and the arrows between layers point one way.
//!
//! Imports are read as text (`crate::a::b`, `super::x`, `use child::..`),
//! which is how the project writes them; comments and `mod x;` declarations
//! are not imports. A failure names the cycle or the arrow.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/`, by module path (`replies::memory`;
/// `lib` and `main` are the crate roots).
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .map(|path| {
            let relative = path.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            (
                parts.join("::"),
                code_of(&std::fs::read_to_string(&path).unwrap()),
            )
        })
        .collect()
}

/// The text without comments (a doc comment naming a module is no import)
/// and without the unit tests at the end of a file (`#[cfg(test)]`), which
/// may reach into a sibling's tests.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    text.lines()
        .map(|line| line.split_once("//").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The leading identifiers of a path after `prefix` (`a::b::C`, or each
/// item of a `{a::b, c}` group).
fn paths_after(text: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().last();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        found.extend(read_paths(rest));
    }
    found
}

/// Paths at the start of `text`: `a::b::C` or `{a::b, c::{d, e}}`.
fn read_paths(text: &str) -> Vec<Vec<String>> {
    let ident: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if !ident.is_empty() {
        let rest = &text[ident.len()..];
        let mut tails = match rest.strip_prefix("::") {
            Some(rest) => read_paths(rest),
            None => vec![vec![]],
        };
        if tails.is_empty() {
            tails.push(vec![]);
        }
        for tail in &mut tails {
            tail.insert(0, ident.clone());
        }
        return tails;
    }
    let Some(group) = text.strip_prefix('{') else {
        return Vec::new();
    };
    // Split the group at its own commas, up to its closing brace.
    let (mut depth, mut start, mut items) = (0usize, 0usize, Vec::new());
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
        .flat_map(|item| read_paths(item.trim()))
        .collect()
}

/// The longest known module a path names, from `base`.
fn resolve(known: &BTreeMap<String, String>, base: &[String], path: &[String]) -> Option<String> {
    let mut best = None;
    for len in 1..=path.len() {
        let mut candidate = base.to_vec();
        candidate.extend_from_slice(&path[..len]);
        let name = candidate.join("::");
        if known.contains_key(&name) {
            best = Some(name);
        }
    }
    best.or_else(|| (!base.is_empty()).then(|| base.join("::")))
}

/// Module → the modules it imports (never itself).
fn file_graph() -> BTreeMap<String, BTreeSet<String>> {
    let known = modules();
    let mut graph = BTreeMap::new();
    for (module, text) in &known {
        let own: Vec<String> = module.split("::").map(str::to_string).collect();
        let parent = &own[..own.len().saturating_sub(1)];
        let here = if matches!(module.as_str(), "lib" | "main") {
            &[][..]
        } else {
            &own[..]
        };
        let mut targets = BTreeSet::new();
        for path in paths_after(text, "crate::") {
            targets.extend(resolve(&known, &[], &path));
        }
        for path in paths_after(text, "super::") {
            targets.extend(resolve(&known, parent, &path));
        }
        for path in paths_after(text, "self::") {
            if known.contains_key(&[here, &path[..1]].concat().join("::")) {
                targets.extend(resolve(&known, here, &path));
            }
        }
        // `child::item` (in a `use` or inline) in a module that declares
        // `mod child;`.
        for line in text.lines().map(str::trim) {
            let declared = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("pub(crate) mod "))
                .or_else(|| line.strip_prefix("mod "))
                .and_then(|rest| rest.strip_suffix(';'));
            let Some(child) = declared else { continue };
            let name = [here, &[child.to_string()]].concat().join("::");
            if !known.contains_key(&name) {
                continue;
            }
            for path in paths_after(text, &format!("{child}::")) {
                let mut full = vec![child.to_string()];
                full.extend(path);
                targets.extend(resolve(&known, here, &full));
            }
        }
        targets.remove(module);
        targets.retain(|t| t != "lib" && t != "main");
        graph.insert(module.clone(), targets);
    }
    graph
}

/// The top-level module of a module path.
fn top(module: &str) -> &str {
    module.split("::").next().unwrap()
}

/// One cycle of `graph`, if it has any.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                0 => {
                    if let Some(cycle) = visit(next, graph, state, stack) {
                        return Some(cycle);
                    }
                }
                1 => {
                    let from = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(cycle) = visit(node, graph, &mut state, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, targets) in file_graph() {
        let from = top(&module).to_string();
        let entry = graph.entry(from.clone()).or_default();
        entry.extend(
            targets
                .iter()
                .map(|t| top(t).to_string())
                .filter(|t| *t != from),
        );
    }
    graph
}

#[test]
fn top_level_modules_import_each_other_without_a_cycle() {
    let graph = module_graph();

    assert!(graph.contains_key("turn") && graph.contains_key("events"));
    assert_eq!(find_cycle(&graph), None, "graph: {graph:#?}");
}

#[test]
fn no_file_of_src_is_part_of_an_import_cycle() {
    let graph = file_graph();

    assert!(graph["turn"].contains("turn::registry"), "{graph:#?}");
    assert_eq!(find_cycle(&graph), None, "graph: {graph:#?}");
}

#[test]
fn layers_point_one_way_and_events_is_a_leaf() {
    // Each layer may import its own and the layers listed after it; a
    // cycle inside a layer is caught by the tests above.
    let layers: &[&[&str]] = &[
        &[
            "lib", "main", "alloc", "startup", "serve", "drain", "migrate",
        ],
        &["http", "realtime"],
        &["state"],
        &["turn"],
        &["replies", "notify", "ratelimit", "session", "sessions"],
        &["cluster"],
        &[
            "store", "llm", "context", "error", "files", "auth", "oidc", "import",
        ],
        &["metrics", "config", "redact"],
        &["events", "domain"],
    ];
    let rank = |module: &str| layers.iter().position(|layer| layer.contains(&module));
    let graph = module_graph();

    let unplaced: Vec<&String> = graph.keys().filter(|m| rank(m).is_none()).collect();
    assert!(unplaced.is_empty(), "modules without a layer: {unplaced:?}");
    let mut upward = Vec::new();
    for (from, targets) in &graph {
        for to in targets {
            if rank(to) < rank(from) {
                upward.push(format!("{from} -> {to}"));
            }
        }
    }
    assert_eq!(upward, Vec::<String>::new(), "arrows against the layers");
    assert_eq!(
        graph["events"],
        BTreeSet::new(),
        "events must import nothing"
    );
}
