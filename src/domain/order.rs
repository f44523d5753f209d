//! Orders, their identity, their status and how a new one is validated.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::FieldError;
use super::money::Money;
use super::payment::{Installment, MethodError, PaymentMethod};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct OrderId(pub Uuid);

impl OrderId {
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }
}

impl Default for OrderId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for OrderId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// Who placed the order: 1 to 64 characters, not blank, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

pub const USER_ID_MAX_CHARS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserIdError {
    #[error("is required")]
    Empty,
    #[error("must be at most {USER_ID_MAX_CHARS} characters")]
    TooLong,
    #[error("must not be blank")]
    Blank,
    #[error("must not contain control characters")]
    ControlCharacter,
}

impl UserId {
    pub fn parse(input: &str) -> Result<Self, UserIdError> {
        if input.is_empty() {
            return Err(UserIdError::Empty);
        }
        if input.chars().count() > USER_ID_MAX_CHARS {
            return Err(UserIdError::TooLong);
        }
        if input.chars().any(char::is_control) {
            return Err(UserIdError::ControlCharacter);
        }
        if input.trim().is_empty() {
            return Err(UserIdError::Blank);
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = UserIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<UserId> for String {
    fn from(u: UserId) -> String {
        u.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an order is in its life. `PROCESSING` is the only state that moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Processing,
    Approved,
    Canceled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 3] = [Self::Processing, Self::Approved, Self::Canceled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processing => "PROCESSING",
            Self::Approved => "APPROVED",
            Self::Canceled => "CANCELED",
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Processing)
    }

    /// The order state machine: PROCESSING → APPROVED | CANCELED, nothing else.
    ///
    /// This is the rule's home: the orchestrator settles an order only when
    /// it allows the move. The database repeats it as a backstop (the
    /// `orders_guard_transition` trigger), and an integration test
    /// (`postgres::the_database_guards_the_status_rule_of_the_domain`) checks
    /// that the two agree on every pair of statuses.
    pub fn can_become(self, next: OrderStatus) -> bool {
        matches!(
            (self, next),
            (Self::Processing, Self::Approved | Self::Canceled)
        )
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown order status {s:?}"))
    }
}

/// Why an order was canceled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CancelReason {
    /// The user directory says the user is not valid (or does not exist).
    UserInvalid,
    /// The value is above the balance limit.
    BalanceLimitExceeded,
    /// A validation step got no reply within its deadline, after every retry.
    ValidationTimeout,
    /// The user directory could not be reached.
    UserApiUnavailable,
}

impl CancelReason {
    pub const ALL: [CancelReason; 4] = [
        Self::UserInvalid,
        Self::BalanceLimitExceeded,
        Self::ValidationTimeout,
        Self::UserApiUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserInvalid => "USER_INVALID",
            Self::BalanceLimitExceeded => "BALANCE_LIMIT_EXCEEDED",
            Self::ValidationTimeout => "VALIDATION_TIMEOUT",
            Self::UserApiUnavailable => "USER_API_UNAVAILABLE",
        }
    }
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CancelReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown cancel reason {s:?}"))
    }
}

/// A validated request for a new order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NewOrder {
    pub value: Money,
    pub user_id: UserId,
    pub installment: Installment,
    pub method: PaymentMethod,
}

/// Why a new order was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderRejection {
    /// Fields missing or malformed (HTTP 422): every problem found, in field order.
    InvalidFields(Vec<FieldError>),
    /// Each field is well-formed but the method and installments fall outside
    /// the method table (HTTP 400, as the reference answers): a method the
    /// table does not have (the error names `method`), or more installments
    /// than the method allows (it names `installment`).
    OutsideMethodTable(FieldError),
}

