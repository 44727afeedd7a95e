//! The layout rules of ARCHITECTURE.md, checked on the source itself: no two files of
//! `src/` import each other in a circle (directly or through others), and no source
//! file of the workspace has more than 600 lines of code before its tests.
//!
//! An import is any path in a file's code (not its `#[cfg(test)]` module) that names
//! another module of the crate: `crate::…`, `super::…`, `self::…`, or a child module
//! by its name. A parent's `mod child;` line is not an import.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Most lines of code a source file may have before its `#[cfg(test)]` module.
const MAX_CODE_LINES: usize = 600;

/// The workspace's library and binary sources whose size is held to the limit.
const SOURCE_ROOTS: &[&str] = &["src", "storage/src", "raft/src", "jepsen-lite/src"];

#[test]
fn no_file_of_src_imports_itself_through_others() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules_of(&root);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &modules {
        let code = code_of(&fs::read_to_string(file).unwrap());
        let imports = edges.entry(module.clone()).or_default();
        for path in paths_in(&code) {
            if let Some(target) = resolve(&path, module, &modules) {
                if target != *module {
                    imports.insert(target);
                }
            }
        }
    }
    let cycles: Vec<Vec<String>> = strongly_connected(&edges).into_iter().filter(|c| c.len() > 1).collect();
    assert!(
        cycles.is_empty(),
        "these modules of src/ import each other in a circle (break it with a trait, a channel, or by moving \
         what both need to a module below them): {cycles:#?}"
    );
    // The check sees imports at all: the node uses the sync engine, never the reverse.
    let node_uses_sync =
        edges.iter().any(|(m, imports)| m.starts_with("node") && imports.iter().any(|i| i.starts_with("sync")));
    assert!(node_uses_sync, "the node's imports of the sync engine are seen");
    for (module, imports) in &edges {
        if module.starts_with("sync") {
            let up: Vec<&String> = imports.iter().filter(|m| m.starts_with("node") || m.starts_with("cli")).collect();
            assert!(
                up.is_empty(),
                "the sync engine's {module} imports {up:?}: it must never depend on the node or the CLI"
            );
        }
    }
}

#[test]
fn no_source_file_has_more_than_600_lines_before_its_tests() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut too_long = Vec::new();
    let mut seen = 0;
    for root in SOURCE_ROOTS {
        for file in rust_files(&workspace.join(root)) {
            let text = fs::read_to_string(&file).unwrap();
            let lines = text.lines().take_while(|l| l.trim() != "#[cfg(test)]").count();
            seen += 1;
            if lines > MAX_CODE_LINES {
                too_long.push(format!("{} ({lines} lines)", file.strip_prefix(workspace).unwrap().display()));
            }
        }
    }
    assert!(seen > 50, "only {seen} source files found: is the workspace where this test looks?");
    assert!(
        too_long.is_empty(),
        "split these along their seams (at most {MAX_CODE_LINES} lines of code): {too_long:#?}"
    );
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The library's modules (`a::b`, the crate root as "") and their files; `main.rs` is
/// the binary, not a module of the library.
fn modules_of(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut modules = BTreeMap::new();
    for file in rust_files(src) {
        let rel = file.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        match parts.last().map(String::as_str) {
            Some("main") if parts.len() == 1 => continue,
            Some("lib") if parts.len() == 1 => parts.clear(),
            Some("mod") => {
                parts.pop();
            }
            _ => {}
        }
        modules.insert(parts.join("::"), file);
    }
    modules
}

/// A file's code before its tests, without comments and string literals' contents.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    for line in text.lines() {
        if line.trim() == "#[cfg(test)]" {
            break;
        }
        let line = line.split("//").next().unwrap_or("");
        let mut in_string = false;
        for c in line.chars() {
            match c {
                '"' => in_string = !in_string,
                _ if in_string => {}
                c => code.push(c),
            }
        }
        code.push('\n');
    }
    code
}

/// Every path with at least two segments in `code`, use trees expanded
/// (`a::{b, c::{d}}` gives `a::b` and `a::c::d`).
fn paths_in(code: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut paths = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts_word = (chars[i].is_alphabetic() || chars[i] == '_')
            && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_' || chars[i - 1] == ':'));
        if !starts_word {
            i += 1;
            continue;
        }
        let (mut found, end) = use_tree(&chars, i, Vec::new());
        paths.append(&mut found);
        i = end.max(i + 1);
    }
    paths.retain(|p| p.len() >= 2);
    paths
}

/// Parse a path (possibly ending in a `{…}` group) starting at `i`, below `prefix`.
fn use_tree(chars: &[char], mut i: usize, prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let mut path = prefix;
    loop {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i < chars.len() && chars[i] == '{' {
            let mut found = Vec::new();
            i += 1;
            loop {
                while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
                    i += 1;
                }
                if i >= chars.len() || chars[i] == '}' {
                    return (found, i + 1);
                }
                let (mut inner, end) = use_tree(chars, i, path.clone());
                found.append(&mut inner);
                i = end.max(i + 1);
            }
        }
        let start = i;
        while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        if start == i {
            return (vec![path], i);
        }
        path.push(chars[start..i].iter().collect());
        if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
            i += 2;
        } else {
            return (vec![path], i);
        }
    }
}

/// The module of the crate that `path`, written in `module`, names (its longest known
/// prefix), if it names one.
fn resolve(path: &[String], module: &str, modules: &BTreeMap<String, PathBuf>) -> Option<String> {
    let mut at: Vec<String> = if module.is_empty() { vec![] } else { module.split("::").map(String::from).collect() };
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            at.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().map(String::as_str) == Some("super") {
                at.pop()?;
                rest = &rest[1..];
            }
        }
        Some(first) => {
            // A child module named by its name alone.
            let child = if at.is_empty() { first.to_string() } else { format!("{}::{first}", at.join("::")) };
            if !modules.contains_key(&child) {
                return None;
            }
        }
        None => return None,
    }
    let mut best = None;
    for segment in rest {
        at.push(segment.clone());
        let name = at.join("::");
        if modules.contains_key(&name) {
            best = Some(name);
        } else {
            break;
        }
    }
    best.or_else(|| (path[0] == "crate").then(String::new))
}

/// Tarjan's strongly connected components of `edges`.
fn strongly_connected(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w.as_str()]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w.as_str()) {
                    let low = self.low[v].min(self.index[w.as_str()]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                self.found.push(component);
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn the_checker_sees_a_circle_and_a_use_tree() {
    let modules: BTreeMap<String, PathBuf> =
        ["", "a", "a::b", "c"].iter().map(|m| (m.to_string(), PathBuf::from(m))).collect();
    let paths = paths_in("use crate::a::{b::X, Y};\nfn f() { super::c::g(); b::h(); }");
    let resolved: BTreeSet<Option<String>> = paths.iter().map(|p| resolve(p, "a", &modules)).collect();
    assert!(resolved.contains(&Some("a::b".into())), "{paths:?}");
    assert!(resolved.contains(&Some("a".into())), "{paths:?}");
    assert!(resolved.contains(&Some("c".into())), "{paths:?}");
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a::b".to_string()])),
        ("a::b".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into_iter()
    .collect();
    let cycles: Vec<Vec<String>> = strongly_connected(&edges).into_iter().filter(|c| c.len() > 1).collect();
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert_eq!(cycles[0].len(), 3);
}
