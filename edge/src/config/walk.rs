//! Reading a TOML document key by key while collecting every error at once, each
//! with its dotted key path and line. Serde stops at the first error; an operator
//! fixing a config wants all of them.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use toml_edit::{Item, TableLike, Value};

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line, or 0 when the problem has no place in the file (a CLI flag).
    pub line: usize,
    /// Dotted key path, e.g. `pools.api.connect_timeout`.
    pub key: String,
    pub reason: String,
}

/// Every problem found in one config, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigErrors {
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match e.line {
                0 => write!(f, "{}: {}: {}", self.source, e.key, e.reason)?,
                n => write!(f, "{}:{}: {}: {}", self.source, n, e.key, e.reason)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The errors found so far and a way to turn byte offsets into lines.
pub(crate) struct Cx<'s> {
    src: &'s str,
    pub(crate) errors: Vec<ConfigError>,
    /// The command line supplies the pools (`--upstream`): a file may have none.
    pub(crate) pools_from_flags: bool,
}

impl<'s> Cx<'s> {
    pub(crate) fn new(src: &'s str) -> Self {
        Self {
            src,
            errors: Vec::new(),
            pools_from_flags: false,
        }
    }

    pub(crate) fn line_of(&self, span: Option<Range<usize>>) -> usize {
        span.map_or(0, |s| {
            let end = s.start.min(self.src.len());
            self.src.as_bytes()[..end]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1
        })
    }

    pub(crate) fn error(&mut self, line: usize, key: &str, reason: impl Into<String>) {
        self.errors.push(ConfigError {
            line,
            key: key.to_owned(),
            reason: reason.into(),
        });
    }
}

/// A table being read: remembers which keys were taken so the rest are reported unknown.
pub(crate) struct Table<'a> {
    path: String,
    table: &'a dyn TableLike,
    line: usize,
    taken: Vec<&'static str>,
}

impl<'a> Table<'a> {
    pub(crate) fn root(doc: &'a toml_edit::Table) -> Self {
        Self {
            path: String::new(),
            table: doc,
            line: 0,
            taken: Vec::new(),
        }
    }

    pub(crate) fn path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    /// Whether `key` is present (whatever its value).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.table.get(key).is_some_and(|i| !i.is_none())
    }

    pub(crate) fn line(&self) -> usize {
        self.line
    }

    fn item(&mut self, key: &'static str) -> Option<&'a Item> {
        self.taken.push(key);
        self.table.get(key).filter(|i| !i.is_none())
    }

    /// The line of `key`'s value (or of the key itself).
    pub(crate) fn line_of(&self, cx: &Cx<'_>, key: &str) -> usize {
        let span = self
            .table
            .get(key)
            .and_then(Item::span)
            .or_else(|| self.table.key(key).and_then(|k| k.span()));
        match cx.line_of(span) {
            0 => self.line,
            n => n,
        }
    }

    /// Reads an optional value; a value of the wrong form is reported and read as absent.
    pub(crate) fn opt<T: FromToml>(&mut self, cx: &mut Cx<'_>, key: &'static str) -> Option<T> {
        let item = self.item(key)?;
        match item
            .as_value()
            .ok_or_else(|| "expected a value, found a table".to_owned())
        {
            Ok(v) => match T::from_toml(v) {
                Ok(t) => Some(t),
                Err(reason) => {
                    let line = self.line_of(cx, key);
                    cx.error(line, &self.path(key), reason);
                    None
                }
            },
            Err(reason) => {
                let line = self.line_of(cx, key);
                cx.error(line, &self.path(key), reason);
                None
            }
        }
    }

    pub(crate) fn or<T: FromToml>(&mut self, cx: &mut Cx<'_>, key: &'static str, default: T) -> T {
        self.opt(cx, key).unwrap_or(default)
    }

    /// A sub-table (`[a.b]` or inline `b = { .. }`), or None when absent.
    pub(crate) fn table(&mut self, cx: &mut Cx<'_>, key: &'static str) -> Option<Table<'a>> {
        let item = self.item(key)?;
        let line = self.line_of(cx, key);
        match item.as_table_like() {
            Some(t) => Some(Table {
                path: self.path(key),
                table: t,
                line,
                taken: Vec::new(),
            }),
            None => {
                cx.error(line, &self.path(key), "expected a table");
                None
            }
        }
    }

    /// `[[key]]` entries (or an array of inline tables).
    pub(crate) fn tables(&mut self, cx: &mut Cx<'_>, key: &'static str) -> Vec<Table<'a>> {
        let Some(item) = self.item(key) else {
            return Vec::new();
        };
        let base = self.path(key);
        let outer_line = self.line_of(cx, key);
        let mut out = Vec::new();
        let mut push = |i: usize, t: Option<&'a dyn TableLike>, line: usize, cx: &mut Cx<'_>| {
            let path = format!("{base}[{i}]");
            match t {
                Some(table) => out.push(Table {
                    path,
                    table,
                    line,
                    taken: Vec::new(),
                }),
                None => cx.error(line, &path, "expected a table"),
            }
        };
        match item {
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    let line = cx.line_of(t.span());
                    push(i, Some(t as &dyn TableLike), line, cx);
                }
            }
            Item::Value(Value::Array(a)) => {
                for (i, v) in a.iter().enumerate() {
                    let line = cx.line_of(v.span());
                    push(
                        i,
                        v.as_inline_table().map(|t| t as &dyn TableLike),
                        line,
                        cx,
                    );
                }
            }
            _ => cx.error(outer_line, &base, "expected an array of tables ([[...]])"),
        }
        out
    }

    /// Every `name = value` of a table whose keys are chosen by the user
    /// (`latency = { eu-west = "20ms" }`), with the line of each; values of the
    /// wrong form are reported and left out.
    pub(crate) fn map<T: FromToml>(
        &mut self,
        cx: &mut Cx<'_>,
        key: &'static str,
    ) -> Vec<(String, T, usize)> {
        let Some(outer) = self.table(cx, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, item) in outer.table.iter() {
            let line = outer.line_of(cx, name);
            let value = item
                .as_value()
                .ok_or_else(|| "expected a value, found a table".to_owned())
                .and_then(T::from_toml);
            match value {
                Ok(v) => out.push((name.to_owned(), v, line)),
                Err(reason) => cx.error(line, &outer.path(name), reason),
            }
        }
        out
    }

    /// Every entry of a table whose keys are names chosen by the user (`[pools.NAME]`).
    pub(crate) fn named_tables(
        &mut self,
        cx: &mut Cx<'_>,
        key: &'static str,
    ) -> Vec<(String, Table<'a>)> {
        let Some(outer) = self.table(cx, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (name, item) in outer.table.iter() {
            let path = outer.path(name);
            let line = outer.line_of(cx, name);
            match item.as_table_like() {
                Some(table) => out.push((
                    name.to_owned(),
                    Table {
                        path,
                        table,
                        line,
                        taken: Vec::new(),
                    },
                )),
                None => cx.error(line, &path, "expected a table"),
            }
        }
        out
    }

    /// Reports every key nobody asked for.
    pub(crate) fn finish(self, cx: &mut Cx<'_>) {
        for (key, _) in self.table.iter() {
            if !self.taken.contains(&key) {
                let line = self.line_of(cx, key);
                cx.error(line, &self.path(key), "unknown key");
            }
        }
    }
}

