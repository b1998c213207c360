//! What an instance keeps outside the kernel: its state file (a section per capability), the
//! lock that lets one command at a time change it, and the undo list that makes every
//! operation all-or-nothing.
pub mod lock;
pub mod state;
pub mod undo;

pub use lock::InstanceLock;
pub use state::State;
pub use undo::Undo;
