//! Output directories and files that are safe to write as root.
//!
//! The tracer runs as root next to directories other users own. A plain create-and-truncate
//! of `DIR/steps.csv` follows a symbolic link planted there and overwrites whatever it points
//! to (as root: any file). So every writer (the CSV sinks, run.json, trace.json, report,
//! export) goes through [`OutDir`]:
//! - the directory is opened once, without following a symlink at its own name, and must
//!   belong to root or to the invoking user (`SUDO_UID` under sudo), so nobody else can plant
//!   links in it between our checks and our writes;
//! - files are created relative to that descriptor with `O_NOFOLLOW`, always as a new file:
//!   a regular file already there is unlinked first (so a hard link to someone else's file is
//!   never written through), anything else at the name (symlink, FIFO, directory, socket) is
//!   refused and left alone;
//! - under sudo, the directories and files created are handed to `SUDO_UID:SUDO_GID`, so the
//!   user can read, report on and delete their own trace without sudo.

use std::{
    ffi::OsStr,
    fs::File,
    io::{self, Read as _, Write as _},
    os::fd::{AsFd, OwnedFd},
    path::{Component, Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use rustix::fs::{self as rfs, AtFlags, FileType, FlockOperation, Mode, OFlags, CWD};

/// Who the tracer works for: the user behind sudo, or whoever runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invoker {
    pub uid: u32,
    pub gid: u32,
    /// Set when the ids came from sudo's `SUDO_UID`/`SUDO_GID`.
    pub sudo: bool,
}

impl Invoker {
    /// `SUDO_UID`/`SUDO_GID` when set, else the real uid and gid. Half of the pair, or a
    /// value that is not a number, is an error: guessing would hand files to the wrong user.
    pub fn get() -> Result<Self> {
        let var = |name: &str| -> Result<Option<u32>> {
            match std::env::var_os(name) {
                None => Ok(None),
                Some(v) => v
                    .to_str()
                    .and_then(|s| s.trim().parse().ok())
                    .map(Some)
                    .ok_or_else(|| anyhow!("{name}={v:?} is not a numeric id")),
            }
        };
        match (var("SUDO_UID")?, var("SUDO_GID")?) {
            (Some(uid), Some(gid)) => Ok(Self {
                uid,
                gid,
                sudo: true,
            }),
            (None, None) => Ok(Self {
                uid: rustix::process::getuid().as_raw(),
                gid: rustix::process::getgid().as_raw(),
                sudo: false,
            }),
            _ => bail!("only one of SUDO_UID and SUDO_GID is set; set both or neither"),
        }
    }

    /// The ids to hand created files and directories to: under sudo, when we are root and
    /// the invoking user is not.
    pub fn hand_over(&self) -> Option<(u32, u32)> {
        let root = rustix::process::geteuid().is_root();
        (self.sudo && root && self.uid != 0).then_some((self.uid, self.gid))
    }

    /// Owners an output directory may have: root, us, and the invoking user.
    fn may_own(&self, uid: u32) -> bool {
        uid == 0 || uid == self.uid || uid == rustix::process::getuid().as_raw()
    }
}

/// An output directory, open. Everything written into it goes through this descriptor.
#[derive(Debug)]
pub struct OutDir {
    fd: OwnedFd,
    path: PathBuf,
    /// Owner and group for what we create (sudo), see [`Invoker::hand_over`].
    owner: Option<(u32, u32)>,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl OutDir {
    /// Opens `path` as an output directory, creating it and any missing parents first
    /// (handed to the invoking user under sudo).
    pub fn create(path: &Path) -> Result<Self> {
        let invoker = Invoker::get()?;
        let owner = invoker.hand_over();
        // Without trailing slashes: `link/` would make the kernel follow `link`.
        let path: PathBuf = match path.components().collect::<PathBuf>() {
            p if p.as_os_str().is_empty() => ".".into(),
            p => p,
        };
        make_dirs(&path, owner).with_context(|| format!("creating {}", path.display()))?;
        let fd = rfs::openat(CWD, &path, DIR_FLAGS, Mode::empty())
            .map_err(|e| refusal(&path, e, "directory", "creating"))?;
        let dir = Self { fd, path, owner };
        dir.check_owner(&invoker)?;
        Ok(dir)
    }

    fn check_owner(&self, invoker: &Invoker) -> Result<()> {
        let st =
            rfs::fstat(&self.fd).with_context(|| format!("reading {}", self.path.display()))?;
        if !invoker.may_own(st.st_uid) {
            bail!(
                "refusing to write into {}: it belongs to uid {}, not to root or to the \
                 invoking user (uid {}), who could plant links in it; pick a directory you own",
                self.path.display(),
                st.st_uid,
                invoker.uid
            );
        }
        Ok(())
    }

    /// The directory's path, as given: for messages and for readers.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name`'s path in this directory, for messages.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Another descriptor of the same open directory.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
            owner: self.owner,
        })
    }

    /// Subdirectory `name`, created if missing, with the same checks as [`Self::create`].
    pub fn subdir(&self, name: &str) -> Result<Self> {
        let path = self.join(name);
        check_name(name)?;
        match rfs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o777)) {
            Ok(()) => {
                let fd = rfs::openat(&self.fd, name, DIR_FLAGS, Mode::empty())
                    .map_err(|e| refusal(&path, e, "directory", "creating"))?;
                self.hand_over(&fd, &path)?;
            }
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
        let fd = rfs::openat(&self.fd, name, DIR_FLAGS, Mode::empty())
            .map_err(|e| refusal(&path, e, "directory", "creating"))?;
        let dir = Self {
            fd,
            path,
            owner: self.owner,
        };
        dir.check_owner(&Invoker::get()?)?;
        Ok(dir)
    }

    /// A new, empty regular file `name` in this directory, open for writing. A regular file
    /// already there is replaced; a symlink, FIFO, directory or socket is refused.
    pub fn create_file(&self, name: &str) -> Result<File> {
        let path = self.join(name);
        check_name(name)?;
        let flags = OFlags::WRONLY
            .union(OFlags::CREATE)
            .union(OFlags::EXCL)
            .union(OFlags::NOFOLLOW)
            .union(OFlags::CLOEXEC);
        // Unlink-and-create races with whoever else can write the directory (root or the
        // invoking user only, see `check_owner`): a few rounds, then give up.
        for _ in 0..3 {
            match rfs::openat(&self.fd, name, flags, Mode::from_raw_mode(0o666)) {
                Ok(fd) => {
                    self.hand_over(&fd, &path)?;
                    return Ok(File::from(fd));
                }
                Err(rustix::io::Errno::EXIST) => {
                    self.refuse_if_not_regular(name)?;
                    match rfs::unlinkat(&self.fd, name, AtFlags::empty()) {
                        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                        Err(e) => {
                            return Err(e).with_context(|| format!("replacing {}", path.display()))
                        }
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        bail!(
            "creating {}: something keeps recreating it while the tracer replaces it",
            path.display()
        )
    }

    /// Writes `bytes` as the new file `name`, synced to disk.
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let mut file = self.create_file(name)?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", self.join(name).display()))
    }

    /// Reads file `name` of this directory; a symlink there is not followed.
    pub fn read_to_string(&self, name: &str) -> Result<String> {
        let path = self.join(name);
        check_name(name)?;
        let flags = OFlags::RDONLY
            .union(OFlags::NOFOLLOW)
            .union(OFlags::NONBLOCK)
            .union(OFlags::CLOEXEC);
        let fd = rfs::openat(&self.fd, name, flags, Mode::empty())
            .map_err(|e| refusal(&path, e, "file", "reading"))?;
        self.refuse_if_not_regular(name)?;
        let mut text = String::new();
        File::from(fd)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(text)
    }

    /// Refuses, before anything is written, if any of `names` exists as something other than
    /// a regular file: a trace should not run for minutes to fail at its first file.
    pub fn check_names(&self, names: &[&str]) -> Result<()> {
        names
            .iter()
            .try_for_each(|name| self.refuse_if_not_regular(name))
    }

    /// An exclusive lock on the directory (a descriptor of its own, so the lock is not
    /// shared with clones of this one), held until the returned file is closed; fails at
    /// once if another process holds it.
    pub fn lock(&self) -> Result<File> {
        let fd = rfs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())
            .with_context(|| format!("opening {}", self.path.display()))?;
        rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive).map_err(|e| {
            anyhow!(
                "{} is in use by another tracer (give this one its own -o DIR): {}",
                self.path.display(),
                io::Error::from(e)
            )
        })?;
        Ok(File::from(fd))
    }

    fn refuse_if_not_regular(&self, name: &str) -> Result<()> {
        let path = self.join(name);
        match rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => Ok(()),
                other => bail!(
                    "refusing to write {}: it is {}, not a regular file (the tracer never \
                     follows or replaces one; remove it if it is yours)",
                    path.display(),
                    describe(other)
                ),
            },
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn hand_over(&self, fd: impl AsFd, path: &Path) -> Result<()> {
        let Some((uid, gid)) = self.owner else {
            return Ok(());
        };
        rfs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .with_context(|| format!("handing {} to uid {uid} gid {gid}", path.display()))
    }
}