impl NewOrder {
    /// Validates the raw form fields, reporting every bad field at once.
    pub fn parse(
        value: Option<&str>,
        user_id: Option<&str>,
        installment: Option<&str>,
        method: Option<&str>,
    ) -> Result<Self, OrderRejection> {
        let mut errors = Vec::new();
        for (name, raw) in [
            ("value", value),
            ("user_id", user_id),
            ("installment", installment),
            ("method", method),
        ] {
            if raw.is_none() {
                errors.push(FieldError::new(name, "is required"));
            }
        }

        let value = value.and_then(|v| {
            Money::parse(v)
                .map_err(|e| errors.push(FieldError::new("value", e.to_string())))
                .ok()
        });
        let user_id = user_id.and_then(|v| {
            UserId::parse(v)
                .map_err(|e| errors.push(FieldError::new("user_id", e.to_string())))
                .ok()
        });
        let installment = installment.and_then(|v| {
            Installment::parse(v)
                .map_err(|e| errors.push(FieldError::new("installment", e.to_string())))
                .ok()
        });
        // A method that is given but not in the table is the table's refusal
        // (400), unless other fields are malformed too (then all go in one 422).
        let mut unknown_method = None;
        let method = method.and_then(|v| {
            v.parse::<PaymentMethod>()
                .map_err(|e| {
                    let error = FieldError::new("method", e.to_string());
                    match e {
                        MethodError::Unknown => unknown_method = Some(error),
                        MethodError::Empty => errors.push(error),
                    }
                })
                .ok()
        });
        if let Some(error) = unknown_method {
            if errors.is_empty() {
                return Err(OrderRejection::OutsideMethodTable(error));
            }
            errors.push(error);
        }
        errors.sort_by_key(|e| {
            ["value", "user_id", "installment", "method"]
                .iter()
                .position(|f| *f == e.field)
        });

        match (value, user_id, installment, method) {
            (Some(value), Some(user_id), Some(installment), Some(method)) if errors.is_empty() => {
                if !method.allows(installment) {
                    let max = method.max_installments();
                    let msg = if max == 1 {
                        format!(
                            "{method} allows only 1 installment, got {}",
                            installment.get()
                        )
                    } else {
                        format!(
                            "{method} allows 1 to {max} installments, got {}",
                            installment.get()
                        )
                    };
                    return Err(OrderRejection::OutsideMethodTable(FieldError::new(
                        "installment",
                        msg,
                    )));
                }
                Ok(Self {
                    value,
                    user_id,
                    installment,
                    method,
                })
            }
            _ => Err(OrderRejection::InvalidFields(errors)),
        }
    }
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: OrderId,
    pub value: Money,
    pub user_id: UserId,
    pub installment: Installment,
    pub method: PaymentMethod,
    pub status: OrderStatus,
    pub cancel_reason: Option<CancelReason>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Order {
    /// A freshly placed order: PROCESSING until the saga settles it.
    pub fn place(id: OrderId, new: NewOrder, now: DateTime<Utc>) -> Self {
        Self {
            id,
            value: new.value,
            user_id: new.user_id,
            installment: new.installment,
            method: new.method,
            status: OrderStatus::Processing,
            cancel_reason: None,
            created_at: now,
            updated_at: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_machine_allows_only_processing_to_terminal() {
        use OrderStatus::*;
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                let expected = from == Processing && to != Processing;
                assert_eq!(from.can_become(to), expected, "{from} -> {to}");
            }
        }
        assert!(!Processing.is_terminal());
        assert!(Approved.is_terminal() && Canceled.is_terminal());
    }

    #[test]
    fn terminal_states_never_change() {
        for from in [OrderStatus::Approved, OrderStatus::Canceled] {
            assert!(
                OrderStatus::ALL.iter().all(|to| !from.can_become(*to)),
                "{from}"
            );
        }
    }

    #[test]
    fn statuses_and_reasons_round_trip() {
        for s in OrderStatus::ALL {
            assert_eq!(s.as_str().parse::<OrderStatus>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for r in CancelReason::ALL {
            assert_eq!(r.as_str().parse::<CancelReason>().unwrap(), r);
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert!("ACCEPTED".parse::<OrderStatus>().is_err());
    }

    #[test]
    fn user_id_rules() {
        assert!(UserId::parse("uuuu-aaaa-bbbb").is_ok());
        assert!(UserId::parse("ünïcødé 用户").is_ok());
        assert!(UserId::parse(&"x".repeat(64)).is_ok());
        assert!(
            UserId::parse(&"é".repeat(64)).is_ok(),
            "64 characters, more bytes"
        );
        assert_eq!(UserId::parse(""), Err(UserIdError::Empty));
        assert_eq!(UserId::parse(&"x".repeat(65)), Err(UserIdError::TooLong));
        assert_eq!(UserId::parse("   "), Err(UserIdError::Blank));
        assert_eq!(UserId::parse("a\u{0}b"), Err(UserIdError::ControlCharacter));
        assert_eq!(UserId::parse("a\nb"), Err(UserIdError::ControlCharacter));
    }

    fn parse(v: &str, u: &str, i: &str, m: &str) -> Result<NewOrder, OrderRejection> {
        NewOrder::parse(Some(v), Some(u), Some(i), Some(m))
    }

    #[test]
    fn a_valid_form_parses() {
        let o = parse("1500.00", "user-1", "10", "credit_card").unwrap();
        assert_eq!(o.value.to_string(), "1500.00");
        assert_eq!(o.installment.get(), 10);
        assert_eq!(o.method, PaymentMethod::CreditCard);
    }

    #[test]
    fn every_missing_field_is_named() {
        let Err(OrderRejection::InvalidFields(errs)) = NewOrder::parse(None, None, None, None)
        else {
            panic!()
        };
        let fields: Vec<_> = errs.iter().map(|e| (e.field, e.message.as_str())).collect();
        assert_eq!(
            fields,
            [
                ("value", "is required"),
                ("user_id", "is required"),
                ("installment", "is required"),
                ("method", "is required")
            ]
        );
    }

    #[test]
    fn every_malformed_field_is_named_in_order() {
        let Err(OrderRejection::InvalidFields(errs)) = parse("-1", "", "x", "pix") else {
            panic!()
        };
        let fields: Vec<_> = errs.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["value", "user_id", "installment", "method"]);
        assert_eq!(errs[0].message, "must be greater than 0");
    }

    #[test]
    fn a_pair_outside_the_table_is_its_own_rejection() {
        let Err(OrderRejection::OutsideMethodTable(e)) = parse("10", "u", "2", "debit_card") else {
            panic!()
        };
        assert_eq!(e.field, "installment");
        assert_eq!(e.message, "debit_card allows only 1 installment, got 2");
        let Err(OrderRejection::OutsideMethodTable(e)) = parse("10", "u", "13", "credit_card")
        else {
            panic!()
        };
        assert_eq!(e.message, "credit_card allows 1 to 12 installments, got 13");
    }

    #[test]
    fn an_unknown_method_is_outside_the_table_and_named() {
        let Err(OrderRejection::OutsideMethodTable(e)) = parse("10", "u", "1", "not_exist") else {
            panic!()
        };
        assert_eq!(e.field, "method");
        assert_eq!(
            e.message,
            "must be one of credit_card, debit_card, transfer, cash"
        );
    }

    #[test]
    fn an_unknown_method_beside_a_malformed_field_is_listed_with_it() {
        let Err(OrderRejection::InvalidFields(errs)) = parse("abc", "u", "1", "not_exist") else {
            panic!()
        };
        let fields: Vec<_> = errs.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["value", "method"]);
    }

    #[test]
    fn a_malformed_field_wins_over_the_pair_check() {
        assert!(matches!(
            parse("abc", "u", "2", "debit_card"),
            Err(OrderRejection::InvalidFields(_))
        ));
    }

    #[test]
    fn a_placed_order_is_processing() {
        let now = Utc::now();
        let o = Order::place(OrderId::new(), parse("1", "u", "1", "cash").unwrap(), now);
        assert_eq!(o.status, OrderStatus::Processing);
        assert_eq!(o.cancel_reason, None);
        assert_eq!(o.created_at, now);
    }
}
