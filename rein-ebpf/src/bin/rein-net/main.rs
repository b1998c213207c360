//! rein's address-aware limits on interfaces (`rein net`): tc programs for ingress and egress
//! and an XDP program for ingress (`rules`), whose per-source sketch mode is `sketch`; the
//! events `rein trace` reads while one runs (`trace`).
//!
//! A separate object from the cgroup programs, so hosts that only limit cgroups never create
//! these maps.
#![no_std]
// Every unsafe block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]
#![no_main]

mod rules;
mod sketch;
mod trace;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
