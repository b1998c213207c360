//! Kubernetes `resource.Quantity`, read as kubelet reads the bandwidth annotations: the same
//! syntax (apimachinery's `ParseQuantity`), the same rounding (`Quantity.Value()`: up to the
//! next integer), the same bounds (`validateBandwidthIsReasonable`: at least 1k, at most 1P),
//! and exact arithmetic, so `1.5M` is 1,500,000 and never 1,499,999.
use std::{fmt, str::FromStr};

use rein::units::{Rate, Size};

/// Why a value is not a quantity, or not one the key allows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0:?} is not a quantity: give a number with an optional suffix (10M, 1.5G, 64Ki)")]
    Syntax(String),
    #[error(
        "{input:?} has an unknown suffix {suffix:?}: use k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, \
         Ei, m or an exponent (1e6)"
    )]
    Suffix { input: String, suffix: String },
    #[error("{input:?} is below the lowest {what}, {bound}")]
    TooSmall {
        input: String,
        what: &'static str,
        bound: &'static str,
    },
    #[error("{input:?} is above the highest {what}, {bound}")]
    TooLarge {
        input: String,
        what: &'static str,
        bound: &'static str,
    },
}

/// A quantity as written: ± digits × 10^exp10 × 2^exp2, exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quantity {
    negative: bool,
    /// Decimal digits without leading zeros (empty for zero).
    digits: Vec<u8>,
    exp10: i64,
    exp2: u32,
}

/// A magnitude beyond any bound a key has: saturating there keeps the arithmetic small.
const HUGE: u128 = 1 << 100;

impl Quantity {
    /// `Quantity.Value()`: the value rounded up to an integer (away from zero for a negative
    /// one, as apimachinery's `RoundUp`), saturating far beyond any bound a key has.
    pub fn value(&self) -> i128 {
        let magnitude = self.magnitude_ceil();
        let magnitude = i128::try_from(magnitude).unwrap_or(i128::MAX);
        if self.negative { -magnitude } else { magnitude }
    }

    fn magnitude_ceil(&self) -> u128 {
        if self.digits.is_empty() {
            return 0;
        }
        // The digits times 2^exp2, in decimal: at most 60 doublings of a few digits.
        let mut digits = self.digits.clone();
        for _ in 0..self.exp2 {
            let mut carry = 0;
            for digit in digits.iter_mut().rev() {
                let doubled = *digit * 2 + carry;
                *digit = doubled % 10;
                carry = doubled / 10;
            }
            if carry > 0 {
                digits.insert(0, carry);
            }
        }
        let length = digits.len() as i64;
        // Digits before the decimal point.
        let whole = length.saturating_add(self.exp10);
        if whole > 31 {
            return HUGE;
        }
        if whole <= 0 {
            // Wholly a fraction, and not zero: up to 1.
            return 1;
        }
        let whole = whole as usize;
        let (integer, fraction) = digits.split_at(whole.min(digits.len()));
        let mut value: u128 = 0;
        for &digit in integer {
            value = value * 10 + u128::from(digit);
        }
        for _ in digits.len()..whole {
            value *= 10;
        }
        if fraction.iter().any(|&d| d != 0) {
            value += 1;
        }
        value
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;
    /// apimachinery's `ParseQuantity`: an optional sign, digits with an optional fraction
    /// (`1.`, `.5` too), then a suffix: none, a decimal SI one (`m k M G T P E`, and `n u`), a
    /// binary one (`Ki Mi Gi Ti Pi Ei`), or a decimal exponent (`e6`, `E-3`, `e+2`).
    fn from_str(input: &str) -> Result<Self, QuantityError> {
        let syntax = || QuantityError::Syntax(input.to_owned());
        if input.is_empty() {
            return Err(syntax());
        }
        let (negative, rest) = match input.as_bytes()[0] {
            b'-' => (true, &input[1..]),
            b'+' => (false, &input[1..]),
            _ => (false, input),
        };
        let number_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_end);
        let (integer, fraction) = number.split_once('.').unwrap_or((number, ""));
        if fraction.contains('.') {
            return Err(syntax());
        }
        // A suffix is letters of "eEinumkKMGTP", then an optional sign and digits (an
        // exponent's); anything else after the number is a syntax error, as in ParseQuantity.
        let letters_end = suffix
            .find(|c: char| !"eEinumkKMGTP".contains(c))
            .unwrap_or(suffix.len());
        let tail = &suffix[letters_end..];
        let tail = tail.strip_prefix(['+', '-']).unwrap_or(tail);
        if !tail.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let (exp10, exp2) = interpret(suffix).ok_or_else(|| QuantityError::Suffix {
            input: input.to_owned(),
            suffix: suffix.to_owned(),
        })?;
        let mut digits: Vec<u8> = integer
            .bytes()
            .chain(fraction.bytes())
            .map(|b| b - b'0')
            .skip_while(|&d| d == 0)
            .collect();
        // Trailing zeros of the digits move into the exponent, so a long `1000...0` stays small.
        let mut exp10 = exp10.saturating_sub(fraction.len() as i64);
        while digits.last() == Some(&0) {
            digits.pop();
            exp10 = exp10.saturating_add(1);
        }
        Ok(Self {
            negative: negative && !digits.is_empty(),
            digits,
            exp10,
            exp2,
        })
    }
}

