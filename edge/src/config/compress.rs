//! A route's response compression: `compress = ["zstd", "br", "gzip"]` (the
//! encodings edge may use, in its order of preference), `compress_min_bytes`
//! and `compress_types`. Absent or empty `compress` is off.

use super::walk::{Cx, FromToml, Table};

/// A content coding edge compresses with (RFC 9110 8.4.1; zstd RFC 8878).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    Zstd,
    Br,
    Gzip,
}

impl Encoding {
    pub const ALL: [Encoding; 3] = [Encoding::Zstd, Encoding::Br, Encoding::Gzip];

    /// The coding's token in `Accept-Encoding` and `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Zstd => "zstd",
            Encoding::Br => "br",
            Encoding::Gzip => "gzip",
        }
    }
}

impl FromToml for Encoding {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        let s = <String as FromToml>::from_toml(v)?;
        Encoding::ALL
            .into_iter()
            .find(|e| e.token() == s)
            .ok_or_else(|| {
                format!(
                    "{s:?} is not an encoding edge compresses with: \"zstd\", \"br\" or \"gzip\""
                )
            })
    }
}

/// The media types compressed when a route names none: text, and the
/// structured text formats browsers fetch (Caddy's list, plus XML).
pub const DEFAULT_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/xhtml+xml",
    "application/atom+xml",
    "application/rss+xml",
    "application/wasm",
    "image/svg+xml",
];

/// Bodies shorter than this (by Content-Length) are sent as they are.
pub const DEFAULT_MIN_BYTES: u64 = 1024;

/// How a route compresses responses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compress {
    /// Edge's order of preference; never empty.
    pub encodings: Vec<Encoding>,
    /// A response with a known length below this is not compressed.
    pub min_bytes: u64,
    /// Media types (`type/subtype`, or `type/*`), lower case.
    pub types: Vec<String>,
}

impl Compress {
    /// Whether a `Content-Type` value (parameters and case aside) is one to compress.
    pub fn compresses(&self, content_type: &str) -> bool {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let Some((top, _)) = essence.split_once('/') else {
            return false;
        };
        self.types.iter().any(|t| match t.strip_suffix("/*") {
            Some(wild) => wild == top,
            None => *t == essence,
        })
    }
}

/// A media type pattern as `compress_types` lists it.
struct MediaType(String);

impl FromToml for MediaType {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        let s = <String as FromToml>::from_toml(v)?;
        let token = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
        };
        match s.split_once('/') {
            Some((top, sub)) if token(top) && (sub == "*" || token(sub)) => {
                Ok(Self(s.to_ascii_lowercase()))
            }
            _ => Err(format!(
                "{s:?} is not a media type: write it like \"text/html\" or \"text/*\""
            )),
        }
    }
}

/// Reads a route's `compress`, `compress_min_bytes` and `compress_types`.
pub(super) fn read_compress(cx: &mut Cx<'_>, t: &mut Table<'_>) -> Option<Compress> {
    let encodings = t.opt::<Vec<Encoding>>(cx, "compress");
    let min_bytes = t.opt::<u64>(cx, "compress_min_bytes");
    let types = t.opt::<Vec<MediaType>>(cx, "compress_types");
    if let Some(list) = &encodings {
        for (i, e) in list.iter().enumerate() {
            if list[..i].contains(e) {
                let line = t.line_of(cx, "compress");
                cx.error(
                    line,
                    &t.path("compress"),
                    format!("{:?} is listed twice", e.token()),
                );
                break;
            }
        }
    }
    let encodings = encodings.filter(|l| !l.is_empty());
    if encodings.is_none() {
        for key in ["compress_min_bytes", "compress_types"] {
            if t.has(key) {
                let line = t.line_of(cx, key);
                cx.error(
                    line,
                    &t.path(key),
                    "needs compress (the encodings this route compresses with)",
                );
            }
        }
    }
    if matches!(&types, Some(list) if list.is_empty()) {
        let line = t.line_of(cx, "compress_types");
        cx.error(
            line,
            &t.path("compress_types"),
            "an empty list compresses nothing: leave compress out instead",
        );
    }
    Some(Compress {
        encodings: encodings?,
        min_bytes: min_bytes.unwrap_or(DEFAULT_MIN_BYTES),
        types: match types {
            Some(list) => list.into_iter().map(|m| m.0).collect(),
            None => DEFAULT_TYPES.iter().map(|s| (*s).to_owned()).collect(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_match_by_essence_and_wildcard() {
        let c = Compress {
            encodings: vec![Encoding::Gzip],
            min_bytes: 0,
            types: DEFAULT_TYPES.iter().map(|s| (*s).to_owned()).collect(),
        };
        assert!(c.compresses("text/html; charset=utf-8"));
        assert!(c.compresses("Application/JSON"));
        assert!(c.compresses("text/event-stream"));
        assert!(c.compresses("image/svg+xml"));
        assert!(!c.compresses("image/png"));
        assert!(!c.compresses("application/octet-stream"));
        assert!(!c.compresses("application/grpc"));
        assert!(!c.compresses("text"));
        assert!(!c.compresses(""));
    }
}
