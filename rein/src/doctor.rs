//! `rein doctor`: each kernel feature rein relies on, checked for real, with the fix when missing.
use std::fs;

use aya::EbpfLoader;
use serde::Serialize;

use crate::{
    capabilities::{cgroup_limit, ingress_queue, net_rules},
    instance::Instance,
    platform::{self, bpf, cgroupfs::CgroupFs},
};

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do when it is not ok.
    pub fix: Option<String>,
}

fn check(name: &'static str, ok: bool, detail: String, fix: Option<String>) -> Check {
    Check {
        name,
        ok,
        detail,
        fix: if ok { None } else { fix },
    }
}

pub fn diagnose(instance: &Instance) -> Vec<Check> {
    let mut checks = Vec::new();
    let root = rustix::process::geteuid().is_root();
    checks.push(check(
        "root",
        root,
        if root { "running as root" } else { "not root" }.into(),
        Some("run rein as root (it needs CAP_BPF, CAP_NET_ADMIN and cgroup write access)".into()),
    ));

    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version: Vec<u32> = release
        .trim()
        .split(['.', '-'])
        .take(2)
        .filter_map(|part| part.parse().ok())
        .collect();
    let new_enough = version.as_slice() >= [5, 14].as_slice();
    checks.push(check(
        "kernel",
        new_enough,
        format!("Linux {}", release.trim()),
        Some("rein needs Linux 5.14 or later (bpf links on cgroups, cgroup.kill)".into()),
    ));

    let btf = instance.btf().exists();
    checks.push(check(
        "btf",
        btf,
        format!(
            "{} {}",
            instance.btf().display(),
            if btf { "present" } else { "missing" }
        ),
        Some("use a kernel built with CONFIG_DEBUG_INFO_BTF=y".into()),
    ));

    let bpffs = platform::filesystem_magic(instance.bpffs()).ok() == Some(platform::BPF_FS_MAGIC);
    checks.push(check(
        "bpffs",
        bpffs,
        format!(
            "{} {}",
            instance.bpffs().display(),
            if bpffs {
                "is a bpffs mount"
            } else {
                "is not a bpffs mount"
            }
        ),
        Some(format!("mount -t bpf bpf {}", instance.bpffs().display())),
    ));

    let cgroup2 = CgroupFs::discover();
    checks.push(check(
        "cgroup2",
        cgroup2.is_ok(),
        match &cgroup2 {
            Ok(fs) => format!("cgroup v2 mounted at {}", fs.mount().display()),
            Err(error) => error.to_string(),
        },
        Some("mount -t cgroup2 none /sys/fs/cgroup/unified".into()),
    ));

    let jit = fs::read_to_string("/proc/sys/net/core/bpf_jit_enable")
        .map(|v| v.trim() != "0")
        .unwrap_or(false);
    checks.push(check(
        "bpf-jit",
        jit,
        if jit {
            "BPF JIT enabled"
        } else {
            "BPF JIT disabled: programs run interpreted, slowly"
        }
        .into(),
        Some("sysctl -w net.core.bpf_jit_enable=1".into()),
    ));

    let programs = if root {
        load_programs()
    } else {
        Err("needs root".into())
    };
    checks.push(check(
        "programs",
        programs.is_ok(),
        match &programs {
            Ok(()) => "the cgroup, tc and XDP programs load and pass the verifier".into(),
            Err(error) => error.clone(),
        },
        Some(
            "the kernel lacks a feature rein needs (cgroup_skb programs, atomics); see the message"
                .into(),
        ),
    ));

    let installed = cgroup_limit::datapath::Datapath::is_installed(instance);
    checks.push(Check {
        name: "attached",
        ok: true,
        detail: if installed {
            format!(
                "programs attached, pinned under {}",
                instance.pin_dir().display()
            )
        } else {
            "no programs attached (they are attached with the first limit)".into()
        },
        fix: None,
    });
    checks
}

/// Loads the programs into the kernel without attaching or pinning anything.
fn load_programs() -> Result<(), String> {
    let mut ebpf = EbpfLoader::new()
        .load(bpf::cgroup_object())
        .map_err(|e| e.to_string())?;
    cgroup_limit::datapath::load_programs(&mut ebpf).map_err(|e| e.to_string())?;
    ingress_queue::datapath::load(&mut ebpf).map_err(|e| e.to_string())?;
    let mut net = EbpfLoader::new()
        .load(bpf::net_object())
        .map_err(|e| e.to_string())?;
    net_rules::datapath::load_programs(&mut net).map_err(|e| e.to_string())
}
