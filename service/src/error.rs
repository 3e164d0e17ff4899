//! One error type for every handler, and how each maps to a JSON response.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::db::{is_missing_parent, DbError};

/// Why a request failed. Each variant has one status code; the body is always
/// `{"error": "<kind>", "message": "<what happened>"}`.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request itself is wrong: a 400 with what to fix.
    #[error("{0}")]
    BadRequest(String),
    /// No such item (or route): a 404.
    #[error("{0}")]
    NotFound(String),
    /// axum refused the body (too large, not JSON, wrong shape): its status (413, 415, 422,
    /// 400) and message.
    #[error("{1}")]
    Rejected(StatusCode, String),
    /// A concurrent write to the same row won: a 409, safe to retry.
    #[error("{0}")]
    Conflict(String),
    /// The database failed or is unreachable: 503 or 500.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The cache broke a promise it makes (a batch loader's length check): a 500.
    #[error("cache: {0}")]
    Cache(#[from] cacheobj::Error),
}

impl From<JsonRejection> for AppError {
    fn from(r: JsonRejection) -> Self {
        AppError::Rejected(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for AppError {
    fn from(r: QueryRejection) -> Self {
        AppError::Rejected(r.status(), r.body_text())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, kind, message) = match &self {
            AppError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m.clone()),
            AppError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m.clone()),
            AppError::Rejected(s, m) => (*s, "invalid_request", m.clone()),
            AppError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m.clone()),
            AppError::Db(e) if is_missing_parent(e) => (
                StatusCode::NOT_FOUND,
                "not_found",
                "no such item".to_string(),
            ),
            AppError::Db(DbError::Unavailable(e)) => {
                tracing::warn!(error = %e, "database unavailable");
                let body = json!({
                    "error": "database_unavailable",
                    "message": format!("the database is unavailable ({e}); cached items are still served, try again later"),
                });
                // Retry-After: a client's retry should not hammer a database that is down.
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "1")],
                    Json(body),
                )
                    .into_response();
            }
            AppError::Db(DbError::Other(e)) => {
                if let sqlx::Error::Database(d) = e {
                    if d.kind() == sqlx::error::ErrorKind::UniqueViolation {
                        return AppError::Conflict(
                            "a concurrent write to this item won; retry".into(),
                        )
                        .into_response();
                    }
                }
                // The cause goes to the log, not to the client (it may quote SQL or data).
                tracing::error!(error = %e, "database error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error".to_string(),
                )
            }
            AppError::Cache(e) => {
                tracing::error!(error = %e, "cache error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error".to_string(),
                )
            }
        };
        (status, Json(json!({ "error": kind, "message": message }))).into_response()
    }
}
