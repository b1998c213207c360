//! A conn rule as an operator asks for it (`rein conn add`'s flags): each value parsed, their
//! combination not yet checked. [`ConnRuleRequest::resolve`] checks it and fills in the
//! defaults; [`NewConnRule::resolve`] then finds the cgroup or network namespace it names.
use std::path::PathBuf;

use super::spec::{ConnError, ConnLimit, ConnRuleSpec, ConnScopeSpec, Destination};
use crate::{
    capabilities::{Context, net_rules::spec::Protocol},
    error::{Error, IoContext, Result},
    platform::netns,
    units::{EventRate, Period},
};

/// Every option of an outbound rule, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnRuleRequest {
    pub destination: Option<Destination>,
    pub protocol: Option<Protocol>,
    pub rate: Option<EventRate>,
    pub burst: Option<u64>,
    pub max_tokens: Option<u64>,
    pub tokens_per_fill: Option<u64>,
    pub fill_interval: Option<Period>,
    pub cgroup: Option<PathBuf>,
    pub netns: Option<PathBuf>,
    pub per_caller: bool,
}

/// Why a request does not make a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Rule(#[from] ConnError),
}

/// Whose connects a rule counts, as the operator named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScopeRequest {
    All,
    Cgroup(PathBuf),
    Netns(PathBuf),
}

/// A checked rule whose scope is still a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewConnRule {
    pub destination: Destination,
    pub protocol: Option<Protocol>,
    pub scope: ScopeRequest,
    pub limit: ConnLimit,
    pub per_caller: bool,
}

impl ConnRuleRequest {
    /// The rule asked for, with the defaults of what was left out.
    pub fn resolve(&self) -> Result<NewConnRule, RequestError> {
        let conflict = |message: &str| Err(RequestError::Conflict(message.to_owned()));
        let Some(destination) = self.destination else {
            return conflict("give --dst IP[/PREFIX][:PORT]");
        };
        let fill = self.max_tokens.is_some()
            || self.tokens_per_fill.is_some()
            || self.fill_interval.is_some();
        let limit = match (self.rate, fill) {
            (Some(_), true) => {
                return conflict(
                    "give --rate (with --burst) or --max-tokens, --tokens-per-fill and \
                     --fill-interval, not both",
                );
            }
            (None, false) => {
                return conflict(
                    "give --rate N/s (with --burst) or --max-tokens, --tokens-per-fill and \
                     --fill-interval",
                );
            }
            (Some(rate), false) => ConnLimit::rate(rate, self.burst)?,
            (None, true) => {
                if self.burst.is_some() {
                    return conflict("--burst belongs to --rate; the fill form's is --max-tokens");
                }
                match (self.max_tokens, self.tokens_per_fill, self.fill_interval) {
                    (Some(max), Some(per_fill), Some(interval)) => {
                        ConnLimit::fill(max, per_fill, interval)?
                    }
                    _ => {
                        return conflict(
                            "the fill form needs all of --max-tokens, --tokens-per-fill and \
                             --fill-interval",
                        );
                    }
                }
            }
        };
        let scope = match (&self.cgroup, &self.netns) {
            (Some(_), Some(_)) => return conflict("give --cgroup or --netns, not both"),
            (Some(cgroup), None) => ScopeRequest::Cgroup(cgroup.clone()),
            (None, Some(netns)) => ScopeRequest::Netns(netns.clone()),
            (None, None) => ScopeRequest::All,
        };
        Ok(NewConnRule {
            destination,
            protocol: self.protocol,
            scope,
            limit,
            per_caller: self.per_caller,
        })
    }
}

impl NewConnRule {
    /// The rule with its cgroup's id and level, or its network namespace's cookie.
    pub fn resolve(self, cx: &Context) -> Result<ConnRuleSpec> {
        let scope = match &self.scope {
            ScopeRequest::All => ConnScopeSpec::All,
            ScopeRequest::Cgroup(path) => {
                let cgroup = cx.cgroups.resolve(path)?;
                ConnScopeSpec::Cgroup {
                    path: cgroup.relative().to_owned(),
                    id: cgroup.id()?,
                    // At most MAX_CGROUP_DEPTH, checked by `resolve`.
                    level: u32::try_from(cgroup.depth()).unwrap_or(u32::MAX),
                }
            }
            ScopeRequest::Netns(path) => {
                if !path.exists() {
                    return Err(Error::NoSuchNetns(path.clone()));
                }
                let cookie = netns::cookie_of(path)
                    .context(|| format!("{} is not a network namespace", path.display()))?;
                ConnScopeSpec::Netns {
                    path: path.clone(),
                    cookie,
                }
            }
        };
        Ok(ConnRuleSpec {
            destination: self.destination,
            protocol: self.protocol,
            scope,
            limit: self.limit,
            per_caller: self.per_caller,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ConnRuleRequest {
        ConnRuleRequest {
            destination: Some("198.18.13.1:80".parse().unwrap()),
            rate: Some("100/s".parse().unwrap()),
            ..ConnRuleRequest::default()
        }
    }

    #[test]
    fn one_form_one_scope() {
        let second = Some(Period::try_from(1_000_000_000).unwrap());
        let fill = ConnRuleRequest {
            rate: None,
            max_tokens: Some(5),
            tokens_per_fill: Some(2),
            fill_interval: second,
            ..base()
        };
        assert!(matches!(
            fill.resolve().unwrap().limit,
            ConnLimit::Fill { max_tokens: 5, .. }
        ));
        for (request, needle) in [
            (
                ConnRuleRequest {
                    max_tokens: Some(5),
                    ..base()
                },
                "not both",
            ),
            (
                ConnRuleRequest {
                    rate: None,
                    ..base()
                },
                "give --rate",
            ),
            (
                ConnRuleRequest {
                    tokens_per_fill: None,
                    ..fill.clone()
                },
                "needs all",
            ),
            (
                ConnRuleRequest {
                    burst: Some(3),
                    ..fill.clone()
                },
                "--burst belongs",
            ),
            (
                ConnRuleRequest {
                    cgroup: Some("/a".into()),
                    netns: Some("/run/netns/a".into()),
                    ..base()
                },
                "--cgroup or --netns",
            ),
            (
                ConnRuleRequest {
                    burst: Some(0),
                    ..base()
                },
                "burst of 0",
            ),
            (
                ConnRuleRequest {
                    destination: None,
                    ..base()
                },
                "--dst",
            ),
        ] {
            let error = request.resolve().unwrap_err().to_string();
            assert!(error.contains(needle), "{request:?}: {error}");
        }
    }
}
