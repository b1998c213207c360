//! Finding pods on the node: a kubepods tree made under a test cgroup of its own, with both
//! drivers' names and every QoS class, real processes in real network namespaces, and (on this
//! hybrid host) a cgroup v1 hierarchy. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use rein_kube::{
    places::{NO_CGROUP_V2, PlacesOptions, PodPlaces, QosClass},
    world::{ObjectRef, PodPlace},
};
use rein_testkit::{
    cgroup::{cgroup2_mount, in_cgroup, remove_tree},
    netns::{Netns, unique_suffix},
    process::Running,
};

/// A directory tree the test made, removed with whatever runs in it when dropped.
struct Tree(PathBuf);

impl Tree {
    fn new(parent: &Path) -> Self {
        let dir = parent.join(format!("rein-kube-places-{}", unique_suffix()));
        fs::create_dir(&dir).unwrap();
        Self(dir)
    }

    /// Makes `relative` and its parents under the tree; returns its path.
    fn make(&self, relative: &str) -> PathBuf {
        let mut dir = self.0.clone();
        for component in relative.split('/') {
            dir.push(component);
            if !dir.exists() {
                fs::create_dir(&dir).unwrap();
            }
        }
        dir
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        remove_tree(&self.0);
    }
}

fn pod(uid: &str) -> ObjectRef {
    ObjectRef {
        kind: "Pod",
        namespace: "default".into(),
        name: "web-0".into(),
        uid: uid.into(),
    }
}

fn new_uid() -> String {
    format!("6b1f5c3e-0d1a-4c6e-9a55-{}0000", unique_suffix())
}

/// `argv` running in the cgroup directory `dir`.
fn run_in(dir: &Path, argv: &[&str]) -> Running {
    let running = in_cgroup(dir, argv, Duration::from_secs(30))
        .spawn()
        .unwrap();
    // In its cgroup once the shell has written its pid and exec'd.
    let pid = running.pid().to_string();
    assert!(rein_testkit::process::wait_until(
        Duration::from_secs(5),
        || fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| p.lines().any(|l| l == pid))
    ));
    running
}

/// Waits until the process has become `argv0` (the shell exec'd, unshare/nsenter did).
fn wait_exec(running: &Running, argv0: &str) {
    let pid = running.pid();
    assert!(rein_testkit::process::wait_until(
        Duration::from_secs(5),
        || fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == argv0)
    ));
}

fn places(root: &str, v1: Vec<PathBuf>) -> PodPlaces {
    PodPlaces::new(PlacesOptions {
        kubepods: Some(root.to_owned()),
        v1_kubepods: Some(v1),
    })
    .unwrap()
}

#[test]
fn a_host_network_pods_cgroup_is_found_for_both_drivers_and_every_qos_class() {
    let mount = cgroup2_mount().unwrap();
    let tree = Tree::new(&mount);
    let test = format!("/{}", tree.0.file_name().unwrap().to_string_lossy());
    for (root, driver_paths) in [
        (
            "kubepods",
            [
                (QosClass::Guaranteed, "pod{uid}"),
                (QosClass::Burstable, "burstable/pod{uid}"),
                (QosClass::BestEffort, "besteffort/pod{uid}"),
            ],
        ),
        (
            "kubepods.slice",
            [
                (QosClass::Guaranteed, "kubepods-pod{uid_}.slice"),
                (
                    QosClass::Burstable,
                    "kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice",
                ),
                (
                    QosClass::BestEffort,
                    "kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice",
                ),
            ],
        ),
    ] {
        tree.make(root);
        let places = places(&format!("{test}/{root}"), Vec::new());
        for (class, path) in driver_paths {
            let uid = new_uid();
            let relative = path
                .replace("{uid}", &uid)
                .replace("{uid_}", &uid.replace('-', "_"));
            let pod = pod(&uid);
            // Not there yet: the agent waits.
            assert_eq!(places.find(&pod, Some(class), true), Ok(None));
            let dir = tree.make(&format!("{root}/{relative}"));
            let container = dir.join("container");
            fs::create_dir(&container).unwrap();
            let _process = run_in(&container, &["sleep", "30"]);
            let expected = Some(PodPlace::Cgroup(format!("{test}/{root}/{relative}")));
            assert_eq!(
                places.find(&pod, Some(class), true),
                Ok(expected.clone()),
                "{class:?}"
            );
            // The class unknown, or another: found where it is.
            assert_eq!(places.find(&pod, None, true), Ok(expected.clone()));
            for other in QosClass::ALL {
                assert_eq!(places.find(&pod, Some(other), true), Ok(expected.clone()));
            }
            // A process on the host's network, for a pod that says it is not: being set up.
            assert_eq!(places.find(&pod, Some(class), false), Ok(None));
        }
    }
}