/// A value that can be read from one TOML value; the error is the reason shown to the user.
pub(crate) trait FromToml: Sized {
    fn from_toml(v: &Value) -> Result<Self, String>;
}

fn expect_str<'v>(v: &'v Value, what: &str) -> Result<&'v str, String> {
    v.as_str()
        .ok_or_else(|| format!("expected {what} as a string, found {}", v.type_name()))
}

impl FromToml for String {
    fn from_toml(v: &Value) -> Result<Self, String> {
        expect_str(v, "text").map(str::to_owned)
    }
}

impl FromToml for PathBuf {
    fn from_toml(v: &Value) -> Result<Self, String> {
        expect_str(v, "a path").map(PathBuf::from)
    }
}

impl FromToml for bool {
    fn from_toml(v: &Value) -> Result<Self, String> {
        v.as_bool()
            .ok_or_else(|| format!("expected true or false, found {}", v.type_name()))
    }
}

macro_rules! from_toml_int {
    ($($t:ty),*) => {$(
        impl FromToml for $t {
            fn from_toml(v: &Value) -> Result<Self, String> {
                let n = v
                    .as_integer()
                    .ok_or_else(|| format!("expected a whole number, found {}", v.type_name()))?;
                <$t>::try_from(n).map_err(|_| format!("{n} is out of range"))
            }
        }
    )*};
}
from_toml_int!(u16, u32, u64, usize);

impl FromToml for f64 {
    fn from_toml(v: &Value) -> Result<Self, String> {
        v.as_float()
            .or_else(|| v.as_integer().map(|i| i as f64))
            .ok_or_else(|| format!("expected a number, found {}", v.type_name()))
    }
}

impl FromToml for Duration {
    fn from_toml(v: &Value) -> Result<Self, String> {
        let s = expect_str(v, "a duration (like \"10s\" or \"500ms\")")?;
        humantime::parse_duration(s).map_err(|e| {
            format!("invalid duration {s:?} ({e}); write it like \"10s\", \"500ms\" or \"2m\"")
        })
    }
}

impl FromToml for SocketAddr {
    fn from_toml(v: &Value) -> Result<Self, String> {
        let s = expect_str(v, "an address")?;
        s.parse().map_err(|_| {
            format!("invalid address {s:?}; write it like \"0.0.0.0:8443\" or \"[::1]:8443\"")
        })
    }
}

/// One address or a list of them (`listen`, `http_listen`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Addrs(pub Vec<SocketAddr>);

impl FromToml for Addrs {
    fn from_toml(v: &Value) -> Result<Self, String> {
        if v.as_array().is_some() {
            return Vec::<SocketAddr>::from_toml(v).map(Self);
        }
        SocketAddr::from_toml(v).map(|a| Self(vec![a]))
    }
}

impl FromToml for IpNet {
    fn from_toml(v: &Value) -> Result<Self, String> {
        let s = expect_str(v, "a network")?;
        parse_net(s)
    }
}

pub(crate) fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("invalid network {s:?}; write it like \"10.0.0.0/8\" or \"192.0.2.1\"")
        })
}

impl<T: FromToml> FromToml for Vec<T> {
    fn from_toml(v: &Value) -> Result<Self, String> {
        let a = v
            .as_array()
            .ok_or_else(|| format!("expected a list, found {}", v.type_name()))?;
        a.iter()
            .enumerate()
            .map(|(i, v)| T::from_toml(v).map_err(|e| format!("item {i}: {e}")))
            .collect()
    }
}
