//! Where libcuda is: which of the engine's processes map it, from which file, and the file
//! offsets of the driver-API functions in it (uprobes are placed by file and offset).
//!
//! libcuda is loaded late (when the framework first touches the GPU) and from paths that
//! vary by install (`/usr/lib/x86_64-linux-gnu`, `/usr/local/nvidia/lib64`, a container's
//! compat dir), so the target's own memory map is the only reliable source.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
};

use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use super::api::DRIVER_API;
use crate::{inspect::mapped, text::printable};

/// libcuda as one process maps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The path in the target's mount namespace, as /proc/PID/maps shows it, escaped for
    /// printing (see [`printable`]): for messages only.
    pub path: String,
    /// The same file seen from here, through the target's root.
    pub host_path: PathBuf,
    /// Device and inode: one file, whatever path it is reached by.
    pub file: (String, u64),
}

/// Whether a mapped file is the CUDA driver library (not libcudart, libcudnn, ...).
fn is_libcuda(path: &str) -> bool {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n == "libcuda.so" || n.starts_with("libcuda.so."))
}

/// libcuda in one line of /proc/PID/maps: `addr perms offset dev inode path`.
fn parse_maps_line(pid: u32, line: &str) -> Option<Mapping> {
    let mut fields = line.split_ascii_whitespace();
    let (_, _, _, dev, inode) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    // The path may contain spaces; everything after the inode is the path.
    let path = line
        .splitn(6, |c: char| c.is_ascii_whitespace())
        .nth(5)?
        .trim();
    if !path.starts_with('/') || path.ends_with(" (deleted)") || !is_libcuda(path) {
        return None;
    }
    Some(Mapping {
        path: printable(path).into_owned(),
        host_path: PathBuf::from(format!("/proc/{pid}/root{path}")),
        file: (dev.to_string(), inode.parse().ok()?),
    })
}

/// libcuda in process `pid`'s memory map, if it is loaded. A vanished process reads as
/// "not loaded" (the caller re-checks later anyway).
pub fn find(pid: u32) -> io::Result<Option<Mapping>> {
    let maps = match std::fs::read_to_string(format!("/proc/{pid}/maps")) {
        Ok(maps) => maps,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(maps.lines().find_map(|line| parse_maps_line(pid, line)))
}

/// `root` and all its descendants (vLLM's tensor-parallel workers are children of the
/// EngineCore process), from the parent pids in /proc/*/stat.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            if let Some(ppid) = parse_ppid(&stat) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        if let Some(kids) = children.get(&tree[i]) {
            tree.extend(kids);
        }
        i += 1;
    }
    tree
}

/// The parent pid from /proc/PID/stat: `pid (comm) state ppid ...`, where comm may hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// File offsets of [`DRIVER_API`]'s functions in one libcuda file, by table index.
pub type Offsets = Vec<Option<u64>>;

/// Reads the dynamic symbols of the library: only the headers and symbol tables, within
/// [`mapped::MAX_FILE_READ`] bytes, not the whole ~100 MB file; a path that is not a
/// regular file now (a FIFO or symlink put there since the mapping) is refused at once.
pub fn offsets(path: &Path) -> Result<Offsets, String> {
    let shown = || printable(&path.to_string_lossy()).into_owned();
    let file = mapped::open_regular(path).map_err(|e| format!("{}: {e}", shown()))?;
    let data = mapped::Capped::new(file);
    let elf = object::File::parse(&data).map_err(|e| format!("{}: {e}", shown()))?;
    let mut offsets = vec![None; DRIVER_API.len()];
    for symbol in elf.dynamic_symbols() {
        if !symbol.is_definition() {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        if let Some(i) = DRIVER_API.iter().position(|f| f.name == name) {
            offsets[i] = file_offset(&elf, symbol.address());
        }
    }
    Ok(offsets)
}

/// A virtual address of the ELF as an offset in its file, through the segment holding it.
fn file_offset<'data, R: object::ReadRef<'data>>(
    elf: &object::File<'data, R>,
    address: u64,
) -> Option<u64> {
    elf.segments().find_map(|segment| {
        let (offset, size) = segment.file_range();
        let start = segment.address();
        (start..start.saturating_add(size))
            .contains(&address)
            .then(|| offset.saturating_add(address - start))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_libcuda_lines_only() {
        let line = "7f1c2a000000-7f1c2a400000 r-xp 00000000 fd:01 1835 /usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04";
        assert_eq!(
            parse_maps_line(42, line),
            Some(Mapping {
                path: "/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04".into(),
                host_path: "/proc/42/root/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04".into(),
                file: ("fd:01".into(), 1835),
            })
        );
        for other in [
            "7f-7f r-xp 00000000 fd:01 1836 /opt/torch/lib/libcudart.so.13",
            "7f-7f r-xp 00000000 fd:01 1837 /usr/lib/libcuda.so.1 (deleted)",
            "7f-7f rw-p 00000000 00:00 0 ",
            "7f-7f rw-p 00000000 00:00 0 [heap]",
        ] {
            assert_eq!(parse_maps_line(42, other), None, "{other}");
        }
        let spaced = "7f-7f r-xp 00000000 fd:01 9 /my dir/libcuda.so";
        assert_eq!(
            parse_maps_line(1, spaced).unwrap().path,
            "/my dir/libcuda.so"
        );
    }

    #[test]
    fn a_fifo_or_sparse_decoy_named_libcuda_fails_fast() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("libcuda.so.1");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: plain mkfifo(3) on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = offsets(&fifo).unwrap_err();
        assert!(e.contains("FIFO"), "{e}");
        let sparse = dir.path().join("libcuda.so");
        std::fs::File::create(&sparse)
            .unwrap()
            .set_len(4 << 30)
            .unwrap();
        assert!(offsets(&sparse).is_err());
        // A path holding an escape sequence: escaped for messages, raw for opening.
        let m = parse_maps_line(1, "7f-7f r-xp 00000000 fd:01 9 /x\u{1b}[31m/libcuda.so").unwrap();
        assert_eq!(m.path, "/x\\u{1b}[31m/libcuda.so");
        assert_eq!(
            m.host_path,
            PathBuf::from("/proc/1/root/x\u{1b}[31m/libcuda.so")
        );
    }

    #[test]
    fn ppid_after_a_comm_with_parentheses() {
        assert_eq!(
            parse_ppid("123 (VLLM::Worker) (TP0) S 77 123 1 0"),
            Some(77)
        );
        assert_eq!(parse_ppid("1 (init) S 0 1 1"), Some(0));
    }

    #[test]
    fn this_process_tree_holds_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let tree = process_tree(std::process::id());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(tree[0], std::process::id());
        assert!(tree.contains(&child.id()), "{tree:?}");
    }
}
