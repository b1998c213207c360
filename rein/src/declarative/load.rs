//! Reading declarative files: files and directories of multi-document YAML, every document a
//! resource. Any problem refuses all of them, with the file, line and column where it is.
use std::{
    collections::HashMap,
    fmt, fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::resource::{Document, Header, Kind, Resource};
use crate::error::{Error, IoContext, Result};

/// How files are read.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Refuse a file or directory not owned by root, or writable by its group or others: a
    /// service running as root must not take its limits from what another user can write.
    pub require_root_owned: bool,
}

/// Where a resource (or a problem in a file) is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceLocation {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// Where a resource was declared: a place in a file, or the object another declarer made it
/// from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    File(SourceLocation),
    /// What names the object, as errors show it: `Pod default/web-0`.
    Object(String),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File(location) => location.fmt(f),
            Location::Object(object) => f.write_str(object),
        }
    }
}

/// A resource and where it was declared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declared {
    pub resource: Resource,
    pub location: Location,
}

/// Every resource of a set of files, names unique per kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub items: Vec<Declared>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Reads `paths`, each a file or a directory (whose `*.yaml` and `*.yml` files are read in
/// name order, subdirectories not), in order.
pub fn load(paths: &[PathBuf], options: &LoadOptions) -> Result<Resources> {
    let mut resources = Resources::default();
    let mut seen: HashMap<(Kind, String), Location> = HashMap::new();
    for file in files(paths, options)? {
        let text =
            fs::read_to_string(&file).context(|| format!("cannot read {}", file.display()))?;
        for declared in parse(&file, &text)? {
            let key = (
                declared.resource.kind(),
                declared.resource.name().to_string(),
            );
            if let Some(first) = seen.get(&key) {
                return Err(Error::DuplicateResource {
                    at: declared.location.to_string(),
                    kind: key.0.name(),
                    name: key.1,
                    first: first.to_string(),
                });
            }
            seen.insert(key, declared.location.clone());
            resources.items.push(declared);
        }
    }
    Ok(resources)
}

