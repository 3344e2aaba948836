//! The module graph of the library crates has no cycle: no module uses a
//! module that (through others) uses it back. Data flows one way, so each
//! module can be read, tested and changed knowing only the ones below it.
//!
//! The graph comes from the source text: `use` trees and `a::b` paths that
//! start with `crate`, `super`, `self` or a child module, resolved to the
//! longest module prefix (`crate::Name` of a name the root re-exports is the
//! module it comes from). A re-export inside a module is that module's, so a
//! child importing `super::Name` depends on its parent. Comments, string
//! literals and test modules (`cfg(test)`, `cfg(all(test, ..))`) are left out
//! (tests may use anything).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module's path from the crate root (empty: the root).
type Module = Vec<String>;

/// Every module file under `src`, with its source.
fn read_crate(src: &Path) -> BTreeMap<Module, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut module: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("lib" | "main" | "mod")
            ) {
                module.pop();
            }
            out.insert(module, std::fs::read_to_string(&path).unwrap());
        }
    }
    out
}

/// The code without comments, string and char literals, and test modules.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            i += text[i..].find('\n').unwrap_or(text.len() - i);
        } else if b[i..].starts_with(b"/*") {
            i += text[i..].find("*/").map_or(text.len() - i, |n| n + 2);
        } else if b[i] == b'r'
            && matches!(b.get(i + 1), Some(b'"' | b'#'))
            && (i == 0 || !is_ident(char::from(b[i - 1])))
        {
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = i + 2 + hashes;
            i = text[body..]
                .find(&close)
                .map_or(b.len(), |n| body + n + close.len());
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if b[i] == b'\'' && (b.get(i + 1) == Some(&b'\\') || b.get(i + 2) == Some(&b'\'')) {
            // A char literal ('x', '\n', '\u{..}'); a lifetime has no closing quote.
            i += 2;
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    // `#[cfg(test)] mod tests { .. }` (or `cfg(all(test, ..))`): cut the
    // module, braces matched.
    let mut from = 0;
    while let Some(start) = out[from..].find("#[cfg(").map(|n| from + n) {
        let attr_end = out[start..].find(']').map_or(out.len(), |n| start + n + 1);
        let attr = &out[start..attr_end];
        let is_test = attr
            .split(|c: char| !is_ident(c))
            .any(|word| word == "test");
        let is_mod = out[attr_end..].trim_start().starts_with("mod ");
        let open = out[attr_end..].find('{').map(|n| attr_end + n);
        let Some(open) = open.filter(|_| is_test && is_mod) else {
            from = attr_end;
            continue;
        };
        let mut depth = 0;
        let mut end = out.len();
        for (k, c) in out[open..].char_indices() {
            depth += match c {
                '{' => 1,
                '}' => -1,
                _ => 0,
            };
            if depth == 0 {
                end = open + k + 1;
                break;
            }
        }
        out.replace_range(start..end, "");
        from = start;
    }
    out
}

/// `a::b::{c, d::{e, self}}` as `a::b::c`, `a::b::d::e`, `a::b::d`.
fn flatten(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        return vec![tree.to_owned()];
    };
    let prefix = &tree[..open];
    let body = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut parts, mut depth, mut cur) = (Vec::new(), 0, String::new());
    for c in body.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| match p.as_str() {
            "self" => vec![prefix.trim_end_matches("::").to_owned()],
            p => flatten(&format!("{prefix}{p}")),
        })
        .collect()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The tree of a `use` (or `pub use`) statement, without spaces and
/// without `as` renames.
fn use_tree(stmt: &str) -> Option<String> {
    let words: Vec<&str> = stmt.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "use")?;
    let mut tree = String::new();
    let mut rest = words[at + 1..].iter();
    while let Some(w) = rest.next() {
        if *w == "as" {
            // The new name, and whatever punctuation follows it.
            if let Some(name) = rest.next() {
                tree.push_str(name.trim_start_matches(is_ident));
            }
        } else {
            tree.push_str(w);
        }
    }
    Some(tree)
}

/// Every path the code names: flattened `use` trees and `a::b` sequences.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out: Vec<String> = code
        .split(';')
        .filter_map(use_tree)
        .flat_map(|t| flatten(&t))
        .collect();
    let mut cur = String::new();
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        if is_ident(c) {
            cur.push(c);
        } else if c == ':' && chars.peek() == Some(&':') && !cur.is_empty() {
            chars.next();
            cur.push_str("::");
        } else {
            // `a::{..}` and `a::<T>` are not paths by themselves (the use
            // tree and the generic path are read on their own).
            if cur.contains("::") && !cur.ends_with("::") {
                out.push(cur.clone());
            }
            cur.clear();
        }
    }
    out.iter()
        .map(|p| {
            p.split("::")
                .filter(|s| !s.is_empty() && *s != "*")
                .map(String::from)
                .collect()
        })
        .collect()
}

/// The module `path` names from `here`, if it names one of `modules`.
fn resolve(
    path: &[String],
    here: &Module,
    modules: &BTreeMap<Module, String>,
    reexports: &BTreeMap<String, Module>,
) -> Option<Module> {
    let first = path.first()?;
    let (mut base, rest) = match first.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "super" | "self" => {
            let mut base = here.clone();
            let mut n = 0;
            for seg in path.iter().take_while(|s| *s == "super" || *s == "self") {
                if seg == "super" {
                    base.pop();
                }
                n += 1;
            }
            (base, &path[n..])
        }
        _ => {
            let mut child = here.clone();
            child.push(first.clone());
            if !modules.contains_key(&child) {
                // A name in scope (a local item or an import, whose `use`
                // is an edge of its own) or another crate.
                return None;
            }
            (here.clone(), path)
        }
    };
    if base.is_empty()
        && rest
            .first()
            .is_some_and(|n| !modules.contains_key(&vec![n.clone()]))
    {
        return rest.first().and_then(|n| reexports.get(n)).cloned();
    }
    let mut best = modules.contains_key(&base).then(|| base.clone());
    for seg in rest {
        base.push(seg.clone());
        if modules.contains_key(&base) {
            best = Some(base.clone());
        }
    }
    best
}

