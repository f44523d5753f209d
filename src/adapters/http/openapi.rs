//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{error, health, observe, orders};

/// The name of the security scheme every protected route names.
pub const API_KEY: &str = "api_key";

/// Declares the bearer API key, so Swagger UI's Authorize button sends it.
struct BearerApiKey;

impl Modify for BearerApiKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "One of the keys in API_KEYS (or API_KEYS_FILE). Needed only when the \
                         service is configured with keys; /health never needs one.",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ordersaga",
        description = "Order validation as an orchestrated saga. Place an order; it is PROCESSING until the saga \
                       settles it APPROVED or CANCELED (with a cancel_reason).",
    ),
    paths(
        orders::place_order,
        orders::get_order,
        orders::list_orders,
        orders::order_events,
        orders::methods,
        health::health,
        health::ready,
        observe::prometheus,
    ),
    components(schemas(error::ErrorBody, error::FieldProblem)),
    modifiers(&BearerApiKey),
    security(("api_key" = [])),
    tags(
        (name = "orders", description = "Orders and their saga"),
        (name = "operations", description = "Health, readiness and metrics"),
    )
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::domain::{Installment, Money, UserId};

    fn doc() -> Value {
        serde_json::to_value(ApiDoc::openapi()).unwrap()
    }

    fn pattern(doc: &Value, pointer: &str) -> regex::Regex {
        let p = doc
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no pattern at {pointer}"));
        regex::Regex::new(p).unwrap()
    }

    const SAMPLES: &[&str] = &[
        "",
        "0",
        "00",
        "0.0",
        "0.00",
        "0.01",
        "0.1",
        "0.5",
        "0.50",
        "00.10",
        ".5",
        "1.",
        "1",
        "01",
        "10",
        "12",
        "13",
        "1000",
        "1000.5",
        "1000.50",
        "1000.500",
        "10.001",
        "999999999999.99",
        "1000000000000",
        "-1",
        "+1",
        "1e3",
        "NaN",
        "inf",
        "1,0",
        " 1",
        "1 ",
        "abc",
        "u",
        "uuuu-aaaa-bbbb",
        "   ",
        "a\tb",
        "a\u{85}b",
        "é",
        "用户",
        "\u{a0}",
        "a\u{7f}",
        "\u{feff}",
    ];

    #[test]
    fn the_documented_value_pattern_is_the_domain_rule() {
        let doc = doc();
        for form in ["CreditCardOrderForm", "SingleInstallmentOrderForm"] {
            let re = pattern(
                &doc,
                &format!("/components/schemas/{form}/properties/value/pattern"),
            );
            for s in SAMPLES {
                assert_eq!(
                    re.is_match(s),
                    Money::parse(s).is_ok(),
                    "{form} value {s:?}"
                );
            }
        }
    }

    #[test]
    fn the_documented_user_id_pattern_is_the_domain_rule() {
        let doc = doc();
        let re = pattern(
            &doc,
            "/components/schemas/CreditCardOrderForm/properties/user_id/pattern",
        );
        let long = "x".repeat(65);
        for s in SAMPLES.iter().copied().chain([long.as_str()]) {
            let documented = re.is_match(s) && (1..=64).contains(&s.chars().count());
            assert_eq!(documented, UserId::parse(s).is_ok(), "user_id {s:?}");
        }
    }

    #[test]
    fn the_documented_installment_patterns_are_the_method_table() {
        let doc = doc();
        let credit = pattern(
            &doc,
            "/components/schemas/CreditCardOrderForm/properties/installment/pattern",
        );
        let single = pattern(
            &doc,
            "/components/schemas/SingleInstallmentOrderForm/properties/installment/pattern",
        );
        for s in SAMPLES {
            let n = Installment::parse(s).ok().map(Installment::get);
            assert_eq!(
                credit.is_match(s),
                n.is_some_and(|n| n <= 12),
                "credit {s:?}"
            );
            assert_eq!(single.is_match(s), n == Some(1), "single {s:?}");
        }
    }
}
