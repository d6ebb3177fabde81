//! What the cache stores, and its byte encoding for Redis: versioned, every
//! length checked, and a digest over the whole, so a truncated, foreign or
//! overwritten value decodes to an error (a miss), never to a wrong response.

use std::sync::{Arc, OnceLock};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};

use super::policy::{Freshness, Times};

const MAGIC: &[u8; 4] = b"EDGC";
const VERSION: u8 = 1;
const KIND_RESPONSE: u8 = 0;
const KIND_VARY: u8 = 1;
const DIGEST_LEN: usize = 16;

/// A stored response.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The primary key it was stored under (checked against prefix purges).
    pub url: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub times: Times,
    /// When it was stored, in ms since the epoch (compared with purge times).
    pub stored_at_ms: u64,
    /// The request's values of the headers named by Vary (`None`: absent).
    pub vary: Vec<(String, Option<String>)>,
    /// `headers` parsed for freshness, on first use (reset when they change).
    pub fresh: OnceLock<Freshness>,
}

impl Entry {
    /// What the stored headers say about freshness, parsed once.
    pub fn freshness(&self) -> &Freshness {
        self.fresh.get_or_init(|| {
            Freshness::of(
                self.status.as_u16(),
                &self.headers,
                self.times.response_time,
            )
        })
    }
}

/// The list of headers a URL's responses vary on, stored at its primary key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaryList {
    pub names: Vec<String>,
    pub generation: u64,
    pub stored_at_ms: u64,
}

/// What one key holds.
#[derive(Clone, Debug)]
pub enum Record {
    Response(Arc<Entry>),
    Vary(Arc<VaryList>),
}

impl Record {
    /// Bytes it occupies, roughly (for the L1 weigher).
    pub fn weight(&self) -> u64 {
        match self {
            Record::Response(e) => {
                let headers: usize = e
                    .headers
                    .iter()
                    .map(|(k, v)| k.as_str().len() + v.len() + 32)
                    .sum();
                (e.body.len() + headers + e.url.len() + 128) as u64
            }
            Record::Vary(v) => v.names.iter().map(|n| n.len() + 8).sum::<usize>() as u64 + 64,
        }
    }
}

/// Why bytes from Redis are not an entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Not written by this encoder (or written by an incompatible version).
    #[error("not a cache entry")]
    Foreign,
    /// The digest does not match: truncated or altered.
    #[error("cache entry digest mismatch")]
    Corrupt,
    /// A length or field runs past the end or does not parse.
    #[error("malformed cache entry")]
    Malformed,
}

pub fn encode(record: &Record) -> Vec<u8> {
    let mut b = BytesMut::with_capacity(256);
    b.put_slice(MAGIC);
    b.put_u8(VERSION);
    match record {
        Record::Response(e) => {
            b.put_u8(KIND_RESPONSE);
            put_str(&mut b, &e.url);
            b.put_u16(e.status.as_u16());
            b.put_u64(e.times.request_time);
            b.put_u64(e.times.response_time);
            b.put_u64(e.stored_at_ms);
            b.put_u16(e.vary.len() as u16);
            for (name, value) in &e.vary {
                put_str(&mut b, name);
                match value {
                    Some(v) => {
                        b.put_u8(1);
                        put_str(&mut b, v);
                    }
                    None => b.put_u8(0),
                }
            }
            b.put_u16(e.headers.len() as u16);
            for (k, v) in &e.headers {
                put_bytes(&mut b, k.as_str().as_bytes());
                put_bytes(&mut b, v.as_bytes());
            }
            b.put_u64(e.body.len() as u64);
            b.put_slice(&e.body);
        }
        Record::Vary(v) => {
            b.put_u8(KIND_VARY);
            b.put_u64(v.generation);
            b.put_u64(v.stored_at_ms);
            b.put_u16(v.names.len() as u16);
            for n in &v.names {
                put_str(&mut b, n);
            }
        }
    }
    let digest = Sha256::digest(&b);
    b.put_slice(&digest[..DIGEST_LEN]);
    b.to_vec()
}

fn put_str(b: &mut BytesMut, s: &str) {
    put_bytes(b, s.as_bytes());
}

fn put_bytes(b: &mut BytesMut, s: &[u8]) {
    b.put_u32(s.len() as u32);
    b.put_slice(s);
}

