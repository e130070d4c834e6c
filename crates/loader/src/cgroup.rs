//! cgroup v2 ids to paths, and what a path says about a container: the
//! container attribution of events (`ts/cgroup.ts`; [`container_of`] for
//! the lines the reader thread writes, `crate::lines`).
//!
//! Every event carries the caller's cgroup id (`bpf_get_current_cgroup_id`:
//! the kernfs node id of its cgroup in the v2 hierarchy, which on 64-bit
//! kernels is also the directory's inode number). The id is turned into a
//! path here, in user space, by opening the cgroup directory from a kernfs
//! file handle (`open_by_handle_at(2)` with the 8-byte `FILEID_KERNFS`
//! handle that `name_to_handle_at(2)` gives for a cgroup directory) on the
//! cgroup2 mount, then reading the path of that descriptor
//! (`/proc/self/fd/N`). That is exact (no scan of the tree, no guess from
//! inode numbers) and costs two syscalls per cgroup, not per event: ids are
//! never reused within a boot, so the caller caches the answer. Doing it in
//! the kernel instead (the `kn->name` chain walked per event) would also
//! name cgroups removed before user space looks, but at a cost on every
//! event; a cgroup that is gone is reported as [`CgroupPath::Removed`]
//! here, not hidden.
//!
//! Needs CAP_DAC_READ_SEARCH (in the initial user namespace) for
//! `open_by_handle_at`, and a cgroup2 mount in this process's mount
//! namespace.

use std::{
    ffi::{CString, OsStr},
    fs, io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    sync::{Mutex, OnceLock},
};

use regex::Regex;

/// `FILEID_KERNFS` (`include/linux/exportfs.h`): the handle type of kernfs
/// (and so cgroup) file handles; the handle is the node id, a `u64`.
const FILEID_KERNFS: i32 = 0xfe;

/// What `d_path` appends to the path of a removed directory.
const DELETED: &[u8] = b" (deleted)";

/// The path of a cgroup id, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupPath {
    /// The path relative to the root of the cgroup v2 hierarchy (as this
    /// process's cgroup namespace sees it): `/` for the root cgroup, else
    /// `/a/b`, raw bytes (cgroup names are any bytes but `/` and NUL).
    Found(Vec<u8>),
    /// No cgroup has this id now: it was removed (`ESTALE`), as a cgroup is
    /// once its last process has exited and its manager removed it.
    Removed,
}

/// Why a cgroup id could not be looked up at all (not the id's fault).
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup2 file system is mounted in this mount namespace.
    #[error("no cgroup2 file system is mounted in this mount namespace (/proc/self/mountinfo); mount one (mount -t cgroup2 none /sys/fs/cgroup) to resolve cgroup ids")]
    NoMount,
    /// `open_by_handle_at` was refused: it needs CAP_DAC_READ_SEARCH in the
    /// initial user namespace.
    #[error(
        "open_by_handle_at on the cgroup2 mount was refused (EPERM): resolving cgroup ids needs CAP_DAC_READ_SEARCH"
    )]
    Denied,
    /// Another failure (the kernel does not export cgroup file handles,
    /// descriptors exhausted, …).
    #[error("cannot resolve cgroup id {id}: {source}")]
    Io {
        /// The id.
        id: u64,
        /// The failure.
        source: io::Error,
    },
}

/// The cgroup2 mount ids are resolved on: a descriptor of its directory
/// (opened for reading: `open_by_handle_at` refuses an `O_PATH` one with
/// EBADF), where it is mounted (as `/proc/self/fd` paths start) and which
/// directory of the hierarchy its root is (mountinfo's root field).
struct Mount {
    fd: OwnedFd,
    dir: Vec<u8>,
    root: Vec<u8>,
    /// `/proc/self/fd`, open: `readlinkat` on it skips resolving three
    /// procfs names per lookup (half its cost on the development host).
    proc_fd: OwnedFd,
}

