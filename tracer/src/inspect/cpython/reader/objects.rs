//! The builtin objects: `str`, `int`, `float`, `bool`, `None`, `tuple`, `list`,
//! `collections.deque`, `set` and `bytes`.

use super::base::{
    corrupt, PyReader, ReadError, Result, MAX_BASES, MAX_ITEMS, TPFLAGS_LIST_SUBCLASS,
    TPFLAGS_LONG_SUBCLASS,
};
use crate::inspect::{cpython::layout::LongSize, memory::ProcessMemory};

/// `tp_name` of `collections.deque`, whose type object is not exported.
const DEQUE_TYPE_NAME: &str = "collections.deque";

impl<M: ProcessMemory> PyReader<'_, M> {
    pub(super) fn var_size(&self, obj: u64) -> Result<u64> {
        let size = self.u64_at(obj.wrapping_add(self.layout.var_size))?;
        if size > MAX_ITEMS {
            return Err(corrupt(obj, format!("size {size}")));
        }
        Ok(size)
    }

    /// A `str` object's text (compact strings: every string CPython creates since 3.3 but
    /// the legacy C-API ones).
    pub fn str(&self, obj: u64) -> Result<String> {
        self.str_prefix(obj, MAX_ITEMS).map(|(text, _)| text)
    }

    /// The first `max_chars` characters of a `str` (only they are read from the target),
    /// and its whole length in characters.
    pub fn str_prefix(&self, obj: u64, max_chars: u64) -> Result<(String, u64)> {
        self.expect_type(obj, self.types.str, "str")?;
        let l = self.layout;
        let len = self.u64_at(obj.wrapping_add(l.unicode_length))?;
        if len > MAX_ITEMS {
            return Err(corrupt(obj, format!("str length {len}")));
        }
        let state = self.u32_at(obj.wrapping_add(l.unicode_state))?;
        let (kind, compact, ascii) = (
            (state >> 2) & 7,
            (state >> 5) & 1 == 1,
            (state >> 6) & 1 == 1,
        );
        if !compact {
            return Err(corrupt(obj, "non-compact str"));
        }
        let data = obj
            + if ascii {
                l.unicode_ascii_data
            } else {
                l.unicode_compact_data
            };
        let chars = len.min(max_chars);
        let bytes = self.bytes_at(data, chars as usize * kind as usize)?;
        let bad = || corrupt(obj, "bad characters");
        let text = match kind {
            1 if ascii => String::from_utf8(bytes).map_err(|_| bad()),
            1 => Ok(bytes.iter().map(|&b| char::from(b)).collect()),
            2 => char::decode_utf16(
                bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_ne_bytes([c[0], c[1]])),
            )
            .collect::<std::result::Result<String, _>>()
            .map_err(|_| bad()),
            4 => bytes
                .chunks_exact(4)
                .map(|c| char::from_u32(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                .collect::<Option<String>>()
                .ok_or_else(bad),
            _ => Err(corrupt(obj, format!("str kind {kind}"))),
        }?;
        Ok((text, len))
    }

    /// An `int` (or a subclass's, e.g. `bool` or an `IntEnum` member) value; ints beyond
    /// 64 bits are [`ReadError::TooBig`].
    pub fn int(&self, obj: u64) -> Result<i64> {
        self.expect_kind(obj, self.types.int, TPFLAGS_LONG_SUBCLASS, "int")?;
        let l = self.layout;
        let (negative, ndigits) = match l.long_size {
            LongSize::ObSize => {
                let size = self.u64_at(obj.wrapping_add(l.var_size))? as i64;
                (size < 0, size.unsigned_abs())
            }
            LongSize::Tag {
                offset,
                non_size_bits,
            } => {
                let tag = self.u64_at(obj.wrapping_add(offset))?;
                let n = tag >> non_size_bits;
                match tag & 3 {
                    0 if n > 0 => (false, n),
                    1 if n == 0 => (false, 0),
                    2 if n > 0 => (true, n),
                    _ => return Err(corrupt(obj, format!("int tag {tag:#x}"))),
                }
            }
        };
        // Three 30-bit digits hold 90 bits; a normalized int with more is beyond i64.
        if ndigits > 3 {
            return Err(if ndigits > MAX_ITEMS {
                corrupt(obj, format!("{ndigits} digits"))
            } else {
                ReadError::TooBig { addr: obj }
            });
        }
        let raw = self.bytes_at(obj.wrapping_add(l.long_digits), ndigits as usize * 4)?;
        let mut magnitude: u128 = 0;
        for (i, c) in raw.chunks_exact(4).enumerate() {
            let digit = u32::from_ne_bytes(c.try_into().expect("4 bytes"));
            if u64::from(digit) >> l.long_shift != 0 {
                return Err(corrupt(obj, format!("int digit {digit:#x}")));
            }
            magnitude |= u128::from(digit) << (l.long_shift * i as u64);
        }
        let value = if negative {
            -i128::try_from(magnitude).map_err(|_| ReadError::TooBig { addr: obj })?
        } else {
            i128::try_from(magnitude).map_err(|_| ReadError::TooBig { addr: obj })?
        };
        i64::try_from(value).map_err(|_| ReadError::TooBig { addr: obj })
    }

    /// A `float` (or subclass) value.
    pub fn float(&self, obj: u64) -> Result<f64> {
        self.expect_subtype(obj, self.types.float, "float")?;
        Ok(f64::from_bits(
            self.u64_at(obj.wrapping_add(self.layout.float_value))?,
        ))
    }

    /// `True` or `False` (the two singletons).
    pub fn bool(&self, obj: u64) -> Result<bool> {
        match obj {
            _ if obj == self.types.true_ && obj != 0 => Ok(true),
            _ if obj == self.types.false_ && obj != 0 => Ok(false),
            _ => Err(ReadError::WrongType {
                addr: obj,
                expected: "bool",
            }),
        }
    }

    /// Whether `obj` is `None`.
    pub fn is_none(&self, obj: u64) -> bool {
        obj != 0 && obj == self.types.none
    }

    /// The items of a `tuple`.
    pub fn tuple(&self, obj: u64) -> Result<Vec<u64>> {
        self.expect_type(obj, self.types.tuple, "tuple")?;
        let n = self.var_size(obj)?;
        self.words_at(obj.wrapping_add(self.layout.tuple_items), n)
    }

    /// The items of a `list` (or subclass).
    pub fn list_items(&self, obj: u64) -> Result<Vec<u64>> {
        self.expect_kind(obj, self.types.list, TPFLAGS_LIST_SUBCLASS, "list")?;
        let n = self.var_size(obj)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let items = self.u64_at(obj.wrapping_add(self.layout.list_items))?;
        self.words_at(items, n)
    }

    /// The items of a `collections.deque` (or subclass, e.g. vLLM's request queues), left
    /// to right.
    pub fn deque_items(&self, obj: u64) -> Result<Vec<u64>> {
        self.expect_deque(obj)?;
        let d = self.layout.deque;
        let n = self.var_size(obj)?;
        let mut block = self.u64_at(obj.wrapping_add(d.leftblock))?;
        let mut index = self.u64_at(obj.wrapping_add(d.leftindex))?;
        let (rightblock, rightindex) = (
            self.u64_at(obj.wrapping_add(d.rightblock))?,
            self.u64_at(obj.wrapping_add(d.rightindex))?,
        );
        if index >= d.block_len {
            return Err(corrupt(obj, format!("deque leftindex {index}")));
        }
        let mut items = Vec::with_capacity(n as usize);
        while (items.len() as u64) < n {
            if block == 0 {
                return Err(corrupt(obj, "deque ends early"));
            }
            let take = (d.block_len - index).min(n - items.len() as u64);
            items.extend(
                self.words_at(
                    block
                        .wrapping_add(d.block_data)
                        .wrapping_add(index.wrapping_mul(8)),
                    take,
                )?,
            );
            if (items.len() as u64) < n {
                block = self.u64_at(block.wrapping_add(d.block_rightlink))?;
                index = 0;
            } else {
                index += take;
            }
        }
        // The walk must end where the deque says its right end is, or it changed under us.
        if n > 0 && (block != rightblock || index - 1 != rightindex) {
            return Err(corrupt(obj, "deque changed while read"));
        }
        Ok(items)
    }

    pub(super) fn expect_deque(&self, obj: u64) -> Result<()> {
        let mut ty = self.class_of(obj)?;
        for _ in 0..MAX_BASES {
            if ty == 0 {
                break;
            }
            if self.type_name(ty)? == DEQUE_TYPE_NAME {
                return Ok(());
            }
            ty = self.u64_at(ty.wrapping_add(self.layout.type_base))?;
        }
        Err(ReadError::WrongType {
            addr: obj,
            expected: "deque",
        })
    }

    /// The items of a `set` or `frozenset` (or subclass), in table order.
    pub fn set_items(&self, obj: u64) -> Result<Vec<u64>> {
        self.expect_subtype(obj, self.types.set, "set")
            .or_else(|_| self.expect_subtype(obj, self.types.frozenset, "set"))?;
        let l = self.layout;
        let used = self.u64_at(obj.wrapping_add(l.set_used))?;
        let mask = self.u64_at(obj.wrapping_add(l.set_mask))?;
        if used > MAX_ITEMS || mask >= MAX_ITEMS * 2 || !(mask + 1).is_power_of_two() {
            return Err(corrupt(obj, format!("set used {used}, mask {mask:#x}")));
        }
        let table = self.u64_at(obj.wrapping_add(l.set_table))?;
        let words_per_entry = l.set_entry_size / 8;
        let words = self.words_at(table, (mask + 1) * words_per_entry)?;
        let hash_word = (l.set_entry_hash / 8) as usize;
        // Deleted entries keep a dummy key with hash -1 (no real hash is -1).
        let items: Vec<u64> = words
            .chunks_exact(words_per_entry as usize)
            .filter(|e| e[0] != 0 && e[hash_word] as i64 != -1)
            .map(|e| e[0])
            .collect();
        if items.len() as u64 != used {
            return Err(corrupt(obj, "set changed while read"));
        }
        Ok(items)
    }
    /// A `bytes` object's contents.
    pub fn bytes(&self, obj: u64) -> Result<Vec<u8>> {
        self.expect_type(obj, self.types.bytes, "bytes")?;
        let n = self.var_size(obj)?;
        self.bytes_at(obj.wrapping_add(self.layout.bytes_data), n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::{
        super::base::{TypeAddrs, TPFLAGS_TYPE_SUBCLASS},
        *,
    };
    use crate::inspect::{
        cpython::layout::{self, Layout},
        memory::Snapshot,
    };

    const STR_TYPE: u64 = 0x9000;

    /// A compact str object as 3.12 lays it out, at `addr`.
    fn str_object(layout: &Layout, addr: u64, text: &str) -> (u64, Vec<u8>) {
        let ascii = text.is_ascii();
        let units: Vec<u16> = text.encode_utf16().collect();
        let (kind, data): (u32, Vec<u8>) = if ascii {
            (1, text.as_bytes().to_vec())
        } else {
            (2, units.iter().flat_map(|u| u.to_ne_bytes()).collect())
        };
        let header = if ascii {
            layout.unicode_ascii_data
        } else {
            layout.unicode_compact_data
        } as usize;
        let mut bytes = vec![0u8; header + data.len() + 2];
        bytes[layout.object_type as usize..][..8].copy_from_slice(&STR_TYPE.to_ne_bytes());
        bytes[layout.unicode_length as usize..][..8]
            .copy_from_slice(&(units.len() as u64).to_ne_bytes());
        let state = kind << 2 | 1 << 5 | u32::from(ascii) << 6;
        bytes[layout.unicode_state as usize..][..4].copy_from_slice(&state.to_ne_bytes());
        bytes[header..][..data.len()].copy_from_slice(&data);
        (addr, bytes)
    }

    #[test]
    fn decodes_compact_strings_and_checks_their_type() {
        let layout = layout::for_version((3, 12)).unwrap();
        let mem = Snapshot {
            regions: vec![
                str_object(layout, 0x1000, "EngineCore.step"),
                str_object(layout, 0x2000, "réquête"),
            ],
        };
        let reader = PyReader::new(
            &mem,
            layout,
            TypeAddrs {
                str: STR_TYPE,
                ..Default::default()
            },
        );
        assert_eq!(reader.str(0x1000).unwrap(), "EngineCore.step");
        assert_eq!(reader.str(0x2000).unwrap(), "réquête");
        let wrong = PyReader::new(
            &mem,
            layout,
            TypeAddrs {
                str: STR_TYPE + 8,
                ..Default::default()
            },
        );
        assert!(matches!(
            wrong.str(0x1000),
            Err(ReadError::WrongType {
                expected: "str",
                ..
            })
        ));
        assert!(matches!(reader.str(0x5000), Err(ReadError::Memory { .. })));
    }

    /// Memory being built for a test: zeroed regions with words written into them.
    #[derive(Default)]
    struct Mem(Vec<(u64, Vec<u8>)>);

    impl Mem {
        fn region(&mut self, addr: u64, len: usize) -> &mut Self {
            self.0.push((addr, vec![0; len]));
            self
        }

        fn put(&mut self, addr: u64, bytes: &[u8]) -> &mut Self {
            let (start, region) = self
                .0
                .iter_mut()
                .find(|(s, r)| *s <= addr && addr + bytes.len() as u64 <= s + r.len() as u64)
                .expect("inside a region");
            let at = (addr - *start) as usize;
            region[at..at + bytes.len()].copy_from_slice(bytes);
            self
        }

        fn word(&mut self, addr: u64, value: u64) -> &mut Self {
            self.put(addr, &value.to_ne_bytes())
        }

        fn snapshot(&self) -> Snapshot {
            Snapshot {
                regions: self.0.clone(),
            }
        }
    }

    const TYPE_TYPE: u64 = 0xa000;
    const INT_TYPE: u64 = 0xa400;
    const DEQUE_TYPE: u64 = 0xa800;
    const SET_TYPE: u64 = 0xac00;

    /// `type`, and classes `int`, `set` and `collections.deque` (by name, as in a real
    /// process where the deque type is not exported).
    fn types(l: &Layout, mem: &mut Mem) -> TypeAddrs {
        mem.region(TYPE_TYPE, 0x1000).region(0xb000, 0x1000);
        mem.put(0xb000, b"collections.deque\0");
        for ty in [TYPE_TYPE, INT_TYPE, DEQUE_TYPE, SET_TYPE] {
            mem.word(ty + l.object_type, TYPE_TYPE);
        }
        mem.word(TYPE_TYPE + l.type_flags, TPFLAGS_TYPE_SUBCLASS)
            .word(INT_TYPE + l.type_flags, TPFLAGS_LONG_SUBCLASS)
            .word(DEQUE_TYPE + l.type_name, 0xb000);
        TypeAddrs {
            int: INT_TYPE,
            set: SET_TYPE,
            type_: TYPE_TYPE,
            ..Default::default()
        }
    }

    /// An int at `addr` with the given sign (-1, 0, 1) and 30-bit digits, low first.
    fn int_object(l: &Layout, mem: &mut Mem, addr: u64, sign: i64, digits: &[u32]) {
        mem.region(addr, 64).word(addr + l.object_type, INT_TYPE);
        match l.long_size {
            LongSize::ObSize => mem.word(addr + l.var_size, (sign * digits.len() as i64) as u64),
            LongSize::Tag {
                offset,
                non_size_bits,
            } => mem.word(
                addr + offset,
                (digits.len() as u64) << non_size_bits | (1 - sign) as u64,
            ),
        };
        for (i, d) in digits.iter().enumerate() {
            mem.put(addr + l.long_digits + 4 * i as u64, &d.to_ne_bytes());
        }
    }

    #[test]
    fn ints_of_both_size_encodings() {
        const MASK: u32 = (1 << 30) - 1;
        for version in [(3, 11), (3, 12)] {
            let l = layout::for_version(version).unwrap();
            let mut mem = Mem::default();
            let types = types(l, &mut mem);
            int_object(l, &mut mem, 0x1000, 0, &[]);
            int_object(l, &mut mem, 0x1100, -1, &[5]);
            int_object(l, &mut mem, 0x1200, 1, &[12345, 0, 4]); // 2**62 + 12345
            int_object(l, &mut mem, 0x1300, -1, &[0, 0, 8]); // -2**63
            int_object(l, &mut mem, 0x1400, 1, &[0, 0, 8]); // 2**63
            int_object(l, &mut mem, 0x1500, 1, &[1, 0, 0, 1]); // 2**90 + 1
            int_object(l, &mut mem, 0x1600, 1, &[MASK + 1]); // a digit out of range
            let snapshot = mem.snapshot();
            let r = PyReader::new(&snapshot, l, types);
            assert_eq!(r.int(0x1000).unwrap(), 0);
            assert_eq!(r.int(0x1100).unwrap(), -5);
            assert_eq!(r.int(0x1200).unwrap(), (1 << 62) + 12345);
            assert_eq!(r.int(0x1300).unwrap(), i64::MIN);
            for too_big in [0x1400, 0x1500] {
                assert!(matches!(r.int(too_big), Err(ReadError::TooBig { .. })));
            }
            assert!(matches!(r.int(0x1600), Err(ReadError::Corrupt { .. })));
        }
        // 3.12's tag: sign 3 does not exist.
        let l = layout::for_version((3, 12)).unwrap();
        let mut mem = Mem::default();
        let types = types(l, &mut mem);
        int_object(l, &mut mem, 0x1000, 1, &[7]);
        let LongSize::Tag { offset, .. } = l.long_size else {
            unreachable!()
        };
        mem.word(0x1000 + offset, 1 << 3 | 3);
        let snapshot = mem.snapshot();
        let r = PyReader::new(&snapshot, l, types);
        assert!(matches!(r.int(0x1000), Err(ReadError::Corrupt { .. })));
    }

    #[test]
    fn deque_across_blocks_and_torn_deques() {
        let l = layout::for_version((3, 12)).unwrap();
        let d = l.deque;
        let block_size = (d.block_rightlink + 8) as usize;
        let build = |rightindex: u64| {
            let mut mem = Mem::default();
            let types = types(l, &mut mem);
            let (deque, left, right) = (0x1000, 0x2000, 0x3000);
            mem.region(deque, 64)
                .region(left, block_size)
                .region(right, block_size);
            mem.word(deque + l.object_type, DEQUE_TYPE)
                .word(deque + l.var_size, 5)
                .word(deque + d.leftblock, left)
                .word(deque + d.rightblock, right)
                .word(deque + d.leftindex, d.block_len - 2)
                .word(deque + d.rightindex, rightindex)
                .word(left + d.block_rightlink, right);
            for (i, item) in [0xe1, 0xe2].into_iter().enumerate() {
                mem.word(left + d.block_data + 8 * (d.block_len - 2 + i as u64), item);
            }
            for (i, item) in [0xe3, 0xe4, 0xe5].into_iter().enumerate() {
                mem.word(right + d.block_data + 8 * i as u64, item);
            }
            (mem.snapshot(), types)
        };
        let (snapshot, types) = build(2);
        let r = PyReader::new(&snapshot, l, types);
        assert_eq!(
            r.deque_items(0x1000).unwrap(),
            [0xe1, 0xe2, 0xe3, 0xe4, 0xe5]
        );
        // The right end moved while we read: refused, not a wrong list.
        let (snapshot, types) = build(3);
        let r = PyReader::new(&snapshot, l, types);
        assert!(matches!(
            r.deque_items(0x1000),
            Err(ReadError::Corrupt { .. })
        ));
    }

    #[test]
    fn sets_skip_deleted_entries_and_refuse_a_wrong_count() {
        let l = layout::for_version((3, 13)).unwrap();
        let build = |used: u64| {
            let mut mem = Mem::default();
            let types = types(l, &mut mem);
            let (set, table) = (0x1000, 0x2000);
            mem.region(set, 256)
                .region(table, 8 * l.set_entry_size as usize);
            mem.word(set + l.object_type, SET_TYPE)
                .word(set + l.set_used, used)
                .word(set + l.set_mask, 7)
                .word(set + l.set_table, table);
            for (slot, key, hash) in [(1, 0xf1, 11u64), (4, 0xdead, u64::MAX), (6, 0xf2, 12)] {
                let entry = table + slot * l.set_entry_size;
                mem.word(entry, key).word(entry + l.set_entry_hash, hash);
            }
            (mem.snapshot(), types)
        };
        let (snapshot, types) = build(2);
        let r = PyReader::new(&snapshot, l, types);
        assert_eq!(r.set_items(0x1000).unwrap(), [0xf1, 0xf2]);
        let (snapshot, types) = build(3);
        let r = PyReader::new(&snapshot, l, types);
        assert!(matches!(
            r.set_items(0x1000),
            Err(ReadError::Corrupt { .. })
        ));
    }
}
