//! When a certificate expires: its notAfter read straight from the DER, for the
//! expiry metric. Only the path to the validity field is walked (RFC 5280 4.1);
//! anything unexpected gives `None`, never a guess.

/// notAfter as Unix seconds.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (0x30, cert, _) = tlv(der)? else {
        return None;
    };
    let (0x30, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // version [0] EXPLICIT (optional), serial, signature, issuer, then validity.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    for tag in [0x02, 0x30, 0x30] {
        let (t, _, next) = tlv(rest)?;
        if t != tag {
            return None;
        }
        rest = next;
    }
    let (0x30, validity, _) = tlv(rest)? else {
        return None;
    };
    let (_, _, after) = tlv(validity)?;
    let (tag, time, _) = tlv(after)?;
    let time = std::str::from_utf8(time).ok()?;
    let full = match (tag, time.len()) {
        // UTCTime YYMMDDHHMMSSZ: years 1950-2049 (RFC 5280 4.1.2.5.1).
        (0x17, 13) => {
            let yy: i64 = time.get(..2)?.parse().ok()?;
            let century = if yy < 50 { "20" } else { "19" };
            format!("{century}{time}")
        }
        (0x18, 15) => time.to_owned(),
        _ => return None,
    };
    let num = |r: std::ops::Range<usize>| full.get(r)?.parse::<i64>().ok();
    if !full.ends_with('Z') {
        return None;
    }
    let days = days_from_civil(num(0..4)?, num(4..6)?, num(6..8)?);
    Some(days * 86_400 + num(8..10)? * 3600 + num(10..12)? * 60 + num(12..14)?)
}

/// One DER tag-length-value: (tag, contents, what follows).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = usize::from(*b.get(1)?);
    let (len, head) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let len = b
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    Some((tag, b.get(head..end)?, b.get(end..)?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's method).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_until(y: i32, m: u8, d: u8) -> Result<Vec<u8>, rcgen::Error> {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()])?;
        params.not_after = rcgen::date_time_ymd(y, m, d);
        let key = rcgen::KeyPair::generate()?;
        Ok(params.self_signed(&key)?.der().to_vec())
    }

    #[test]
    fn reads_utc_and_generalized_time() -> Result<(), rcgen::Error> {
        // 2030-01-02T00:00:00Z (UTCTime) and 2051-06-01T00:00:00Z (GeneralizedTime).
        assert_eq!(not_after(&cert_until(2030, 1, 2)?), Some(1_893_542_400));
        assert_eq!(not_after(&cert_until(2051, 6, 1)?), Some(2_569_190_400));
        Ok(())
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(&[0x30, 0x82, 0xff]), None);
    }
}
