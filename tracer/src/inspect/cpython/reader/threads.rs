//! The interpreter's threads and their Python stacks, from `_PyRuntime`.

use super::base::{corrupt, PyReader, Result};
use crate::inspect::{cpython::layout::ThreadId, memory::ProcessMemory};

/// Deepest Python stack we walk.
const MAX_FRAMES: usize = 1024;
/// Most thread states we follow.
const MAX_THREADS: usize = 4096;
/// Where the kernel tid may sit in glibc's thread descriptor (3.10's calibration scan).
const MAX_PTHREAD_SCAN: usize = 4096;

/// A thread known to the interpreter.
#[derive(Clone, Copy, Debug)]
pub struct ThreadState {
    pub addr: u64,
    pub native_thread_id: u64,
}

/// One frame of a thread's Python stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The `_PyInterpreterFrame` (3.10: `PyFrameObject`).
    pub addr: u64,
    /// Its code object (on 3.12+ the entry shim's frames hold other objects: check the type).
    pub code: u64,
}

impl<M: ProcessMemory> PyReader<'_, M> {
    fn main_interpreter(&self, runtime: u64) -> Result<u64> {
        let interp = self.u64_at(runtime.wrapping_add(self.layout.runtime_interpreters_head))?;
        if interp == 0 {
            return Err(corrupt(runtime, "no interpreter"));
        }
        Ok(interp)
    }

    /// Every thread state of the main interpreter, given `_PyRuntime`'s address.
    pub fn threads(&self, runtime: u64) -> Result<Vec<ThreadState>> {
        let l = self.layout;
        let interp = self.main_interpreter(runtime)?;
        let mut tstate = self.u64_at(interp.wrapping_add(l.interp_threads_head))?;
        let mut states = Vec::new();
        while tstate != 0 && states.len() < MAX_THREADS {
            let id = match l.tstate_thread_id {
                ThreadId::Native(offset) | ThreadId::Pthread(offset) => {
                    self.u64_at(tstate.wrapping_add(offset))?
                }
            };
            states.push((tstate, id));
            tstate = self.u64_at(tstate.wrapping_add(l.tstate_next))?;
        }
        let tid_offset = match l.tstate_thread_id {
            ThreadId::Native(_) => None,
            ThreadId::Pthread(_) => Some(self.pthread_tid_offset(runtime)?),
        };
        states
            .into_iter()
            .map(|(addr, id)| {
                let native_thread_id = match tid_offset {
                    None => id,
                    Some(offset) => u64::from(self.u32_at(id.wrapping_add(offset))?),
                };
                Ok(ThreadState {
                    addr,
                    native_thread_id,
                })
            })
            .collect()
    }

    /// Where glibc keeps the kernel tid in its thread descriptor (the `pthread_t` points at
    /// it): the first 4-byte word of the main thread's descriptor that equals the pid, the
    /// main thread's tid.
    fn pthread_tid_offset(&self, runtime: u64) -> Result<u64> {
        let pid = self
            .mem
            .pid()
            .ok_or_else(|| corrupt(runtime, "thread ids need a live process"))?;
        let main = self.u64_at(runtime.wrapping_add(self.layout.runtime_main_thread))?;
        // Page by page, stopping at the first unreadable one: the descriptor can sit fewer
        // than MAX_PTHREAD_SCAN bytes before the end of its mapping, and the tid is near its
        // start.
        let mut raw = Vec::with_capacity(MAX_PTHREAD_SCAN);
        while raw.len() < MAX_PTHREAD_SCAN {
            let at = main.wrapping_add(raw.len() as u64);
            let page_left = (0x1000 - (at & 0xfff)) as usize;
            match self.bytes_at(at, page_left.min(MAX_PTHREAD_SCAN - raw.len())) {
                Ok(chunk) => raw.extend_from_slice(&chunk),
                Err(e) if raw.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        raw.chunks_exact(4)
            .position(|c| u32::from_ne_bytes(c.try_into().expect("4 bytes")) == pid)
            .map(|i| i as u64 * 4)
            .ok_or_else(|| corrupt(main, "no tid in the main thread's descriptor"))
    }

    /// `sys.modules` of the main interpreter.
    pub fn sys_modules(&self, runtime: u64) -> Result<u64> {
        let interp = self.main_interpreter(runtime)?;
        self.u64_at(interp.wrapping_add(self.layout.interp_modules))
    }

    /// A thread's current frame (0 if it runs no Python code).
    pub fn current_frame(&self, thread: &ThreadState) -> Result<u64> {
        let mut frame = thread.addr;
        for offset in self.layout.tstate_current_frame {
            if frame == 0 {
                return Ok(0);
            }
            frame = self.u64_at(frame.wrapping_add(*offset))?;
        }
        Ok(frame)
    }

    /// A thread's Python stack, innermost first.
    pub fn frames(&self, thread: &ThreadState) -> Result<Vec<Frame>> {
        let l = self.layout;
        let mut frame = self.current_frame(thread)?;
        let mut frames = Vec::new();
        while frame != 0 && frames.len() < MAX_FRAMES {
            frames.push(Frame {
                addr: frame,
                code: self.frame_ref(frame.wrapping_add(l.frame_code))?,
            });
            frame = self.u64_at(frame.wrapping_add(l.frame_previous))?;
        }
        Ok(frames)
    }

    /// Code object addresses on a thread's Python stack, innermost first.
    pub fn stack(&self, thread: &ThreadState) -> Result<Vec<u64>> {
        Ok(self.frames(thread)?.into_iter().map(|f| f.code).collect())
    }
}
