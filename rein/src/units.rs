//! Rates and sizes in tc(8)'s notation. A [`Rate`] or [`Size`] that exists is within the bounds
//! rein can enforce, so nothing downstream checks them again.
use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Why a rate or size was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{0:?} is not a number with a unit")]
    NotANumber(String),
    #[error("{input:?} has an unknown unit {unit:?} (expected {expected})")]
    UnknownUnit {
        input: String,
        unit: String,
        expected: &'static str,
    },
    #[error("{0:?} must be greater than zero")]
    NotPositive(String),
    #[error("{input:?} is out of range: {limit}")]
    OutOfRange { input: String, limit: String },
}

/// A bandwidth in bits per second, from 1 kbit/s to 1 tbit/s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Rate(u64);

impl Rate {
    /// Slowest rate: below this a single full-size packet takes more than ten seconds.
    pub const MIN_BITS: u64 = 1_000;
    /// Fastest rate: beyond any interface this kernel drives.
    pub const MAX_BITS: u64 = 1_000_000_000_000;

    pub const fn bits_per_second(self) -> u64 {
        self.0
    }

    pub const fn bytes_per_second(self) -> u64 {
        self.0 / 8
    }

    pub fn from_bits(bits: u64) -> Result<Self, UnitError> {
        Self::try_from(bits)
    }
}

impl TryFrom<u64> for Rate {
    type Error = UnitError;
    fn try_from(bits: u64) -> Result<Self, UnitError> {
        bounded(
            bits,
            Self::MIN_BITS,
            Self::MAX_BITS,
            &bits.to_string(),
            |v| Rate(v).to_string(),
        )
        .map(Rate)
    }
}

impl From<Rate> for u64 {
    fn from(rate: Rate) -> u64 {
        rate.0
    }
}

const RATE_UNITS: &str = "bit, kbit, mbit, gbit, tbit, bps, kbps, mbps, gbps, tbps, or the IEC \
                          forms kibit, mibit, ..., kibps, ...; a bare number is bit/s";

impl FromStr for Rate {
    type Err = UnitError;
    fn from_str(input: &str) -> Result<Self, UnitError> {
        let (value, unit) = split_number(input)?;
        let unit_lower = unit.to_ascii_lowercase();
        // tc(8): SI prefixes are powers of 1000, IEC ones (ki, mi, ...) powers of 1024;
        // "bps" units are bytes per second.
        let (multiplier, bytes) = match unit_lower.as_str() {
            "" | "bit" => (1.0, false),
            "kbit" => (1e3, false),
            "mbit" => (1e6, false),
            "gbit" => (1e9, false),
            "tbit" => (1e12, false),
            "kibit" => (1024.0, false),
            "mibit" => (1024.0 * 1024.0, false),
            "gibit" => (1024.0 * 1024.0 * 1024.0, false),
            "tibit" => (1024.0f64.powi(4), false),
            "bps" => (1.0, true),
            "kbps" => (1e3, true),
            "mbps" => (1e6, true),
            "gbps" => (1e9, true),
            "tbps" => (1e12, true),
            "kibps" => (1024.0, true),
            "mibps" => (1024.0 * 1024.0, true),
            "gibps" => (1024.0 * 1024.0 * 1024.0, true),
            "tibps" => (1024.0f64.powi(4), true),
            _ => {
                return Err(UnitError::UnknownUnit {
                    input: input.to_owned(),
                    unit: unit.to_owned(),
                    expected: RATE_UNITS,
                });
            }
        };
        let bits = value * multiplier * if bytes { 8.0 } else { 1.0 };
        to_bounded_integer(bits, input, Self::MIN_BITS, Self::MAX_BITS, |v| {
            Rate(v).to_string()
        })
        .map(Rate)
    }
}

impl fmt::Display for Rate {
    /// The shortest exact tc spelling: `10mbit`, `1500kbit`, `123bit`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, scale) in [
            ("tbit", 1e12 as u64),
            ("gbit", 1e9 as u64),
            ("mbit", 1e6 as u64),
        ] {
            if self.0 >= scale && self.0.is_multiple_of(scale) {
                return write!(f, "{}{unit}", self.0 / scale);
            }
        }
        if self.0.is_multiple_of(1000) {
            return write!(f, "{}kbit", self.0 / 1000);
        }
        write!(f, "{}bit", self.0)
    }
}

/// An amount of data in bytes, from 1500 B (one full-size packet) to 1 GiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Size(u64);

