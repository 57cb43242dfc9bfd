//! The layers of `core/src`, as its source says them: nothing in `proto` imports
//! `transport`, `runtime`, `api` or `debug`; nothing in `runtime`, `transport` or `debug`
//! reaches `api`; and no module imports, however indirectly, one that imports it.
//!
//! Read from the source, not the compiler: every `use` and every inline `crate::`, `super::`
//! or `self::` path outside comments, resolved to the module file that holds the item (a
//! `mod.rs` re-export counts as the module it re-exports from). A module's own submodules
//! and its parent's `mod.rs` facade are not edges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules by path (`["api", "sockets"]`), with their source.
fn modules() -> BTreeMap<Vec<String>, String> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                let mut sub = prefix.to_vec();
                sub.push(name);
                walk(&p, &sub, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let mut m = prefix.to_vec();
                if name != "mod" && name != "lib" {
                    m.push(name);
                }
                out.insert(m, std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src"),
        &[],
        &mut out,
    );
    out
}

/// The source without comments (line, block and doc comments) and string literals.
fn code(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Every path a module names: `use` trees expanded, and inline paths.
fn paths(code: &str) -> Vec<Vec<String>> {
    fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
        let tree = tree.trim();
        if let Some(open) = tree.find('{') {
            let head = &tree[..open];
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&inner[start..i], &format!("{prefix}{head}"), out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            expand(&inner[start..], &format!("{prefix}{head}"), out);
        } else if !tree.is_empty() {
            let t = tree.split(" as ").next().unwrap_or(tree).trim();
            out.push(format!("{prefix}{t}"));
        }
    }
    let mut flat = Vec::new();
    for part in code.split(';') {
        let at = part.match_indices("use ").map(|(i, _)| i).find(|&i| {
            let prev = part[..i].chars().last().unwrap_or(' ');
            !(prev.is_alphanumeric() || prev == '_')
        });
        if let Some(at) = at {
            expand(&part[at + 4..], "", &mut flat);
        }
    }
    // Inline paths.
    for start in ["crate::", "super::", "self::"] {
        for (i, _) in code.match_indices(start) {
            let prev = code[..i].chars().last().unwrap_or(' ');
            if prev.is_alphanumeric() || prev == '_' || prev == ':' {
                continue;
            }
            let rest: String = code[i..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            flat.push(rest);
        }
    }
    flat.iter()
        .map(|p| {
            p.split("::")
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty() && s != "*")
                .collect()
        })
        .collect()
}

/// The module `path` (named from `module`) lands in, and the item's name there.
fn resolve(
    module: &[String],
    path: &[String],
    mods: &BTreeMap<Vec<String>, String>,
) -> Option<Vec<String>> {
    let mut abs: Vec<String> = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("super") => module[..module.len().saturating_sub(1)].to_vec(),
        Some("self") => module.to_vec(),
        _ => return None,
    };
    let mut rest = &path[1..];
    while rest.first().map(String::as_str) == Some("super") {
        abs.pop();
        rest = &rest[1..];
    }
    abs.extend(rest.iter().cloned());
    let k = (0..=abs.len())
        .rev()
        .find(|k| mods.contains_key(&abs[..*k]))?;
    let target = abs[..k].to_vec();
    // An item a facade re-exports from one of its submodules is that submodule's.
    if let (Some(item), Some(src)) = (abs.get(k), mods.get(&target)) {
        for p in paths(&code(src)) {
            if p.last() == Some(item) && p.first().map(String::as_str) != Some("crate") {
                let mut sub = target.clone();
                sub.push(p[0].clone());
                if p.len() >= 2 && mods.contains_key(&sub) {
                    return Some(sub);
                }
            }
        }
    }
    Some(target)
}

fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mods = modules();
    let mut g = BTreeMap::new();
    for (m, src) in &mods {
        let deps: BTreeSet<Vec<String>> = paths(&code(src))
            .iter()
            .filter_map(|p| resolve(m, p, &mods))
            .filter(|t| t != m && !t.starts_with(m) && !m.starts_with(t))
            .collect();
        g.insert(m.clone(), deps);
    }
    g
}

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "lib".into()
    } else {
        m.join("::")
    }
}

#[test]
fn lower_layers_do_not_reach_up() {
    let forbidden: &[(&str, &[&str])] = &[
        ("proto", &["transport", "runtime", "api", "debug"]),
        ("runtime", &["api"]),
        ("transport", &["api"]),
        ("debug", &["api"]),
    ];
    let mut wrong = Vec::new();
    for (m, deps) in graph() {
        for (layer, above) in forbidden {
            if m.first().map(String::as_str) != Some(layer) {
                continue;
            }
            for d in &deps {
                if d.first().is_some_and(|t| above.contains(&t.as_str())) {
                    wrong.push(format!("{} uses {}", name(&m), name(d)));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers: {wrong:#?}");
}

#[test]
fn no_module_imports_in_a_circle() {
    let g = graph();
    // Strongly connected components (Tarjan), each of more than one module a circle.
    struct T<'a> {
        g: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a [String], usize>,
        low: BTreeMap<&'a [String], usize>,
        stack: Vec<&'a [String]>,
        on: BTreeSet<&'a [String]>,
        circles: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a [String]) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        let g = t.g;
        for w in g.get(v).into_iter().flatten() {
            let w: &'a [String] = g.get_key_value(w).map_or(&[][..], |(k, _)| k.as_slice());
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(name(w));
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                t.circles.push(comp);
            }
        }
    }
    let mut t = T {
        g: &g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        circles: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_slice()) {
            visit(&mut t, v);
        }
    }
    assert!(
        t.circles.is_empty(),
        "modules that import each other: {:#?}",
        t.circles
    );
}

#[test]
fn the_reader_finds_the_imports_it_should() {
    // The check itself: known edges are seen.
    let g = graph();
    let edge = |a: &str, b: &str| {
        let a: Vec<String> = a.split("::").map(String::from).collect();
        let b: Vec<String> = b.split("::").map(String::from).collect();
        g[&a].contains(&b)
    };
    assert!(edge("api::sockets", "proto::endpoint"));
    assert!(edge("api::messages", "api::sockets"));
    assert!(edge("api::fake_udp", "api::messages"));
    assert!(edge("runtime", "debug"));
}
