//! rein's new-connection limits on local callers (`rein conn`): `connect4` and `connect6`
//! programs at a cgroup, which charge each new connection to the most specific rule of every
//! scope the caller is in (its cgroups, its network namespace, every caller) and refuse it
//! with ECONNREFUSED when one of them has no token; the refusals `rein trace` reads while one
//! runs (`trace`).
//!
//! A separate object from the cgroup and interface programs, so hosts without connection
//! limits never create these maps.
#![no_std]
// Every unsafe block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]
#![no_main]

mod connect;
mod trace;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
