//! Answers several routes share, for their OpenAPI descriptions (feature
//! `openapi`).

use sluice_protocol::api::ApiError;

/// Missing or wrong bearer token (only when the server has one).
#[derive(utoipa::IntoResponses)]
#[response(status = 401)]
pub struct Unauthorized(pub ApiError);

/// A state-changing request with the read-only token (only when the
/// server has one): it needs the operator token.
#[derive(utoipa::IntoResponses)]
#[response(status = 403)]
pub struct Forbidden(pub ApiError);

/// Bytes of any kind (a job binary).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Binary(pub Vec<u8>);