/// A suffix's power of ten and of two, if it is one.
fn interpret(suffix: &str) -> Option<(i64, u32)> {
    let decimal = |exp10| Some((exp10, 0));
    let binary = |exp2| Some((0, exp2));
    match suffix {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            // Go's ParseInt: an optional sign and decimal digits, within an int64.
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            exponent.parse::<i64>().ok().map(|exp10| (exp10, 0))
        }
    }
}

/// A pod's bandwidth in bits per second, within kubelet's bounds: at least 1k, at most 1P.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bandwidth {
    bits: u64,
    rate: Rate,
}

impl Bandwidth {
    pub const MIN_BITS: u64 = 1_000;
    pub const MAX_BITS: u64 = 1_000_000_000_000_000;

    pub fn bits_per_second(self) -> u64 {
        self.bits
    }

    /// rein's rate for it: the same bits per second (rein counts IP-layer bytes where the CNI
    /// bandwidth plugin's tbf counts link-layer ones). Above rein's highest rate, 1 Tbit/s,
    /// which no interface reaches, the limit is that rate.
    pub fn rate(self) -> Rate {
        self.rate
    }
}

impl FromStr for Bandwidth {
    type Err = QuantityError;
    fn from_str(input: &str) -> Result<Self, QuantityError> {
        let value = input.parse::<Quantity>()?.value();
        let too_small = || QuantityError::TooSmall {
            input: input.to_owned(),
            what: "bandwidth",
            bound: "1k (1000 bit/s)",
        };
        if value > i128::from(Self::MAX_BITS) {
            return Err(QuantityError::TooLarge {
                input: input.to_owned(),
                what: "bandwidth",
                bound: "1P (10^15 bit/s)",
            });
        }
        let bits = u64::try_from(value)
            .ok()
            .filter(|&bits| bits >= Self::MIN_BITS)
            .ok_or_else(too_small)?;
        // Rate's lowest is kubelet's, 1k.
        let rate = Rate::from_bits(bits.min(Rate::MAX_BITS)).map_err(|_| too_small())?;
        Ok(Self { bits, rate })
    }
}

impl fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}bit/s", self.bits)
    }
}

/// A burst in bytes (`64Ki`, `1M` = 10^6 bytes), within rein's bounds for a burst: from one
/// full-size packet (1500 bytes) to 1 GiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Burst(Size);

impl Burst {
    pub fn size(self) -> Size {
        self.0
    }
}

