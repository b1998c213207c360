//! `rein doctor`: each kernel feature rein relies on, checked for real, with the fix when missing.
use std::fs;

use aya::EbpfLoader;
use serde::Serialize;

use crate::{
    capabilities::{cgroup_limit, conn_limits, ingress_queue, net_rules},
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
    /// Each program's size as the verifier saw it (the `programs` check only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<ProgramSize>,
}

/// How many instructions the verifier walked through to accept a program: branches and loops
/// make it more than the program's length. A program whose count reaches
/// [`VERIFIER_LIMIT`] is refused, so the distance to it is the room left for new code.
#[derive(Clone, Debug, Serialize)]
pub struct ProgramSize {
    pub program: String,
    pub verified_instructions: u32,
    pub limit: u32,
}

/// The most instructions the kernel verifies in one program (BPF_COMPLEXITY_LIMIT_INSNS).
pub const VERIFIER_LIMIT: u32 = 1_000_000;

fn check(name: &'static str, ok: bool, detail: String, fix: Option<String>) -> Check {
    Check {
        name,
        ok,
        detail,
        fix: if ok { None } else { fix },
        programs: Vec::new(),
    }
}

/// A kernel version: (major, minor).
pub type KernelVersion = (u32, u32);

/// What rein uses, with the kernel version that brought it. `set` loads every cgroup program
/// and `rein net` every interface program, so each of these is needed, not merely useful.
pub const KERNEL_FEATURES: &[(KernelVersion, &str)] = &[
    ((5, 7), "bpf links on cgroups"),
    ((5, 12), "BPF atomic compare-and-swap (the buckets)"),
    ((5, 14), "cgroup.kill"),
    ((5, 17), "bpf_loop (the cgroup walk, the sketch)"),
    (
        (6, 6),
        "tcx links (download queues, rein net's tc programs)",
    ),
];

/// The oldest kernel with every feature of [`KERNEL_FEATURES`].
pub const REQUIRED_KERNEL: KernelVersion = (6, 6);
const _: () = {
    let mut i = 0;
    while i < KERNEL_FEATURES.len() {
        let (major, minor) = KERNEL_FEATURES[i].0;
        assert!(
            major < REQUIRED_KERNEL.0 || (major == REQUIRED_KERNEL.0 && minor <= REQUIRED_KERNEL.1)
        );
        i += 1;
    }
};

/// The version at the start of a kernel release string (`6.18.0-1-amd64`, `5.15.0`).
pub fn parse_release(release: &str) -> Option<KernelVersion> {
    let mut parts = release.trim().split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The features of [`KERNEL_FEATURES`] that `version` lacks.
pub fn missing_features(version: KernelVersion) -> Vec<&'static str> {
    KERNEL_FEATURES
        .iter()
        .filter(|(needed, _)| version < *needed)
        .map(|(_, feature)| *feature)
        .collect()
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
    let missing = parse_release(&release).map(missing_features);
    checks.push(check(
        "kernel",
        missing.as_ref().is_some_and(Vec::is_empty),
        match &missing {
            Some(missing) if !missing.is_empty() => {
                format!("Linux {} lacks {}", release.trim(), missing.join(", "))
            }
            Some(_) => format!("Linux {}", release.trim()),
            None => format!("cannot read the kernel version from {:?}", release.trim()),
        },
        Some(format!(
            "rein needs Linux {}.{} or later",
            REQUIRED_KERNEL.0, REQUIRED_KERNEL.1
        )),
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
        verified_instructions()
    } else {
        Err("needs root".into())
    };
    let mut loaded = check(
        "programs",
        programs.is_ok(),
        match &programs {
            Ok(sizes) => format!(
                "the cgroup, tc, XDP and connect programs load and pass the verifier ({})",
                sizes
                    .iter()
                    .map(|size| format!("{} {}", size.program, size.verified_instructions))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(error) => error.clone(),
        },
        Some(
            "the kernel lacks a feature rein needs (cgroup_skb programs, atomics); see the message"
                .into(),
        ),
    );
    loaded.programs = programs.unwrap_or_default();
    checks.push(loaded);

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
        programs: Vec::new(),
    });
    checks
}

/// Loads every program rein attaches into the kernel, without attaching or pinning anything,
/// and says how many instructions the verifier walked for each.
pub fn verified_instructions() -> Result<Vec<ProgramSize>, String> {
    let mut ebpf = EbpfLoader::new()
        .load(bpf::cgroup_object())
        .map_err(|e| e.to_string())?;
    cgroup_limit::datapath::load_programs(&mut ebpf).map_err(|e| e.to_string())?;
    ingress_queue::datapath::load(&mut ebpf).map_err(|e| e.to_string())?;
    // Loaded only by a running trace, never attached otherwise.
    crate::platform::bpf::program_mut::<aya::programs::RawTracePoint>(
        &mut ebpf,
        rein_common::abi::trace::QUEUE_OVERFLOW_PROGRAM,
    )
    .map_err(|e| e.to_string())?
    .load()
    .map_err(|e| e.to_string())?;
    let mut net = EbpfLoader::new()
        .load(bpf::net_object())
        .map_err(|e| e.to_string())?;
    net_rules::datapath::load_programs(&mut net).map_err(|e| e.to_string())?;
    let mut conn = EbpfLoader::new()
        .load(bpf::conn_object())
        .map_err(|e| e.to_string())?;
    conn_limits::datapath::load_programs(&mut conn).map_err(|e| e.to_string())?;
    let mut sizes = Vec::new();
    for (name, program) in ebpf.programs().chain(net.programs()).chain(conn.programs()) {
        // The benchmark's pass-through baselines are never loaded by rein: no info to read.
        let Ok(info) = program.info() else {
            continue;
        };
        sizes.push(ProgramSize {
            program: name.to_owned(),
            verified_instructions: info.verified_instruction_count().unwrap_or(0),
            limit: VERIFIER_LIMIT,
        });
    }
    sizes.sort_by(|a, b| a.program.cmp(&b.program));
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_to_their_version() {
        assert_eq!(parse_release("6.18.0-1-amd64\n"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0"), Some((5, 15)));
        assert_eq!(parse_release("6.6"), Some((6, 6)));
        assert_eq!(parse_release("6.10-rc3"), Some((6, 10)));
        assert_eq!(parse_release("4.19.0+"), Some((4, 19)));
        assert_eq!(parse_release(""), None);
        assert_eq!(parse_release("six"), None);
        assert_eq!(parse_release("6"), None);
    }

    /// Fault 5: doctor passed 5.14, on which `set` fails (no bpf_loop, no tcx).
    #[test]
    fn versions_compare_as_numbers_and_name_what_is_missing() {
        assert!(missing_features((6, 18)).is_empty());
        assert!(missing_features(REQUIRED_KERNEL).is_empty());
        assert_eq!(
            missing_features((6, 5)),
            ["tcx links (download queues, rein net's tc programs)"]
        );
        assert_eq!(missing_features((5, 14)).len(), 2);
        // 5.9 is older than 5.17, though "9" > "1" as text.
        assert!(missing_features((5, 9)).contains(&"bpf_loop (the cgroup walk, the sketch)"));
        assert_eq!(missing_features((4, 19)).len(), KERNEL_FEATURES.len());
        assert!(missing_features((10, 0)).is_empty());
    }
}
