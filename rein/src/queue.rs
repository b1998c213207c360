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
    maps::{HashMap, Map, MapData},
    programs::{SchedClassifier, TcAttachType},
};
use rein_common::{QUEUE_PROGRAM, QUEUES_MAP, QueueKey, Rule};

use crate::{
    datapath,
    error::{Error, IoContext, Result, bpf_error},
    instance::Instance,
    netlink::{self, Charge, Tbf},
    sys,
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

fn queues(instance: &Instance) -> Result<HashMap<MapData, QueueKey, u32>> {
    let pin = instance.maps_dir().join(QUEUES_MAP);
    let data = MapData::from_pin(&pin)
        .map_err(|e| bpf_error(format!("cannot open map {QUEUES_MAP}"))(&e))?;
    HashMap::try_from(Map::HashMap(data)).map_err(|e| bpf_error("queue map")(&e))
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
    let ifindex = sys::device(&name)
        .context(|| format!("cannot find {name}"))?
        .ok_or_else(|| Error::NoSuchDevice(name.clone()))?
        .ifindex;
    netlink::add_tbf(ifindex, tbf_for(rule))
        .context(|| format!("cannot give the queue device {name} its tbf qdisc"))?;
    let key = QueueKey {
        cgroup_id,
        netns_cookie: sys::netns_cookie().context(|| "cannot read the network namespace".into())?,
    };
    queues(instance)?
        .insert(key, ifindex, 0)
        .map_err(|e| bpf_error("cannot write the queue")(&e))?;
    attach(instance)
}

/// Whether the queue of `cgroup_id` is in place in this network namespace: its device there,
/// and the map sending the rule's downloads to it.
pub fn is_set(instance: &Instance, cgroup_id: u64) -> bool {
    let Ok(Some(device)) = sys::device(&device_name(instance, cgroup_id)) else {
        return false;
    };
    let Ok(netns_cookie) = sys::netns_cookie() else {
        return false;
    };
    let key = QueueKey {
        cgroup_id,
        netns_cookie,
    };
    queues(instance).is_ok_and(|queues| queues.get(&key, 0).ok() == Some(device.ifindex))
}

/// Removes the queue of `cgroup_id`'s ingress rule (the device in this network namespace, the
/// map entries in all); detaches the tc program when no queue is left. What is missing is fine.
pub fn remove(instance: &Instance, cgroup_id: u64) {
    let _ = netlink::delete_link(&device_name(instance, cgroup_id));
    let Ok(mut queues) = queues(instance) else {
        return;
    };
    let keys: Vec<QueueKey> = queues.keys().flatten().collect();
    for key in keys.iter().filter(|key| key.cgroup_id == cgroup_id) {
        let _ = queues.remove(key);
    }
    if keys.iter().all(|key| key.cgroup_id == cgroup_id) {
        detach(instance);
    }
}

/// Removes every queue device of the instance in this network namespace and detaches the tc
/// program everywhere.
pub fn remove_all(instance: &Instance) {
    let prefix = device_prefix(instance);
    if let Ok(devices) = sys::devices() {
        for (_, name) in devices {
            if name.starts_with(&prefix) {
                let _ = netlink::delete_link(&name);
            }
        }
    }
    detach(instance);
}

fn links_dir(instance: &Instance) -> PathBuf {
    instance.pin_dir().join("queue-links")
}

/// Attaches the queue program at tc ingress (tcx) of every device of this network namespace but
/// loopback, and pins the links; devices that have it keep their link.
pub fn attach(instance: &Instance) -> Result<()> {
    let cookie = sys::netns_cookie().context(|| "cannot read the network namespace".into())?;
    let devices = sys::devices().context(|| "cannot list the network devices".into())?;
    let dir = links_dir(instance);
    fs::create_dir_all(&dir).context(|| format!("cannot create {} on bpffs", dir.display()))?;
    let mut ebpf = None;
    for (ifindex, name) in devices {
        if name == "lo" {
            continue;
        }
        let pin = dir.join(format!("{cookie:x}-{ifindex}"));
        if sys::bpf_obj_get(&pin).is_ok() {
            continue;
        }
        if ebpf.is_none() {
            let mut loaded = datapath::load_object(instance)?;
            load(&mut loaded)?;
            ebpf = Some(loaded);
        }
        let Some(loaded) = ebpf.as_mut() else {
            continue;
        };
        let program: &mut SchedClassifier = loaded
            .program_mut(QUEUE_PROGRAM)
            .ok_or_else(program_missing)?
            .try_into()
            .map_err(|e| bpf_error(format!("program {QUEUE_PROGRAM}"))(&e))?;
        let link = match datapath::attach_tcx(program, &name, TcAttachType::Ingress) {
            Ok(link) => link,
            // A device that went away meanwhile has nothing to queue.
            Err(e) if matches!(sys::device(&name), Ok(None)) => {
                tracing::debug!("{name} went away: {e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        let _ = fs::remove_file(&pin);
        link.pin(&pin)
            .map_err(|e| bpf_error("cannot pin the link")(&e))?;
    }
    Ok(())
}

/// Loads (verifies) the queue program of a loaded object.
pub fn load(ebpf: &mut aya::Ebpf) -> Result<()> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(QUEUE_PROGRAM)
        .ok_or_else(program_missing)?
        .try_into()
        .map_err(|e| bpf_error(format!("program {QUEUE_PROGRAM}"))(&e))?;
    program.load().map_err(|e| {
        Error::Load(format!(
            "{QUEUE_PROGRAM}: {}",
            datapath::verifier_message(&e)
        ))
    })
}

fn program_missing() -> Error {
    Error::Load(format!(
        "program {QUEUE_PROGRAM} is missing from the object"
    ))
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
