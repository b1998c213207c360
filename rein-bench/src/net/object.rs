//! A private copy of the `rein-net` object: loaded without pins (it goes with the process), its
//! programs run through `BPF_PROG_TEST_RUN`, its maps filled through rein's [`NetDatapath`].

use std::time::Duration;

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData},
    programs::{Program, TestRun, TestRunOptions},
};
/// Every map of the object, and the maps a rule's own entries live in (its limit, its counters,
/// its lookup entry): rein's own lists.
pub use rein::capabilities::net_rules::datapath::{MAPS, RULE_TABLES as RULE_MAPS};
use rein::{capabilities::net_rules::datapath::NetDatapath, platform::bpf::net_object};

/// What one `BPF_PROG_TEST_RUN` call returned.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub verdict: u32,
    /// The kernel's average time of one run, in whole ns.
    pub ns: u32,
}

pub struct Object {
    ebpf: Ebpf,
    pub maps: NetDatapath,
    /// Kernel ids of the maps, by name (for their memory).
    map_ids: Vec<(&'static str, u32)>,
}

impl Object {
    /// Loads the object and the named programs (tc or XDP).
    pub fn load(programs: &[&str]) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load(net_object())
            .context("loading the rein-net object")?;
        for &name in programs {
            let program = ebpf
                .program_mut(name)
                .with_context(|| format!("no program {name} in the rein-net object"))?;
            match program {
                Program::SchedClassifier(p) => p.load(),
                Program::Xdp(p) => p.load(),
                _ => bail!("{name} is neither a tc nor an XDP program"),
            }
            .with_context(|| format!("loading {name}"))?;
        }
        let mut map_ids = Vec::new();
        for name in MAPS {
            let map = ebpf
                .map(name)
                .with_context(|| format!("no map {name} in the rein-net object"))?;
            let data = map_data(map).with_context(|| format!("map {name}: unexpected type"))?;
            map_ids.push((name, data.info().context("map info")?.id()));
        }
        let maps = NetDatapath::from_ebpf(&mut ebpf)?;
        Ok(Self {
            ebpf,
            maps,
            map_ids,
        })
    }

    /// Runs program `name` `repeat` times on `frame`.
    pub fn run(&self, name: &str, frame: &[u8], repeat: u32) -> Result<Run> {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat;
        let result = match self.ebpf.program(name) {
            Some(Program::SchedClassifier(p)) => p.test_run(opts),
            Some(Program::Xdp(p)) => p.test_run(opts),
            Some(_) => bail!("{name} is neither a tc nor an XDP program"),
            None => bail!("no program {name} in the rein-net object"),
        }
        .with_context(|| format!("BPF_PROG_TEST_RUN of {name}"))?;
        Ok(Run {
            verdict: result.return_value,
            ns: ns(result.duration),
        })
    }

    pub fn map_ids(&self) -> &[(&'static str, u32)] {
        &self.map_ids
    }
}

fn ns(duration: Duration) -> u32 {
    u32::try_from(duration.as_nanos()).unwrap_or(u32::MAX)
}

/// The map types of the object.
fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LpmTrie(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::RingBuf(m) => Some(m),
        _ => None,
    }
}
