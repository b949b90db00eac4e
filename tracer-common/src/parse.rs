//! The loader's side of the wire: ring-buffer records back into the types above, bytes only
//! (what a copied word means needs the target's CPython layout, which the loader knows).
//! Built with the `user` feature; the kernel side only writes.

use alloc::vec::Vec;

use aya::Pod;

use crate::{
    capture::{snap, Item, ScheduledEntry, SnapshotHeader},
    WatchHit,
};

/// The scheduler state the watch program copied at a snapshot hit, split into its parts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawSnapshot {
    pub header: SnapshotHeader,
    pub running: Vec<Item>,
    pub waiting: Vec<Item>,
    pub scheduled: Vec<ScheduledEntry>,
}

/// A `T` from the start of `bytes` (which have no alignment guarantee), and the bytes after.
fn read_pod<T: Pod>(bytes: &[u8]) -> Option<(T, &[u8])> {
    let size = size_of::<T>();
    if bytes.len() < size {
        return None;
    }
    // SAFETY: `T: Pod` (any bit pattern is a valid value) and the slice holds at least
    // size_of::<T>() bytes.
    let value = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) };
    Some((value, &bytes[size..]))
}

/// `n` values; `None` if the bytes are too few (checked first: `n` comes from the record,
/// and a count no record can hold must not size an allocation).
fn read_many<T: Pod>(mut bytes: &[u8], n: usize) -> Option<(Vec<T>, &[u8])> {
    if n.checked_mul(size_of::<T>())? > bytes.len() {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (value, rest) = read_pod::<T>(bytes)?;
        out.push(value);
        bytes = rest;
    }
    Some((out, bytes))
}

/// A record of a ring that carries only `T`s ([`crate::capture::RequestFacts`]); `None`
/// unless it is exactly one (a build mismatch).
pub fn fixed_record<T: Pod>(record: &[u8]) -> Option<T> {
    match read_pod::<T>(record)? {
        (value, []) => Some(value),
        _ => None,
    }
}

/// A record of the watch ring: the hit, and the snapshot after it when the hit took one;
/// `None` if the lengths do not add up.
pub fn watch_record(record: &[u8]) -> Option<(WatchHit, Option<RawSnapshot>)> {
    let (hit, rest) = read_pod::<WatchHit>(record)?;
    if rest.is_empty() {
        return Some((hit, None));
    }
    Some((hit, Some(RawSnapshot::parse(rest)?)))
}

impl RawSnapshot {
    /// Parses the bytes after the `WatchHit`; `None` if the lengths do not add up.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let (header, rest) = read_pod::<SnapshotHeader>(bytes)?;
        let items = |rest, n: u32| -> Option<(Vec<Item>, &[u8])> {
            if header.flags & snap::COMPACT == 0 {
                return read_many::<Item>(rest, n as usize);
            }
            let (objects, rest) = read_many::<u64>(rest, n as usize)?;
            Some((objects.into_iter().map(Item::bare).collect(), rest))
        };
        let (running, rest) = items(rest, header.n_running)?;
        let (waiting, rest) = items(rest, header.n_waiting)?;
        let (scheduled, rest) = read_many::<ScheduledEntry>(rest, header.n_scheduled as usize)?;
        rest.is_empty().then_some(Self {
            header,
            running,
            waiting,
            scheduled,
        })
    }
}

#[cfg(test)]
mod tests {
    use alloc::{vec, vec::Vec};

    use super::*;
    use crate::capture::{RequestFacts, ID_BYTES, REQUEST_FIELDS};

    /// A value's bytes, as the kernel side writes them.
    fn bytes<T: Pod>(value: &T) -> Vec<u8> {
        // SAFETY: viewing a plain-old-data value as its bytes.
        unsafe { core::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn hit() -> WatchHit {
        WatchHit {
            ktime_ns: 42,
            pid_tgid: (7 << 32) | 9,
            watch_addr: 0x1000,
            ip: 0x5500,
            queue_len: 3,
        }
    }

    fn item(object: u64) -> Item {
        Item {
            object,
            missing: 0b10,
            fields: [[object + 1, 0]; REQUEST_FIELDS],
        }
    }

    fn entry(key: u64) -> ScheduledEntry {
        ScheduledEntry {
            key,
            object: key + 8,
            value: [1, 2],
        }
    }

    /// A hit record followed by a snapshot: its header, then `parts` as written.
    fn record(header: SnapshotHeader, parts: &[Vec<u8>]) -> Vec<u8> {
        let mut out = bytes(&hit());
        out.extend(bytes(&header));
        parts.iter().for_each(|part| out.extend(part));
        out
    }

    #[test]
    fn a_bare_hit_has_no_snapshot() {
        assert_eq!(watch_record(&bytes(&hit())), Some((hit(), None)));
        assert_eq!(watch_record(&[0u8; 5]), None);
    }

    #[test]
    fn snapshots_split_into_queues_and_scheduled_entries() {
        let header = SnapshotHeader {
            flags: snap::RUNNING | snap::WAITING | snap::SCHEDULED,
            n_running: 2,
            n_waiting: 1,
            n_scheduled: 2,
            ..Default::default()
        };
        let parts = [item(0x10), item(0x20), item(0x30)]
            .iter()
            .map(bytes)
            .chain([entry(0x100), entry(0x200)].iter().map(bytes))
            .collect::<Vec<_>>();
        let expected = RawSnapshot {
            header,
            running: vec![item(0x10), item(0x20)],
            waiting: vec![item(0x30)],
            scheduled: vec![entry(0x100), entry(0x200)],
        };
        let full = record(header, &parts);
        assert_eq!(watch_record(&full), Some((hit(), Some(expected))));
        // One byte short, or one over: not a record this build wrote.
        assert_eq!(watch_record(&full[..full.len() - 1]), None);
        let mut long = full.clone();
        long.push(0);
        assert_eq!(watch_record(&long), None);
    }

    #[test]
    fn compact_items_are_bare_addresses() {
        let header = SnapshotHeader {
            flags: snap::COMPACT,
            n_running: 1,
            n_waiting: 2,
            ..Default::default()
        };
        let parts = [0x10u64, 0x20, 0x30].iter().map(bytes).collect::<Vec<_>>();
        let (_, snapshot) = watch_record(&record(header, &parts)).unwrap();
        let snapshot = snapshot.unwrap();
        assert_eq!(snapshot.running, vec![Item::bare(0x10)]);
        assert_eq!(snapshot.waiting, vec![Item::bare(0x20), Item::bare(0x30)]);
        assert!(snapshot.scheduled.is_empty());
    }

    #[test]
    fn counts_no_record_holds_are_refused_before_allocating() {
        let header = SnapshotHeader {
            n_running: u32::MAX,
            n_scheduled: u32::MAX,
            ..Default::default()
        };
        assert_eq!(watch_record(&record(header, &[])), None);
        assert_eq!(read_many::<Item>(&[0; 8], usize::MAX), None);
    }

    #[test]
    fn fixed_records_are_exactly_one_value() {
        let facts = RequestFacts {
            object: 0x10,
            id: 0x20,
            missing: 0b100,
            fields: [[1, 2], [3, 4], [5, 6]],
            first_event: [8, 9],
            id_bytes: [7; ID_BYTES],
        };
        let record = bytes(&facts);
        assert_eq!(fixed_record::<RequestFacts>(&record), Some(facts));
        assert_eq!(fixed_record::<RequestFacts>(&record[1..]), None);
        assert_eq!(
            fixed_record::<RequestFacts>(&[record, vec![0]].concat()),
            None
        );
    }
}
