//! No import loops between a crate's modules: for every crate under
//! `services/`, no module reaches (through `crate::…` paths, directly or
//! through other modules) a module that reaches it back. A loop is how a
//! god-struct and its helpers grow into one knot; this keeps the layering
//! of docs/architecture.md checkable.
//!
//! A module is a top-level file or directory of `src/` (`engine/redis.rs`
//! belongs to `engine`); its own unit tests (`#[cfg(test)]` from the line
//! on) are not counted, since a test may well use anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn services() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("services")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Module → the crate's modules it names as `crate::<module>`.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let first = rel.components().next().expect("a path").as_os_str().to_string_lossy().into_owned();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable source");
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or("")
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let code = code.as_str();
        let deps = g.entry(module.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            // `pushmesh_common::…` and `$crate::` are other crates / macros.
            let before = code[..i].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let name: String =
                code[i + "crate::".len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() && name != module {
                deps.insert(name);
            }
        }
        // `use crate::{a, b::c}` groups: the first name of each top-level item.
        for (i, _) in code.match_indices("crate::{") {
            let mut depth = 0;
            let mut items = vec![String::new()];
            for c in code[i + "crate::".len()..].chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 1 => break,
                    '}' => depth -= 1,
                    ',' if depth == 1 => items.push(String::new()),
                    c if depth == 1 => items.last_mut().expect("one").push(c),
                    _ => {}
                }
            }
            for item in items {
                let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() && name != module && name != "self" {
                    deps.insert(name);
                }
            }
        }
    }
    g
}

/// A loop through `start`, if there is one: the path back to it.
fn cycle_through(g: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_owned(), vec![start.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((m, path)) = stack.pop() {
        for d in g.get(&m).into_iter().flatten() {
            if d == start {
                let mut p = path.clone();
                p.push(start.to_owned());
                return Some(p);
            }
            if seen.insert(d.clone()) {
                let mut p = path.clone();
                p.push(d.clone());
                stack.push((d.clone(), p));
            }
        }
    }
    None
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let mut loops = Vec::new();
    let mut crates = 0;
    for entry in std::fs::read_dir(services()).expect("services/").flatten() {
        let src = entry.path().join("src");
        if !src.is_dir() {
            continue;
        }
        crates += 1;
        let g = graph(&src);
        let mut reported = BTreeSet::new();
        for m in g.keys() {
            if let Some(c) = cycle_through(&g, m) {
                let key: BTreeSet<String> = c.iter().cloned().collect();
                if reported.insert(key) {
                    loops.push(format!("{}: {}", entry.file_name().to_string_lossy(), c.join(" → ")));
                }
            }
        }
    }
    assert!(crates >= 5, "found only {crates} crates under services/");
    assert!(loops.is_empty(), "module import loops:\n{}", loops.join("\n"));
}

#[test]
fn the_checker_sees_a_loop() {
    let dir = std::env::temp_dir().join(format!("pushmesh-modules-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("engine")).unwrap();
    std::fs::write(dir.join("a.rs"), "use crate::{b, c::X};\n").unwrap();
    std::fs::write(dir.join("b.rs"), "use pushmesh_common::ids; fn f() { crate::engine::go() }\n").unwrap();
    std::fs::write(
        dir.join("c.rs"),
        "//! See [`crate::a`].\npub struct X;\n#[cfg(test)]\nmod tests { use crate::a; }\n",
    )
    .unwrap();
    std::fs::write(dir.join("engine").join("redis.rs"), "use crate::a::Thing;\n").unwrap();
    let g = graph(&dir);
    assert_eq!(g["a"], BTreeSet::from(["b".to_owned(), "c".to_owned()]));
    assert_eq!(g["b"], BTreeSet::from(["engine".to_owned()]), "another crate's `ids` is not a module here");
    assert!(g["c"].is_empty(), "unit tests and comments are not counted");
    assert_eq!(cycle_through(&g, "a"), Some(vec!["a", "b", "engine", "a"].into_iter().map(String::from).collect()));
    assert_eq!(cycle_through(&g, "c"), None);
    let _ = std::fs::remove_dir_all(&dir);
}
