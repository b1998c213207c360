//! One error type for the harness: a sentence saying what failed (the command line, its exit and
//! the end of its output; a deadline; a missing field), or an interruption by a stop signal.
//!
//! Benchmarks carry it in their `anyhow` chains; tests unwrap it, and since `Debug` prints the
//! sentence too, a failed `unwrap` reads as the failure itself.
use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub enum Error {
    /// A stop signal arrived (see [`crate::process::install_signal_handlers`]): whoever sees it
    /// unwinds, so that the guards clean up.
    Interrupted,
    Failed(String),
}

impl Error {
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    pub fn is_interrupted(&self) -> bool {
        matches!(self, Self::Interrupted)
    }

    /// The same failure, prefixed with what was being done (`what: failure`). An interruption
    /// stays one.
    pub fn context(self, what: impl fmt::Display) -> Self {
        match self {
            Self::Interrupted => Self::Interrupted,
            Self::Failed(message) => Self::Failed(format!("{what}: {message}")),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Interrupted => f.write_str("interrupted"),
            Self::Failed(message) => f.write_str(message),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Error {}

/// Adds what was being done to a failure, as `anyhow::Context` does.
pub(crate) trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T> Context<T> for Result<T> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.context(what))
    }

    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.context(what()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.ok_or_else(|| Error::failed(what.to_string()))
    }

    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.ok_or_else(|| Error::failed(what().to_string()))
    }
}

/// Returns early with a failure built like `format!`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::failed(format!($($arg)*)))
    };
}
pub(crate) use bail;
