//! Where one rein instance keeps its things: bpffs pins, its cgroup subtree, its state and lock.
//!
//! The default instance is `rein`. Tests run their own instances side by side (`REIN_INSTANCE`),
//! and can point rein at other system paths (`REIN_BPFFS`, `REIN_BTF`) to see how it copes
//! without them.
use std::path::PathBuf;

use rein_common::{LAYOUT_VERSION, net::MAX_NET_RULES};

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct Instance {
    name: String,
    /// Capacity of the `rein net` rule tables, used when they are created (the first rule).
    net_max_rules: u32,
    bpffs: PathBuf,
    run_dir: PathBuf,
    btf: PathBuf,
}

impl Instance {
    pub const DEFAULT_NAME: &'static str = "rein";
    /// 65,536 rules: the tables' empty hash buckets then take 1 MiB each, where the most the
    /// programs allow ([`MAX_NET_RULES`]) takes 16 MiB each whether used or not.
    pub const DEFAULT_NET_MAX_RULES: u32 = 1 << 16;

    pub fn new(name: &str) -> Result<Self> {
        let valid = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid {
            return Err(Error::BadInstanceName(name.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            net_max_rules: Self::DEFAULT_NET_MAX_RULES,
            bpffs: PathBuf::from("/sys/fs/bpf"),
            run_dir: PathBuf::from("/run"),
            btf: PathBuf::from("/sys/kernel/btf/vmlinux"),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The instance the environment names, with the environment's system paths.
    pub fn from_env() -> Result<Self> {
        let name = std::env::var("REIN_INSTANCE").unwrap_or_else(|_| Self::DEFAULT_NAME.into());
        let mut instance = Self::new(&name)?;
        if let Some(path) = std::env::var_os("REIN_BPFFS") {
            instance.bpffs = path.into();
        }
        if let Some(path) = std::env::var_os("REIN_RUN_DIR") {
            instance.run_dir = path.into();
        }
        if let Some(path) = std::env::var_os("REIN_BTF") {
            instance.btf = path.into();
        }
        if let Ok(text) = std::env::var("REIN_NET_MAX_RULES") {
            instance.net_max_rules = text
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=MAX_NET_RULES).contains(n))
                .ok_or(Error::BadNetMaxRules(text))?;
        }
        Ok(instance)
    }

    /// This instance's system paths under another name (the CNI plugin's `reinInstance`).
    pub fn renamed(self, name: &str) -> Result<Self> {
        let name = Self::new(name)?.name;
        Ok(Self { name, ..self })
    }

    pub fn net_max_rules(&self) -> u32 {
        self.net_max_rules
    }

    /// The bpffs mount rein pins under.
    pub fn bpffs(&self) -> &PathBuf {
        &self.bpffs
    }

    pub fn btf(&self) -> &PathBuf {
        &self.btf
    }

    /// `/sys/fs/bpf/rein`: everything the instance pins.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.join(&self.name)
    }

    /// Maps live in a directory named after their layout version, so a build with another
    /// layout never opens maps it does not understand.
    pub fn maps_dir(&self) -> PathBuf {
        self.pin_dir().join(format!("maps-v{LAYOUT_VERSION}"))
    }

    /// Where the link of one hook is pinned.
    pub fn link_pin(&self, link_name: &str) -> PathBuf {
        self.pin_dir().join(link_name)
    }

    /// `/run/rein`: the state file.
    pub fn state_dir(&self) -> PathBuf {
        self.run_dir.join(&self.name)
    }

    /// `/run/rein.lock`: beside the state directory, not in it, because the lock file must
    /// never be removed (see `store::lock`).
    pub fn lock_path(&self) -> PathBuf {
        self.run_dir.join(format!("{}.lock", self.name))
    }

    /// Name of the instance's cgroup subtree under the cgroup v2 root.
    pub fn cgroup_subtree(&self) -> &str {
        &self.name
    }
}
