//! Types that exist only to describe the API in the OpenAPI document (the
//! order form's two shapes, with the domain's rules as patterns); the
//! handlers never build them. `openapi.rs` lists them and tests the patterns.

use utoipa::ToSchema;

// The patterns below say in the OpenAPI document exactly what the domain
// accepts (ECMA-262 and Python read them alike), so generated clients and API
// fuzzers know the rules; a test checks them against the domain's parsers.

#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum CreditCard {
    CreditCard,
}

#[derive(Debug, ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum SingleInstallmentMethod {
    DebitCard,
    Transfer,
    Cash,
}

/// An order paid by credit card, in 1 to 12 installments.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct CreditCardOrderForm {
    /// Decimal greater than 0 with at most 2 decimals (at most 999999999999.99).
    #[schema(
        example = "1000.00",
        pattern = r"^(?:0*[1-9][0-9]{0,11}(?:\.[0-9]{1,2})?|0+\.(?:[1-9][0-9]?|0[1-9]))$"
    )]
    value: String,
    /// 1 to 64 characters. An id containing `invalid` is refused by the stub user API.
    #[schema(
        example = "uuuu-aaaa-bbbb",
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    user_id: String,
    /// 1 to 12.
    #[schema(example = "10", pattern = r"^0*(?:[1-9]|1[0-2])$")]
    installment: String,
    #[schema(inline)]
    method: CreditCard,
}

/// An order paid by debit card, transfer or cash, in 1 installment.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct SingleInstallmentOrderForm {
    /// Decimal greater than 0 with at most 2 decimals (at most 999999999999.99).
    #[schema(
        example = "150.00",
        pattern = r"^(?:0*[1-9][0-9]{0,11}(?:\.[0-9]{1,2})?|0+\.(?:[1-9][0-9]?|0[1-9]))$"
    )]
    value: String,
    /// 1 to 64 characters. An id containing `invalid` is refused by the stub user API.
    #[schema(
        example = "uuuu-aaaa-bbbb",
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    user_id: String,
    /// Always 1.
    #[schema(example = "1", pattern = r"^0*1$")]
    installment: String,
    #[schema(inline)]
    method: SingleInstallmentMethod,
}

/// The order form, as `application/x-www-form-urlencoded` or `multipart/form-data`.
/// A form outside these rules gets 422 (a field is missing or malformed) or 400
/// (the method does not allow that many installments).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum OrderFormDoc {
    CreditCard(CreditCardOrderForm),
    SingleInstallment(SingleInstallmentOrderForm),
}