pub fn decode(raw: &[u8]) -> Result<Record, DecodeError> {
    if raw.len() < MAGIC.len() + 2 + DIGEST_LEN || &raw[..4] != MAGIC || raw[4] != VERSION {
        return Err(DecodeError::Foreign);
    }
    let (payload, digest) = raw.split_at(raw.len() - DIGEST_LEN);
    if Sha256::digest(payload)[..DIGEST_LEN] != *digest {
        return Err(DecodeError::Corrupt);
    }
    let mut r = Reader(Bytes::copy_from_slice(&payload[6..]));
    let record = match payload[5] {
        KIND_RESPONSE => Record::Response(Arc::new(read_entry(&mut r)?)),
        KIND_VARY => {
            let generation = r.u64()?;
            let stored_at_ms = r.u64()?;
            let n = r.u16()?;
            let names = (0..n).map(|_| r.string()).collect::<Result<_, _>>()?;
            Record::Vary(Arc::new(VaryList {
                names,
                generation,
                stored_at_ms,
            }))
        }
        _ => return Err(DecodeError::Foreign),
    };
    if r.0.has_remaining() {
        return Err(DecodeError::Malformed);
    }
    Ok(record)
}

fn read_entry(r: &mut Reader) -> Result<Entry, DecodeError> {
    let url = r.string()?;
    let status = StatusCode::from_u16(r.u16()?).map_err(|_| DecodeError::Malformed)?;
    let times = Times {
        request_time: r.u64()?,
        response_time: r.u64()?,
    };
    let stored_at_ms = r.u64()?;
    let mut vary = Vec::new();
    for _ in 0..r.u16()? {
        let name = r.string()?;
        let value = match r.u8()? {
            0 => None,
            _ => Some(r.string()?),
        };
        vary.push((name, value));
    }
    let mut headers = HeaderMap::new();
    for _ in 0..r.u16()? {
        let name = HeaderName::from_bytes(&r.bytes()?).map_err(|_| DecodeError::Malformed)?;
        let value =
            HeaderValue::from_maybe_shared(r.bytes()?).map_err(|_| DecodeError::Malformed)?;
        headers.append(name, value);
    }
    let len = usize::try_from(r.u64()?).map_err(|_| DecodeError::Malformed)?;
    let body = r.take(len)?;
    Ok(Entry {
        url,
        status,
        headers,
        body,
        times,
        stored_at_ms,
        vary,
        fresh: OnceLock::new(),
    })
}

struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.0.remaining() < n {
            return Err(DecodeError::Malformed);
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }
    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        self.need(n)?;
        Ok(self.0.split_to(n))
    }
    fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        self.need(4)?;
        let n = self.0.get_u32() as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        let mut headers = HeaderMap::new();
        headers.insert("etag", HeaderValue::from_static("\"v1\""));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        Record::Response(Arc::new(Entry {
            url: "https://e:443/a".to_owned(),
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"hello"),
            times: Times {
                request_time: 10,
                response_time: 11,
            },
            stored_at_ms: 11_000,
            vary: vec![
                ("accept-encoding".to_owned(), Some("gzip".to_owned())),
                ("x-absent".to_owned(), None),
            ],
            fresh: OnceLock::new(),
        }))
    }

    #[test]
    fn round_trips() {
        let raw = encode(&sample());
        let Ok(Record::Response(e)) = decode(&raw) else {
            panic!("decodes to a response")
        };
        assert_eq!(e.body, Bytes::from_static(b"hello"));
        assert_eq!(e.headers.get_all("x-multi").iter().count(), 2);
        assert_eq!(e.vary[1], ("x-absent".to_owned(), None));
        assert_eq!(e.times.response_time, 11);
        let vary = Record::Vary(Arc::new(VaryList {
            names: vec!["accept".to_owned()],
            generation: 7,
            stored_at_ms: 1,
        }));
        let Ok(Record::Vary(v)) = decode(&encode(&vary)) else {
            panic!("decodes to a vary list")
        };
        assert_eq!(v.generation, 7);
    }

    #[test]
    fn garbage_truncation_and_tampering_are_refused() {
        assert_eq!(decode(b"garbage").err(), Some(DecodeError::Foreign));
        assert_eq!(decode(b"").err(), Some(DecodeError::Foreign));
        let raw = encode(&sample());
        assert!(decode(&raw[..raw.len() - 1]).is_err());
        let mut tampered = raw.clone();
        let mid = tampered.len() / 2;
        tampered[mid] ^= 1;
        assert_eq!(decode(&tampered).err(), Some(DecodeError::Corrupt));
    }
}
