//! `ps` without BPF: the chrooted processes from `/proc`, where the kernel
//! refuses the task iterator (or when asked: `source: 'proc'`).
//!
//! Each process's root, cwd and exe are what `readlink` of
//! `/proc/PID/{root,cwd,exe}` gives (`d_path()` from this process's root);
//! whether it is chrooted and whether its cwd is outside its root are
//! decided by walking `..` from file descriptors, which the kernel resolves
//! up across mounts, as the iterator's walk does. Processes that exit
//! during the scan, or whose files this process may not read, are skipped.

use std::{
    ffi::{CStr, CString, OsStr},
    fs,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
};

use chroot_guard_common::{exe_flags, tasks::task_flags, MAX_PATH_DEPTH};

use crate::{error::Error, ps::ChrootedTask};

/// Where a directory is: device, inode, mount id (`statx`, 5.8+).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Place {
    dev: (u32, u32),
    ino: u64,
    mnt_id: u64,
}

fn open_path(dir: Option<&OwnedFd>, path: &CStr) -> Option<OwnedFd> {
    let base = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: a NUL-terminated path; the fd returned is ours.
    let fd = unsafe { libc::openat(base, path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    // SAFETY: a fresh fd owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn place(fd: &OwnedFd) -> Option<Place> {
    // SAFETY: statx fills the zeroed buffer; an empty path with
    // AT_EMPTY_PATH names the fd itself.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(fd.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_INO | libc::STATX_MNT_ID, &mut st)
    };
    (rc == 0 && st.stx_mask & libc::STATX_MNT_ID != 0)
        .then_some(Place { dev: (st.stx_dev_major, st.stx_dev_minor), ino: st.stx_ino, mnt_id: st.stx_mnt_id })
}

/// Whether walking `..` up from `from` passes `root`: `Some(false)` at the
/// top of a mount tree (where `..` stays), `None` past
/// [`MAX_PATH_DEPTH`] steps or on an error.
fn is_below(root: Place, from: OwnedFd) -> Option<bool> {
    let mut fd = from;
    let mut here = place(&fd)?;
    for _ in 0..MAX_PATH_DEPTH {
        if here == root {
            return Some(true);
        }
        let up = open_path(Some(&fd), c"..")?;
        let there = place(&up)?;
        if there == here {
            return Some(false);
        }
        (fd, here) = (up, there);
    }
    None
}

/// The mount ids listed in `/proc/PID/mountinfo` at mount point `/`.
fn root_mount_ids(pid: &str) -> Vec<u64> {
    let text = fs::read(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let mut f = line.split(|&b| b == b' ');
            let id = std::str::from_utf8(f.next()?).ok()?.parse().ok()?;
            let point = f.nth(3)?;
            (point == b"/").then_some(id)
        })
        .collect()
}

/// The cgroup2 mount point, from this process's mountinfo.
fn cgroup2_mount() -> Option<Vec<u8>> {
    let text = fs::read("/proc/self/mountinfo").ok()?;
    text.split(|&b| b == b'\n').find_map(|line| {
        let (left, right) = split_once(line, b" - ")?;
        right.starts_with(b"cgroup2 ").then(|| left.split(|&b| b == b' ').nth(4).map(unescape_octal))?
    })
}

fn split_once<'a>(s: &'a [u8], sep: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    let i = s.windows(sep.len()).position(|w| w == sep)?;
    Some((&s[..i], &s[i + sep.len()..]))
}

