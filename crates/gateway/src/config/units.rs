//! The value grammar of the configuration (and of the command line's
//! flags): durations, sizes, socket addresses; parsed with a message that
//! says what was expected, and written back in their shortest exact form.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

// ---------------------------------------------------------------------------
// Durations, sizes, addresses
// ---------------------------------------------------------------------------

/// Largest size any size key accepts: larger messages should be streamed.
pub const MAX_SIZE: usize = 1 << 30;

const DURATION_EXPECTED: &str = "expected a duration like \"30s\", \"1.5s\" or \"500ms\"";
const DURATION_HINT: &str = "(a number followed by ms, s, m or h)";
const SIZE_EXPECTED: &str = "expected a size like \"16KiB\", \"1MiB\" or 1000";
const SIZE_HINT: &str = "(bytes, or a whole number followed by B, KiB, MiB, GiB, KB, MB or GB)";

/// Parses `"500ms"`, `"30s"`, `"1.5s"`, `"2m"`, `"1h"`: a number (with an
/// optional decimal fraction) and a unit, to the millisecond. The message of
/// the error is ready to show: what was expected and what was found.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "{DURATION_EXPECTED}, found \"{text}\" {DURATION_HINT}"
            ))
        }
    };
    duration_of(text, number, millis_per_unit)
}

/// The command line's form of [`parse_duration`]: the same grammar, and a
/// bare number (`"2"`, `"0.5"`) means seconds.
pub fn parse_flag_duration(text: &str) -> Result<Duration, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return duration_of(text, text, 1_000);
    }
    parse_duration(text)
}

/// `number` (digits, optionally `.` and more digits) times a unit of
/// `millis_per_unit` milliseconds, exact to the millisecond.
fn duration_of(text: &str, number: &str, millis_per_unit: u64) -> Result<Duration, String> {
    let fail = || format!("{DURATION_EXPECTED}, found \"{text}\" {DURATION_HINT}");
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || number.ends_with('.') {
        return Err(fail());
    }
    let too_large = || format!("duration \"{text}\" is too large");
    let whole: u64 = whole.parse().map_err(|_| too_large())?;
    let mut millis = whole.checked_mul(millis_per_unit).ok_or_else(too_large)?;
    // The fraction, digit by digit, in units of millis_per_unit / 10^k.
    let mut scale = millis_per_unit;
    for (i, d) in fraction.bytes().enumerate() {
        let d = u64::from(d - b'0');
        if !scale.is_multiple_of(10) {
            if d != 0 || fraction.bytes().skip(i + 1).any(|b| b != b'0') {
                return Err(format!(
                    "duration \"{text}\" is finer than a millisecond, the smallest step"
                ));
            }
            break;
        }
        scale /= 10;
        millis = millis.checked_add(d * scale).ok_or_else(too_large)?;
    }
    Ok(Duration::from_millis(millis))
}

/// Parses `"1000"`, `"16KiB"`, `"1MiB"`, `"2GB"` (an optional space between
/// number and unit is accepted).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let fail = || format!("{SIZE_EXPECTED}, found \"{text}\" {SIZE_HINT}");
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(fail());
    }
    let n: u64 = number.parse().map_err(|_| fail())?;
    let multiplier: u64 = match unit.strip_prefix(' ').unwrap_or(unit) {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(fail()),
    };
    n.checked_mul(multiplier)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("size \"{text}\" is too large"))
}

struct DurationVisitor {
    allow_off: bool,
}

impl<'de> Visitor<'de> for DurationVisitor {
    type Value = Option<Duration>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration like \"30s\" or \"500ms\"")?;
        if self.allow_off {
            f.write_str(" or \"off\"")?;
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if self.allow_off && v == "off" {
            return Ok(None);
        }
        parse_duration(v).map(Some).map_err(|m| {
            if self.allow_off {
                E::custom(m.replacen(
                    DURATION_EXPECTED,
                    &format!("{DURATION_EXPECTED} or \"off\""),
                    1,
                ))
            } else {
                E::custom(m)
            }
        })
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Err(E::custom(format!(
            "{DURATION_EXPECTED}, found the number {v}; durations need a unit, like \"{v}s\""
        )))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Err(E::custom(format!(
            "{DURATION_EXPECTED}, found the number {v}; durations need a unit, like \"{v}s\""
        )))
    }
}

pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor { allow_off: false })?
        .ok_or_else(|| de::Error::custom(DURATION_EXPECTED))
}

pub(crate) fn de_duration_or_off<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    d.deserialize_any(DurationVisitor { allow_off: true })
}

pub(crate) fn de_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

pub(crate) fn de_opt_duration_or_off<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<Duration>>, D::Error> {
    de_duration_or_off(d).map(Some)
}

struct SizeVisitor;

impl<'de> Visitor<'de> for SizeVisitor {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size like \"16KiB\", \"1MiB\" or 1000")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
        parse_size(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
        usize::try_from(v).map_err(|_| {
            E::custom(format!(
                "{SIZE_EXPECTED}, found {v} (a size cannot be negative)"
            ))
        })
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
        usize::try_from(v).map_err(|_| E::custom(format!("size {v} is too large")))
    }
}

pub(crate) fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    d.deserialize_any(SizeVisitor)
}

pub(crate) fn de_opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    d.deserialize_any(SizeVisitor).map(Some)
}

pub(crate) fn de_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        de::Error::custom(format!(
            "expected an address like \"127.0.0.1:8080\" or \"[::1]:8443\" (IP and port, \
             no host name), found \"{text}\""
        ))
    })
}

/// Whether `n` is a whole number of `unit`s (`unit` > 0). Spelled without
/// `%` to stay within the MSRV (1.80) and clippy's `is_multiple_of` lint.
fn exact<T>(n: T, unit: T) -> bool
where
    T: Copy + PartialEq + std::ops::Div<Output = T> + std::ops::Mul<Output = T>,
{
    n / unit * unit == n
}

/// The shortest exact spelling of a duration: `"2m"`, `"90s"`, `"1500ms"`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_string(),
        _ if exact(ms, 3_600_000) => format!("{}h", ms / 3_600_000),
        _ if exact(ms, 60_000) => format!("{}m", ms / 60_000),
        _ if exact(ms, 1_000) => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

pub(crate) fn format_size(n: usize) -> toml::Value {
    const UNITS: [(usize, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if n != 0 && exact(n, unit) {
            return toml::Value::String(format!("{}{name}", n / unit));
        }
    }
    toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.25m"), Ok(Duration::from_secs(15)));
        assert_eq!(
            parse_duration("2.5ms").unwrap_err(),
            "duration \"2.5ms\" is finer than a millisecond, the smallest step"
        );
        assert_eq!(
            parse_duration("2.50ms"),
            Err(parse_duration("2.5ms")
                .unwrap_err()
                .replace("2.5ms", "2.50ms"))
        );
        assert_eq!(parse_duration("2.000ms"), Ok(Duration::from_millis(2)));
        assert_eq!(
            parse_duration("0.0015s").unwrap_err(),
            "duration \"0.0015s\" is finer than a millisecond, the smallest step"
        );
        for bad in [
            "30 sec", "30", "s", "", "-1s", "1.s", ".5s", "1..5s", "30S", "1d", "30s ", "１s",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(&format!("found \"{bad}\"")), "{e}");
            assert!(e.starts_with(DURATION_EXPECTED), "{e}");
        }
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration("18446744073709551615h")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn flags_take_bare_seconds() {
        assert_eq!(parse_flag_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_flag_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_flag_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_flag_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", ".", "1.", "two", "-1", "5 parsecs"] {
            let e = parse_flag_duration(bad).unwrap_err();
            assert!(e.starts_with(DURATION_EXPECTED), "{bad:?}: {e}");
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("16KiB"), Ok(16 * 1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("3KB"), Ok(3000));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("7B"), Ok(7));
        for bad in ["16 kib", "1.5MiB", "MiB", "", "-1", "1TiB", "1  MiB"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains(&format!("found \"{bad}\"")), "{e}");
        }
        assert!(parse_size("18446744073709551615GiB")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn durations_format_back() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(7200), "2h"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d));
        }
        assert_eq!(format_size(16 * 1024), toml::Value::String("16KiB".into()));
        assert_eq!(format_size(3 << 30), toml::Value::String("3GiB".into()));
        assert_eq!(format_size(1000), toml::Value::Integer(1000));
        assert_eq!(format_size(0), toml::Value::Integer(0));
    }
}
