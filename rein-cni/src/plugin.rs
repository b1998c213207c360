//! The CNI commands: the environment and stdin in, a result or an error object out, in the
//! reference library's (skel's) order of checks, so that what the reference refuses is
//! refused the same way, with the same code, before anything is changed.
use std::{fs, os::unix::fs::MetadataExt, path::PathBuf, time::Duration};

use rein::{
    Engine, Instance,
    capabilities::netns_limit::{self, Attachment},
    platform::cgroupfs::CgroupFs,
};
use serde_json::{Value, json};

use crate::{
    config::{NetConf, valid_name},
    error::{CniError, Code, Result},
    version::CniVersion,
};

/// How long a command waits for another rein command (or the agent) to release the instance
/// before it answers "try again later" (code 11): long enough for any rein command to finish,
/// short enough that a runtime is never held up for long.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// What the plugin prints and how it exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The result or error object (or nothing).
    pub stdout: String,
    /// For a person who ran the plugin by hand without a command.
    pub stderr: String,
    pub success: bool,
}

impl Response {
    fn ok(stdout: String) -> Self {
        Self {
            stdout,
            stderr: String::new(),
            success: true,
        }
    }

    fn failed(error: &CniError, version: CniVersion) -> Self {
        Self {
            stdout: error.to_json(version),
            stderr: String::new(),
            success: false,
        }
    }
}

/// The CNI parameters from the environment.
#[derive(Clone, Debug, Default)]
struct Params {
    command: String,
    container_id: String,
    netns: String,
    ifname: String,
    netns_override: bool,
}

/// Which commands need a variable, as skel lists them.
fn required(var: &str, command: &str) -> bool {
    match var {
        "CNI_COMMAND" => true,
        "CNI_CONTAINERID" | "CNI_IFNAME" => matches!(command, "ADD" | "CHECK" | "DEL"),
        "CNI_NETNS" => matches!(command, "ADD" | "CHECK"),
        "CNI_PATH" => matches!(command, "ADD" | "CHECK" | "DEL" | "GC" | "STATUS"),
        _ => false,
    }
}

fn validate_ifname(name: &str) -> Result<()> {
    let problem = if name.len() > 15 {
        Some("interface name is too long")
    } else if name == "." || name == ".." {
        Some("interface name is . or ..")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("interface name contains / or : or whitespace characters")
    } else {
        None
    };
    match problem {
        Some(msg) => Err(CniError::new(Code::InvalidEnvironment, msg).with_details(name)),
        None => Ok(()),
    }
}

fn params(getenv: &dyn Fn(&str) -> Option<String>) -> Result<Params> {
    let get = |var: &str| getenv(var).unwrap_or_default();
    let command = get("CNI_COMMAND");
    let mut missing = Vec::new();
    for var in [
        "CNI_COMMAND",
        "CNI_CONTAINERID",
        "CNI_NETNS",
        "CNI_IFNAME",
        "CNI_PATH",
    ] {
        let value = get(var);
        if value.is_empty() {
            if required(var, &command) {
                missing.push(var);
            }
        } else if required(var, &command) {
            if var == "CNI_CONTAINERID" && !valid_name(&value) {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    "invalid characters in containerID",
                )
                .with_details(value));
            }
            if var == "CNI_IFNAME" {
                validate_ifname(&value)?;
            }
        }
    }
    if !missing.is_empty() {
        return Err(CniError::new(
            Code::InvalidEnvironment,
            format!("required env variables [{}] missing", missing.join(",")),
        ));
    }
    let netns_override = get("CNI_NETNS_OVERRIDE");
    Ok(Params {
        command,
        container_id: get("CNI_CONTAINERID"),
        netns: get("CNI_NETNS"),
        ifname: get("CNI_IFNAME"),
        netns_override: netns_override.eq_ignore_ascii_case("true") || netns_override == "1",
    })
}

/// Runs one CNI command. `getenv` gives the CNI variables; rein's own (`REIN_INSTANCE`, ...)
/// come from the process's environment.
pub fn handle(getenv: &dyn Fn(&str) -> Option<String>, stdin: &mut dyn std::io::Read) -> Response {
    let command = getenv("CNI_COMMAND").unwrap_or_default();
    // Run by hand, with no command: say what this is, as skel does.
    if command.is_empty() {
        return Response {
            stdout: String::new(),
            stderr: format!(
                "CNI rein-cni plugin v{}\nCNI protocol versions supported: {}\n",
                env!("CARGO_PKG_VERSION"),
                CniVersion::supported_list().join(", ")
            ),
            success: true,
        };
    }
    // Read whole before any check (VERSION's input says nothing, as skel has it): a runtime
    // still writing the configuration must not meet a closed pipe because of a bad variable.
    let mut input = Vec::new();
    if command != "VERSION"
        && let Err(e) = stdin.read_to_end(&mut input)
    {
        let error = CniError::new(Code::IoFailure, format!("error reading from stdin: {e}"));
        return Response::failed(&error, CniVersion::NEWEST);
    }
    let params = match params(getenv) {
        Ok(params) => params,
        Err(error) => return Response::failed(&error, CniVersion::NEWEST),
    };
    if params.command == "VERSION" {
        return Response::ok(version_info());
    }
    let conf = match NetConf::read(&input, &params.command) {
        Ok(conf) => conf,
        Err(error) => return Response::failed(&error, CniVersion::NEWEST),
    };
    let outcome = match params.command.as_str() {
        "ADD" => add(&params, &conf),
        "DEL" => del(&params, &conf).map(|()| String::new()),
        "CHECK" => check(&params, &conf).map(|()| String::new()),
        "GC" => gc(&conf).map(|()| String::new()),
        "STATUS" => status(&conf).map(|()| String::new()),
        other => Err(CniError::new(
            Code::InvalidEnvironment,
            format!("unknown CNI_COMMAND: {other}"),
        )),
    };
    match outcome {
        Ok(stdout) => Response::ok(stdout),
        Err(error) => Response::failed(&error, conf.version),
    }
}

