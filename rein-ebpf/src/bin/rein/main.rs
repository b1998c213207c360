//! rein's cgroup programs, attached once at the cgroup v2 root, one file per capability:
//! - `limit`: a token bucket per cgroup and direction at cgroup_skb egress and ingress, and a
//!   sock_ops program;
//! - `flows`: the TCP flows under a limit, which the sock_ops program paces at their share
//!   (see `rein_common::share`), or, for a download, whose receive window it keeps there;
//! - `queue`: a tc program on the devices that sends limited downloads through their rule's
//!   queue;
//! - `trace`: the events `rein trace` reads, while one runs.
#![no_std]
// Every unsafe block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]
#![no_main]

mod flows;
mod limit;
mod queue;
mod trace;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