impl Size {
    pub const MIN_BYTES: u64 = 1500;
    pub const MAX_BYTES: u64 = 1 << 30;

    pub const fn bytes(self) -> u64 {
        self.0
    }

    pub fn from_bytes(bytes: u64) -> Result<Self, UnitError> {
        Self::try_from(bytes)
    }

    /// `bytes` clamped into the range a Size can hold.
    pub fn saturating(bytes: u64) -> Self {
        Size(bytes.clamp(Self::MIN_BYTES, Self::MAX_BYTES))
    }
}

impl TryFrom<u64> for Size {
    type Error = UnitError;
    fn try_from(bytes: u64) -> Result<Self, UnitError> {
        bounded(
            bytes,
            Self::MIN_BYTES,
            Self::MAX_BYTES,
            &bytes.to_string(),
            |v| Size(v).to_string(),
        )
        .map(Size)
    }
}

impl From<Size> for u64 {
    fn from(size: Size) -> u64 {
        size.0
    }
}

const SIZE_UNITS: &str = "b, k, kb, m, mb, g, gb (1024-based), kbit, mbit, gbit; a bare number \
                          is bytes";

impl FromStr for Size {
    type Err = UnitError;
    fn from_str(input: &str) -> Result<Self, UnitError> {
        let (value, unit) = split_number(input)?;
        const KI: f64 = 1024.0;
        let bytes_per_unit = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kb" => KI,
            "m" | "mb" => KI * KI,
            "g" | "gb" => KI * KI * KI,
            "kbit" => KI / 8.0,
            "mbit" => KI * KI / 8.0,
            "gbit" => KI * KI * KI / 8.0,
            _ => {
                return Err(UnitError::UnknownUnit {
                    input: input.to_owned(),
                    unit: unit.to_owned(),
                    expected: SIZE_UNITS,
                });
            }
        };
        to_bounded_integer(
            value * bytes_per_unit,
            input,
            Self::MIN_BYTES,
            Self::MAX_BYTES,
            |v| Size(v).to_string(),
        )
        .map(Size)
    }
}

impl fmt::Display for Size {
    /// `64k`, `1m`, `1500b`: the shortest exact spelling.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, scale) in [("g", 1u64 << 30), ("m", 1 << 20), ("k", 1 << 10)] {
            if self.0 >= scale && self.0.is_multiple_of(scale) {
                return write!(f, "{}{unit}", self.0 / scale);
            }
        }
        write!(f, "{}b", self.0)
    }
}

/// A length of time, from 1 ms to 1 hour: `100ms`, `1s`, `2.5s`, `1m`, `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Period(u64);

impl Period {
    pub const MIN_NS: u64 = 1_000_000;
    pub const MAX_NS: u64 = 3_600_000_000_000;
    pub const SECOND: Period = Period(1_000_000_000);

    pub const fn nanos(self) -> u64 {
        self.0
    }
}

impl TryFrom<u64> for Period {
    type Error = UnitError;
    fn try_from(ns: u64) -> Result<Self, UnitError> {
        bounded(ns, Self::MIN_NS, Self::MAX_NS, &ns.to_string(), |v| {
            Period(v).to_string()
        })
        .map(Period)
    }
}

impl From<Period> for u64 {
    fn from(period: Period) -> u64 {
        period.0
    }
}

const PERIOD_UNITS: &str = "us, ms, s, m, h (a bare number is not accepted: give a unit)";

impl FromStr for Period {
    type Err = UnitError;
    fn from_str(input: &str) -> Result<Self, UnitError> {
        let (value, unit) = split_number(input)?;
        let ns_per_unit = match unit.to_ascii_lowercase().as_str() {
            "us" | "usec" => 1e3,
            "ms" | "msec" => 1e6,
            "s" | "sec" => 1e9,
            "m" | "min" => 60e9,
            "h" | "hour" => 3600e9,
            _ => {
                return Err(UnitError::UnknownUnit {
                    input: input.to_owned(),
                    unit: unit.to_owned(),
                    expected: PERIOD_UNITS,
                });
            }
        };
        to_bounded_integer(
            value * ns_per_unit,
            input,
            Self::MIN_NS,
            Self::MAX_NS,
            |v| Period(v).to_string(),
        )
        .map(Period)
    }
}

impl fmt::Display for Period {
    /// `100ms`, `1s`, `90s`: the shortest exact spelling.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, scale) in [
            ("h", 3_600_000_000_000u64),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
        ] {
            if self.0 >= scale && self.0.is_multiple_of(scale) {
                return write!(f, "{}{unit}", self.0 / scale);
            }
        }
        write!(f, "{}ns", self.0)
    }
}

