//! [`RUN_DIR`], `/run/chroot-guard`: chroot-guard's private directory on
//! tmpfs (emptied at reboot), for the ring buffers' lock files
//! (`pin::RingLock`) and the memory of refused attach modes
//! ([`crate::memory`]).
//!
//! Only root (or the user chroot-guard runs as) may create names in it, so
//! nothing another user plants there can redirect, block or forge what
//! chroot-guard keeps. It is made 0700 and checked at every use through a
//! descriptor opened without following a symbolic link; its files are opened
//! relative to that descriptor (`openat(2)`), also without following links.

use std::{
    ffi::CString,
    fs::{DirBuilder, File, OpenOptions},
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    },
    path::PathBuf,
};

use crate::sys::trusted_owner;

/// Where chroot-guard keeps its lock files and the memory of refused modes.
pub const RUN_DIR: &str = "/run/chroot-guard";
/// Mode of [`RUN_DIR`]: nobody else may open a file in it (`flock(2)` needs
/// only an open descriptor, not write access).
const DIR_MODE: u32 = 0o700;
/// Mode of each file in [`RUN_DIR`].
pub const FILE_MODE: u32 = 0o600;

/// Why [`RUN_DIR`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirError {
    /// Creating, opening or reading it failed (a sentence with the error).
    Io(String),
    /// Something that is not chroot-guard's is in its place: a symbolic
    /// link or file, another owner, a mode that lets other users write.
    Foreign(String),
}

impl DirError {
    /// The sentence.
    pub fn why(&self) -> &str {
        match self {
            DirError::Io(s) | DirError::Foreign(s) => s,
        }
    }
}

/// [`RUN_DIR`], opened and checked: a real directory, owned by root (or this
/// process's user), that no one else can write.
pub struct RunDir {
    dir: File,
}

fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(io::Error::other)
}

impl RunDir {
    /// Opens [`RUN_DIR`] without following a symbolic link and checks it;
    /// with `create`, makes it (0700) when missing. One from an older version
    /// (0755) is tightened to 0700. `Ok(None)` when it is missing and
    /// `create` is false.
    ///
    /// # Errors
    /// [`DirError::Foreign`] when a symbolic link or file is in its place,
    /// another user owns it, or others can write it; [`DirError::Io`] when it
    /// cannot be created, opened or made private.
    pub fn open(create: bool) -> Result<Option<RunDir>, DirError> {
        if create {
            match DirBuilder::new().mode(DIR_MODE).create(RUN_DIR) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(DirError::Io(format!("could not create it: {e}"))),
            }
        }
        let dir = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(RUN_DIR)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            // O_NOFOLLOW with O_DIRECTORY: ELOOP or ENOTDIR for a symbolic
            // link, ENOTDIR for a file.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                return Err(DirError::Foreign("it is not a directory (a symbolic link or file is in its place)".into()))
            }
            Err(e) => return Err(DirError::Io(format!("could not open it: {e}"))),
        };
        let meta = dir.metadata().map_err(|e| DirError::Io(format!("could not read it: {e}")))?;
        if !trusted_owner(meta.uid()) {
            return Err(DirError::Foreign(format!("it is owned by uid {}, not by root", meta.uid())));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(DirError::Foreign(format!("other users can write it (mode {:o})", meta.mode() & 0o7777)));
        }
        if meta.mode() & 0o077 != 0 {
            dir.set_permissions(std::fs::Permissions::from_mode(DIR_MODE))
                .map_err(|e| DirError::Io(format!("could not make it private (chmod 0700): {e}")))?;
        }
        Ok(Some(RunDir { dir }))
    }

    /// The path of `name` in [`RUN_DIR`], for messages.
    pub fn path(name: &str) -> PathBuf {
        PathBuf::from(RUN_DIR).join(name)
    }

    /// `openat(2)` in the directory, never following a symbolic link
    /// (`O_NOFOLLOW | O_CLOEXEC` are added to `flags`).
    fn open_at(&self, name: &str, flags: i32, mode: u32) -> io::Result<File> {
        let c = c_name(name)?;
        // SAFETY: a valid directory descriptor and C string; the mode is
        // passed as the variadic argument open(2) reads with O_CREAT.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor openat just returned, owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Removes `name` (a symbolic link itself, never its target).
    fn unlink_at(&self, name: &str) -> io::Result<()> {
        let c = c_name(name)?;
        // SAFETY: a valid directory descriptor and C string.
        if unsafe { libc::unlinkat(self.dir.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Opens (or creates, [`FILE_MODE`]) the lock file `name` for reading
    /// and writing, without truncating it.
    ///
    /// # Errors
    /// The `openat(2)` error: `ELOOP` for a symbolic link in its place.
    pub fn open_lock(&self, name: &str) -> io::Result<File> {
        self.open_at(name, libc::O_RDWR | libc::O_CREAT, FILE_MODE)
    }

    /// Reads the private file `name` whole: `Ok(None)` when it is missing.
    /// It must be a regular file (opened without following a link and
    /// without blocking, so a FIFO is refused, not waited on) with one link,
    /// owned by root or this process's user, with no permission bits for
    /// group or others, and at most `max` bytes (read with one byte more, so
    /// a file that grows is refused too).
    ///
    /// # Errors
    /// A sentence saying which of those does not hold, or the read error.
    pub fn read_private(&self, name: &str, max: usize) -> Result<Option<Vec<u8>>, String> {
        let mut file = match self.open_at(name, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY, 0) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err("a symbolic link is in its place".into()),
            Err(e) => return Err(format!("could not open it: {e}")),
        };
        let meta = file.metadata().map_err(|e| format!("could not read it: {e}"))?;
        if !meta.file_type().is_file() {
            return Err("it is not a regular file".into());
        }
        if !trusted_owner(meta.uid()) {
            return Err(format!("it is owned by uid {}, not by root", meta.uid()));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(format!("its mode is {:o}: group or others have access", meta.mode() & 0o7777));
        }
        if meta.nlink() != 1 {
            return Err(format!("it has {} hard links", meta.nlink()));
        }
        if meta.len() > max as u64 {
            return Err(format!("it is {} bytes, more than {max}", meta.len()));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        (&mut file).take(max as u64 + 1).read_to_end(&mut bytes).map_err(|e| format!("could not read it: {e}"))?;
        if bytes.len() > max {
            return Err(format!("it grew past {max} bytes while read"));
        }
        Ok(Some(bytes))
    }

    /// Replaces `name` with `bytes` atomically: written to a temporary name
    /// of this process (created with `O_EXCL | O_NOFOLLOW`, [`FILE_MODE`];
    /// a leftover there is removed first), then renamed over `name`, which
    /// replaces whatever entry is there (a symbolic link is replaced, not
    /// followed). Readers see the old file or the new one, never a part.
    ///
    /// # Errors
    /// The I/O error; the temporary file is removed.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = format!(".{name}.{}.tmp", std::process::id());
        let create = || self.open_at(&tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, FILE_MODE);
        let mut file = match create() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.unlink_at(&tmp)?;
                create()?
            }
            other => other?,
        };
        let (c_tmp, c_name) = (c_name(&tmp)?, c_name(name)?);
        let result = file.write_all(bytes).and_then(|()| {
            let fd = self.dir.as_raw_fd();
            // SAFETY: valid directory descriptors and C strings.
            if unsafe { libc::renameat(fd, c_tmp.as_ptr(), fd, c_name.as_ptr()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
        if result.is_err() {
            let _ = self.unlink_at(&tmp);
        }
        result
    }
}
