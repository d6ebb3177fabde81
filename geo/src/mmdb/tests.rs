use super::*;
use crate::testdb;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn place<'a>(country: Option<&'a str>, continent: Option<&'a str>) -> Place<'a> {
    Place { country, continent }
}

#[test]
fn maps_ipv4_and_ipv6_addresses_to_country_and_continent() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = testdb::write(
        dir.path(),
        "geo.mmdb",
        &[
            ("192.0.2.0/24", Some("DE"), Some("EU")),
            ("192.0.2.128/25", Some("FR"), Some("EU")),
            ("198.51.100.0/24", None, Some("OC")),
            ("2001:db8::/32", Some("JP"), Some("AS")),
        ],
    );
    let db = GeoDb::open(&path).expect("opens");
    assert_eq!(db.path(), path);
    assert_eq!(db.database_type(), "GeoIP2-Country");
    let at = |s: &str| db.lookup(ip(s)).expect("lookup");
    assert_eq!(at("192.0.2.1"), place(Some("DE"), Some("EU")));
    assert_eq!(at("192.0.2.200"), place(Some("FR"), Some("EU")));
    assert_eq!(at("198.51.100.7"), place(None, Some("OC")));
    assert_eq!(at("2001:db8:1::1"), place(Some("JP"), Some("AS")));
    assert_eq!(at("::ffff:192.0.2.1"), place(Some("DE"), Some("EU")));
    assert_eq!(at("203.0.113.1"), Place::default());
    assert_eq!(at("2001:db9::1"), Place::default());
}

#[test]
fn registered_country_stands_in_for_a_missing_country_and_other_fields_are_skipped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = testdb::write_json(
        dir.path(),
        "geo.mmdb",
        &serde_json::json!([
            ["192.0.2.0/24", {
                "registered_country": { "iso_code": "NL", "names": { "en": "Netherlands" } },
                "continent": { "code": "EU", "geoname_id": 6_255_148 },
                "traits": { "is_anycast": true }
            }],
            ["198.51.100.0/24", {
                "country": { "iso_code": "US" },
                "registered_country": { "iso_code": "CA" }
            }],
        ]),
    );
    let db = GeoDb::open(&path).expect("opens");
    let at = |s: &str| db.lookup(ip(s)).expect("lookup");
    assert_eq!(at("192.0.2.1"), place(Some("NL"), Some("EU")));
    assert_eq!(at("198.51.100.1"), place(Some("US"), None));
}

#[test]
fn a_missing_file_is_a_read_error_naming_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nowhere.mmdb");
    let err = GeoDb::open(&path).expect_err("no file");
    assert!(matches!(err, MmdbError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the cause is kept"
    );
}

#[test]
fn a_corrupt_or_truncated_file_is_invalid_naming_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = testdb::write(
        dir.path(),
        "good.mmdb",
        &[("192.0.2.0/24", Some("DE"), Some("EU"))],
    );
    let bytes = std::fs::read(&good).expect("read");

    let garbage = dir.path().join("garbage.mmdb");
    std::fs::write(&garbage, b"not a maxmind database at all").expect("write");
    let truncated = dir.path().join("truncated.mmdb");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    // The search tree comes first; all-ones records point past the data section.
    let scrambled = dir.path().join("scrambled.mmdb");
    let mut tree_broken = bytes.clone();
    tree_broken[..64].fill(0xff);
    std::fs::write(&scrambled, &tree_broken).expect("write");
    let empty = dir.path().join("empty.mmdb");
    std::fs::write(&empty, b"").expect("write");

    for path in [&garbage, &truncated, &scrambled, &empty] {
        let err = GeoDb::open(path).expect_err("refused");
        assert!(matches!(err, MmdbError::Invalid { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&*path.to_string_lossy()), "{message}");
        assert!(
            message.contains("not a valid MaxMind database"),
            "{message}"
        );
    }
}

#[test]
fn region_map_prefers_the_country_then_the_continent() {
    let eu = Region::from("eu-central");
    let fr = Region::from("eu-west");
    let map = RegionMap::new(
        [("fr", fr.clone())],
        [("eu", eu.clone()), ("NA", Region::from("us-east"))],
    );
    assert_eq!(map.by_country.get("FR"), Some(&fr), "keys are upper-cased");
    let fr_eu = place(Some("FR"), Some("EU"));
    assert_eq!(map.region(&fr_eu), Some((&fr, By::Country("FR"))));
    let de_eu = place(Some("DE"), Some("EU"));
    assert_eq!(map.region(&de_eu), Some((&eu, By::Continent("EU"))));
    assert_eq!(map.region(&place(Some("JP"), Some("AS"))), None);
    assert_eq!(map.region(&place(None, None)), None);
    assert_eq!(RegionMap::default().region(&fr_eu), None);
}