impl FromStr for Burst {
    type Err = QuantityError;
    fn from_str(input: &str) -> Result<Self, QuantityError> {
        let value = input.parse::<Quantity>()?.value();
        if value < i128::from(Size::MIN_BYTES) {
            return Err(QuantityError::TooSmall {
                input: input.to_owned(),
                what: "burst",
                bound: "1500 bytes (one full-size packet)",
            });
        }
        let too_large = || QuantityError::TooLarge {
            input: input.to_owned(),
            what: "burst",
            bound: "1Gi (2^30 bytes)",
        };
        let bytes = u64::try_from(value).map_err(|_| too_large())?;
        Size::from_bytes(bytes).map(Self).map_err(|_| too_large())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> i128 {
        text.parse::<Quantity>()
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .value()
    }

    #[test]
    fn every_suffix_is_read_exactly() {
        for (text, expected) in [
            ("0", 0),
            ("7", 7),
            ("+7", 7),
            ("1k", 1_000),
            ("1M", 1_000_000),
            ("1G", 1_000_000_000),
            ("1T", 1_000_000_000_000),
            ("1P", 1_000_000_000_000_000),
            ("1E", 1_000_000_000_000_000_000),
            ("1Ki", 1 << 10),
            ("1Mi", 1 << 20),
            ("1Gi", 1 << 30),
            ("1Ti", 1 << 40),
            ("1Pi", 1 << 50),
            ("1Ei", 1 << 60),
            ("64Ki", 65_536),
            ("1e6", 1_000_000),
            ("1E6", 1_000_000),
            ("1e+3", 1_000),
            ("15e-1", 2),
            ("1.5M", 1_500_000),
            ("2.5Gi", 2_684_354_560),
            ("0.1", 1),
            (".5k", 500),
            ("1.k", 1_000),
            ("1500m", 2),
            ("1000m", 1),
            ("123456789123456789", 123_456_789_123_456_789),
            ("0001.000k", 1_000),
            ("1.000000000000000000000001k", 1_001),
            ("1n", 1),
            ("1u", 1),
            ("-", 0),
            (".", 0),
            ("M", 0),
        ] {
            assert_eq!(value(text), expected, "{text}");
        }
        // Rounded up like Value(): away from zero.
        assert_eq!(value("-1.5"), -2);
        assert_eq!(value("-1k"), -1_000);
        // Far beyond any bound: saturated, never wrapped.
        assert!(value("1e40") > i128::from(u64::MAX));
        assert!(value("99999999999999999999999999999999999999999E") > i128::from(u64::MAX));
        assert_eq!(value("1e-400"), 1);
    }

    #[test]
    fn malformed_quantities_are_refused_as_kubelet_refuses_them() {
        for text in [
            "", "1.2.3", "1 M", " 1", "1M ", "10Mbit", "1e", "1K", "1ki", "--1",
        ] {
            assert!(
                text.parse::<Quantity>().is_err(),
                "{text:?} was read as a quantity"
            );
        }
        assert_eq!(
            "".parse::<Quantity>(),
            Err(QuantityError::Syntax(String::new()))
        );
        assert_eq!(
            "1.2.3".parse::<Quantity>(),
            Err(QuantityError::Syntax("1.2.3".into()))
        );
        assert_eq!(
            "10x".parse::<Quantity>(),
            Err(QuantityError::Syntax("10x".into()))
        );
        assert_eq!(
            "10K".parse::<Quantity>(),
            Err(QuantityError::Suffix {
                input: "10K".into(),
                suffix: "K".into()
            })
        );
        assert_eq!(
            "1e".parse::<Quantity>(),
            Err(QuantityError::Suffix {
                input: "1e".into(),
                suffix: "e".into()
            })
        );
        let message = "10Mbit".parse::<Quantity>().unwrap_err().to_string();
        assert!(
            message.contains("\"10Mbit\"") && message.contains("quantity"),
            "{message}"
        );
    }

    #[test]
    fn bandwidth_has_kubelets_bounds() {
        let bits = |text: &str| text.parse::<Bandwidth>().map(Bandwidth::bits_per_second);
        assert_eq!(bits("1k"), Ok(1_000));
        assert_eq!(
            bits("999.5"),
            Ok(1_000),
            "rounded up before the bound, as Value()"
        );
        assert_eq!(bits("10M"), Ok(10_000_000));
        assert_eq!(bits("1.5M"), Ok(1_500_000));
        assert_eq!(bits("1P"), Ok(1_000_000_000_000_000));
        assert_eq!(
            bits("999"),
            Err(QuantityError::TooSmall {
                input: "999".into(),
                what: "bandwidth",
                bound: "1k (1000 bit/s)"
            })
        );
        assert!(matches!(bits("0"), Err(QuantityError::TooSmall { .. })));
        assert!(matches!(bits("-10M"), Err(QuantityError::TooSmall { .. })));
        assert_eq!(
            bits("1001T"),
            Err(QuantityError::TooLarge {
                input: "1001T".into(),
                what: "bandwidth",
                bound: "1P (10^15 bit/s)"
            })
        );
        assert!(matches!(bits("1Pi"), Err(QuantityError::TooLarge { .. })));
        assert!(matches!(bits("10Mbit"), Err(QuantityError::Syntax(_))));
        let message = "1".parse::<Bandwidth>().unwrap_err().to_string();
        assert_eq!(
            message,
            "\"1\" is below the lowest bandwidth, 1k (1000 bit/s)"
        );
    }

    #[test]
    fn bandwidth_becomes_reins_rate_in_bits() {
        let rate = |text: &str| text.parse::<Bandwidth>().unwrap().rate();
        assert_eq!(rate("10M").bits_per_second(), 10_000_000);
        assert_eq!(rate("1k").bits_per_second(), 1_000);
        assert_eq!(rate("64Ki").bits_per_second(), 65_536);
        // Beyond rein's fastest rate: that rate.
        assert_eq!(rate("1P").bits_per_second(), Rate::MAX_BITS);
    }

    #[test]
    fn burst_is_bytes_within_reins_bounds() {
        let bytes = |text: &str| text.parse::<Burst>().map(|b| b.size().bytes());
        assert_eq!(bytes("64Ki"), Ok(65_536));
        assert_eq!(bytes("1M"), Ok(1_000_000));
        assert_eq!(bytes("1500"), Ok(1_500));
        assert_eq!(bytes("1Gi"), Ok(1 << 30));
        assert_eq!(
            bytes("1499"),
            Err(QuantityError::TooSmall {
                input: "1499".into(),
                what: "burst",
                bound: "1500 bytes (one full-size packet)"
            })
        );
        assert_eq!(
            bytes("1.1Gi"),
            Err(QuantityError::TooLarge {
                input: "1.1Gi".into(),
                what: "burst",
                bound: "1Gi (2^30 bytes)"
            })
        );
        assert!(matches!(bytes("1e30"), Err(QuantityError::TooLarge { .. })));
        assert!(matches!(bytes("64KB"), Err(QuantityError::Syntax(_))));
        assert!(matches!(bytes("64mi"), Err(QuantityError::Suffix { .. })));
    }
}
