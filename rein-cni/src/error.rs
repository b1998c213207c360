//! CNI error results: the spec's codes, and what rein's errors become.
use serde::Serialize;

use crate::version::CniVersion;

/// The spec's well-known error codes, and 999, which the reference plugins' library (skel)
/// gives every error a plugin raises without a code of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion = 1,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    IoFailure = 5,
    DecodingFailure = 6,
    InvalidConfig = 7,
    InvalidNetns = 8,
    TryAgainLater = 11,
    NotAvailable = 50,
    Internal = 999,
}

impl Code {
    pub fn number(self) -> u32 {
        self as u32
    }
}

/// A failed command, printed on stdout as the spec's error object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error object for `version`, the configuration's if it was understood.
    pub fn to_json(&self, version: CniVersion) -> String {
        #[derive(Serialize)]
        struct Object<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        let object = Object {
            cni_version: version.as_str(),
            code: self.code.number(),
            msg: &self.msg,
            details: &self.details,
        };
        // A struct of strings and a number always serializes.
        serde_json::to_string_pretty(&object).unwrap_or_default()
    }
}

impl From<rein::Error> for CniError {
    /// A busy instance is transient: the runtime retries (code 11). A machine where rein cannot
    /// run cannot serve ADD (code 50). Everything else is an error of the operation, 999 as the
    /// reference plugin's are, with rein's message, which names its cause.
    fn from(error: rein::Error) -> Self {
        use rein::Error as E;
        let code = match &error {
            E::Busy(_) => Code::TryAgainLater,
            E::NotRoot | E::NoBpffs(_) | E::NoBtf(_) | E::NoCgroup2 => Code::NotAvailable,
            _ => Code::Internal,
        };
        CniError::new(code, rein::error::causes(&error))
    }
}

pub type Result<T, E = CniError> = std::result::Result<T, E>;
