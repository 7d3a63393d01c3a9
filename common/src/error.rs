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
    /// A concurrent change won; the caller may simply try again.
    #[error("{0}")]
    Aborted(String),
    /// A dependency is down, slow or shed; the caller should retry after `retry_after`.
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    /// The caller asked for more than it may have (a live stream fell behind,
    /// too many streams, too many calls); it may try again after `retry_after`.
    #[error("{message}")]
    ResourceExhausted {
        message: String,
        retry_after: Option<Duration>,
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

/// How long a caller should wait after the database was unavailable: about
/// as long as a connection takes to be replaced or a server to come back.
const STORAGE_RETRY_AFTER: Duration = Duration::from_secs(1);

impl From<crate::db::StorageError> for ApiError {
    /// A transient failure (see [`StorageError::is_transient`]) is
    /// UNAVAILABLE with RetryInfo: a retry with the same request id is safe
    /// and will likely succeed. Anything else is a bug, INTERNAL.
    ///
    /// [`StorageError::is_transient`]: crate::db::StorageError::is_transient
    fn from(error: crate::db::StorageError) -> Self {
        if error.is_transient() {
            tracing::warn!(%error, "the database is unavailable");
            ApiError::Unavailable {
                message: "the database is unavailable; try again shortly".into(),
                retry_after: STORAGE_RETRY_AFTER,
            }
        } else {
            ApiError::Internal(error.into())
        }
    }
}

impl From<crate::ids::Invalid> for ApiError {
    fn from(invalid: crate::ids::Invalid) -> Self {
        ApiError::InvalidArgument {
            field: invalid.field,
            reason: invalid.reason,
        }
    }
}

impl From<crate::ids::Invalid> for Status {
    fn from(invalid: crate::ids::Invalid) -> Self {
        ApiError::from(invalid).into()
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
            ApiError::Aborted(message) => Status::aborted(message),
            ApiError::Unavailable {
                message,
                retry_after,
            } => Status::with_error_details(
                Code::Unavailable,
                message,
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            ApiError::ResourceExhausted {
                message,
                retry_after,
            } => match retry_after {
                Some(delay) => Status::with_error_details(
                    Code::ResourceExhausted,
                    message,
                    ErrorDetails::with_retry_info(Some(delay)),
                ),
                None => Status::resource_exhausted(message),
            },
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
