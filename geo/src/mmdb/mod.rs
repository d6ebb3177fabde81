//! Client address to country and continent from a MaxMind-format `.mmdb` database
//! (GeoIP2/GeoLite2 Country or City, or any database with the same `country`,
//! `registered_country` and `continent` fields), and from there to a region
//! through the configured [`RegionMap`].
//!
//! The file is read whole into memory and verified when it is opened, so a missing,
//! truncated or corrupt file is refused then, with its path, rather than failing
//! lookups later. Verifying walks every network of the database (0.3 ms for 10,000
//! networks; a full country database holds some hundreds of thousands), so open it
//! off the request path, at load and reload. Reading the file is this crate's only
//! I/O. A lookup takes about 150 ns.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{By, Region};

/// Why a database could not be used. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum MmdbError {
    /// The file could not be read (missing, unreadable).
    #[error("cannot read MaxMind database {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid MaxMind database (wrong format, truncated, corrupt).
    #[error("{} is not a valid MaxMind database", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: maxminddb::MaxMindDbError,
    },
    /// The record for an address could not be decoded (not expected after the
    /// verification at open).
    #[error("cannot decode the record for {ip} in MaxMind database {}", path.display())]
    Lookup {
        path: PathBuf,
        ip: IpAddr,
        #[source]
        source: maxminddb::MaxMindDbError,
    },
}

/// Where the database places an address: ISO 3166 country code (`DE`) and
/// continent code (`EU`), as upper-case as MaxMind writes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Place<'a> {
    /// The country, else the country the network is registered in.
    pub country: Option<&'a str>,
    pub continent: Option<&'a str>,
}

/// An opened and verified MaxMind database.
pub struct GeoDb {
    reader: maxminddb::Reader<Vec<u8>>,
    path: PathBuf,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDb")
            .field("path", &self.path)
            .field("database_type", &self.database_type())
            .finish_non_exhaustive()
    }
}

impl GeoDb {
    /// Reads and verifies the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, MmdbError> {
        let path = path.as_ref().to_path_buf();
        match std::fs::read(&path) {
            Ok(bytes) => Self::from_bytes(bytes, path),
            Err(source) => Err(MmdbError::Read { path, source }),
        }
    }

    /// Verifies a database already in memory; `path` names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, path: impl Into<PathBuf>) -> Result<Self, MmdbError> {
        let path = path.into();
        let verified = maxminddb::Reader::from_source(bytes)
            .and_then(|reader| reader.verify().map(|()| reader));
        match verified {
            Ok(reader) => Ok(Self { reader, path }),
            Err(source) => Err(MmdbError::Invalid { path, source }),
        }
    }

    /// Where `ip` is, as far as the database knows: both fields `None` when it has
    /// no record for the address. IPv4-mapped IPv6 addresses are looked up as IPv4.
    pub fn lookup(&self, ip: IpAddr) -> Result<Place<'_>, MmdbError> {
        let ip = ip.to_canonical();
        let record = self
            .reader
            .lookup(ip)
            .and_then(|found| found.decode::<Record<'_>>())
            .map_err(|source| MmdbError::Lookup {
                path: self.path.clone(),
                ip,
                source,
            })?;
        let Some(record) = record else {
            return Ok(Place::default());
        };
        let country = record.country.or(record.registered_country);
        Ok(Place {
            country: country.and_then(|c| c.iso_code),
            continent: record.continent.and_then(|c| c.code),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database's own name for its kind, e.g. `GeoLite2-Country`.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }
}

/// The part of a GeoIP2 record geo reads; other fields are skipped.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow, default)]
    country: Option<Country<'a>>,
    #[serde(borrow, default)]
    registered_country: Option<Country<'a>>,
    #[serde(borrow, default)]
    continent: Option<Continent<'a>>,
}

#[derive(Deserialize)]
struct Country<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Continent<'a> {
    #[serde(borrow, default)]
    code: Option<&'a str>,
}

/// Countries and continents to regions, from config. A country's entry wins over
/// its continent's. Keys are upper-case codes as MaxMind writes them (`DE`, `EU`):
/// [`RegionMap::new`] upper-cases what config gives; filling the fields directly
/// must do the same.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionMap {
    pub by_country: HashMap<String, Region>,
    pub by_continent: HashMap<String, Region>,
}

impl RegionMap {
    pub fn new<K: AsRef<str>>(
        by_country: impl IntoIterator<Item = (K, Region)>,
        by_continent: impl IntoIterator<Item = (K, Region)>,
    ) -> Self {
        let upper = |(code, region): (K, Region)| (code.as_ref().to_ascii_uppercase(), region);
        Self {
            by_country: by_country.into_iter().map(upper).collect(),
            by_continent: by_continent.into_iter().map(upper).collect(),
        }
    }

    /// The region a place maps to: its country's, else its continent's; with
    /// which of the two it was.
    pub fn region<'a>(&self, place: &Place<'a>) -> Option<(&Region, By<'a>)> {
        let country = place
            .country
            .and_then(|c| Some((self.by_country.get(c)?, By::Country(c))));
        country.or_else(|| {
            let c = place.continent?;
            Some((self.by_continent.get(c)?, By::Continent(c)))
        })
    }
}

#[cfg(test)]
mod tests;