/// A rate of events (new connections): `100/s`, `30/min`, `1/h`. At most one a nanosecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventRate {
    count: u64,
    period_ns: u64,
}

const EVENT_PERIODS: &str = "s, min, h (e.g. 100/s, 30/min)";

impl EventRate {
    /// Events per second, at least this many over one second (rounded up).
    pub fn per_second_ceil(self) -> u64 {
        (u128::from(self.count) * 1_000_000_000)
            .div_ceil(u128::from(self.period_ns))
            .try_into()
            .unwrap_or(u64::MAX)
    }

    /// The time one event costs at this rate, in ns, rounded up: a bucket at this cost never
    /// lets more through than the rate.
    pub fn cost_ns(self) -> u64 {
        self.period_ns.div_ceil(self.count)
    }

    pub fn count(self) -> u64 {
        self.count
    }

    pub fn period_ns(self) -> u64 {
        self.period_ns
    }
}

impl FromStr for EventRate {
    type Err = UnitError;
    fn from_str(input: &str) -> Result<Self, UnitError> {
        let (count, period) =
            input
                .trim()
                .split_once('/')
                .ok_or_else(|| UnitError::UnknownUnit {
                    input: input.to_owned(),
                    unit: String::new(),
                    expected: EVENT_PERIODS,
                })?;
        let count: u64 = count
            .trim()
            .parse()
            .map_err(|_| UnitError::NotANumber(input.to_owned()))?;
        if count == 0 {
            return Err(UnitError::NotPositive(input.to_owned()));
        }
        let period_ns = match period.trim().to_ascii_lowercase().as_str() {
            "s" | "sec" | "second" => 1_000_000_000,
            "m" | "min" | "minute" => 60_000_000_000,
            "h" | "hour" => 3_600_000_000_000,
            unit => {
                return Err(UnitError::UnknownUnit {
                    input: input.to_owned(),
                    unit: unit.to_owned(),
                    expected: EVENT_PERIODS,
                });
            }
        };
        if count > period_ns {
            return Err(UnitError::OutOfRange {
                input: input.to_owned(),
                limit: "at most 1000000000/s".to_owned(),
            });
        }
        Ok(Self { count, period_ns })
    }
}

impl fmt::Display for EventRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let period = match self.period_ns {
            1_000_000_000 => "s",
            60_000_000_000 => "min",
            _ => "h",
        };
        write!(f, "{}/{period}", self.count)
    }
}

impl Serialize for EventRate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventRate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Splits `12.5mbit` into `(12.5, "mbit")`.
fn split_number(input: &str) -> Result<(f64, &str), UnitError> {
    let trimmed = input.trim();
    let end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(end);
    let value: f64 = number
        .parse()
        .map_err(|_| UnitError::NotANumber(input.to_owned()))?;
    if !value.is_finite() {
        return Err(UnitError::NotANumber(input.to_owned()));
    }
    Ok((value, unit.trim()))
}

fn to_bounded_integer(
    value: f64,
    input: &str,
    min: u64,
    max: u64,
    show: impl Fn(u64) -> String,
) -> Result<u64, UnitError> {
    if value <= 0.0 {
        return Err(UnitError::NotPositive(input.to_owned()));
    }
    if value > max as f64 {
        return Err(UnitError::OutOfRange {
            input: input.to_owned(),
            limit: format!("at most {}", show(max)),
        });
    }
    bounded(value.round() as u64, min, max, input, show)
}