/// The mount, found on first use; a failure is tried again on the next
/// call (a cgroup2 mount may appear later).
static MOUNT: Mutex<Option<Mount>> = Mutex::new(None);

/// A mountinfo path field with its octal escapes (`\040` for a space)
/// decoded.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The cgroup2 mounts of a mountinfo text as (root, mount point), those
/// of the whole hierarchy (root `/`) first.
fn cgroup2_mounts(mountinfo: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut found: Vec<(Vec<u8>, Vec<u8>)> = mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            if after.split(' ').next()? != "cgroup2" {
                return None;
            }
            let mut f = before.split(' ');
            let root = unescape(f.nth(3)?);
            let dir = unescape(f.next()?);
            Some((root, dir))
        })
        .collect();
    found.sort_by_key(|(root, _)| root.as_slice() != b"/");
    found
}

/// Opens a directory for reading.
fn open_dir(path: &[u8]) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a valid C string; the descriptor is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor we just opened and own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_mount() -> Result<Mount, CgroupError> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(|source| CgroupError::Io { id: 0, source })?;
    let proc_fd = open_dir(b"/proc/self/fd").map_err(|source| CgroupError::Io { id: 0, source })?;
    for (root, dir) in cgroup2_mounts(&text) {
        if let Ok(fd) = open_dir(&dir) {
            return Ok(Mount { fd, dir, root, proc_fd });
        }
    }
    Err(CgroupError::NoMount)
}

/// The handle of `open_by_handle_at`: `struct file_handle` with its 8 bytes.
#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: u64,
}

/// Opens the cgroup directory of `id` on `mount`, as an `O_PATH`
/// descriptor: only its path is wanted, and a kernfs directory opened for
/// reading costs twice as much.
fn open_id(mount: &Mount, id: u64) -> io::Result<OwnedFd> {
    let mut handle = KernfsHandle { handle_bytes: 8, handle_type: FILEID_KERNFS, id };
    // SAFETY: `handle` is a `struct file_handle` of 8 bytes; the kernel
    // reads it and returns a new descriptor, owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.fd.as_raw_fd(),
            std::ptr::from_mut(&mut handle),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?) })
}

/// What `/proc/self/fd/N` says `fd` is: its path in this mount namespace.
fn read_fd_link(mount: &Mount, fd: &OwnedFd) -> io::Result<Vec<u8>> {
    let name = CString::new(fd.as_raw_fd().to_string()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // PATH_MAX, and one byte more to see a cut.
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: a valid directory descriptor, C string and buffer of this length.
    let n = unsafe { libc::readlinkat(mount.proc_fd.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    if n >= buf.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    buf.truncate(n);
    Ok(buf)
}

/// `path` (what `/proc/self/fd/N` reads) as a path of the hierarchy: the
/// mount point stripped, the mount's root put in front. `None` when it is
/// not below the mount point (it always is for a descriptor opened on it).
fn hierarchy_path(mount_dir: &[u8], mount_root: &[u8], path: &[u8]) -> Option<Vec<u8>> {
    let rest = if mount_dir == b"/" { path } else { path.strip_prefix(mount_dir)? };
    if !(rest.is_empty() || rest.starts_with(b"/")) {
        return None;
    }
    let mut out = if mount_root == b"/" { Vec::new() } else { mount_root.to_vec() };
    out.extend_from_slice(rest);
    if out.is_empty() {
        out.push(b'/');
    }
    Some(out)
}

fn resolve_on(mount: &Mount, id: u64) -> Result<CgroupPath, CgroupError> {
    let fd = match open_id(mount, id) {
        Ok(fd) => fd,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ESTALE | libc::ENOENT)) => return Ok(CgroupPath::Removed),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => return Err(CgroupError::Denied),
        Err(source) => return Err(CgroupError::Io { id, source }),
    };
    let link = read_fd_link(mount, &fd).map_err(|source| CgroupError::Io { id, source })?;
    let mut path = link.as_slice();
    // Removed between the open and the readlink: `d_path` marks it. A
    // cgroup may also be named so; it is one when the id still opens.
    if path.ends_with(DELETED) {
        drop(fd);
        match open_id(mount, id) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ESTALE | libc::ENOENT)) => return Ok(CgroupPath::Removed),
            Err(source) => return Err(CgroupError::Io { id, source }),
        }
    }
    if path.is_empty() {
        path = b"/";
    }
    hierarchy_path(&mount.dir, &mount.root, path).map(CgroupPath::Found).ok_or_else(|| CgroupError::Io {
        id,
        source: io::Error::other(format!(
            "{:?} is not below the cgroup2 mount {:?}",
            OsStr::from_bytes(path),
            OsStr::from_bytes(&mount.dir)
        )),
    })
}