/// The files `paths` name, directories expanded.
fn files(paths: &[PathBuf], options: &LoadOptions) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let metadata = fs::metadata(path).context(|| format!("cannot read {}", path.display()))?;
        if options.require_root_owned {
            check_ownership(path, &metadata)?;
            // Whoever can write a file's directory can put another file in its place.
            if !metadata.is_dir()
                && let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty())
            {
                let dir_metadata =
                    fs::metadata(dir).context(|| format!("cannot read {}", dir.display()))?;
                check_ownership(dir, &dir_metadata)?;
            }
        }
        if !metadata.is_dir() {
            files.push(path.clone());
            continue;
        }
        let mut found = Vec::new();
        let entries = fs::read_dir(path).context(|| format!("cannot read {}", path.display()))?;
        for entry in entries {
            let entry = entry.context(|| format!("cannot read {}", path.display()))?;
            let file = entry.path();
            let is_yaml = file
                .extension()
                .is_some_and(|extension| extension == "yaml" || extension == "yml");
            let metadata =
                fs::metadata(&file).context(|| format!("cannot read {}", file.display()))?;
            if is_yaml && metadata.is_file() {
                if options.require_root_owned {
                    check_ownership(&file, &metadata)?;
                }
                found.push(file);
            }
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

fn check_ownership(path: &Path, metadata: &fs::Metadata) -> Result<()> {
    let insecure = |reason: String| Error::InsecureConfig {
        path: path.to_owned(),
        reason,
    };
    if metadata.uid() != 0 {
        return Err(insecure(format!(
            "it is owned by uid {}, not root",
            metadata.uid()
        )));
    }
    if metadata.mode() & 0o022 != 0 {
        return Err(insecure(format!(
            "its mode {:o} lets others than root write it",
            metadata.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Every resource of one file's text. Each document is read twice: once for its kind, then
/// as that kind, both straight from the parser, so an error keeps its line and column.
pub(super) fn parse(file: &Path, text: &str) -> Result<Vec<Declared>> {
    let located = |error: serde_norway::Error| located_error(file, &error);
    let mut kinds = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        kinds.push(Option::<Header>::deserialize(document).map_err(located)?);
    }
    let starts = document_starts(text, kinds.len());
    let mut resources = Vec::new();
    for ((document, kind), line) in serde_norway::Deserializer::from_str(text)
        .zip(kinds)
        .zip(starts)
    {
        let resource = match kind.map(|header| header.kind) {
            // An empty document (a trailing `---`) declares nothing.
            None => continue,
            Some(Kind::CgroupLimit) => {
                Resource::CgroupLimit(Document::deserialize(document).map_err(located)?.into())
            }
            Some(Kind::NetRule) => {
                Resource::NetRule(Document::deserialize(document).map_err(located)?.into())
            }
            Some(Kind::RateLimit) => {
                Resource::RateLimit(Document::deserialize(document).map_err(located)?.into())
            }
            Some(Kind::SharedLimit) => {
                Resource::SharedLimit(Document::deserialize(document).map_err(located)?.into())
            }
        };
        resources.push(Declared {
            resource,
            location: Location::File(SourceLocation {
                file: file.to_owned(),
                line,
                column: 1,
            }),
        });
    }
    Ok(resources)
}

/// The first line of each of `count` documents: a `---` at the start of a line always begins
/// one (YAML allows no document marker inside a document's content), and the first may go
/// without.
fn document_starts(text: &str, count: usize) -> Vec<usize> {
    let markers: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| {
            line.strip_prefix("---")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        })
        .map(|(index, _)| index + 1)
        .collect();
    let implicit_first = count > markers.len();
    implicit_first
        .then_some(1)
        .into_iter()
        .chain(markers)
        .chain(std::iter::repeat(1))
        .take(count)
        .collect()
}

fn located_error(file: &Path, error: &serde_norway::Error) -> Error {
    let (line, column) = error
        .location()
        .map_or((1, 1), |location| (location.line(), location.column()));
    // The position goes in front, as compilers put it, not again in the message.
    let message = error
        .to_string()
        .replace(&format!(" at line {line} column {column}"), "");
    Error::BadConfig {
        at: SourceLocation {
            file: file.to_owned(),
            line,
            column,
        }
        .to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        parse(Path::new("f.yaml"), text).unwrap_err().to_string()
    }

    const GOOD: &str = "apiVersion: rein.dev/v1alpha1\nkind: CgroupLimit\nmetadata:\n  name: web\n\
                        spec:\n  cgroup: /web\n  egress:\n    rate: 10mbit\n";

    #[test]
    fn documents_are_read_with_their_lines() {
        let text = format!(
            "# limits\n---\n{GOOD}---\n{}\n---\n",
            GOOD.replace("web", "db")
        );
        let resources = parse(Path::new("f.yaml"), &text).unwrap();
        let lines: Vec<usize> = resources
            .iter()
            .map(|r| match &r.location {
                Location::File(location) => location.line,
                Location::Object(object) => panic!("{object}"),
            })
            .collect();
        assert_eq!(lines, [2, 11]);
        let Resource::CgroupLimit(limit) = &resources[1].resource else {
            panic!("{resources:?}")
        };
        let super::super::resource::LimitScope::Cgroup(cgroup) = &limit.spec.scope else {
            panic!("{limit:?}")
        };
        assert_eq!(cgroup.as_str(), "/db");
        assert_eq!(
            limit.spec.egress.unwrap().rate.bits_per_second(),
            10_000_000
        );
    }

    #[test]
    fn errors_point_at_their_line_and_column() {
        let bad_rate = GOOD.replace("10mbit", "10mbps-ish");
        let error = error_of(&bad_rate);
        assert!(error.starts_with("f.yaml:8:5: "), "{error}");
        assert!(error.contains("unknown unit"), "{error}");

        let unknown = GOOD.replace("  egress:", "  egres:");
        let error = error_of(&unknown);
        assert!(error.starts_with("f.yaml:7:3: "), "{error}");
        assert!(error.contains("unknown field `egres`"), "{error}");

        let error = error_of(&GOOD.replace("CgroupLimit", "CgroupLimits"));
        assert!(error.starts_with("f.yaml:2:7: "), "{error}");

        let error = error_of(&format!("{GOOD}  ingress: x: y\n"));
        assert!(error.starts_with("f.yaml:9:13: "), "{error}");
    }
}
