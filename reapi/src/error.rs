//! Error type shared by the whole crate.
//!
//! Every error raised while talking to a server names the server URL and the
//! operation (usually the gRPC method, e.g. `ContentAddressableStorage.BatchUpdateBlobs`)
//! so that a failure in a large parallel build can be traced to one call.
//! Malformed or inconsistent data sent by a server is reported as
//! [`Error::BadResponse`], never as a panic.

use std::fmt;
use std::time::Duration;

/// Convenience alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A gRPC status code plus message, detached from `tonic::Status` so that
/// [`Error`] stays small and `Clone`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcStatus {
    /// gRPC status code.
    pub code: tonic::Code,
    /// Human readable message returned by the server.
    pub message: String,
}

impl RpcStatus {
    /// Builds a status from a raw `google.rpc.Status` code and message.
    pub fn from_code(code: i32, message: impl Into<String>) -> Self {
        Self {
            code: tonic::Code::from_i32(code),
            message: message.into(),
        }
    }
}

impl From<&tonic::Status> for RpcStatus {
    fn from(s: &tonic::Status) -> Self {
        Self {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

impl fmt::Display for RpcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{:?}", self.code)
        } else {
            write!(f, "{:?}: {}", self.code, self.message)
        }
    }
}

/// Errors returned by this crate.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL could not be parsed or uses an unsupported scheme.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// URL as given by the caller.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Establishing the HTTP/2 connection failed.
    #[error("cannot connect to {server}: {reason}")]
    Connect {
        /// Server URL.
        server: String,
        /// Transport error text.
        reason: String,
    },
    /// The server answered an RPC with a non-OK status.
    #[error("{server}: {op} failed: {status}")]
    Rpc {
        /// Server URL.
        server: String,
        /// Operation, usually `Service.Method`.
        op: String,
        /// Status returned by the server.
        status: RpcStatus,
    },
    /// An RPC did not finish within its deadline.
    #[error("{server}: {op} timed out after {timeout:?}")]
    Timeout {
        /// Server URL.
        server: String,
        /// Operation, usually `Service.Method`.
        op: String,
        /// The deadline that elapsed.
        timeout: Duration,
    },
    /// The server sent data that violates the protocol (bad digest, missing
    /// field, undecodable message, ...).
    #[error("{server}: {op}: bad response: {reason}")]
    BadResponse {
        /// Server URL.
        server: String,
        /// Operation, usually `Service.Method`.
        op: String,
        /// What was wrong.
        reason: String,
    },
    /// The remote execution finished with a non-OK `ExecuteResponse.status`
    /// (the action could not be run; a command exiting non-zero is *not*
    /// reported this way, see `ActionResult::exit_code`).
    #[error("{server}: execution of action {action} failed: {status}")]
    ExecutionFailed {
        /// Server URL.
        server: String,
        /// Action digest as `hash/size`.
        action: String,
        /// Status from the `ExecuteResponse`.
        status: RpcStatus,
    },
    /// Caller supplied invalid input (bad path in a Merkle tree, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Local I/O failure (materialising inputs, reading outputs, ...).
    #[error("{context}: {reason}")]
    Io {
        /// What was being done, including the path.
        context: String,
        /// The `std::io::Error` text.
        reason: String,
        /// The `std::io::ErrorKind`.
        kind: std::io::ErrorKind,
    },
    /// The user-supplied executor of a worker failed.
    #[error("executor failed: {0}")]
    Executor(String),
}

impl Error {
    /// Builds an [`Error::Io`] from an `io::Error` and a context string.
    pub fn io(context: impl Into<String>, err: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            reason: err.to_string(),
            kind: err.kind(),
        }
    }

    /// The gRPC code behind this error, if it came from a server status.
    pub fn rpc_code(&self) -> Option<tonic::Code> {
        match self {
            Error::Rpc { status, .. } | Error::ExecutionFailed { status, .. } => Some(status.code),
            Error::Timeout { .. } => Some(tonic::Code::DeadlineExceeded),
            _ => None,
        }
    }

    /// Whether retrying the same call may succeed (transient failures).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.rpc_code(),
            Some(tonic::Code::Unavailable)
                | Some(tonic::Code::ResourceExhausted)
                | Some(tonic::Code::Aborted)
                | Some(tonic::Code::DeadlineExceeded)
        ) || matches!(self, Error::Connect { .. })
    }
}
