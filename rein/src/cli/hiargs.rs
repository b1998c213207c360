//! The command line resolved into typed requests: every value parsed, every combination checked.
use std::ffi::OsString;

use rein::{LimitChange, Target, units::UnitError};

use super::lowargs::{LowArgs, LowCommand, LowLimits, LowTarget};

#[derive(Debug)]
pub enum HiCommand {
    Run {
        change: LimitChange,
        command: Vec<OsString>,
    },
    Set {
        target: Target,
        change: LimitChange,
    },
    Unset {
        target: Target,
    },
    List {
        json: bool,
    },
    Reload,
    Purge,
    Doctor {
        json: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ArgError {
    #[error("--{flag}: {source}")]
    Unit {
        flag: &'static str,
        #[source]
        source: UnitError,
    },
    #[error("--pid: {0:?} is not a process id")]
    BadPid(String),
}

pub fn resolve(low: LowArgs) -> Result<HiCommand, ArgError> {
    Ok(match low.command {
        LowCommand::Run { limits, command } => HiCommand::Run {
            change: change(&limits)?,
            command,
        },
        LowCommand::Set { target: t, limits } => HiCommand::Set {
            target: target(t)?,
            change: change(&limits)?,
        },
        LowCommand::Unset { target: t } => HiCommand::Unset { target: target(t)? },
        LowCommand::List { json } => HiCommand::List { json },
        LowCommand::Reload => HiCommand::Reload,
        LowCommand::Purge => HiCommand::Purge,
        LowCommand::Doctor { json } => HiCommand::Doctor { json },
    })
}

fn change(limits: &LowLimits) -> Result<LimitChange, ArgError> {
    fn parse<T: std::str::FromStr<Err = UnitError>>(
        flag: &'static str,
        value: &Option<String>,
    ) -> Result<Option<T>, ArgError> {
        value
            .as_deref()
            .map(|v| v.parse().map_err(|source| ArgError::Unit { flag, source }))
            .transpose()
    }
    Ok(LimitChange {
        egress: parse("egress", &limits.egress)?,
        ingress: parse("ingress", &limits.ingress)?,
        burst: parse("burst", &limits.burst)?,
    })
}

fn target(low: LowTarget) -> Result<Target, ArgError> {
    match (low.pid, low.cgroup) {
        (Some(pid), _) => match pid.trim().parse::<u32>() {
            Ok(pid) if pid > 0 => Ok(Target::Pid(pid)),
            _ => Err(ArgError::BadPid(pid)),
        },
        (None, Some(path)) => Ok(Target::Cgroup(path)),
        // clap's group makes one of the two required.
        (None, None) => Err(ArgError::BadPid(String::new())),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<HiCommand, ArgError> {
        resolve(LowArgs::try_parse_from(args).unwrap())
    }

    #[test]
    fn run_takes_limits_and_a_command() {
        match parse(&[
            "rein", "run", "--egress", "10mbit", "--", "iperf3", "-c", "x",
        ])
        .unwrap()
        {
            HiCommand::Run { change, command } => {
                assert_eq!(change.egress.unwrap().bits_per_second(), 10_000_000);
                assert_eq!(change.ingress, None);
                assert_eq!(command, ["iperf3", "-c", "x"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_values_name_the_flag() {
        let error = parse(&["rein", "set", "--pid", "1", "--egress", "-5mbit"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--egress: \"-5mbit\" must be greater than zero"
        );
        let error = parse(&["rein", "set", "--pid", "abc", "--egress", "1mbit"]).unwrap_err();
        assert!(error.to_string().contains("not a process id"));
        let error = parse(&["rein", "set", "--pid", "-3", "--egress", "1mbit"]).unwrap_err();
        assert!(error.to_string().contains("not a process id"));
        let error = parse(&["rein", "set", "--cgroup", "/x", "--burst", "1q"]).unwrap_err();
        assert!(error.to_string().starts_with("--burst: "));
    }

    #[test]
    fn a_target_is_required_and_unique() {
        assert!(LowArgs::try_parse_from(["rein", "set", "--egress", "1mbit"]).is_err());
        assert!(
            LowArgs::try_parse_from(["rein", "unset", "--pid", "1", "--cgroup", "/x"]).is_err()
        );
    }
}
