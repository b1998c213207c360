//! BPF objects, programs, pinned maps and links: what every capability's datapath shares.
//!
//! Everything rein puts in the kernel is pinned under the instance's bpffs directory, so limits
//! outlive the command that set them, and a reload swaps programs under the same links and maps
//! without a gap.
use std::{
    ffi::CString,
    fs, io,
    mem::size_of,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData},
    programs::{
        LinkOrder, Program, ProgramError, SchedClassifier, TcAttachType, links::FdLink,
        tc::TcAttachOptions,
    },
};
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_link_info};

use crate::{
    error::{Error, IoContext, Result, bpf_error},
    instance::Instance,
};

/// The object of the cgroup programs and the ingress queue's tc program (rein-ebpf's `rein`).
static CGROUP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rein"));

/// The object of the interface programs (`rein net`), rein-ebpf's `rein-net`.
static NET_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rein-net"));

/// The object of the new-connection limits (`rein conn`), rein-ebpf's `rein-conn`.
static CONN_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rein-conn"));

/// The embedded object of the cgroup programs, for loading without pins (doctor, tests).
pub fn cgroup_object() -> &'static [u8] {
    CGROUP_OBJECT
}

/// The embedded object of the interface programs.
pub fn net_object() -> &'static [u8] {
    NET_OBJECT
}

/// The embedded object of the new-connection limits.
pub fn conn_object() -> &'static [u8] {
    CONN_OBJECT
}

/// Loads `object` with the maps named in `maps` bound to pins in the instance's maps
/// directory: existing pins are reused (that is how rules survive a reload), missing ones are
/// created and pinned. `sizes` sets the capacity of maps created now.
pub fn load_pinned(
    instance: &Instance,
    object: &[u8],
    maps: &[&str],
    sizes: &[(&str, u32)],
) -> Result<Ebpf> {
    let maps_dir = instance.maps_dir();
    fs::create_dir_all(&maps_dir)
        .context(|| format!("cannot create {} on bpffs", maps_dir.display()))?;
    let mut loader = EbpfLoader::new();
    for name in maps {
        loader.map_pin_path(name, maps_dir.join(name));
    }
    for (name, entries) in sizes {
        loader.map_max_entries(name, *entries);
    }
    loader.load(object).map_err(|e| Error::Load(e.to_string()))
}

/// Opens one of the instance's pinned maps.
pub fn open_pinned_map(instance: &Instance, name: &str) -> Result<Map> {
    let data = MapData::from_pin(instance.maps_dir().join(name))
        .map_err(|e| bpf_error(format!("cannot open map {name}"))(&e))?;
    Map::from_map_data(data).map_err(|e| bpf_error(format!("map {name}"))(&e))
}

/// The program `name` of a loaded object, as its type `P`.
pub fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| missing_program(name))?
        .try_into()
        .map_err(|e: ProgramError| bpf_error(format!("program {name}"))(&e))
}

pub fn missing_program(name: &str) -> Error {
    Error::Load(format!("program {name} is missing from the object"))
}

pub fn missing_map(name: &str) -> Error {
    Error::Load(format!("map {name} is missing from the object"))
}

/// What loading program `name` failed with, the verifier's log included.
pub fn load_error(name: &str, error: &ProgramError) -> Error {
    let message = match error {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => format!("{io_error}\n{verifier_log}"),
        other => other.to_string(),
    };
    Error::Load(format!("{name}: {message}"))
}

/// Attaches a loaded tc program to `device` (of the calling thread's network namespace) with a
/// tcx link, after the programs already there, and returns the link.
pub fn attach_tcx(
    program: &mut SchedClassifier,
    device: &str,
    attach_type: TcAttachType,
) -> Result<FdLink> {
    let id = program
        .attach_with_options(
            device,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| bpf_error(format!("cannot attach to {device}"))(&e))?;
    let link = program
        .take_link(id)
        .map_err(|e| bpf_error("cannot take the link")(&e))?;
    FdLink::try_from(link).map_err(|e| bpf_error("tcx link")(&e))
}

/// Swaps `program` (loaded) into the pinned tcx link at `pin`, with aya's own link update: no
/// packet meets a missing program. The link stays pinned.
pub fn swap_tcx(program: &mut SchedClassifier, pin: &Path) -> Result<()> {
    let link = aya::programs::links::PinnedLink::from_pin(pin)
        .map_err(|e| bpf_error(format!("cannot open the pinned link {}", pin.display()))(&e))?;
    let link = aya::programs::tc::SchedClassifierLink::try_from(FdLink::from(link))
        .map_err(|e| bpf_error("tcx link")(&e))?;
    program
        .attach_to_link(link)
        .map_err(|e| bpf_error(format!("cannot swap the program of {}", pin.display()))(&e))?;
    Ok(())
}

