//! `hedge = { after = "p95" | "50ms", max = 1 }` on a pool: a second try on
//! another endpoint when a replayable request's first is slow to answer.

use std::time::Duration;

use upstream::{HedgeAfter, HedgeConfig};

use super::walk::{Cx, FromToml, Table};

/// Hedges per request at most: each one is another request on the pool.
const MAX_HEDGES: u32 = 4;

pub(super) fn read_hedge(cx: &mut Cx<'_>, pool: &mut Table<'_>) -> Option<HedgeConfig> {
    let mut t = pool.table(cx, "hedge")?;
    let after = t.opt::<HedgeAfter>(cx, "after");
    if after.is_none() && !t.has("after") {
        let line = t.line();
        cx.error(line, &t.path("after"), "missing (required)");
    }
    let mut hedge = HedgeConfig::new(after.unwrap_or(HedgeAfter::Fixed(Duration::ZERO)));
    if let Some(max) = t.opt::<u32>(cx, "max") {
        if (1..=MAX_HEDGES).contains(&max) {
            hedge.max = max;
        } else {
            let line = t.line_of(cx, "max");
            cx.error(
                line,
                &t.path("max"),
                format!("must be between 1 and {MAX_HEDGES}"),
            );
        }
    }
    t.finish(cx);
    after.map(|_| hedge)
}

impl FromToml for HedgeAfter {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        let expected = "a duration (like \"50ms\") or a percentile (like \"p95\")";
        let s = v
            .as_str()
            .ok_or_else(|| format!("expected {expected}, found {}", v.type_name()))?;
        if let Some(p) = s.strip_prefix('p') {
            return match p.parse::<f64>() {
                Ok(p) if p > 0.0 && p < 100.0 => Ok(HedgeAfter::Percentile(p)),
                Ok(_) => Err(format!(
                    "percentile {s:?} out of range; give one above p0 and below p100"
                )),
                Err(_) => Err(format!("invalid percentile {s:?}; write it like \"p95\"")),
            };
        }
        match humantime::parse_duration(s) {
            Ok(d) if d.is_zero() => Err("must be greater than zero".to_owned()),
            Ok(d) => Ok(HedgeAfter::Fixed(d)),
            Err(_) => Err(format!("invalid value {s:?}; expected {expected}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Config, ConfigErrors};
    use super::*;

    fn parse(hedge: &str) -> Result<Config, ConfigErrors> {
        let text =
            format!("[pools.web]\nendpoints = [\"http://127.0.0.1:8081\"]\nhedge = {hedge}\n");
        Config::parse(&text, "edge.toml", Some(Path::new("/nonexistent-base")))
    }

    fn hedge(text: &str) -> Option<HedgeConfig> {
        parse(text).expect("valid").pools[0].settings.hedge.clone()
    }

    /// The (key, reason) of every error, all on line 3.
    fn refused(text: &str) -> Vec<(String, String)> {
        let e = parse(text).expect_err("must be refused").errors;
        assert!(e.iter().all(|e| e.line == 3), "{e:?}");
        e.into_iter().map(|e| (e.key, e.reason)).collect()
    }

    #[test]
    fn reads_a_fixed_or_a_percentile_delay() {
        let fixed = hedge(r#"{ after = "50ms" }"#).expect("hedge");
        assert_eq!(
            (fixed.after, fixed.max),
            (HedgeAfter::Fixed(Duration::from_millis(50)), 1)
        );
        let p = hedge(r#"{ after = "p99.9", max = 2 }"#).expect("hedge");
        assert_eq!((p.after, p.max), (HedgeAfter::Percentile(99.9), 2));
        let plain = Config::parse(
            "[pools.web]\nendpoints = [\"http://127.0.0.1:8081\"]\n",
            "edge.toml",
            None,
        )
        .expect("valid");
        assert_eq!(plain.pools[0].settings.hedge, None, "off unless set");
    }

    #[test]
    fn refuses_bad_hedges_with_key_and_reason() {
        for (text, key, reason) in [
            (r#"{ after = "p101" }"#, "after", "out of range"),
            (r#"{ after = "p0" }"#, "after", "out of range"),
            (r#"{ after = "pfast" }"#, "after", "invalid percentile"),
            (r#"{ after = "soon" }"#, "after", "invalid value"),
            (r#"{ after = "0ms" }"#, "after", "greater than zero"),
            (r#"{ after = 50 }"#, "after", "found integer"),
            (r#"{ max = 1 }"#, "after", "missing"),
            (r#"{ after = "50ms", max = 0 }"#, "max", "between 1 and 4"),
            (r#"{ after = "50ms", max = 9 }"#, "max", "between 1 and 4"),
            (
                r#"{ after = "50ms", every = "1s" }"#,
                "every",
                "unknown key",
            ),
            (r#""50ms""#, "", "expected a table"),
        ] {
            let found = refused(text);
            let key = match key {
                "" => "pools.web.hedge".to_owned(),
                k => format!("pools.web.hedge.{k}"),
            };
            assert!(
                found.iter().any(|(k, r)| *k == key && r.contains(reason)),
                "{text}: {found:?}"
            );
        }
    }
}
