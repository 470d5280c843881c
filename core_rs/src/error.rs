//! The one error type of the core; the bindings map each variant to a Python exception.

use std::fmt;

/// Why a core call was refused. The message is a sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// A task, worker or shape handle the core does not know.
    UnknownHandle(String),
    /// An argument outside its range or inconsistent with the current state.
    InvalidArgument(String),
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::UnknownHandle(msg) | CoreError::InvalidArgument(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for CoreError {}

pub type CoreResult<T> = Result<T, CoreError>;

pub(crate) fn invalid(msg: impl Into<String>) -> CoreError {
    CoreError::InvalidArgument(msg.into())
}

pub(crate) fn unknown(msg: impl Into<String>) -> CoreError {
    CoreError::UnknownHandle(msg.into())
}
