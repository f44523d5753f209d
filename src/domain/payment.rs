//! Payment methods and the installments each one allows.

use std::fmt;
use std::str::FromStr;

/// How an order is paid. The wire names are the reference project's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    CreditCard,
    DebitCard,
    Transfer,
    Cash,
}

impl PaymentMethod {
    pub const ALL: [PaymentMethod; 4] = [
        Self::CreditCard,
        Self::DebitCard,
        Self::Transfer,
        Self::Cash,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreditCard => "credit_card",
            Self::DebitCard => "debit_card",
            Self::Transfer => "transfer",
            Self::Cash => "cash",
        }
    }

    /// The most installments this method may be split into (the least is 1).
    pub fn max_installments(self) -> u32 {
        match self {
            Self::CreditCard => 12,
            Self::DebitCard | Self::Transfer | Self::Cash => 1,
        }
    }

    pub fn allows(self, installment: Installment) -> bool {
        installment.get() <= self.max_installments()
    }
}

impl fmt::Display for PaymentMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    #[error("is required")]
    Empty,
    #[error("must be one of credit_card, debit_card, transfer, cash")]
    Unknown,
}

impl FromStr for PaymentMethod {
    type Err = MethodError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(MethodError::Empty);
        }
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or(MethodError::Unknown)
    }
}

/// Number of installments: a whole number from 1 up.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "u32", into = "u32")]
pub struct Installment(u32);

/// Bigger than any method allows; keeps absurd numbers out of the integer column.
const MAX_INSTALLMENT_INPUT: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallmentError {
    #[error("is required")]
    Empty,
    #[error("must be a whole number such as 1")]
    NotAnInteger,
    #[error("must be at least 1")]
    TooSmall,
    #[error("must be at most {MAX_INSTALLMENT_INPUT}")]
    TooLarge,
}

impl Installment {
    pub fn new(n: u32) -> Result<Self, InstallmentError> {
        match n {
            0 => Err(InstallmentError::TooSmall),
            n if n > MAX_INSTALLMENT_INPUT => Err(InstallmentError::TooLarge),
            n => Ok(Self(n)),
        }
    }

    pub fn parse(input: &str) -> Result<Self, InstallmentError> {
        if input.is_empty() {
            return Err(InstallmentError::Empty);
        }
        let (negative, digits) = match input.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, input),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InstallmentError::NotAnInteger);
        }
        if negative {
            return Err(InstallmentError::TooSmall);
        }
        match digits.trim_start_matches('0') {
            "" => Err(InstallmentError::TooSmall),
            d if d.len() > 4 => Err(InstallmentError::TooLarge),
            d => Self::new(d.parse().expect("at most 4 ascii digits")),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Installment {
    type Error = InstallmentError;
    fn try_from(n: u32) -> Result<Self, Self::Error> {
        Self::new(n)
    }
}

impl From<Installment> for u32 {
    fn from(i: Installment) -> u32 {
        i.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_table_matches_the_contract() {
        let table: Vec<_> = PaymentMethod::ALL
            .iter()
            .map(|m| (m.as_str(), m.max_installments()))
            .collect();
        assert_eq!(
            table,
            [
                ("credit_card", 12),
                ("debit_card", 1),
                ("transfer", 1),
                ("cash", 1)
            ]
        );
    }

    #[test]
    fn every_pair_is_allowed_exactly_within_the_table() {
        for m in PaymentMethod::ALL {
            for n in 1..=20 {
                let i = Installment::new(n).unwrap();
                assert_eq!(m.allows(i), n <= m.max_installments(), "{m} x{n}");
            }
        }
    }

    #[test]
    fn method_names_round_trip() {
        for m in PaymentMethod::ALL {
            assert_eq!(m.as_str().parse::<PaymentMethod>(), Ok(m));
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
        }
        assert_eq!("".parse::<PaymentMethod>(), Err(MethodError::Empty));
        for bad in ["CREDIT_CARD", "pix", "credit card", " cash"] {
            assert_eq!(
                bad.parse::<PaymentMethod>(),
                Err(MethodError::Unknown),
                "{bad}"
            );
        }
    }

    #[test]
    fn installment_parsing() {
        use InstallmentError::*;
        assert_eq!(Installment::parse("1").unwrap().get(), 1);
        assert_eq!(Installment::parse("012").unwrap().get(), 12);
        for (input, err) in [
            ("", Empty),
            ("0", TooSmall),
            ("000", TooSmall),
            ("-1", TooSmall),
            ("1.5", NotAnInteger),
            ("one", NotAnInteger),
            ("1e3", NotAnInteger),
            ("-", NotAnInteger),
            (" 1", NotAnInteger),
            ("1001", TooLarge),
            ("99999999999999999999", TooLarge),
        ] {
            assert_eq!(Installment::parse(input), Err(err), "input {input:?}");
        }
    }
}
