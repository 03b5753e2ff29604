//! One error type for every crate, and the one place that maps its kinds to an
//! HTTP status and to a gRPC code.

use std::borrow::Cow;

use http::StatusCode;
use thiserror::Error;
use tonic::Code;

/// What went wrong, as far as a caller can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request breaks the contract; the message names the field.
    InvalidInput,
    /// The request body is larger than the gateway accepts.
    PayloadTooLarge,
    /// No such route or resource.
    NotFound,
    /// The route exists but not for this method.
    MethodNotAllowed,
    /// The request conflicts with the current state (for example a batch that
    /// overlaps what was already applied); re-read the state and retry.
    Conflict,
    /// A backend is down or overloaded; retrying later may work.
    Unavailable,
    /// The request took longer than its deadline.
    DeadlineExceeded,
    /// A bug or a storage failure.
    Internal,
}

#[derive(Debug, Clone, Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Bad input in `field`, which the message names so the client can fix it.
    pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorKind::InvalidInput,
            format!("invalid `{field}`: {problem}"),
        )
    }

    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn http_status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_code(&self) -> Code {
        match self.kind {
            ErrorKind::InvalidInput => Code::InvalidArgument,
            ErrorKind::PayloadTooLarge => Code::ResourceExhausted,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::MethodNotAllowed => Code::Unimplemented,
            ErrorKind::Conflict => Code::FailedPrecondition,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
            ErrorKind::Internal => Code::Internal,
        }
    }

    /// Reads back an error that crossed a gRPC hop, inverting [`Self::grpc_code`].
    pub fn from_status(status: &tonic::Status) -> Self {
        let kind = match status.code() {
            Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidInput,
            Code::FailedPrecondition => ErrorKind::Conflict,
            Code::ResourceExhausted => ErrorKind::PayloadTooLarge,
            Code::NotFound => ErrorKind::NotFound,
            Code::Unimplemented => ErrorKind::MethodNotAllowed,
            Code::Unavailable | Code::Aborted | Code::Cancelled => ErrorKind::Unavailable,
            Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
            _ => ErrorKind::Internal,
        };
        Self::new(kind, status.message().to_owned())
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        tonic::Status::new(err.grpc_code(), err.message)
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Self::from_status(&status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_survive_a_grpc_hop() {
        for kind in [
            ErrorKind::InvalidInput,
            ErrorKind::PayloadTooLarge,
            ErrorKind::NotFound,
            ErrorKind::MethodNotAllowed,
            ErrorKind::Conflict,
            ErrorKind::Unavailable,
            ErrorKind::DeadlineExceeded,
            ErrorKind::Internal,
        ] {
            let status = tonic::Status::from(Error::new(kind, "x"));
            assert_eq!(Error::from(status).kind(), kind);
        }
    }

    #[test]
    fn invalid_input_names_the_field() {
        let err = Error::invalid("product_info.price", "out of range");
        assert_eq!(err.http_status(), StatusCode::BAD_REQUEST);
        assert!(err.message().contains("product_info.price"));
    }
}
