//! Where a count-min sketch keeps a source: the same hash in the kernel, which counts, and in
//! userspace's model, which checks it.

use crate::abi::net::ADDR_BYTES;

/// The column of `addr` in row `row` of a sketch `width` wide. Rows hash independently (the
/// row and the rule seed the hash); the same function places sources in userspace's model.
#[inline(always)]
pub const fn sketch_column(rule: u32, row: u32, addr: &[u8; ADDR_BYTES], width: u32) -> u32 {
    let mut low = 0u64;
    let mut high = 0u64;
    let mut i = 0;
    while i < 8 {
        low |= (addr[i] as u64) << (8 * i);
        high |= (addr[i + 8] as u64) << (8 * i);
        i += 1;
    }
    let mut h = (((rule as u64) << 32) | row as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h = mix64(h ^ low);
    h = mix64(h ^ high);
    // Multiply-shift maps the top 32 bits onto 0..width without a division.
    (((h >> 32) * width as u64) >> 32) as u32
}

/// MurmurHash3's 64-bit finaliser: every input bit affects every output bit.
#[inline(always)]
const fn mix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}
