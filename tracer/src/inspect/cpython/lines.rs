//! Code objects' line tables: which source line each instruction belongs to, as
//! `code.co_lines()` gives it, decoded from the table's bytes.

/// How a version encodes `co_linetable`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineTableFormat {
    /// 3.10 (PEP 626): byte pairs (bytecode bytes advanced, signed line delta; -128: no line).
    Pairs,
    /// 3.11+ location table: entries of a header byte `1 code:4 length-1:3` (length in code
    /// units) and varint fields; only the line is decoded here.
    Locations,
}

/// Instructions `[start, end)` (byte offsets) come from source line `line` (`None`: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineRange {
    pub start: u32,
    pub end: u32,
    pub line: Option<i32>,
}

/// The ranges of a line table, as `co_lines()` gives them from 3.12: empty ones left out,
/// adjacent ones of the same line merged. A table that ends in the middle of an entry
/// gives the ranges before it.
pub fn lines(format: LineTableFormat, firstlineno: i32, table: &[u8]) -> Vec<LineRange> {
    let mut out: Vec<LineRange> = Vec::new();
    let (mut end, mut line) = (0u32, firstlineno);
    let mut push = |start: u32, end: u32, line: Option<i32>| match out.last_mut() {
        _ if start == end => {}
        Some(last) if last.line == line && last.end == start => last.end = end,
        _ => out.push(LineRange { start, end, line }),
    };
    match format {
        LineTableFormat::Pairs => {
            for pair in table.chunks_exact(2) {
                let start = end;
                end = end.saturating_add(u32::from(pair[0]));
                let delta = pair[1] as i8;
                // Lines are the target's numbers: wrapping, never a panic.
                let this = (delta != -128).then(|| {
                    line = line.wrapping_add(i32::from(delta));
                    line
                });
                push(start, end, this);
            }
        }
        LineTableFormat::Locations => {
            let mut bytes = table.iter().copied();
            while let Some(header) = bytes.next() {
                if header & 0x80 == 0 {
                    break; // not at an entry: corrupt
                }
                let code = (header >> 3) & 15;
                let start = end;
                end = end.saturating_add(2 * (u32::from(header & 7) + 1));
                let this = match code {
                    15 => None,
                    14 | 13 => {
                        let Some(delta) = svarint(&mut bytes) else {
                            break;
                        };
                        line = line.wrapping_add(delta);
                        // Long form: end line, column, end column follow.
                        let extra = if code == 14 { 3 } else { 0 };
                        if (0..extra).any(|_| varint(&mut bytes).is_none()) {
                            break;
                        }
                        Some(line)
                    }
                    10..=12 => {
                        line = line.wrapping_add(i32::from(code) - 10);
                        // One-line form: column and end column bytes.
                        if bytes.next().zip(bytes.next()).is_none() {
                            break;
                        }
                        Some(line)
                    }
                    _ => {
                        // Short form: same line, one column byte.
                        if bytes.next().is_none() {
                            break;
                        }
                        Some(line)
                    }
                };
                push(start, end, this);
            }
        }
    }
    out
}

/// The line of the instruction at byte offset `offset`.
pub fn line_at(ranges: &[LineRange], offset: u32) -> Option<i32> {
    ranges
        .iter()
        .find(|r| r.start <= offset && offset < r.end)
        .and_then(|r| r.line)
}

/// An unsigned varint of the location table: 6-bit chunks, low first, bit 6 = more.
fn varint(bytes: &mut impl Iterator<Item = u8>) -> Option<u32> {
    let (mut value, mut shift) = (0u32, 0);
    loop {
        let b = bytes.next()?;
        value |= u32::from(b & 63).checked_shl(shift)?;
        if b & 64 == 0 {
            return Some(value);
        }
        shift += 6;
    }
}

/// A signed varint: the low bit is the sign.
fn svarint(bytes: &mut impl Iterator<Item = u8>) -> Option<i32> {
    let raw = varint(bytes)?;
    let magnitude = (raw >> 1) as i32;
    Some(if raw & 1 == 1 { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u32, end: u32, line: Option<i32>) -> LineRange {
        LineRange { start, end, line }
    }

    #[test]
    fn pairs_accumulate_deltas_across_empty_ranges() {
        // 6 bytes on line +0, an empty range moving the line +2, 4 bytes with no line,
        // then 2 bytes at line -1 from the last real one.
        let table = [6, 0, 0, 2, 4, 0x80, 2, 0xff];
        assert_eq!(
            lines(LineTableFormat::Pairs, 10, &table),
            [
                range(0, 6, Some(10)),
                range(6, 10, None),
                range(10, 12, Some(11))
            ]
        );
    }

    #[test]
    fn location_entries_of_every_form() {
        let table = [
            0x80 | (13 << 3), // no-column form, 1 unit, line +1 (svarint 2)
            2,
            0x80 | (11 << 3) | 1, // one-line form, 2 units, line +1, columns 4..8
            4,
            8,
            0x80 | (3 << 3), // short form, 1 unit, same line
            0x17,
            0x80 | (15 << 3),     // no location, 1 unit
            0x80 | (14 << 3) | 2, // long form, 3 units, line -3 (svarint 7), then 3 varints
            7,
            0,
            0x41, // a 2-byte varint
            1,
            5,
        ];
        assert_eq!(
            lines(LineTableFormat::Locations, 100, &table),
            // The one-line and short entries, both on line 102, merge.
            [
                range(0, 2, Some(101)),
                range(2, 8, Some(102)),
                range(8, 10, None),
                range(10, 16, Some(99)),
            ]
        );
        assert_eq!(
            line_at(&lines(LineTableFormat::Locations, 100, &table), 12),
            Some(99)
        );
        // Truncated in the middle of the last entry: the ranges before it.
        assert_eq!(
            lines(LineTableFormat::Locations, 100, &table[..11]).len(),
            3
        );
    }
}