/// mountinfo writes space, tab, newline and backslash as `\NNN`.
fn unescape_octal(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 3 < s.len() && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((s[i + 1] - b'0') * 64 + (s[i + 2] - b'0') * 8 + (s[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

fn readlink(path: &str) -> Option<Vec<u8>> {
    fs::read_link(path).ok().map(|p| p.into_os_string().as_bytes().to_vec())
}

fn stat_ino(path: &OsStr) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| m.ino())
}

/// A `Key:\tvalue` line of `/proc/PID/status`, first field of the value.
fn status_field(status: &str, key: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
}

/// Every chrooted process `/proc` shows.
///
/// # Errors
/// [`Error::Io`] when `/proc` cannot be listed.
pub fn scan() -> Result<Vec<ChrootedTask>, Error> {
    // SAFETY: sysconf has no preconditions.
    let tick = (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64;
    let cgroup2 = cgroup2_mount();
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        if let Some(task) = one(pid, tick, cgroup2.as_deref()) {
            out.push(task);
        }
    }
    Ok(out)
}

fn one(pid: &str, tick: u64, cgroup2: Option<&[u8]>) -> Option<ChrootedTask> {
    let root_fd = open_path(None, &CString::new(format!("/proc/{pid}/root/")).ok()?)?;
    let root_place = place(&root_fd)?;
    // The root of its mount namespace: `..` stays there (no parent mount in
    // reach), and its mount is one the namespace lists at `/`. A detached
    // root passes the first test and fails the second.
    let up = open_path(Some(&root_fd), c"..").and_then(|fd| place(&fd))?;
    let listed = root_mount_ids(pid).contains(&root_place.mnt_id);
    if up == root_place && listed {
        return None;
    }
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = fs::read(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the comm's closing parenthesis (field 2).
    let after = &stat[stat.iter().rposition(|&b| b == b')')? + 2..];
    let start_ticks: u64 = std::str::from_utf8(after).ok()?.split(' ').nth(19)?.parse().ok()?;
    let mut comm = fs::read(format!("/proc/{pid}/comm")).ok()?;
    if comm.last() == Some(&b'\n') {
        comm.pop();
    }
    // A chrooted task's mountinfo hides the mounts outside its root, so
    // only a root at the top of a tree it does not list is known to be
    // unreachable (detached, or another namespace's); a root below such a
    // top is not flagged here, only by the iterator.
    let mut flags = if up == root_place { task_flags::ROOT_UNREACHABLE } else { 0 };
    let cwd = readlink(&format!("/proc/{pid}/cwd"));
    if cwd.is_some() {
        flags |= task_flags::CWD_PRESENT;
        match open_path(None, &CString::new(format!("/proc/{pid}/cwd/")).ok()?).and_then(|fd| is_below(root_place, fd)) {
            Some(true) => {}
            Some(false) => flags |= task_flags::CWD_OUTSIDE_ROOT,
            None => flags |= task_flags::CWD_BELOW_UNKNOWN,
        }
    }
    let (exe, exe_bits) = match readlink(&format!("/proc/{pid}/exe")) {
        Some(mut path) => {
            use std::os::unix::fs::MetadataExt;
            let mut bits = exe_flags::PRESENT;
            // d_path marks an unlinked file; the iterator flags it instead.
            if fs::metadata(format!("/proc/{pid}/exe")).is_ok_and(|m| m.nlink() == 0) && path.ends_with(b" (deleted)") {
                path.truncate(path.len() - b" (deleted)".len());
                bits |= exe_flags::DELETED;
            }
            if path.starts_with(b"/memfd:") {
                bits |= exe_flags::MEMFD | exe_flags::UNREACHABLE;
            }
            (Some(path), bits)
        }
        None => (None, 0),
    };
    let cgroup_id = cgroup2.and_then(|mount| {
        let text = fs::read(format!("/proc/{pid}/cgroup")).ok()?;
        let line = text.split(|&b| b == b'\n').find(|l| l.starts_with(b"0::"))?;
        stat_ino(OsStr::from_bytes(&[mount, &line[3..]].concat()))
    });
    Some(ChrootedTask {
        tgid: pid.parse().ok()?,
        ppid: status_field(&status, "PPid:")?,
        uid: status_field(&status, "Uid:")?,
        mnt_ns: stat_ino(OsStr::new(&format!("/proc/{pid}/ns/mnt"))).unwrap_or(0) as u32,
        flags,
        exe_flags: exe_bits,
        start_ns: start_ticks * (1_000_000_000 / tick),
        cgroup_id,
        comm,
        root: readlink(&format!("/proc/{pid}/root"))?,
        cwd,
        exe,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_octal(br"/a\040b\134c"), b"/a b\\c");
        assert_eq!(unescape_octal(br"/x\04"), br"/x\04");
    }
}
