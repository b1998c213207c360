//! rein's capabilities, one room each: its spec (what an operator states), its service logic
//! (planning the steps from what is to what is wanted), its datapath side (the pinned maps and
//! links of its kernel program). The engine drives them all through [`Capability`]; adding a
//! capability means adding a folder here, its section in [`crate::store::State`] and
//! [`crate::engine::Desired`], and its line in [`REGISTRY`].
use crate::{
    engine::{Desired, Plan, PurgeReport},
    error::Result,
    instance::Instance,
    platform::cgroupfs::CgroupFs,
    store::{State, Undo},
};

pub mod cgroup_limit;
pub mod conn_limits;
pub mod ingress_queue;
pub mod net_rules;
pub mod netns_limit;
mod rule_steps;
pub mod shared_limit;

/// Every capability, in the order the engine runs them: a later one may build on what an
/// earlier one put in place (the ingress queues on the cgroup limits' maps), and on its
/// section of the state, never the other way round.
pub(crate) static REGISTRY: [&dyn Capability; 6] = [
    &cgroup_limit::CgroupLimits,
    &netns_limit::NetnsLimits,
    &shared_limit::SharedLimits,
    &ingress_queue::IngressQueues,
    &net_rules::NetRules,
    &conn_limits::ConnLimits,
];

/// What the operations of every capability work with.
#[derive(Clone, Debug)]
pub struct Context {
    pub instance: Instance,
    pub cgroups: CgroupFs,
}

impl Context {
    /// CLOCK_MONOTONIC, the clock of the kernel programs.
    pub fn now_ns(&self) -> u64 {
        crate::clock::Clock::now_ns(&crate::clock::MonotonicClock)
    }
}

/// One capability's part in the engine's lifecycle.
pub(crate) trait Capability: Sync {
    fn name(&self) -> &'static str;

    /// Adds to `plan` the steps that take this capability from `state` to `desired`.
    fn plan(&self, cx: &Context, state: &State, desired: &Desired, plan: &mut Plan) -> Result<()>;

    /// Whether any of its programs or maps are in the kernel.
    fn is_installed(&self, cx: &Context) -> bool;

    /// Loads and verifies this build's programs for the links it has attached, changing
    /// nothing yet: a reload swaps them in only once every capability's have loaded.
    fn prepare_reload(&self, cx: &Context) -> Result<Option<Box<dyn PreparedReload>>>;

    /// Writes back what the kernel lacks of what the state holds: rules after a reload into a
    /// new map layout, queues and attachments to devices that appeared since. Returns how many
    /// rules it wrote.
    fn restore(&self, cx: &Context, state: &State, undo: &mut Undo) -> Result<usize>;

    /// Drops the records whose objects are gone (a cgroup, a `rein run` whose process died),
    /// and the kernel entries no record owns (left by a command that died midway).
    fn collect_garbage(&self, cx: &Context, state: &mut State) -> Result<()>;

    /// Removes its programs and maps once the state holds nothing for it.
    fn remove_if_unused(&self, cx: &Context, state: &State);

    /// Removes everything it made, whatever the state says.
    fn purge(&self, cx: &Context, state: &State, report: &mut PurgeReport);
}

/// Programs loaded for a reload, ready to be swapped into their links.
pub(crate) trait PreparedReload {
    /// Swaps the programs into the links (BPF_LINK_UPDATE: no packet meets a missing
    /// program); returns how many links took a new program.
    fn swap(self: Box<Self>) -> Result<usize>;
}

/// Builds the instance's [`Context`].
pub(crate) fn context(instance: Instance) -> Result<Context> {
    Ok(Context {
        instance,
        cgroups: CgroupFs::discover()?,
    })
}
