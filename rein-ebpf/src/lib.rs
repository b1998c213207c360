//! What rein's kernel programs share: packet parsing, the atomic operations BPF has, and taking
//! from a token bucket that every CPU updates.
//!
//! Only functions live here. Programs and maps live in the binaries (`src/bin/rein`,
//! `src/bin/rein-net`), one object each: a map or program defined in this library would be
//! exported into every object that links it.
#![no_std]
// Every unsafe block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]
#![feature(core_intrinsics)]
#![allow(internal_features)]

pub mod atomic;
pub mod parse;
pub mod take;
pub mod trace;
