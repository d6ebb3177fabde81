//! The import direction inside `edge/src`, checked over the source text:
//! leaves (`chain`, `wire`, `text`) ← `config` (plain types) ← shared parts (body, tls, the shared Redis,
//! errors, metrics) ← `cache` ← `pipeline` ← `listener` ← `server` ← the crate
//! root (`lib.rs`; `main.rs` is its own crate and uses `edge::`). A module may name (`crate::x`, or `super::x` out
//! of its folder) only modules of a strictly lower layer, so no two top-level
//! modules can import each other in a circle. Every top-level module must have a
//! layer here: a new one is placed on purpose.

use std::path::Path;

/// Top-level modules by layer; higher layers may use lower ones, never the reverse.
const LAYERS: &[(&str, u8)] = &[
    // Leaves that know no other module.
    ("chain", 0),
    ("wire", 0),
    ("text", 0),
    ("config", 1),
    ("body", 2),
    ("tls", 2),
    ("locality", 2),
    // The Redis client every edge shares (cache L2, sticky, global limits).
    ("shared", 2),
    ("cert_time", 0),
    ("local_ca", 3),
    ("error", 3),
    ("metrics", 3),
    // The access log's writer (formats and queues lines; knows config only).
    ("access_log", 3),
    ("start", 3),
    ("cache", 4),
    // Per-pool rate forecasts and pre-warming (config and upstream pools below it).
    ("forecast", 4),
    // ACME orders and their challenge answers (config, tls, metrics below it).
    ("acme", 4),
    ("pipeline", 5),
    ("listener", 6),
    ("server", 7),
    // `crate::Error` and anything else declared in lib.rs.
    ("<root>", 8),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The top-level modules a file's text names, with the line of each mention.
fn mentions(text: &str, depth: usize) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            for name in heads(rest) {
                out.push((name, n + 1));
            }
        }
        // `super::` climbs out of the file's top-level module only at item level
        // (unindented); inside an inline `mod tests` it means the file itself.
        let up = "super::".repeat(depth);
        if let Some(after) = line.strip_prefix("use ").and_then(|l| l.strip_prefix(&up)) {
            out.extend(heads(after).into_iter().map(|h| (h, n + 1)));
        }
    }
    out
}

/// The first path segment after `crate::`: one name, or each in a `{a, b::c}` group.
fn heads(rest: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = rest.strip_prefix('{') else {
        return vec![ident(rest)];
    };
    let mut names = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                names.push(ident(&group[start..i]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                names.push(ident(&group[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    names
}

/// Each `.rs` file under `dir`, with its top-level module and nesting depth.
fn files(dir: &Path, top: Option<&str>, depth: usize, out: &mut Vec<(String, usize, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("edge/src is readable")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        if path.is_dir() {
            files(&path, Some(top.unwrap_or(&name)), depth + 1, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let (module, d) = match top {
                Some(t) => (t.to_owned(), if name == "mod" { depth } else { depth + 1 }),
                None if name == "lib" || name == "main" => continue,
                None => (name.clone(), 1),
            };
            if module == "layering" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("source is readable");
            out.push((module, d, format!("{}\n{text}", path.display())));
        }
    }
}

#[test]
fn imports_run_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, None, 0, &mut all);
    let mut wrong = Vec::new();
    for (module, depth, text) in &all {
        let (path, text) = text.split_once('\n').unwrap_or_default();
        let Some(own) = layer(module) else {
            wrong.push(format!("{path}: module `{module}` has no layer in LAYERS"));
            continue;
        };
        for (name, line) in mentions(text, *depth) {
            if name.is_empty() || name == *module {
                continue;
            }
            // A name that is no top-level module is an item of lib.rs.
            let used = if src.join(format!("{name}.rs")).exists() || src.join(&name).is_dir() {
                name.clone()
            } else {
                "<root>".to_owned()
            };
            match layer(&used) {
                Some(l) if l < own => {}
                _ => wrong.push(format!(
                    "{path}:{line}: `{module}` uses `{name}`, which is not below it"
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn reads_single_and_grouped_paths() {
    assert_eq!(heads("body::Body;"), ["body"]);
    assert_eq!(
        heads("{cache::Cache, error::{ErrorKind, Side}, Error};"),
        ["cache", "error", "Error"]
    );
    let text = "use super::super::wire::REQUEST_ID;\n    use super::*;\n";
    assert_eq!(mentions(text, 2), [("wire".to_owned(), 1)]);
}