#[test]
fn a_pods_network_namespace_is_its_oldest_processs_and_a_runtimes_bind_mount_first() {
    let mount = cgroup2_mount().unwrap();
    let tree = Tree::new(&mount);
    let test = format!("/{}", tree.0.file_name().unwrap().to_string_lossy());
    tree.make("kubepods.slice");
    let places = places(&format!("{test}/kubepods.slice"), Vec::new());

    // A namespace with no name: /proc/PID/ns/net of the sandbox's process.
    let uid = new_uid();
    let pod_dir = tree.make(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        uid.replace('-', "_")
    ));
    let (sandbox_dir, app_dir) = (pod_dir.join("sandbox"), pod_dir.join("app"));
    fs::create_dir(&sandbox_dir).unwrap();
    fs::create_dir(&app_dir).unwrap();
    assert_eq!(
        places.find(&pod(&uid), None, false),
        Ok(None),
        "no process yet"
    );
    let sandbox = run_in(&sandbox_dir, &["unshare", "-n", "sleep", "30"]);
    wait_exec(&sandbox, "sleep");
    std::thread::sleep(Duration::from_millis(50));
    let pid = sandbox.pid().to_string();
    let app = run_in(&app_dir, &["nsenter", "-t", &pid, "-n", "sleep", "30"]);
    wait_exec(&app, "sleep");
    // A later process on the host's network (a debug container) changes nothing.
    let _other = run_in(&app_dir, &["sleep", "30"]);
    let expected = Some(PodPlace::Netns(PathBuf::from(format!(
        "/proc/{pid}/ns/net"
    ))));
    for _ in 0..3 {
        assert_eq!(
            places.find(&pod(&uid), Some(QosClass::Burstable), false),
            Ok(expected.clone())
        );
    }
    // As a host-network pod, its cgroup.
    assert_eq!(
        places.find(&pod(&uid), None, true),
        Ok(Some(PodPlace::Cgroup(format!(
            "{test}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            uid.replace('-', "_")
        ))))
    );

    // A namespace a runtime bind-mounted in /run/netns: that path, whichever process holds it.
    let netns = Netns::create("rk-places").unwrap();
    let uid = new_uid();
    let pod_dir = tree.make(&format!(
        "kubepods.slice/kubepods-pod{}.slice",
        uid.replace('-', "_")
    ));
    let net = format!("--net={}", netns.path());
    let _pause = run_in(&pod_dir, &["nsenter", &net, "sleep", "30"]);
    wait_exec(&_pause, "sleep");
    let expected = Some(PodPlace::Netns(PathBuf::from(netns.path())));
    assert_eq!(
        places.find(&pod(&uid), Some(QosClass::Guaranteed), false),
        Ok(expected.clone())
    );
    assert_eq!(
        places.find(&pod(&uid), Some(QosClass::Guaranteed), false),
        Ok(expected)
    );

    // An invalid UID never becomes a path.
    let bad = places.find(&pod("../../x"), None, false).unwrap_err();
    assert_eq!(bad.reason, "InvalidUid");
}

#[test]
fn a_pod_with_v1_cgroups_only_is_found_through_its_v1_hierarchy() {
    // The hybrid host's pids hierarchy; a host without one has nothing to test here.
    let v1 = Path::new("/sys/fs/cgroup/pids");
    if !v1.join("cgroup.procs").exists() {
        eprintln!("no cgroup v1 pids hierarchy: skipped");
        return;
    }
    let mount = cgroup2_mount().unwrap();
    let v2_tree = Tree::new(&mount);
    v2_tree.make("kubepods");
    let v2_root = format!(
        "/{}/kubepods",
        v2_tree.0.file_name().unwrap().to_string_lossy()
    );
    let v1_tree = Tree::new(v1);
    let v1_kubepods = v1_tree.make("kubepods");
    let places = places(&v2_root, vec![v1_kubepods]);
    let uid = new_uid();
    let container = v1_tree.make(&format!("kubepods/besteffort/pod{uid}/container"));
    assert_eq!(
        places.find(&pod(&uid), Some(QosClass::BestEffort), false),
        Ok(None)
    );
    let sandbox = run_in(&container, &["unshare", "-n", "sleep", "30"]);
    wait_exec(&sandbox, "sleep");
    assert_eq!(
        places.find(&pod(&uid), Some(QosClass::BestEffort), false),
        Ok(Some(PodPlace::Netns(PathBuf::from(format!(
            "/proc/{}/ns/net",
            sandbox.pid()
        )))))
    );
    // On the host's network there is nothing rein can limit: said so.
    let problem = places.find(&pod(&uid), None, true).unwrap_err();
    assert_eq!(problem.reason, NO_CGROUP_V2);
    assert!(problem.message.contains("cgroup v1"), "{}", problem.message);
    drop(sandbox);
}