fn bounded(
    value: u64,
    min: u64,
    max: u64,
    input: &str,
    show: impl Fn(u64) -> String,
) -> Result<u64, UnitError> {
    if value == 0 {
        return Err(UnitError::NotPositive(input.to_owned()));
    }
    if value < min {
        return Err(UnitError::OutOfRange {
            input: input.to_owned(),
            limit: format!("at least {}", show(min)),
        });
    }
    if value > max {
        return Err(UnitError::OutOfRange {
            input: input.to_owned(),
            limit: format!("at most {}", show(max)),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {

    #[test]
    fn event_rates_parse_with_their_period() {
        let rate: EventRate = "100/s".parse().unwrap();
        assert_eq!((rate.cost_ns(), rate.per_second_ceil()), (10_000_000, 100));
        let slow: EventRate = "30/min".parse().unwrap();
        assert_eq!(
            (slow.cost_ns(), slow.per_second_ceil(), slow.to_string()),
            (2_000_000_000, 1, "30/min".to_owned())
        );
        assert_eq!("7/hour".parse::<EventRate>().unwrap().to_string(), "7/h");
        assert!(matches!(
            "0/s".parse::<EventRate>(),
            Err(UnitError::NotPositive(_))
        ));
        assert!(matches!(
            "10".parse::<EventRate>(),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            "10/day".parse::<EventRate>(),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            "-1/s".parse::<EventRate>(),
            Err(UnitError::NotANumber(_))
        ));
        assert!(matches!(
            "2000000000/s".parse::<EventRate>(),
            Err(UnitError::OutOfRange { .. })
        ));
    }
    use super::*;

    #[test]
    fn periods_need_a_unit_and_stay_in_bounds() {
        assert_eq!("100ms".parse::<Period>().unwrap().nanos(), 100_000_000);
        assert_eq!("1.5s".parse::<Period>().unwrap().to_string(), "1500ms");
        assert_eq!("1m".parse::<Period>().unwrap().to_string(), "1m");
        assert!(matches!(
            "5".parse::<Period>(),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            "0s".parse::<Period>(),
            Err(UnitError::NotPositive(_))
        ));
        assert!(matches!(
            "2h".parse::<Period>(),
            Err(UnitError::OutOfRange { .. })
        ));
    }

    fn rate(s: &str) -> u64 {
        s.parse::<Rate>().unwrap().bits_per_second()
    }

    fn size(s: &str) -> u64 {
        s.parse::<Size>().unwrap().bytes()
    }

    #[test]
    fn rates_follow_tc() {
        assert_eq!(rate("10mbit"), 10_000_000);
        assert_eq!(rate("10Mbit"), 10_000_000);
        assert_eq!(rate("1.5mbit"), 1_500_000);
        assert_eq!(rate("100kbit"), 100_000);
        assert_eq!(rate("1gbit"), 1_000_000_000);
        assert_eq!(rate("1tbit"), 1_000_000_000_000);
        assert_eq!(rate("20000"), 20_000, "a bare number is bit/s");
        assert_eq!(rate("20000bit"), 20_000);
        assert_eq!(rate("1mbps"), 8_000_000, "bps units are bytes per second");
        assert_eq!(rate("125kbps"), 1_000_000);
        assert_eq!(rate("1kibit"), 1024);
        assert_eq!(rate("1mibps"), 8 * 1024 * 1024);
        assert_eq!(rate(" 5 mbit "), 5_000_000);
    }

    #[test]
    fn bad_rates_are_refused_with_the_reason() {
        for (input, needle) in [
            ("10furlongs", "unknown unit"),
            ("mbit", "not a number"),
            ("", "not a number"),
            ("0", "greater than zero"),
            ("0mbit", "greater than zero"),
            ("-5mbit", "greater than zero"),
            ("999bit", "at least 1kbit"),
            ("2tbit", "at most 1tbit"),
            ("1e30", "unknown unit"),
            ("nan", "not a number"),
        ] {
            let error = input.parse::<Rate>().unwrap_err().to_string();
            assert!(error.contains(needle), "{input:?}: {error}");
        }
    }

    #[test]
    fn sizes_follow_tc() {
        assert_eq!(size("64k"), 65536);
        assert_eq!(size("64kb"), 65536);
        assert_eq!(size("1m"), 1 << 20);
        assert_eq!(size("1mb"), 1 << 20);
        assert_eq!(size("1g"), 1 << 30);
        assert_eq!(size("1500"), 1500);
        assert_eq!(size("1500b"), 1500);
        assert_eq!(size("128kbit"), 16 * 1024);
    }

    #[test]
    fn bad_sizes_are_refused() {
        for (input, needle) in [
            ("64q", "unknown unit"),
            ("0", "greater than zero"),
            ("100b", "at least 1500b"),
            ("2g", "at most 1g"),
            ("-1k", "greater than zero"),
        ] {
            let error = input.parse::<Size>().unwrap_err().to_string();
            assert!(error.contains(needle), "{input:?}: {error}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "10mbit", "1500kbit", "1gbit", "1tbit", "1234bit", "64k", "1m", "1500b",
        ] {
            if let Ok(rate) = text.parse::<Rate>() {
                assert_eq!(rate.to_string(), text);
            } else {
                assert_eq!(text.parse::<Size>().unwrap().to_string(), text);
            }
        }
    }
}
