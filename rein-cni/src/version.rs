//! The CNI spec versions rein-cni speaks, and the version rules of the reference library
//! (skel): which versions allow CHECK, GC and STATUS, and what an unknown version gets.
use std::{cmp::Ordering, fmt};

use crate::error::{CniError, Code, Result};

/// A spec version rein-cni supports: the reference bandwidth plugin's (0.3.0 onwards) and
/// 1.1.0, whose GC and STATUS rein-cni implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl CniVersion {
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];

    /// What errors and VERSION answer with when the input named no supported version.
    pub const NEWEST: CniVersion = CniVersion::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// The supported version spelled exactly `text` (the reference compares strings).
    pub fn exact(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == text)
    }

    /// Whether results of this version have the 0.3/0.4 shape (`ips[].version`, no `mtu`).
    pub fn is_legacy(self) -> bool {
        self < CniVersion::V1_0_0
    }

    pub fn supported_list() -> Vec<&'static str> {
        Self::ALL.iter().map(|v| v.as_str()).collect()
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A version as the reference library parses one for comparisons: up to three numeric parts,
/// missing parts 0, and no version at all 0.1.0.
fn numeric(text: &str) -> Result<(i64, i64, i64)> {
    if text.is_empty() {
        return Ok((0, 1, 0));
    }
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() >= 4 {
        return Err(CniError::new(
            Code::DecodingFailure,
            format!("invalid version {text:?}: too many parts"),
        ));
    }
    let mut numbers = [0i64; 3];
    for (number, part) in numbers.iter_mut().zip(&parts) {
        *number = part.parse().map_err(|_| {
            CniError::new(
                Code::DecodingFailure,
                format!("invalid version {text:?}: {part:?} is not a number"),
            )
        })?;
    }
    Ok((numbers[0], numbers[1], numbers[2]))
}

/// `a >= b` as versions.
fn at_least(a: &str, b: &str) -> Result<bool> {
    Ok(numeric(a)?.cmp(&numeric(b)?) != Ordering::Less)
}

/// The version a configuration states (`""` when it states none), resolved for `command` as the
/// reference library does: CHECK needs 0.4.0 or later, GC and STATUS 1.1.0 or later, and
/// every command a version this plugin lists.
pub fn negotiate(stated: &str, command: &str) -> Result<CniVersion> {
    let minimum = match command {
        "CHECK" => Some("0.4.0"),
        "GC" | "STATUS" => Some("1.1.0"),
        _ => None,
    };
    if let Some(minimum) = minimum {
        if !at_least(stated, minimum)? {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!("config version does not allow {command}"),
            ));
        }
        let newest = CniVersion::NEWEST.as_str();
        if !at_least(newest, stated)? {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!("plugin version does not allow {command}"),
            ));
        }
    }
    CniVersion::exact(stated).ok_or_else(|| {
        let shown = if stated.is_empty() { "0.1.0" } else { stated };
        CniError::new(Code::IncompatibleVersion, "incompatible CNI versions").with_details(format!(
            "config is {shown:?}, plugin supports {:?}",
            CniVersion::supported_list()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_is_accepted_for_add_and_del() {
        for version in CniVersion::ALL {
            assert_eq!(negotiate(version.as_str(), "ADD"), Ok(version));
            assert_eq!(negotiate(version.as_str(), "DEL"), Ok(version));
        }
    }

    #[test]
    fn unknown_versions_are_incompatible_with_the_supported_list() {
        for stated in ["0.2.0", "", "1.2.0", "2.0.0", "1.0", "bogus"] {
            let error = negotiate(stated, "ADD").unwrap_err();
            assert_eq!(error.code, Code::IncompatibleVersion, "{stated}");
            assert_eq!(error.msg, "incompatible CNI versions");
            assert!(error.details.contains("0.3.0") && error.details.contains("1.1.0"));
        }
    }

    #[test]
    fn check_needs_0_4_0_and_gc_and_status_1_1_0() {
        for old in ["0.3.0", "0.3.1"] {
            let error = negotiate(old, "CHECK").unwrap_err();
            assert_eq!(error.code, Code::IncompatibleVersion);
            assert_eq!(error.msg, "config version does not allow CHECK");
        }
        assert_eq!(negotiate("0.4.0", "CHECK"), Ok(CniVersion::V0_4_0));
        for command in ["GC", "STATUS"] {
            let error = negotiate("1.0.0", command).unwrap_err();
            assert_eq!(
                error.msg,
                format!("config version does not allow {command}")
            );
            assert_eq!(negotiate("1.1.0", command), Ok(CniVersion::V1_1_0));
            let error = negotiate("2.0.0", command).unwrap_err();
            assert_eq!(
                error.msg,
                format!("plugin version does not allow {command}")
            );
        }
        // Not a version at all: the reference cannot compare it, a decoding failure.
        assert_eq!(
            negotiate("x.y", "CHECK").unwrap_err().code,
            Code::DecodingFailure
        );
    }

    #[test]
    fn legacy_results_are_those_before_1_0_0() {
        assert!(CniVersion::V0_4_0.is_legacy());
        assert!(!CniVersion::V1_0_0.is_legacy());
    }
}
