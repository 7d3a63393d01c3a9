//! The one mapping from service errors to `tonic::Status`.
//!
//! Every service converts its own error enum into [`ApiError`]; only here does
//! an error become a status. Internal causes are logged and never sent.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// What a caller is told, by kind.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field is missing or malformed; `field` names it.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the resource is not in a state that allows it.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A dependency is down, slow or shed; the caller should retry after `retry_after`.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    /// Anything else: logged with its cause chain, reported as INTERNAL without detail.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// Shorthand for [`ApiError::InvalidArgument`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidArgument { field, reason } => Status::with_error_details(
                Code::InvalidArgument,
                format!("invalid {field}: {reason}"),
                ErrorDetails::with_bad_request_violation(field, reason),
            ),
            ApiError::NotFound(message) => Status::not_found(message),
            ApiError::AlreadyExists(message) => Status::already_exists(message),
            ApiError::FailedPrecondition(message) => Status::failed_precondition(message),
            ApiError::Unauthenticated(message) => Status::unauthenticated(message),
            ApiError::PermissionDenied(message) => Status::permission_denied(message),
            ApiError::Unavailable {
                message,
                retry_after,
            } => Status::with_error_details(
                Code::Unavailable,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            ApiError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_carries_retry_info() {
        let status = Status::from(ApiError::Unavailable {
            message: "payment unavailable; pay again shortly".into(),
            retry_after: Duration::from_secs(3),
        });
        assert_eq!(status.code(), Code::Unavailable);
        let retry = status.get_details_retry_info().map(|r| r.retry_delay);
        assert_eq!(retry, Some(Some(Duration::from_secs(3))));
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let status = Status::from(ApiError::invalid("address", "must not be empty"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("address"));
        let violations = status.get_details_bad_request().map(|b| b.field_violations);
        assert_eq!(
            violations.map(|v| v[0].field.clone()).as_deref(),
            Some("address")
        );
    }

    #[test]
    fn internal_hides_the_cause() {
        let status = Status::from(ApiError::Internal(anyhow::anyhow!("password=hunter2")));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("hunter2"));
    }
}
