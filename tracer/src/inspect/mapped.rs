//! Files the target maps, opened and parsed as hostile input.
//!
//! The tracer runs as root and reads ELF files whose paths a target process chose (its
//! memory map): a decoy named like libpython may be a multi-GB sparse file, a FIFO (which
//! blocks a plain `open` until a writer comes), a symlink planted after the mapping, or an
//! ELF whose headers claim huge tables. So a file is opened without following a final
//! symlink and without blocking, refused unless it is a regular file, and read only through
//! [`Capped`]: the headers and tables the parser asks for, within a byte budget, never the
//! whole file.

use std::{
    cell::Cell,
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    ops::Range,
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    rc::Rc,
};

use object::{read::ReadCache, ReadRef};

/// Most bytes read from one mapped file. Far above what the ELF headers and symbol tables
/// of libpython (a few MB with `.symtab`) or libcuda (~1 MB of dynamic symbols) need.
pub const MAX_FILE_READ: u64 = 64 << 20;

/// Opens `path` read-only for parsing: no final symlink followed (`O_NOFOLLOW`), no wait
/// on a FIFO or device (`O_NONBLOCK`), not inherited by `tracer run`'s command
/// (`O_CLOEXEC`); anything but a regular file is refused.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::Error::new(e.kind(), "a symlink, not the mapped file"),
            _ => e,
        })?;
    check_regular(file)
}

fn check_regular(file: File) -> io::Result<File> {
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{what}, not a regular file: skipped"),
    ))
}

/// The file process `pid` maps at `range`, and where it was opened from: the mapping's own
/// `/proc/PID/map_files` link first (exactly the inode mapped, even if its path was since
/// replaced or deleted; needs CAP_SYS_ADMIN), else `path` through the process's root (its
/// mount namespace), with [`open_regular`]'s checks either way.
pub fn open_mapping(pid: u32, range: Range<u64>, path: &str) -> io::Result<(File, PathBuf)> {
    let link = PathBuf::from(format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        range.start, range.end
    ));
    // The link is a magic link to the mapped inode: followed on purpose (no O_NOFOLLOW).
    let by_link = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&link);
    match by_link {
        Ok(file) => return check_regular(file).map(|f| (f, link)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {}
        Err(e) => return Err(e),
    }
    let on_disk = PathBuf::from(format!("/proc/{pid}/root{path}"));
    open_regular(&on_disk).map(|f| (f, on_disk))
}

/// A file whose reads stop after a shared budget of bytes.
pub struct Budgeted {
    file: File,
    left: Rc<Cell<u64>>,
}

impl Read for Budgeted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left.get();
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::other("read budget spent"));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        self.left.set(left - n as u64);
        Ok(n)
    }
}

impl Seek for Budgeted {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}

/// An ELF file read on demand through `object`'s [`ReadCache`], at most
/// [`MAX_FILE_READ`] bytes in all (a read that would pass it fails before its buffer is
/// allocated, so a header claiming a 5 GB table costs nothing).
pub struct Capped {
    cache: ReadCache<Budgeted>,
    left: Rc<Cell<u64>>,
}

impl Capped {
    pub fn new(file: File) -> Self {
        Self::with_budget(file, MAX_FILE_READ)
    }

    pub fn with_budget(file: File, budget: u64) -> Self {
        let left = Rc::new(Cell::new(budget));
        Self {
            cache: ReadCache::new(Budgeted {
                file,
                left: left.clone(),
            }),
            left,
        }
    }
}

impl<'a> ReadRef<'a> for &'a Capped {
    fn len(self) -> Result<u64, ()> {
        (&self.cache).len()
    }

    fn read_bytes_at(self, offset: u64, size: u64) -> Result<&'a [u8], ()> {
        // Cached ranges cost nothing more; a new one must fit in what is left.
        if size > self.left.get() {
            return Err(());
        }
        (&self.cache).read_bytes_at(offset, size)
    }

    fn read_bytes_at_until(self, range: Range<u64>, delimiter: u8) -> Result<&'a [u8], ()> {
        (&self.cache).read_bytes_at_until(range, delimiter)
    }
}

#[cfg(test)]
mod tests {
    use object::Object as _;

    use super::*;

    #[test]
    fn a_fifo_is_refused_at_once_and_a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("libpython3.99.so");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: plain mkfifo(3) on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A plain open would block here until a writer opened the FIFO.
        let e = open_regular(&fifo).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");

        let target = dir.path().join("real");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = open_regular(&link).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert!(open_regular(&target).is_ok());
        assert!(open_regular(dir.path()).is_err(), "a directory");
    }

    #[test]
    fn a_huge_sparse_file_costs_only_the_bytes_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libpython3.99.so");
        let file = File::create(&path).unwrap();
        file.set_len(6 << 30).unwrap();
        let capped = Capped::new(open_regular(&path).unwrap());
        assert!(object::File::parse(&capped).is_err(), "zeros are no ELF");
        assert!(
            MAX_FILE_READ - capped.left.get() <= 4096,
            "read {} bytes",
            MAX_FILE_READ - capped.left.get()
        );
        // One read larger than the budget fails before anything is allocated or read.
        assert_eq!((&capped).read_bytes_at(0, MAX_FILE_READ + 1), Err(()));
    }

    #[test]
    fn a_real_elf_parses_within_the_budget() {
        let exe = std::env::current_exe().unwrap();
        let capped = Capped::new(open_regular(&exe).unwrap());
        let elf = object::File::parse(&capped).unwrap();
        assert!(elf.symbols().count() > 0);
        // A budget too small for the symbol table fails the parse instead of reading on.
        let tiny = Capped::with_budget(open_regular(&exe).unwrap(), 4096);
        let parsed = object::File::parse(&tiny).map(|elf| elf.symbols().count());
        assert!(!matches!(parsed, Ok(n) if n > 0), "{parsed:?}");
    }
}
