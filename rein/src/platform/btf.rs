//! The few facts rein reads from the running kernel's BTF (`/sys/kernel/btf/vmlinux`): where a
//! field lies in a kernel struct, and what an enum's value is. rein's programs are built once
//! for every kernel, so a program that reads kernel memory is told these offsets as it loads.
//!
//! A reader of just what that needs: the type section walked once, each struct's members
//! searched through its anonymous struct and union members.
use std::{collections::HashMap, path::PathBuf};

use crate::error::{Error, Result};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

struct Type {
    name: u32,
    kind: u32,
    kind_flag: bool,
    /// Size, or the type referred to.
    size_or_type: u32,
    /// Where its members (or enum values) start in the type section, and how many.
    extra: usize,
    vlen: usize,
}

/// A parsed BTF blob.
pub struct Btf {
    types: Vec<Type>,
    type_section: Vec<u8>,
    strings: Vec<u8>,
    by_name: HashMap<(String, u32), u32>,
    path: PathBuf,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

impl Btf {
    /// The running kernel's BTF.
    pub fn kernel() -> Result<Self> {
        let path = PathBuf::from(VMLINUX);
        let bytes = std::fs::read(&path).map_err(|e| Error::KernelBtf {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(&bytes, path)
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        Error::KernelBtf {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    pub fn parse(bytes: &[u8], path: PathBuf) -> Result<Self> {
        let bad = |reason: &str| Error::KernelBtf {
            path: path.clone(),
            reason: reason.into(),
        };
        if bytes.len() < 24 || u16::from_le_bytes([bytes[0], bytes[1]]) != MAGIC {
            return Err(bad("not little-endian BTF"));
        }
        let header = |at| {
            u32_at(bytes, at)
                .map(|v| v as usize)
                .ok_or_else(|| bad("short header"))
        };
        let (header_len, type_off, type_len, str_off, str_len) = (
            header(4)?,
            header(8)?,
            header(12)?,
            header(16)?,
            header(20)?,
        );
        let section = |off: usize, len: usize| {
            bytes
                .get(header_len + off..header_len + off + len)
                .ok_or_else(|| bad("a section past the end"))
        };
        let type_section = section(type_off, type_len)?.to_vec();
        let strings = section(str_off, str_len)?.to_vec();
        let mut btf = Self {
            // Type ids start at 1: a void placeholder at 0.
            types: vec![Type {
                name: 0,
                kind: 0,
                kind_flag: false,
                size_or_type: 0,
                extra: 0,
                vlen: 0,
            }],
            type_section,
            strings,
            by_name: HashMap::new(),
            path,
        };
        let mut at = 0;
        while at + 12 <= btf.type_section.len() {
            let section = &btf.type_section;
            let (name, info, size_or_type) = (
                u32_at(section, at).unwrap_or(0),
                u32_at(section, at + 4).unwrap_or(0),
                u32_at(section, at + 8).unwrap_or(0),
            );
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let extra = at + 12;
            at = extra
                + match kind {
                    1 | 14 | 17 => 4,
                    3 => 12,
                    KIND_STRUCT | KIND_UNION | 15 | KIND_ENUM64 => 12 * vlen,
                    KIND_ENUM | 13 => 8 * vlen,
                    _ => 0,
                };
            btf.types.push(Type {
                name,
                kind,
                kind_flag: info >> 31 == 1,
                size_or_type,
                extra,
                vlen,
            });
        }
        for (id, ty) in btf.types.iter().enumerate().skip(1) {
            if matches!(ty.kind, KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64) && ty.name != 0
            {
                let name = btf.string(ty.name).to_owned();
                btf.by_name.entry((name, ty.kind)).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    fn member(&self, ty: &Type, index: usize) -> (u32, u32, u32) {
        let at = ty.extra + 12 * index;
        let word = |n: usize| u32_at(&self.type_section, at + 4 * n).unwrap_or(0);
        (word(0), word(1), word(2))
    }

    /// The type behind typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.types.get(id as usize)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// The bit offset of `field` in the struct or union `ty`, looking into its anonymous
    /// members.
    fn find_bits(&self, ty: &Type, field: &str, depth: u32) -> Option<u32> {
        if !matches!(ty.kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return None;
        }
        for index in 0..ty.vlen {
            let (name, member_type, offset) = self.member(ty, index);
            let bits = if ty.kind_flag {
                offset & 0x00ff_ffff
            } else {
                offset
            };
            if name != 0 {
                if self.string(name) == field {
                    return Some(bits);
                }
                continue;
            }
            let inner = self.resolve(member_type)?;
            if let Some(found) = self.find_bits(inner, field, depth + 1) {
                return Some(bits + found);
            }
        }
        None
    }

    /// The byte offset of `field` in `struct name` (found in anonymous members too).
    pub fn field_offset(&self, name: &str, field: &str) -> Result<u32> {
        let id = self
            .by_name
            .get(&(name.to_owned(), KIND_STRUCT))
            .ok_or_else(|| self.error(format!("no struct {name}")))?;
        let ty = &self.types[*id as usize];
        let bits = self
            .find_bits(ty, field, 0)
            .ok_or_else(|| self.error(format!("no field {field} in struct {name}")))?;
        if bits % 8 != 0 {
            return Err(self.error(format!("{name}.{field} is a bit field")));
        }
        Ok(bits / 8)
    }

    /// The value of `value` in `enum name`; None if this kernel does not have it.
    pub fn enum_value(&self, name: &str, value: &str) -> Option<u64> {
        for kind in [KIND_ENUM, KIND_ENUM64] {
            let Some(id) = self.by_name.get(&(name.to_owned(), kind)) else {
                continue;
            };
            let ty = &self.types[*id as usize];
            let width = if kind == KIND_ENUM { 8 } else { 12 };
            for index in 0..ty.vlen {
                let at = ty.extra + width * index;
                if self.string(u32_at(&self.type_section, at)?) != value {
                    continue;
                }
                let low = u64::from(u32_at(&self.type_section, at + 4)?);
                let high = if kind == KIND_ENUM64 {
                    u64::from(u32_at(&self.type_section, at + 8)?)
                } else {
                    0
                };
                return Some(high << 32 | low);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the running kernel's BTF, when it has one (rein needs it anyway).
    #[test]
    fn the_kernels_sk_buff_fields_and_drop_reasons_are_found() {
        let Ok(btf) = Btf::kernel() else {
            return;
        };
        let dev = btf.field_offset("sk_buff", "dev").unwrap();
        let len = btf.field_offset("sk_buff", "len").unwrap();
        let head = btf.field_offset("sk_buff", "head").unwrap();
        let data = btf.field_offset("sk_buff", "data").unwrap();
        let network = btf.field_offset("sk_buff", "network_header").unwrap();
        // `dev` is in the anonymous union of the list links at the start; the rest follow.
        assert!(dev > 0 && dev < 64, "{dev}");
        assert!(len > dev && network > len && head > network && data > head);
        assert!(btf.field_offset("net_device", "name").is_ok());
        assert!(btf.field_offset("sk_buff", "no_such_field").is_err());
        assert!(
            btf.enum_value("skb_drop_reason", "SKB_DROP_REASON_QDISC_DROP")
                .is_some()
        );
        assert_eq!(
            btf.enum_value("skb_drop_reason", "SKB_NO_SUCH_REASON"),
            None
        );
    }
}
