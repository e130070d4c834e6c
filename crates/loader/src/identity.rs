//! Identities the policy is matched against that are not strings: a file's
//! (device, inode), as the kernel sees `inode->i_sb->s_dev` and
//! `inode->i_ino`, and the initial mount namespace.
//!
//! Both are read when a policy is written to the kernel. A path can be
//! aliased by anyone who can make mounts (a bind mount in a user namespace
//! of their own); a file's identity cannot.

use std::{ffi::CString, io, path::Path};

use chroot_guard_common::policy::kernel_dev;

/// A file as the kernel identifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    /// `inode->i_sb->s_dev` in the kernel's encoding (major << 20 | minor).
    pub dev: u32,
    /// `inode->i_ino`.
    pub ino: u64,
}

/// The identity of the file at `path` (symbolic links followed, as the
/// kernel's `exe_file` is the file they lead to).
///
/// The device comes from the mount's line in `/proc/self/mountinfo`
/// (found by `statx`'s mount id), which prints the superblock's `s_dev`:
/// `stat`'s `st_dev` differs from it on btrfs subvolumes.
///
/// # Errors
/// The `statx(2)` error (e.g. `NotFound`).
pub fn file_identity(path: &Path) -> io::Result<FileIdentity> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: statx writes into the zeroed struct we pass.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and struct pointer.
    let r = unsafe {
        libc::statx(libc::AT_FDCWD, c.as_ptr(), 0, libc::STATX_INO | libc::STATX_MNT_ID, &mut stx)
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let from_stat = kernel_dev(stx.stx_dev_major, stx.stx_dev_minor);
    let dev = if stx.stx_mask & libc::STATX_MNT_ID != 0 {
        mount_dev(stx.stx_mnt_id).unwrap_or(from_stat)
    } else {
        from_stat
    };
    Ok(FileIdentity { dev, ino: stx.stx_ino })
}

/// The `major:minor` of mount `id` in `/proc/self/mountinfo`, encoded as
/// the kernel encodes `s_dev`.
fn mount_dev(id: u64) -> Option<u32> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let mut fields = line.split(' ');
        if fields.next()?.parse::<u64>().ok()? != id {
            return None;
        }
        let (major, minor) = fields.nth(1)?.split_once(':')?;
        Some(kernel_dev(major.parse().ok()?, minor.parse().ok()?))
    })
}

/// Where the initial mount namespace is read from: pid 1's, as the
/// loader's `/proc` shows it (the host's init when the loader runs in the
/// host's pid namespace, as a guard does).
pub const INITIAL_MNT_NS: &str = "/proc/1/ns/mnt";

/// `MNT_NS_INIT_INO` (`include/uapi/linux/nsfs.h`): kernels since 6.18 give
/// the initial mount namespace this fixed inode number (earlier ones
/// allocate it at boot like any other).
const FIXED_INIT_MNT_NS: u32 = 0xEFFF_FFF8;

/// Inode number of the initial mount namespace: pid 1's
/// ([`INITIAL_MNT_NS`]); where reading pid 1's namespaces is refused (a
/// process without every capability pid 1 has), the loader's own when it
/// carries the fixed initial number.
///
/// # Errors
/// The error of reading pid 1's namespace when neither works.
pub fn initial_mnt_ns() -> io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(INITIAL_MNT_NS) {
        Ok(m) => Ok(m.ino() as u32),
        Err(e) => match std::fs::metadata("/proc/self/ns/mnt") {
            Ok(m) if m.ino() as u32 == FIXED_INIT_MNT_NS => Ok(FIXED_INIT_MNT_NS),
            _ => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn identity_matches_stat_on_a_plain_file_system() {
        let dir = std::env::temp_dir();
        let file = dir.join(format!("cg-identity-{}", std::process::id()));
        std::fs::write(&file, b"x").expect("temp file");
        let id = file_identity(&file).expect("identity");
        let meta = std::fs::metadata(&file).expect("stat");
        std::fs::remove_file(&file).ok();
        assert_eq!(id.ino, meta.ino());
        let dev = meta.dev();
        assert_eq!(id.dev, kernel_dev(libc::major(dev), libc::minor(dev)));
        assert_eq!(file_identity(Path::new("/nonexistent/cg")).map_err(|e| e.kind()), Err(io::ErrorKind::NotFound));
    }
}
