//! Reading another process's memory — and only reading: the tracer has no write path.
//!
//! Decoders take any [`ProcessMemory`], so they can be unit-tested on captured bytes.

use std::io;

/// Most bytes any single remote read may ask for; sizes come from untrusted target memory.
pub const MAX_READ: usize = 1 << 20;

/// Read-only access to a process's address space.
pub trait ProcessMemory {
    /// Fills `buf` from `addr`, all of it or an error.
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()>;

    /// The process id, where there is a live process (some decoding calibrates on it).
    fn pid(&self) -> Option<u32> {
        None
    }

    fn read_bytes(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        if len > MAX_READ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("refusing a {len}-byte remote read"),
            ));
        }
        let mut buf = vec![0; len];
        self.read(addr, &mut buf)?;
        Ok(buf)
    }

    fn read_u64(&self, addr: u64) -> io::Result<u64> {
        let mut buf = [0; 8];
        self.read(addr, &mut buf)?;
        Ok(u64::from_ne_bytes(buf))
    }

    fn read_u32(&self, addr: u64) -> io::Result<u32> {
        let mut buf = [0; 4];
        self.read(addr, &mut buf)?;
        Ok(u32::from_ne_bytes(buf))
    }
}

/// A live process, read with `process_vm_readv` (needs ptrace-read permission: root or same user).
#[derive(Clone, Copy, Debug)]
pub struct LiveProcess {
    pub pid: u32,
}

impl ProcessMemory for LiveProcess {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` covers exactly `buf`; the kernel checks `remote` against the target.
        let n =
            unsafe { libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        match n {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize != buf.len() => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short remote read at {addr:#x}: {n} of {} bytes", buf.len()),
            )),
            _ => Ok(()),
        }
    }
}

/// Memory captured earlier: `(start address, bytes)` regions. For decoder tests.
#[derive(Default, Debug)]
pub struct Snapshot {
    pub regions: Vec<(u64, Vec<u8>)>,
}

impl ProcessMemory for Snapshot {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        for (start, bytes) in &self.regions {
            let Some(offset) = addr.checked_sub(*start) else {
                continue;
            };
            let offset = offset as usize;
            if let Some(src) = bytes.get(offset..offset + buf.len()) {
                buf.copy_from_slice(src);
                return Ok(());
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr:#x} not in snapshot"),
        ))
    }
}