/// The path of the cgroup v2 cgroup whose id is `id` (an event's
/// `cgroupId`), relative to the hierarchy's root, or
/// [`CgroupPath::Removed`]. Two syscalls (`open_by_handle_at`, `readlink`)
/// and a `close`; the first call also reads `/proc/self/mountinfo`.
///
/// # Errors
/// [`CgroupError`]: no cgroup2 mount, no CAP_DAC_READ_SEARCH, or another
/// failure of the lookup itself.
pub fn cgroup_path(id: u64) -> Result<CgroupPath, CgroupError> {
    let mut guard = MOUNT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if guard.is_none() {
        *guard = Some(open_mount()?);
    }
    let mount = guard.as_ref().ok_or(CgroupError::NoMount)?;
    resolve_on(mount, id)
}

/// What a cgroup path says about a container (`ContainerAttribution`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    /// `containerd`, `cri-o`, `docker`, `podman` or `unknown`; `None`
    /// without a container id.
    pub runtime: Option<&'static str>,
    /// 64 lowercase hex digits.
    pub id: Option<String>,
    /// The Kubernetes pod's uid.
    pub pod_uid: Option<String>,
}

struct ContainerPatterns {
    names: Vec<(Regex, &'static str)>,
    bare_id: Regex,
    pod_slice: Regex,
    pod_dir: Regex,
    pod_uid: Regex,
}

fn patterns() -> &'static ContainerPatterns {
    static PATTERNS: OnceLock<ContainerPatterns> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        // Constant patterns: they compile (the tests run each).
        let re = |p: &str| Regex::new(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        const HEX64: &str = "[0-9a-f]{64}";
        ContainerPatterns {
            names: vec![
                (re(&format!(r"^cri-containerd-({HEX64})\.scope$")), "containerd"),
                (re(&format!(r"^[^:]*:cri-containerd:({HEX64})$")), "containerd"),
                (re(&format!(r"^crio-({HEX64})(?:\.scope)?$")), "cri-o"),
                (re(&format!(r"^docker-({HEX64})\.scope$")), "docker"),
                (re(&format!(r"^libpod-(?:payload-)?({HEX64})(?:\.scope)?$")), "podman"),
            ],
            bare_id: re(&format!("^{HEX64}$")),
            pod_slice: re(r"^(?:[^/]*-)?kubepods(?:-[a-z]+)?-pod([0-9a-f_]+)\.slice$"),
            pod_dir: re(r"^pod([0-9a-f-]+)$"),
            pod_uid: re(r"^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})$"),
        }
    })
}

