//! The shaping queue of an ingress limit: an ifb device with a tbf qdisc at the rule's rate, in
//! the network namespace rein runs in, and the tc program on that namespace's devices that sends
//! the rule's TCP downloads through it.
//!
//! A receiver cannot pace its sender, and dropping what comes too fast makes TCP collapse, so a
//! download is slowed by a queue. What waits there is bounded by each flow's receive window,
//! which the sock_ops program keeps at what its share brings in 100 us
//! (`rein_common::share::receive_window`): the rate is tbf's (exact), the queue never
//! overflows, and a packet waits about a window's time at its share, not tbf's usual 10-60 ms.
use std::{fs, path::PathBuf};

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::{SchedClassifier, TcAttachType},
};
use rein_common::{QUEUE_PROGRAM, QUEUES_MAP, QueueKey, Rule};

use crate::{
    capabilities::{PreparedReload, cgroup_limit::datapath::load_object},
    error::{Error, IoContext, Result, bpf_error},
    instance::Instance,
    platform::{
        bpf::{self, load_error, program_mut},
        netlink::{self, Charge, Tbf},
        netns,
    },
};

/// What the queue charges a packet: limits count IP bytes, the ifb sees Ethernet frames, and a
/// GRO packet stands for segments of a 1500-byte MTU with TCP timestamps (1448 payload bytes,
/// 52 of IPv4 and TCP headers; an IPv6 segment's 20 more header bytes are counted as payload).
const CHARGE: Charge = Charge {
    link_header: 14,
    segment_headers: 52,
    segment_payload: 1448,
};

/// The queue holds at least this much (and at least [`QUEUE_MILLIS`] at the rate) before it
/// drops: never reached while windows are clamped, but connections that open at once each bring
/// their first window (up to 64 KiB) before their clamp takes hold.
const MIN_QUEUE_BYTES: u64 = 2 << 20;
const QUEUE_MILLIS: u64 = 250;

/// The ifb device of the queue of `cgroup_id`'s ingress rule: `rq`, 4 hex digits of the
/// instance, 8 of the cgroup (15 characters at most, as device names must be).
pub fn device_name(instance: &Instance, cgroup_id: u64) -> String {
    format!(
        "{}{:08x}",
        device_prefix(instance),
        fnv1a(&cgroup_id.to_le_bytes()) as u32
    )
}

