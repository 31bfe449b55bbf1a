//! The house rules of `src/`, read from the source itself: calls point one
//! way (no cycle between files, none between the top-level modules), and
//! each module's `//!` names, under "May call:", every other top-level
//! module it calls. A new `use` that breaks either fails here, naming the
//! files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside the crate: `["poll", "round"]` for
/// `src/poll/round.rs`, `["poll"]` for `src/poll/mod.rs`.
type ModPath = Vec<String>;

/// Every source file of the crate, by module path (test-only files left out).
fn modules() -> BTreeMap<ModPath, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .filter(|p| !p.ends_with("tests.rs") && !p.ends_with("main.rs"))
        .map(|p| {
            let rel = p.strip_prefix(&src).unwrap().with_extension("");
            let mut m: ModPath = rel
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            if matches!(m.last().map(String::as_str), Some("mod" | "lib")) {
                m.pop();
            }
            (m, p)
        })
        .collect()
}

/// The code of a file without its comments and its `#[cfg(test)] mod tests`.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths named after each `crate::` and `super::` in `code` (brace
/// groups expanded one level), as module paths from the crate root.
fn paths_in(code: &str, me: &ModPath, is_mod_rs: bool) -> Vec<ModPath> {
    let mut out = Vec::new();
    for (anchor, from_super) in [("crate::", false), ("super::", true)] {
        let mut rest = code;
        while let Some(i) = rest.find(anchor) {
            let before = rest[..i].chars().last();
            rest = &rest[i + anchor.len()..];
            if matches!(before, Some(c) if c == '$' || c.is_alphanumeric() || c == '_' || c == ':')
            {
                continue;
            }
            let base: ModPath = if from_super {
                // `super` of `a/b.rs` is `a`; of `a/mod.rs` it is the root.
                let mut b = me.clone();
                b.pop();
                if is_mod_rs {
                    b.pop();
                }
                b
            } else {
                Vec::new()
            };
            let (path, group) = read_path(rest);
            let mut p = base.clone();
            p.extend(path.iter().cloned());
            out.push(p.clone());
            for item in group {
                let mut q = p.clone();
                q.extend(item);
                out.push(q);
            }
        }
    }
    out
}

/// `a::b::C` or `a::b::{C, d::E}` at the start of `s`.
fn read_path(s: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let ident_end = |s: &str| {
        s.find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    let mut path = Vec::new();
    let mut s = s;
    loop {
        let n = ident_end(s);
        if n == 0 {
            break;
        }
        path.push(s[..n].to_string());
        s = &s[n..];
        match s.strip_prefix("::") {
            Some(r) => s = r,
            None => return (path, Vec::new()),
        }
    }
    let mut group = Vec::new();
    if let Some(r) = s.strip_prefix('{') {
        let inner = &r[..r.find('}').unwrap_or(r.len())];
        for item in inner.split(',') {
            let item = item.split(" as ").next().unwrap().trim();
            let parts: Vec<String> = item
                .split("::")
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty() && !p.contains('{'))
                .collect();
            if !parts.is_empty() {
                group.push(parts);
            }
        }
    }
    (path, group)
}

/// The longest module path that `path` starts with.
fn resolve<'a>(mods: &'a BTreeMap<ModPath, PathBuf>, path: &[String]) -> Option<&'a ModPath> {
    (1..=path.len())
        .rev()
        .find_map(|n| mods.get_key_value(&path[..n]).map(|(k, _)| k))
}

/// Who calls whom, file by file: an edge from a module to each module it
/// names, its own ancestors left out (a parent declares its children).
fn graph(mods: &BTreeMap<ModPath, PathBuf>) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let mut g: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (me, file) in mods {
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let is_mod_rs = file.ends_with("mod.rs") || file.ends_with("lib.rs");
        for p in paths_in(&code, me, is_mod_rs) {
            if let Some(t) = resolve(mods, &p)
                && t != me
                && !me.starts_with(t)
                && !t.starts_with(me)
            {
                g.entry(me.clone()).or_default().insert(t.clone());
            }
        }
    }
    g
}

/// The strongly connected parts of `g` with more than one member.
fn cycles<T: Ord + Clone>(g: &BTreeMap<T, BTreeSet<T>>) -> Vec<Vec<T>> {
    // Reachability by DFS is plenty for a graph of a hundred files.
    let reach = |from: &T| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(v) = stack.pop() {
            for w in g.get(&v).into_iter().flatten() {
                if seen.insert(w.clone()) {
                    stack.push(w.clone());
                }
            }
        }
        seen
    };
    let nodes: BTreeSet<T> = g.keys().chain(g.values().flatten()).cloned().collect();
    let reaches: BTreeMap<T, BTreeSet<T>> = nodes.iter().map(|v| (v.clone(), reach(v))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for v in &nodes {
        if done.contains(v) {
            continue;
        }
        let part: Vec<T> = nodes
            .iter()
            .filter(|w| *w != v && reaches[v].contains(*w) && reaches[*w].contains(v))
            .cloned()
            .chain(std::iter::once(v.clone()))
            .collect();
        done.extend(part.iter().cloned());
        if part.len() > 1 {
            out.push(part);
        }
    }
    out
}

fn show(m: &ModPath) -> String {
    if m.is_empty() {
        "lib".into()
    } else {
        m.join("::")
    }
}

#[test]
fn no_file_calls_back_into_a_file_that_calls_it() {
    let mods = modules();
    let g = graph(&mods);
    let found: Vec<String> = cycles(&g)
        .iter()
        .map(|c| c.iter().map(show).collect::<Vec<_>>().join(" ↔ "))
        .collect();
    assert!(found.is_empty(), "import cycles between files: {found:#?}");
    // The parser sees what it should: a known edge.
    assert!(g[&vec!["poll".to_string(), "round".to_string()]].contains(&vec!["store".to_string()]));
}

#[test]
fn no_top_level_module_calls_back_into_one_that_calls_it() {
    let mods = modules();
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, bs) in graph(&mods) {
        for b in bs {
            if let (Some(x), Some(y)) = (a.first(), b.first())
                && x != y
            {
                top.entry(x.clone()).or_default().insert(y.clone());
            }
        }
    }
    let found = cycles(&top);
    assert!(
        found.is_empty(),
        "import cycles between modules: {found:?} in {top:#?}"
    );
    assert!(top["poll"].contains("store") && !top["store"].contains("poll"));
}

#[test]
fn every_module_says_what_it_may_call_and_calls_nothing_else() {
    let mods = modules();
    let g = graph(&mods);
    let mut problems = Vec::new();
    for (me, file) in &mods {
        if me.is_empty() {
            continue; // lib.rs: the whole crate
        }
        let text = std::fs::read_to_string(file).unwrap();
        let doc: String = text
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        let Some(i) = doc.find("May call:") else {
            problems.push(format!("{}: no \"May call:\" in its //! comment", show(me)));
            continue;
        };
        let may = &doc[i..];
        let named: BTreeSet<&str> = may
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|n| n.split("::").next().unwrap())
            .collect();
        let calls: BTreeSet<&String> = g
            .get(me)
            .into_iter()
            .flatten()
            .filter_map(|t| t.first())
            .filter(|t| *t != &me[0])
            .collect();
        for c in calls {
            if !named.contains(c.as_str()) {
                problems.push(format!(
                    "{}: calls `{c}`, not named under May call",
                    show(me)
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
