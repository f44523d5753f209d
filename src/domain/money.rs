//! Money: a positive amount with at most two decimal places.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

/// The largest accepted amount: what fits `NUMERIC(14, 2)`.
pub const MAX_MONEY: &str = "999999999999.99";

/// A strictly positive amount of money with at most two decimal places,
/// always rendered with exactly two (`"1000.00"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(Decimal);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("is required")]
    Empty,
    #[error("must be a decimal number such as 1000.00")]
    NotANumber,
    #[error("must have at most 2 decimal places")]
    TooPrecise,
    #[error("must be greater than 0")]
    NotPositive,
    #[error("must be at most {MAX_MONEY}")]
    TooLarge,
}

impl Money {
    /// Parses the plain decimal notation clients send: digits, optionally a
    /// point and one or two more digits. Signs, exponents, `NaN`, `inf`,
    /// separators and surrounding spaces are rejected.
    pub fn parse(input: &str) -> Result<Self, MoneyError> {
        if input.is_empty() {
            return Err(MoneyError::Empty);
        }
        let (negative, unsigned) = match input.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, input),
        };
        let (int_part, frac_part) = match unsigned.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (unsigned, None),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(int_part) || frac_part.is_some_and(|f| !digits(f)) {
            return Err(MoneyError::NotANumber);
        }
        if frac_part.is_some_and(|f| f.len() > 2) {
            return Err(MoneyError::TooPrecise);
        }
        if negative {
            return Err(MoneyError::NotPositive);
        }
        // Leading zeros are harmless ("0010.5"); strip them before the length check.
        let significant = int_part.trim_start_matches('0');
        if significant.len() > 12 {
            return Err(MoneyError::TooLarge);
        }
        let value = Decimal::from_str(unsigned).map_err(|_| MoneyError::NotANumber)?;
        Self::from_decimal(value)
    }

    /// Wraps an already-decimal amount, applying the same rules as [`Money::parse`].
    pub fn from_decimal(value: Decimal) -> Result<Self, MoneyError> {
        if value.scale() > 2 && value.normalize().scale() > 2 {
            return Err(MoneyError::TooPrecise);
        }
        if value <= Decimal::ZERO {
            return Err(MoneyError::NotPositive);
        }
        if value > Decimal::from_str(MAX_MONEY).expect("constant parses") {
            return Err(MoneyError::TooLarge);
        }
        let mut v = value.normalize();
        v.rescale(2);
        Ok(Self(v))
    }

    pub fn amount(&self) -> Decimal {
        self.0
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}", self.0)
    }
}

impl FromStr for Money {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Money::parse(&s).map_err(|e| serde::de::Error::custom(format!("money {s:?} {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders_two_decimals() {
        for (input, shown) in [
            ("1000.00", "1000.00"),
            ("1000", "1000.00"),
            ("1000.5", "1000.50"),
            ("0.01", "0.01"),
            ("007.10", "7.10"),
            ("10000.00", "10000.00"),
            (MAX_MONEY, MAX_MONEY),
        ] {
            assert_eq!(
                Money::parse(input).unwrap().to_string(),
                shown,
                "input {input}"
            );
        }
    }

    #[test]
    fn rejects_malformed_amounts_with_the_reason() {
        use MoneyError::*;
        for (input, err) in [
            ("", Empty),
            ("abc", NotANumber),
            ("1e30", NotANumber),
            ("NaN", NotANumber),
            ("inf", NotANumber),
            (" 10", NotANumber),
            ("10 ", NotANumber),
            ("+10", NotANumber),
            ("1,000.00", NotANumber),
            ("1.", NotANumber),
            (".5", NotANumber),
            ("1.2.3", NotANumber),
            ("١٠", NotANumber),
            ("10.001", TooPrecise),
            ("0.001", TooPrecise),
            ("0", NotPositive),
            ("0.00", NotPositive),
            ("-5", NotPositive),
            ("-0.01", NotPositive),
            ("1000000000000", TooLarge),
            ("99999999999999999999999999999999999", TooLarge),
        ] {
            assert_eq!(Money::parse(input), Err(err), "input {input:?}");
        }
    }

    #[test]
    fn compares_by_amount() {
        let limit = Money::parse("10000.00").unwrap();
        assert!(Money::parse("10000").unwrap() <= limit);
        assert!(Money::parse("10000.01").unwrap() > limit);
    }

    #[test]
    fn from_decimal_rescales_and_checks() {
        let d = Decimal::from_str("12.500").unwrap();
        assert_eq!(Money::from_decimal(d).unwrap().to_string(), "12.50");
        assert_eq!(
            Money::from_decimal(Decimal::from_str("1.234").unwrap()),
            Err(MoneyError::TooPrecise)
        );
        assert_eq!(
            Money::from_decimal(Decimal::ZERO),
            Err(MoneyError::NotPositive)
        );
    }

    #[test]
    fn serde_round_trip_is_a_string() {
        let m = Money::parse("1500").unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, "\"1500.00\"");
        assert_eq!(serde_json::from_str::<Money>(&json).unwrap(), m);
        assert!(serde_json::from_str::<Money>("\"-1\"").is_err());
    }
}
