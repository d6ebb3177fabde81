//! Numbers and addresses written into text without `core::fmt`, for what every
//! request writes (forwarding headers, `traceparent`, the access log line):
//! there the formatter's machinery cost more than the rest of the work (an
//! IPv4 address by `Display` about 1,600 instructions, a `{:032x}` about
//! 1,700). Pure; it knows no other module. Each is checked against `format!`.

use std::net::IpAddr;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The low `out.len()` nibbles of `v` as lower-case hex, most significant first.
pub fn put_hex(out: &mut [u8], mut v: u128) {
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// Appends `v` as 32 lower-case hex digits (`{v:032x}`).
pub fn push_hex32(out: &mut String, v: u128) {
    let mut digits = [0u8; 32];
    put_hex(&mut digits, v);
    // Hex digits are ASCII.
    out.extend(digits.iter().map(|&b| char::from(b)));
}

/// Appends `v` in decimal.
pub fn push_int(out: &mut String, v: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(v));
}

/// Appends `us` microseconds as milliseconds with three decimals (`{:.3}` of
/// the same value in ms, exactly: no float is involved).
pub fn push_ms3(out: &mut String, us: u64) {
    push_int(out, us / 1000);
    out.push('.');
    let frac = us % 1000;
    if frac < 100 {
        out.push('0');
    }
    if frac < 10 {
        out.push('0');
    }
    push_int(out, frac);
}

/// Appends `n` (below 100) as two digits.
pub fn push_2(out: &mut String, n: u32) {
    out.push(char::from(b'0' + (n / 10 % 10) as u8));
    out.push(char::from(b'0' + (n % 10) as u8));
}

/// Appends `ip` as `Display` writes it; IPv4 without the formatter.
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(digits.format(octet));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_what_format_writes() {
        for v in [
            0u128,
            1,
            0xf,
            0x0123_4567_89ab_cdef,
            u128::MAX,
            u128::MAX >> 4,
        ] {
            let mut out = String::from("x");
            push_hex32(&mut out, v);
            assert_eq!(out, format!("x{v:032x}"));
            let mut field = [0u8; 16];
            put_hex(&mut field, v);
            assert_eq!(field, *format!("{:016x}", v as u64).as_bytes());
        }
    }

    #[test]
    fn integers_and_milliseconds_are_what_format_writes() {
        for v in [0u64, 7, 10, 999, 1_000, 1_001, 12_345, 99_999_999, u64::MAX] {
            let mut out = String::new();
            push_int(&mut out, v);
            assert_eq!(out, v.to_string());
            let mut ms = String::new();
            push_ms3(&mut ms, v);
            assert_eq!(ms, format!("{}.{:03}", v / 1000, v % 1000));
        }
        // The same text `{:.3}` writes for a value that is exact in binary.
        let mut ms = String::new();
        push_ms3(&mut ms, 1_500);
        assert_eq!(ms, format!("{:.3}", 1.5f64));
        for n in [0, 5, 10, 59, 99] {
            let mut out = String::new();
            push_2(&mut out, n);
            assert_eq!(out, format!("{n:02}"));
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "1.20.3.40",
            "127.0.0.1",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().expect("address");
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
    }
}
