//! The order form, read from `application/x-www-form-urlencoded` or
//! `multipart/form-data`, as raw strings: validation is the domain's job.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{StatusCode, header};

use super::error::ApiError;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub const FIELDS: [&str; 4] = ["value", "user_id", "installment", "method"];

/// The four order fields as sent (absent when not sent).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OrderForm {
    pub value: Option<String>,
    pub user_id: Option<String>,
    pub installment: Option<String>,
    pub method: Option<String>,
}

impl OrderForm {
    fn slot(&mut self, name: &str) -> Option<&mut Option<String>> {
        match name {
            "value" => Some(&mut self.value),
            "user_id" => Some(&mut self.user_id),
            "installment" => Some(&mut self.installment),
            "method" => Some(&mut self.method),
            _ => None,
        }
    }

    /// Records a field; unknown fields are ignored, a repeated one is an error.
    fn set(&mut self, name: &str, value: String) -> Result<(), ApiError> {
        if let Some(slot) = self.slot(name) {
            if slot.is_some() {
                return Err(ApiError::field(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_fields",
                    crate::domain::FieldError::new(
                        FIELDS
                            .into_iter()
                            .find(|f| *f == name)
                            .expect("known field"),
                        "was given more than once",
                    ),
                ));
            }
            *slot = Some(value);
        }
        Ok(())
    }

    /// Parses an urlencoded body.
    pub fn from_urlencoded(body: &[u8]) -> Result<Self, ApiError> {
        let mut form = OrderForm::default();
        for (k, v) in form_urlencoded::parse(body) {
            form.set(&k, v.into_owned())?;
        }
        Ok(form)
    }
}

fn unsupported() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "Content-Type must be application/x-www-form-urlencoded or multipart/form-data",
    )
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body must be at most {MAX_BODY_BYTES} bytes"),
    )
}

impl<S: Send + Sync> FromRequest<S> for OrderForm {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        match content_type.as_str() {
            "application/x-www-form-urlencoded" => {
                let body = Bytes::from_request(req, state).await.map_err(|e| {
                    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        too_large()
                    } else {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            format!("cannot read the body: {e}"),
                        )
                    }
                })?;
                Self::from_urlencoded(&body)
            }
            "multipart/form-data" => {
                let mut multipart = Multipart::from_request(req, state).await.map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("malformed multipart body: {}", e.body_text()),
                    )
                })?;
                let mut form = OrderForm::default();
                loop {
                    let field = match multipart.next_field().await {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                            return Err(too_large());
                        }
                        Err(e) => {
                            return Err(ApiError::new(
                                StatusCode::BAD_REQUEST,
                                "bad_request",
                                format!("malformed multipart body: {}", e.body_text()),
                            ));
                        }
                    };
                    let name = field.name().unwrap_or_default().to_owned();
                    let text = field.text().await.map_err(|e| {
                        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                            too_large()
                        } else {
                            ApiError::new(
                                StatusCode::BAD_REQUEST,
                                "bad_request",
                                format!("cannot read multipart field {name:?}: {}", e.body_text()),
                            )
                        }
                    })?;
                    form.set(&name, text)?;
                }
                Ok(form)
            }
            _ => Err(unsupported()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlencoded_fields_are_decoded() {
        let f = OrderForm::from_urlencoded(
            b"value=1000.00&user_id=a%20b%2Bc&installment=1&method=credit_card&extra=x",
        )
        .unwrap();
        assert_eq!(f.value.as_deref(), Some("1000.00"));
        assert_eq!(f.user_id.as_deref(), Some("a b+c"));
        assert_eq!(f.method.as_deref(), Some("credit_card"));
    }

    #[test]
    fn a_repeated_field_is_refused() {
        let e = OrderForm::from_urlencoded(b"value=1&value=2").unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.body.fields[0].field, "value");
    }

    #[test]
    fn an_empty_body_has_no_fields() {
        assert_eq!(
            OrderForm::from_urlencoded(b"").unwrap(),
            OrderForm::default()
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::OrderForm;
        use crate::domain::NewOrder;
        use crate::domain::order::OrderRejection;

        /// Any text, weighted towards the characters that matter to forms and numbers.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                ".*",
                "[0-9.,eE+ -]{0,25}",
                "[\\x00-\\x1f&=%+ ]{0,10}",
                "(NaN|inf|-inf|1e30|0x10|١٢٣)",
                ".{60,70}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Whatever is sent, the form parses back to exactly what was sent.
            #[test]
            fn urlencoding_round_trips(value in text(), user in text(), inst in text(), method in text()) {
                let body: String = form_urlencoded::Serializer::new(String::new())
                    .append_pair("value", &value)
                    .append_pair("user_id", &user)
                    .append_pair("installment", &inst)
                    .append_pair("method", &method)
                    .finish();
                let form = OrderForm::from_urlencoded(body.as_bytes()).unwrap();
                prop_assert_eq!(form.value.as_deref(), Some(value.as_str()));
                prop_assert_eq!(form.user_id.as_deref(), Some(user.as_str()));
                prop_assert_eq!(form.installment.as_deref(), Some(inst.as_str()));
                prop_assert_eq!(form.method.as_deref(), Some(method.as_str()));
            }

            /// Arbitrary bytes never panic the parser.
            #[test]
            fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = OrderForm::from_urlencoded(&body);
            }

            /// Any fields: either a valid order, or a rejection naming only real fields with a message.
            #[test]
            fn validation_is_total_and_names_fields(
                value in proptest::option::of(text()),
                user in proptest::option::of(text()),
                inst in proptest::option::of(text()),
                method in proptest::option::of(text()),
            ) {
                match NewOrder::parse(value.as_deref(), user.as_deref(), inst.as_deref(), method.as_deref()) {
                    Ok(order) => {
                        prop_assert!(order.value.amount() > rust_decimal::Decimal::ZERO);
                        prop_assert!(order.method.allows(order.installment));
                        let n = order.user_id.as_str().chars().count();
                        prop_assert!((1..=64).contains(&n));
                    }
                    Err(OrderRejection::InvalidFields(errors)) => {
                        prop_assert!(!errors.is_empty());
                        for e in errors {
                            prop_assert!(super::super::FIELDS.contains(&e.field));
                            prop_assert!(!e.message.is_empty());
                        }
                    }
                    Err(OrderRejection::OutsideMethodTable(e)) => prop_assert!(e.field == "installment" || e.field == "method"),
                }
            }

            /// Every well-formed order is accepted, and its value is rendered with two decimals.
            #[test]
            fn well_formed_orders_are_accepted(
                int in 0u64..1_000_000_000_000,
                frac in proptest::option::of(0u32..100),
                user in "[^\\x00-\\x1f\\x7f-\\x9f]{1,64}",
                credit in 1u32..=12,
                method in 0usize..4,
            ) {
                prop_assume!(int > 0 || frac.is_some_and(|f| f > 0));
                prop_assume!(!user.trim().is_empty());
                let value = match frac { Some(f) => format!("{int}.{f:02}"), None => int.to_string() };
                let (method, installments) = [("credit_card", credit), ("debit_card", 1), ("transfer", 1), ("cash", 1)][method];
                let order = NewOrder::parse(Some(&value), Some(&user), Some(&installments.to_string()), Some(method));
                let order = order.map_err(|e| TestCaseError::fail(format!("{value} {user:?}: {e:?}")))?;
                prop_assert_eq!(order.value.to_string(), format!("{int}.{:02}", frac.unwrap_or(0)));
            }
        }
    }
}