/// Creates file `path` for an `-o FILE` option: its directory as [`OutDir::create`], then
/// the file as [`OutDir::create_file`].
pub fn create_file(path: &Path) -> Result<File> {
    let (dir, name) = parent_and_name(path)?;
    OutDir::create(dir)?.create_file(name)
}

/// [`create_file`], then writes `bytes` and syncs.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let (dir, name) = parent_and_name(path)?;
    OutDir::create(dir)?.write(name, bytes)
}

/// The directory and file name of an output file path.
pub fn parent_and_name(path: &Path) -> Result<(&Path, &str)> {
    let name = path
        .file_name()
        .and_then(OsStr::to_str)
        .with_context(|| format!("{}: not a file name", path.display()))?;
    Ok((path.parent().unwrap_or(Path::new(".")), name))
}

/// One plain path component: no separator, not `.` or `..`.
fn check_name(name: &str) -> Result<()> {
    let mut components = Path::new(name).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(_)), None) if !name.contains('/') => Ok(()),
        _ => bail!("{name:?} is not a plain file name"),
    }
}

/// Creates the missing directories of `path`, top down; each one created here (not one
/// that appeared meanwhile) is handed to `owner`.
fn make_dirs(path: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = path;
    loop {
        match std::fs::symlink_metadata(at) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(at),
            Err(e) => return Err(e),
        }
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => break,
        }
    }
    for dir in missing.into_iter().rev() {
        match rfs::mkdirat(CWD, dir, Mode::from_raw_mode(0o777)) {
            Ok(()) => {
                if let Some((uid, gid)) = owner {
                    let fd = rfs::openat(CWD, dir, DIR_FLAGS, Mode::empty())?;
                    rfs::fchown(
                        &fd,
                        Some(rustix::fs::Uid::from_raw(uid)),
                        Some(rustix::fs::Gid::from_raw(gid)),
                    )?;
                }
            }
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The error of `verb`ing `path`, opened without following links: a symlink there
/// (`ELOOP`, or `ENOTDIR` with `O_DIRECTORY`) gets its own words.
fn refusal(path: &Path, e: rustix::io::Errno, what: &str, verb: &str) -> anyhow::Error {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return anyhow!(
            "refusing to use {}: it is a symbolic link, which the tracer never follows \
             (give the {what} it points to instead)",
            path.display()
        );
    }
    anyhow::Error::from(io::Error::from(e)).context(format!("{verb} {}", path.display()))
}

fn describe(t: FileType) -> &'static str {
    match t {
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Directory => "a directory",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "not a regular file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn creates_missing_parents_and_replaces_a_regular_file() {
        let tmp = dir();
        let out = OutDir::create(&tmp.path().join("a/b")).unwrap();
        out.write("x.csv", b"old").unwrap();
        // A hard link to the old file keeps the old bytes: the file is replaced, not
        // written through.
        std::fs::hard_link(out.join("x.csv"), tmp.path().join("linked")).unwrap();
        out.write("x.csv", b"new").unwrap();
        assert_eq!(std::fs::read(out.join("x.csv")).unwrap(), b"new");
        assert_eq!(std::fs::read(tmp.path().join("linked")).unwrap(), b"old");
        assert_eq!(out.read_to_string("x.csv").unwrap(), "new");
    }

    #[test]
    fn refuses_symlinks_fifos_and_directories_at_a_file_name() {
        let tmp = dir();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let out = OutDir::create(&tmp.path().join("out")).unwrap();
        std::os::unix::fs::symlink(&victim, out.join("link.csv")).unwrap();
        std::fs::create_dir(out.join("dir.csv")).unwrap();
        let fifo = std::ffi::CString::new(out.join("fifo.csv").to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        for (name, what) in [
            ("link.csv", "a symbolic link"),
            ("dir.csv", "a directory"),
            ("fifo.csv", "a FIFO"),
        ] {
            let e = format!("{:#}", out.write(name, b"x").unwrap_err());
            assert!(e.contains(name) && e.contains(what), "{e}");
            let e = format!("{:#}", out.check_names(&[name]).unwrap_err());
            assert!(e.contains(what), "{e}");
        }
        assert!(out.read_to_string("link.csv").is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert!(out.check_names(&["absent.csv"]).is_ok());
        assert!(out.write("../escape", b"x").is_err());
        assert!(out.subdir("link.csv").is_err());
    }

    #[test]
    fn refuses_a_symlinked_output_directory() {
        let tmp = dir();
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("real"), tmp.path().join("link")).unwrap();
        for given in ["link", "link/", "link//"] {
            let e = format!("{:#}", OutDir::create(&tmp.path().join(given)).unwrap_err());
            assert!(e.contains("symbolic link"), "{given}: {e}");
        }
        assert!(OutDir::create(&tmp.path().join("real"))
            .unwrap()
            .subdir("dp0")
            .is_ok());
    }
}