/// Module -> the modules it uses.
fn graph(modules: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let code: BTreeMap<&Module, String> = modules.iter().map(|(m, t)| (m, code_only(t))).collect();
    // Names the root re-exports from its modules: `crate::Error` is error's.
    let mut reexports = BTreeMap::new();
    let root_uses = code[&Vec::new()]
        .split(';')
        .filter(|s| s.trim().starts_with("pub use "));
    for tree in root_uses.filter_map(use_tree) {
        for p in flatten(&tree) {
            let segs: Vec<&str> = p.split("::").filter(|s| *s != "crate").collect();
            if let (Some(first), Some(last)) = (segs.first(), segs.last()) {
                if modules.contains_key(&vec![first.to_string()]) {
                    reexports.insert(last.to_string(), vec![first.to_string()]);
                }
            }
        }
    }
    code.iter()
        .map(|(&here, code)| {
            let uses = paths(code)
                .iter()
                .filter_map(|p| resolve(p, here, modules, &reexports))
                .filter(|t| t != here && !t.is_empty())
                .collect();
            (here.clone(), uses)
        })
        .collect()
}

/// The modules on a cycle, one group per strongly connected component.
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<BTreeSet<Module>> {
    let reaches = |from: &Module| {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&Module> = graph[from].iter().collect();
        while let Some(m) = todo.pop() {
            if seen.insert(m.clone()) {
                todo.extend(graph.get(m).into_iter().flatten());
            }
        }
        seen
    };
    let reach: BTreeMap<&Module, BTreeSet<Module>> =
        graph.keys().map(|m| (m, reaches(m))).collect();
    let mut groups: Vec<BTreeSet<Module>> = Vec::new();
    for (m, r) in &reach {
        if !r.contains(*m) || groups.iter().any(|g| g.contains(*m)) {
            continue;
        }
        groups.push(
            r.iter()
                .filter(|o| reach[o].contains(*m))
                .cloned()
                .collect(),
        );
    }
    groups
}

/// Fails with every module on a cycle and the modules of its cycle it uses.
fn assert_no_cycle(name: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
        .join("src");
    let modules = read_crate(&src);
    assert!(
        modules.len() > 5,
        "{}: too few modules found",
        src.display()
    );
    let graph = graph(&modules);
    let mut found = String::new();
    for group in cycles(&graph) {
        for m in &group {
            let uses: Vec<String> = graph[m]
                .iter()
                .filter(|t| group.contains(*t))
                .map(|t| t.join("::"))
                .collect();
            found += &format!("\n  {} uses {}", m.join("::"), uses.join(", "));
        }
    }
    assert!(found.is_empty(), "module cycles in {name}:{found}");
}

#[test]
fn proto_has_no_module_cycle() {
    assert_no_cycle("proto");
}

#[test]
fn switchyard_has_no_module_cycle() {
    assert_no_cycle("switchyard");
}

#[test]
fn cycles_through_use_super_reexports_and_children_are_found() {
    let m = |p: &str| -> Module {
        p.split("::")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    let krate = |files: &[(&str, &str)]| -> BTreeMap<Module, String> {
        files.iter().map(|(p, t)| (m(p), t.to_string())).collect()
    };
    let found = |files: &[(&str, &str)]| cycles(&graph(&krate(files)));
    let root = "mod error; mod h2; mod h2b; pub use error::Error;";
    // error -> h2 (a path in an attribute), h2 -> error through the root's re-export.
    let c = found(&[
        ("", root),
        ("error", "enum Error { H2(#[from] crate::h2::H2Error) }"),
        ("h2", "use crate::Error; pub struct H2Error;"),
        (
            "h2b",
            "// use crate::error::Error;\nconst S: &str = \"crate::error\";",
        ),
    ]);
    assert_eq!(c, vec![BTreeSet::from([m("error"), m("h2")])]);
    // A parent using its child, the child using the parent with `super`.
    let c = found(&[
        ("", "mod h3;"),
        (
            "h3",
            "mod server; pub use server::serve; pub struct H3Error;",
        ),
        ("h3::server", "use super::H3Error; pub fn serve() {}"),
    ]);
    assert_eq!(c, vec![BTreeSet::from([m("h3"), m("h3::server")])]);
    // Downward uses, comments, strings and test modules make no cycle.
    let c = found(&[
        ("", root),
        (
            "error",
            "use std::io; #[cfg(test)]\nmod tests { use crate::h2::x; }\n\
             #[cfg(all(test, target_os = \"linux\"))]\nmod linux { use crate::h2::y; }",
        ),
        (
            "h2",
            "use crate::error::{self, Error}; fn f() -> error::Error { todo!() }",
        ),
        (
            "h2b",
            "/* crate::h2 */ fn g() { let _ = 'a'; let _ = r#\"super::h2\"#; }",
        ),
    ]);
    assert!(c.is_empty(), "{c:?}");
}

#[test]
fn gateway_has_no_module_cycle() {
    assert_no_cycle("gateway");
}

#[test]
fn cli_has_no_module_cycle() {
    assert_no_cycle("cli");
}