fn device_prefix(instance: &Instance) -> String {
    format!("rq{:04x}", fnv1a(instance.name().as_bytes()) as u16)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The tbf settings of the queue for `rule`.
pub fn tbf_for(rule: &Rule) -> Tbf {
    let rate = rule.rate.max(1);
    let burst_bytes = u128::from(rule.bucket.burst_ns) * u128::from(rate) / 1_000_000_000;
    let limit = (rate * QUEUE_MILLIS / 1000).max(MIN_QUEUE_BYTES);
    Tbf {
        rate_bytes_per_second: rate,
        burst_bytes: u32::try_from(burst_bytes).unwrap_or(u32::MAX).max(1514),
        limit_bytes: u32::try_from(limit).unwrap_or(u32::MAX),
        charge: CHARGE,
    }
}

/// Whether `name` is a queue device, of this instance or another: the queue program never
/// goes on one (it would see the packets it sent there).
pub fn is_queue_device(name: &str) -> bool {
    name.len() == 14 && name.starts_with("rq") && name[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn queues(instance: &Instance) -> Result<HashMap<MapData, QueueKey, u32>> {
    HashMap::try_from(bpf::open_pinned_map(instance, QUEUES_MAP)?)
        .map_err(|e| bpf_error("queue map")(&e))
}

/// The queues of every namespace: (cgroup, namespace) to the queue device's index.
pub fn entries(instance: &Instance) -> Vec<QueueKey> {
    queues(instance)
        .map(|queues| queues.keys().flatten().collect())
        .unwrap_or_default()
}

/// Removes one queue's map entry (of a rule no record holds any more).
pub fn forget(instance: &Instance, key: &QueueKey) {
    if let Ok(mut queues) = queues(instance) {
        let _ = queues.remove(key);
    }
}

/// Creates (or re-creates) the queue of `cgroup_id`'s ingress `rule` in this network namespace
/// and sends the rule's downloads through it. On failure nothing of it stays.
pub fn set(instance: &Instance, cgroup_id: u64, rule: &Rule) -> Result<()> {
    let result = try_set(instance, cgroup_id, rule);
    if result.is_err() {
        remove(instance, cgroup_id);
    }
    result
}

fn try_set(instance: &Instance, cgroup_id: u64, rule: &Rule) -> Result<()> {
    let name = device_name(instance, cgroup_id);
    netlink::delete_link(&name).context(|| format!("cannot delete the old queue {name}"))?;
    netlink::create_ifb(&name).context(|| format!("cannot create the queue device {name}"))?;
    let ifindex = netns::device(&name)
        .context(|| format!("cannot find {name}"))?
        .ok_or_else(|| Error::NoSuchDevice(name.clone()))?
        .ifindex;
    netlink::add_tbf(ifindex, tbf_for(rule))
        .context(|| format!("cannot give the queue device {name} its tbf qdisc"))?;
    let key = QueueKey {
        cgroup_id,
        netns_cookie: netns::cookie().context(|| "cannot read the network namespace".into())?,
    };
    queues(instance)?
        .insert(key, ifindex, 0)
        .map_err(|e| bpf_error("cannot write the queue")(&e))?;
    attach(instance)
}

/// Changes the rate and burst of the queue of `cgroup_id` in this network namespace, keeping
/// the device and what waits in it.
pub fn change(instance: &Instance, cgroup_id: u64, rule: &Rule) -> Result<()> {
    let name = device_name(instance, cgroup_id);
    let ifindex = netns::device(&name)
        .context(|| format!("cannot find {name}"))?
        .ok_or_else(|| Error::NoSuchDevice(name.clone()))?
        .ifindex;
    netlink::change_tbf(ifindex, tbf_for(rule))
        .context(|| format!("cannot change the tbf qdisc of the queue device {name}"))
}

/// Whether the queue of `cgroup_id` is in place in this network namespace: its device there,
/// and the map sending the rule's downloads to it.
pub fn is_set(instance: &Instance, cgroup_id: u64) -> bool {
    let Ok(Some(device)) = netns::device(&device_name(instance, cgroup_id)) else {
        return false;
    };
    let Ok(netns_cookie) = netns::cookie() else {
        return false;
    };
    let key = QueueKey {
        cgroup_id,
        netns_cookie,
    };
    queues(instance).is_ok_and(|queues| queues.get(&key, 0).ok() == Some(device.ifindex))
}

/// Sends the downloads of the cgroups `aliases` (a shared limit's members) through the queue
/// of `scope` (its group) in this network namespace, and no other cgroup's but the group's
/// own: entries of members that left go.
pub fn set_aliases(instance: &Instance, scope: u64, aliases: &[u64]) -> Result<()> {
    let name = device_name(instance, scope);
    let ifindex = netns::device(&name)
        .context(|| format!("cannot find {name}"))?
        .ok_or_else(|| Error::NoSuchDevice(name.clone()))?
        .ifindex;
    let netns_cookie = netns::cookie().context(|| "cannot read the network namespace".into())?;
    let mut queues = queues(instance)?;
    let held: Vec<QueueKey> = queues.keys().flatten().collect();
    for key in held {
        if key.netns_cookie == netns_cookie
            && key.cgroup_id != scope
            && !aliases.contains(&key.cgroup_id)
            && queues.get(&key, 0).ok() == Some(ifindex)
        {
            let _ = queues.remove(&key);
        }
    }
    for &cgroup_id in aliases {
        let key = QueueKey {
            cgroup_id,
            netns_cookie,
        };
        queues
            .insert(key, ifindex, 0)
            .map_err(|e| bpf_error("cannot write the queue")(&e))?;
    }
    Ok(())
}

/// Removes the queue of `cgroup_id`'s ingress rule (the device in this network namespace, the
/// map entries in all, and those of other cgroups sent to the device: a shared limit's
/// members); detaches the tc program when no queue is left. What is missing is fine.
pub fn remove(instance: &Instance, cgroup_id: u64) {
    let name = device_name(instance, cgroup_id);
    let ifindex = netns::device(&name).ok().flatten().map(|d| d.ifindex);
    let netns_cookie = netns::cookie().ok();
    let _ = netlink::delete_link(&name);
    let Ok(mut queues) = queues(instance) else {
        return;
    };
    let keys: Vec<QueueKey> = queues.keys().flatten().collect();
    let mut left = 0;
    for key in &keys {
        // An alias names the device by its index: once the device is gone, a packet sent
        // there would be lost.
        let alias = Some(key.netns_cookie) == netns_cookie
            && ifindex.is_some()
            && queues.get(key, 0).ok() == ifindex;
        if key.cgroup_id == cgroup_id || alias {
            let _ = queues.remove(key);
        } else {
            left += 1;
        }
    }
    if left == 0 {
        detach(instance);
    }
}

/// The instance's queue devices in this network namespace.
pub fn devices(instance: &Instance) -> Vec<String> {
    let prefix = device_prefix(instance);
    netns::devices()
        .map(|devices| {
            devices
                .into_iter()
                .map(|(_, name)| name)
                .filter(|name| name.starts_with(&prefix) && is_queue_device(name))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes every queue device of the instance in this network namespace and detaches the tc
/// program everywhere.
pub fn remove_all(instance: &Instance) {
    for name in devices(instance) {
        let _ = netlink::delete_link(&name);
    }
    detach(instance);
}

fn links_dir(instance: &Instance) -> PathBuf {
    instance.pin_dir().join("queue-links")
}

/// Attaches the queue program at tc ingress (tcx) of every device of this network namespace but
/// loopback and the queue devices, and pins the links; devices that have it keep their link.
pub fn attach(instance: &Instance) -> Result<()> {
    let cookie = netns::cookie().context(|| "cannot read the network namespace".into())?;
    let devices = netns::devices().context(|| "cannot list the network devices".into())?;
    let dir = links_dir(instance);
    let mut ebpf = None;
    for (ifindex, name) in devices {
        if name == "lo" || is_queue_device(&name) {
            continue;
        }
        let pin = dir.join(format!("{cookie:x}-{ifindex}"));
        // A pin whose device went away (and whose index a new device took) holds a defunct
        // link: it is replaced.
        if bpf::pinned_link(&pin).is_ok_and(|link| link.ifindex == ifindex) {
            continue;
        }
        let loaded = match &mut ebpf {
            Some(loaded) => loaded,
            None => ebpf.insert(loaded_object(instance)?),
        };
        let program = program_mut::<SchedClassifier>(loaded, QUEUE_PROGRAM)?;
        let link = match bpf::attach_tcx(program, &name, TcAttachType::Ingress) {
            Ok(link) => link,
            // A device that went away meanwhile has nothing to queue.
            Err(e) if matches!(netns::device(&name), Ok(None)) => {
                tracing::debug!("{name} went away: {e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        fs::create_dir_all(&dir).context(|| format!("cannot create {} on bpffs", dir.display()))?;
        bpf::remove_if_exists(&pin);
        link.pin(&pin)
            .map_err(|e| bpf_error("cannot pin the link")(&e))?;
    }
    Ok(())
}

/// Detaches the queue program from the devices of the namespace with cookie `cookie` (removes
/// its links' pins): its queue is gone, or the namespace itself.
pub fn detach_netns(instance: &Instance, cookie: u64) {
    let prefix = format!("{cookie:x}-");
    if let Ok(entries) = fs::read_dir(links_dir(instance)) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Whether the queue program is on its links (on some device).
pub fn is_attached(instance: &Instance) -> bool {
    fs::read_dir(links_dir(instance)).is_ok_and(|mut entries| entries.next().is_some())
}

/// The cgroup object with the queue program loaded (verified).
fn loaded_object(instance: &Instance) -> Result<Ebpf> {
    let mut ebpf = load_object(instance)?;
    load(&mut ebpf)?;
    Ok(ebpf)
}

/// Loads (verifies) the queue program of a loaded object.
pub fn load(ebpf: &mut Ebpf) -> Result<()> {
    program_mut::<SchedClassifier>(ebpf, QUEUE_PROGRAM)?
        .load()
        .map_err(|e| load_error(QUEUE_PROGRAM, &e))
}

/// This build's queue program, loaded and verified, for the links the queue program is on.
pub struct Reload {
    instance: Instance,
    ebpf: Ebpf,
}

/// Loads and verifies this build's queue program for its links; `None` when it is on none.
pub fn prepare_reload(instance: &Instance) -> Result<Option<Reload>> {
    if !is_attached(instance) {
        return Ok(None);
    }
    Ok(Some(Reload {
        instance: instance.clone(),
        ebpf: loaded_object(instance)?,
    }))
}

impl PreparedReload for Reload {
    fn swap(mut self: Box<Self>) -> Result<usize> {
        let program = program_mut::<SchedClassifier>(&mut self.ebpf, QUEUE_PROGRAM)?;
        let mut swapped = 0;
        let Ok(entries) = fs::read_dir(links_dir(&self.instance)) else {
            return Ok(0);
        };
        for entry in entries.flatten() {
            let pin = entry.path();
            // A link whose device went away cannot take a program: its pin holds nothing.
            if bpf::pinned_link(&pin).is_ok_and(|link| link.ifindex == 0) {
                bpf::remove_if_exists(&pin);
                continue;
            }
            bpf::swap_tcx(program, &pin)?;
            swapped += 1;
        }
        Ok(swapped)
    }
}

/// Detaches the queue program from every device (removes its links' pins).
pub fn detach(instance: &Instance) {
    let dir = links_dir(instance);
    if let Ok(entries) = fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let _ = fs::remove_file(entry.path());
        }
    }
    let _ = fs::remove_dir(&dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{limit::Limit, units::Rate};

    #[test]
    fn queue_devices_are_told_apart_from_others() {
        let instance = Instance::new("rein").unwrap();
        assert!(is_queue_device(&device_name(&instance, 42)));
        for other in [
            "eth0",
            "rq",
            "rqveth0123abcd",
            "rq0123456789abcdef",
            "veth-rq12",
        ] {
            assert!(!is_queue_device(other), "{other}");
        }
    }

    #[test]
    fn device_names_fit_and_differ_per_instance_and_cgroup() {
        let a = Instance::new("rein").unwrap();
        let b = Instance::new("other").unwrap();
        let name = device_name(&a, 1234);
        assert!(name.len() <= 15, "{name}");
        assert!(name.starts_with("rq"));
        assert_ne!(name, device_name(&a, 1235));
        assert_ne!(name, device_name(&b, 1234));
    }

    #[test]
    fn the_tbf_counts_ip_bytes_at_the_rule_rate_and_burst() {
        let limit = Limit::with_default_burst("10mbit".parse::<Rate>().unwrap());
        let tbf = tbf_for(&limit.rule(0));
        assert_eq!(tbf.rate_bytes_per_second, 1_250_000);
        assert!((65_535..=65_536).contains(&tbf.burst_bytes), "{tbf:?}");
        assert_eq!(tbf.limit_bytes, 2 << 20);
        assert_eq!(tbf.charge, CHARGE);
    }
}
