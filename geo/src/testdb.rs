//! Test databases made at test time by `testdata/make_mmdb.py` (PyPI mmdb-writer).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `(network, country, continent)`: the record written for the network.
pub type Entry<'a> = (&'a str, Option<&'a str>, Option<&'a str>);

/// Writes `dir/name` with one GeoIP2-Country-like record per entry.
pub fn write(dir: &Path, name: &str, entries: &[Entry<'_>]) -> PathBuf {
    let networks: Vec<serde_json::Value> = entries
        .iter()
        .map(|&(net, country, continent)| {
            let mut record = serde_json::Map::new();
            if let Some(code) = country {
                record.insert("country".into(), serde_json::json!({ "iso_code": code }));
            }
            if let Some(code) = continent {
                record.insert("continent".into(), serde_json::json!({ "code": code }));
            }
            serde_json::json!([net, record])
        })
        .collect();
    write_json(dir, name, &serde_json::Value::Array(networks))
}

/// The test command's virtualenv (`$EDGE_TEST_PYTHON`, else the workspace's
/// `.venv`), which has mmdb-writer; else `python3` on the PATH.
fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("EDGE_TEST_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python3");
    if venv.exists() {
        return venv;
    }
    "python3".into()
}

/// Writes `dir/name` from `[[network, record], ...]`, records as they are.
pub fn write_json(dir: &Path, name: &str, networks: &serde_json::Value) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/make_mmdb.py");
    let out = dir.join(name);
    let mut child = Command::new(python())
        .arg(&script)
        .arg(&out)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(networks.to_string().as_bytes())
        .expect("script reads its input");
    let done = child.wait_with_output().expect("script finishes");
    assert!(
        done.status.success(),
        "{} failed (needs mmdb-writer, which ops/test.sh installs into .venv): {}",
        script.display(),
        String::from_utf8_lossy(&done.stderr)
    );
    out
}