/// Swaps `program` (loaded) into the pinned XDP link at `pin`.
pub fn swap_xdp(program: &mut aya::programs::Xdp, pin: &Path) -> Result<()> {
    let link = aya::programs::links::PinnedLink::from_pin(pin)
        .map_err(|e| bpf_error(format!("cannot open the pinned link {}", pin.display()))(&e))?;
    let link = aya::programs::xdp::XdpLink::try_from(FdLink::from(link))
        .map_err(|e| bpf_error("XDP link")(&e))?;
    program
        .attach_to_link(link)
        .map_err(|e| bpf_error(format!("cannot swap the program of {}", pin.display()))(&e))?;
    Ok(())
}

/// Swaps the program of a pinned link of a kind aya offers no update for (cgroup links):
/// BPF_LINK_UPDATE, atomic in the kernel.
pub fn swap_link_program(pin: &Path, program: impl AsFd) -> Result<()> {
    let link = obj_get(pin).context(|| format!("cannot open the pinned link {}", pin.display()))?;
    // SAFETY: an all-zero bpf_attr is its documented empty value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.link_update.link_fd = fd_u32(&link);
    attr.link_update.__bindgen_anon_1.new_prog_fd = fd_u32(&program);
    bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr)
        .map(drop)
        .context(|| format!("cannot swap the program of {}", pin.display()))
}

/// A pinned link as the kernel describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub id: u32,
    pub program_id: u32,
    /// For tcx and XDP links, the interface; 0 once its device is gone (the kernel detaches
    /// the link then, and keeps it as a defunct object while it is pinned).
    pub ifindex: u32,
}

/// What the kernel says of the link pinned at `pin`.
pub fn pinned_link(pin: &Path) -> io::Result<LinkState> {
    let link = obj_get(pin)?;
    // SAFETY: an all-zero bpf_link_info is a valid value for the kernel to fill.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.info.bpf_fd = fd_u32(&link);
    attr.info.info_len = size_of::<bpf_link_info>() as u32;
    attr.info.info = std::ptr::from_mut(&mut info) as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    // SAFETY: the tcx and xdp members both start with the ifindex; for other link types the
    // field reads whatever their member holds there, and callers only ask tcx and XDP links.
    let ifindex = unsafe { info.__bindgen_anon_1.tcx.ifindex };
    Ok(LinkState {
        id: info.id,
        program_id: info.prog_id,
        ifindex,
    })
}

/// Opens a pinned bpf object.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: an all-zero bpf_attr is its documented empty value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // The CString outlives the call.
    attr.__bindgen_anon_4.pathname = c_path.as_ptr() as u64;
    let fd = bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fd_u32(fd: &impl AsFd) -> u32 {
    fd.as_fd().as_raw_fd() as u32
}

fn bpf(command: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i32> {
    // SAFETY: attr is a bpf_attr laid out for `command`, of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as i32)
    }
}

/// How many CPUs per-CPU maps hold values for.
pub fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus()
        .map_err(|(_, e)| e)
        .context(|| "cannot count the CPUs".into())
}

/// Removes a pin (or any file); one that is not there is fine. Removing the last reference to
/// a pinned link detaches its program.
pub fn remove_if_exists(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!("cannot remove {}: {error}", path.display()),
    }
}

/// Removes a directory of pins and everything in it.
pub fn remove_pin_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                remove_pin_tree(&path);
            } else {
                remove_if_exists(&path);
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Removes the instance's pin directories that nothing is pinned in any more: the maps
/// directory of this layout, leftovers of older layouts, and the instance's.
pub fn tidy_pin_dirs(instance: &Instance) {
    let current = instance.maps_dir();
    if let Ok(entries) = fs::read_dir(instance.pin_dir()) {
        for entry in entries.flatten() {
            let path = entry.path();
            let old_layout = path != current
                && entry.file_name().to_string_lossy().starts_with("maps-v")
                && path.is_dir();
            if old_layout {
                // Programs of this build never use another layout's maps.
                remove_pin_tree(&path);
            }
        }
    }
    let _ = fs::remove_dir(current);
    let _ = fs::remove_dir(instance.pin_dir());
}