/// VERSION's answer. skel ignores stdin for VERSION and so does this: the versions do not
/// depend on it.
fn version_info() -> String {
    let info = json!({
        "cniVersion": CniVersion::NEWEST.as_str(),
        "supportedVersions": CniVersion::supported_list(),
    });
    info.to_string()
}

/// The instance the configuration names, else the environment's.
fn instance(conf: &NetConf) -> Result<Instance> {
    let instance = Instance::from_env()?;
    Ok(match conf.instance()? {
        Some(name) => instance.renamed(&name)?,
        None => instance,
    })
}

fn open(conf: &NetConf) -> Result<Engine> {
    Ok(Engine::open_waiting(instance(conf)?, LOCK_WAIT)?)
}

fn attachment(params: &Params, conf: &NetConf) -> Attachment {
    Attachment {
        network: conf.name.clone(),
        container_id: params.container_id.clone(),
        ifname: params.ifname.clone(),
    }
}

/// The container's namespace, which must exist and, unless the runtime says otherwise
/// (`CNI_NETNS_OVERRIDE`), not be the plugin's own: limiting that would limit the host.
fn container_netns(params: &Params) -> Result<PathBuf> {
    let path = PathBuf::from(&params.netns);
    let target = fs::metadata(&path).map_err(|e| {
        CniError::new(
            Code::Internal,
            format!("failed to open netns {:?}: {e}", params.netns),
        )
    })?;
    if !params.netns_override {
        let own = fs::metadata("/proc/self/ns/net").map_err(|e| {
            CniError::new(
                Code::Internal,
                format!("cannot read the plugin's own network namespace: {e}"),
            )
        })?;
        if (own.dev(), own.ino()) == (target.dev(), target.ino()) {
            return Err(CniError::new(
                Code::InvalidNetns,
                "plugin's netns and netns from CNI_NETNS should not be the same",
            ));
        }
    }
    Ok(path)
}

fn add(params: &Params, conf: &NetConf) -> Result<String> {
    let plugin = conf.plugin()?;
    if plugin.limited && plugin.prev_result.is_none() {
        return Err(CniError::new(
            Code::Internal,
            "must be called as chained plugin",
        ));
    }
    let netns = container_netns(params)?;
    match open(conf) {
        Ok(mut engine) => {
            let attachment = attachment(params, conf);
            let record = netns_limit::attach(&mut engine, &netns, attachment, plugin.limit)?;
            // A limit the state already held is not planned again: a runtime that ADDs once
            // more after a CHECK failed wants the kernel's rules back as well.
            let restored = engine.repair()?;
            tracing::info!(
                "ADD {}: {record:?} ({restored} restored)",
                params.container_id
            );
        }
        // A pod without a limit needs nothing of rein, as it needs nothing of the reference
        // plugin; and where rein cannot run, it holds no limit that ADD would have to remove.
        Err(error) if !plugin.limited && error.code == Code::NotAvailable => {
            tracing::warn!("ADD {} without a limit: {}", params.container_id, error.msg);
        }
        Err(error) => return Err(error),
    }
    let result = match plugin.prev_result {
        Some(result) => result.to_value(conf.version),
        None => empty_result(conf.version),
    };
    Ok(serde_json::to_string_pretty(&result).unwrap_or_default())
}

/// The result of an ADD that was given none to pass on.
fn empty_result(version: CniVersion) -> Value {
    crate::result::CniResult::default().to_value(version)
}

fn del(params: &Params, conf: &NetConf) -> Result<()> {
    // Only what DEL needs is read: a configuration ADD refused must not keep a container from
    // being deleted.
    let mut engine = open(conf)?;
    let removed = netns_limit::detach(&mut engine, &params.container_id, &params.ifname)?;
    tracing::info!("DEL {}: removed {removed:?}", params.container_id);
    Ok(())
}

fn check(params: &Params, conf: &NetConf) -> Result<()> {
    let plugin = conf.plugin()?;
    if plugin.prev_result.is_none() {
        return Err(CniError::new(
            Code::Internal,
            "must be called as a chained plugin",
        ));
    }
    let netns = container_netns(params)?;
    let mut engine = open(conf)?;
    netns_limit::check(
        &mut engine,
        &netns,
        &attachment(params, conf),
        &plugin.limit,
    )?;
    Ok(())
}

fn gc(conf: &NetConf) -> Result<()> {
    let valid = conf.valid_attachments()?;
    let mut engine = open(conf)?;
    let removed = netns_limit::collect(&mut engine, &conf.name, &valid)?;
    tracing::info!("GC {}: removed {removed:?}", conf.name);
    Ok(())
}

/// Ready when rein can run here: root, bpffs, BTF, a cgroup v2 hierarchy.
fn status(conf: &NetConf) -> Result<()> {
    let not_available =
        |error: rein::Error| CniError::new(Code::NotAvailable, rein::error::causes(&error));
    let instance = instance(conf)?;
    rein::engine::check_prerequisites(&instance).map_err(not_available)?;
    CgroupFs::discover().map_err(not_available)?;
    Ok(())
}