/// `containerOf` of `ts/cgroup.ts` (the documentation of the layouts is
/// there), for the reader thread, which cannot call JavaScript.
pub fn container_of(path: &str) -> Container {
    let p = patterns();
    let parts: Vec<&str> = path.split('/').collect();
    let mut runtime = None;
    let mut id: Option<String> = None;
    let mut at = parts.len();
    for i in (0..parts.len()).rev() {
        let name = parts[i];
        if let Some((caps, r)) = p.names.iter().find_map(|(re, r)| re.captures(name).map(|c| (c, *r))) {
            (runtime, id, at) = (Some(r), caps.get(1).map(|m| m.as_str().to_string()), i);
        } else if p.bare_id.is_match(name) {
            let docker = i > 0 && parts[i - 1] == "docker";
            (runtime, id, at) = (Some(if docker { "docker" } else { "unknown" }), Some(name.to_string()), i);
        }
        if id.is_some() {
            break;
        }
    }
    let mut pod_uid = None;
    if !parts.is_empty() {
        for i in (0..=at.min(parts.len() - 1)).rev() {
            let name = parts[i].split(':').next().unwrap_or("");
            let slice = p.pod_slice.captures(name).and_then(|c| c.get(1)).map(|m| m.as_str().replace('_', "-"));
            let uid = slice
                .clone()
                .or_else(|| p.pod_dir.captures(name).and_then(|c| c.get(1)).map(|m| m.as_str().to_string()));
            if let Some(uid) = uid {
                if p.pod_uid.is_match(&uid) && (slice.is_some() || parts[..i].iter().any(|q| q.contains("kubepods"))) {
                    pod_uid = Some(uid);
                    break;
                }
            }
        }
    }
    if id.is_none() && pod_uid.is_none() {
        return Container::default();
    }
    Container { runtime, id, pod_uid }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_cgroup2_whole_hierarchy_first() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
50 31 0:38 /kubepods /mnt/sub\\040dir rw - cgroup2 cgroup2 rw
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:5 - cgroup2 cgroup2 rw
";
        let m = cgroup2_mounts(text);
        assert_eq!(
            m,
            vec![
                (b"/".to_vec(), b"/sys/fs/cgroup/unified".to_vec()),
                (b"/kubepods".to_vec(), b"/mnt/sub dir".to_vec())
            ]
        );
    }

    #[test]
    fn paths_relative_to_the_hierarchy() {
        let dir = b"/sys/fs/cgroup";
        assert_eq!(hierarchy_path(dir, b"/", b"/sys/fs/cgroup"), Some(b"/".to_vec()));
        assert_eq!(hierarchy_path(dir, b"/", b"/sys/fs/cgroup/a/b"), Some(b"/a/b".to_vec()));
        assert_eq!(hierarchy_path(dir, b"/kubepods", b"/sys/fs/cgroup/pod1"), Some(b"/kubepods/pod1".to_vec()));
        assert_eq!(hierarchy_path(dir, b"/", b"/sys/fs/cgroupx/a"), None);
        assert_eq!(hierarchy_path(b"/", b"/", b"/a"), Some(b"/a".to_vec()));
    }

    #[test]
    fn the_root_cgroup_and_a_removed_one() {
        // Needs a cgroup2 mount and CAP_DAC_READ_SEARCH: skipped without.
        match cgroup_path(1) {
            Ok(p) => assert_eq!(p, CgroupPath::Found(b"/".to_vec())),
            Err(e @ (CgroupError::NoMount | CgroupError::Denied)) => return eprintln!("skipped: {e}"),
            Err(e) => panic!("{e}"),
        }
        // Ids count up from 1; this one is far beyond any made this boot.
        if let Ok(p) = cgroup_path(u64::MAX - 1) {
            assert_eq!(p, CgroupPath::Removed);
        }
    }

    #[test]
    fn containers() {
        let id = "0123456789abcdef".repeat(4);
        let c = container_of(&format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234abcd_1234_1234_1234_123456789abc.slice/cri-containerd-{id}.scope"));
        assert_eq!(c.runtime, Some("containerd"));
        assert_eq!(c.id.as_deref(), Some(id.as_str()));
        assert_eq!(c.pod_uid.as_deref(), Some("1234abcd-1234-1234-1234-123456789abc"));
        assert_eq!(container_of(&format!("/docker/{id}")).runtime, Some("docker"));
        assert_eq!(container_of("/user.slice"), Container::default());
    }
}
