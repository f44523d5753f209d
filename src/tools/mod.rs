//! Programs beside the service, outside the hexagon: the stub user directory
//! (`ordersaga user-api`, for local runs and tests; production points
//! `USER_API_URL` at the real one) and `ordersaga probe`, a health check for
//! containers without curl.

pub mod probe;
pub mod user_api_stub;
