//! The HTTP error answer: a status and `{"error":{"code":…,"message":…}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use shared::protocol::{ErrorCode, ErrorDetail, ErrorResponse};

use super::auth::AuthError;
use crate::business;

/// An error as the HTTP API reports it.
#[derive(Debug)]
pub struct ApiError {
    /// Protocol code; decides the status.
    pub code: ErrorCode,
    /// What the client is told.
    pub message: String,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorResponse {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (status, axum::Json(body)).into_response()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::new(ErrorCode::Unauthorized, e.to_string())
    }
}

impl From<business::Error> for ApiError {
    fn from(e: business::Error) -> Self {
        if e.is_server_fault() {
            tracing::error!(error = %e, "request failed");
        }
        ApiError::new(e.code(), e.client_message())
    }
}
