//! Small system facts and calls: capabilities, pseudo file systems, clocks,
//! eventfds, and a thread that cannot open files.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use crate::error::Error;

/// Where bpffs is mounted (pins live here).
pub const BPFFS: &str = "/sys/fs/bpf";
/// Where tracefs is mounted (tracepoint ids, kprobe_events).
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// Where securityfs is mounted (`lsm`, `lockdown`).
pub const SECURITYFS: &str = "/sys/kernel/security";

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process, from `/proc/self/status`.
pub(crate) fn effective_caps() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| io::Error::other("no CapEff in /proc/self/status"))
}

/// Checks the capabilities needed to load and attach tracing programs:
/// CAP_BPF and CAP_PERFMON (5.8+), or CAP_SYS_ADMIN.
///
/// # Errors
/// [`Error::Privileges`] naming what is missing.
pub fn check_privileges() -> Result<(), Error> {
    let caps = effective_caps().unwrap_or(0);
    let has = |cap: u32| caps & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    Err(Error::Privileges { missing: format!("euid {} lacks {}", euid(), missing.join(" and ")) })
}

/// The file system type (`statfs(2)` `f_type`) of `path`, following
/// symbolic links; `None` when it cannot be read.
pub(crate) fn fs_magic(path: &str) -> Option<i64> {
    let c = CString::new(path).ok()?;
    // SAFETY: statfs writes into the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and struct pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast, reason = "f_type is i64 on x86_64, u32/i32 elsewhere")]
    Some(st.f_type as i64)
}

/// The file system type of an open file (`fstatfs(2)`): what it is on, with
/// no path to re-resolve.
pub(crate) fn fd_fs_magic(fd: BorrowedFd<'_>) -> Option<i64> {
    // SAFETY: fstatfs writes into the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and struct pointer.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast, reason = "f_type is i64 on x86_64, u32/i32 elsewhere")]
    Some(st.f_type as i64)
}

/// Whether process `pid` exists (in this PID namespace): `kill(pid, 0)`
/// succeeds or is refused for permission only.
pub(crate) fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) }
}

/// This process's effective uid.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Whether `uid` may own chroot-guard's files (pin directories, the files
/// in `/run/chroot-guard`): root, or the user this process runs as (with
/// CAP_BPF rather than root).
pub(crate) fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == euid()
}

/// Mounts `fstype` at `path` with mount `options` (the data argument of
/// `mount(2)`, e.g. `mode=0700`) unless it is already mounted there.
///
/// # Errors
/// [`Error::Mount`] with the `mount(2)` error.
pub fn ensure_mounted(fstype: &'static str, path: &'static str, magic: i64, options: Option<&'static str>) -> Result<(), Error> {
    if fs_magic(path) == Some(magic) {
        return Ok(());
    }
    let mount_err = |source| Error::Mount { fstype, path, source };
    if !Path::new(path).exists() {
        std::fs::create_dir_all(path).map_err(mount_err)?;
    }
    let (src, dst, ty) = (
        CString::new(fstype).map_err(|e| mount_err(io::Error::other(e)))?,
        CString::new(path).map_err(|e| mount_err(io::Error::other(e)))?,
        CString::new(fstype).map_err(|e| mount_err(io::Error::other(e)))?,
    );
    let data = options.map(CString::new).transpose().map_err(|e| mount_err(io::Error::other(e)))?;
    let data_ptr = data.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>());
    // SAFETY: valid C strings; the data argument is null or a C string.
    if unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, data_ptr) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    // A process starting beside us may have mounted it between the check
    // and our mount, which then fails (EBUSY for tracefs): what matters is
    // that it is there now.
    if fs_magic(path) == Some(magic) {
        return Ok(());
    }
    Err(mount_err(err))
}

/// `TRACEFS_MAGIC` from `include/uapi/linux/magic.h`.
pub const TRACEFS_MAGIC: i64 = 0x7472_6163;
/// `BPF_FS_MAGIC`.
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// `SECURITYFS_MAGIC`.
pub const SECURITYFS_MAGIC: i64 = 0x7363_6673;

/// Options of a bpffs that chroot-guard mounts itself: only root may create
/// names in it. Without `mode`, bpffs is mounted 1777, and any local user
/// could take the name of a pin directory before `enforce --pin` does, or
/// plant a look-alike of one.
pub const BPFFS_OPTIONS: &str = "mode=0700";

/// Mounts tracefs and bpffs where missing (tracepoint attach reads ids from
/// tracefs; pins need bpffs); bpffs with [`BPFFS_OPTIONS`].
///
/// # Errors
/// [`Error::Mount`].
pub fn ensure_tracing_mounts() -> Result<(), Error> {
    ensure_mounted("tracefs", TRACEFS, TRACEFS_MAGIC, None)?;
    ensure_mounted("bpf", BPFFS, BPF_FS_MAGIC, Some(BPFFS_OPTIONS))
}

/// The kernel's lockdown mode (`none`, `integrity`, `confidentiality`) from
/// securityfs, mounting it if needed; `None` when the lockdown LSM is absent.
pub fn lockdown() -> Option<String> {
    let _ = ensure_mounted("securityfs", SECURITYFS, SECURITYFS_MAGIC, None);
    let text = std::fs::read_to_string(Path::new(SECURITYFS).join("lockdown")).ok()?;
    let start = text.find('[')?;
    let end = text[start..].find(']')?;
    Some(text[start + 1..start + end].to_string())
}

/// Active LSMs, in order, from `/sys/kernel/security/lsm`.
pub fn active_lsms() -> Option<Vec<String>> {
    let _ = ensure_mounted("securityfs", SECURITYFS, SECURITYFS_MAGIC, None);
    let text = std::fs::read_to_string(Path::new(SECURITYFS).join("lsm")).ok()?;
    Some(text.trim().split(',').map(str::to_string).collect())
}

/// A non-blocking eventfd (`O_CLOEXEC`): how one thread wakes another
/// that waits in `poll(2)` ([`signal_eventfd`], [`reset_eventfd`]).
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd has no pointer arguments.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes the [`eventfd`] `fd` readable.
pub fn signal_eventfd(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64 to an eventfd.
    unsafe { libc::write(fd, (&raw const one).cast(), 8) };
}

/// Makes the [`eventfd`] `fd` unreadable again.
pub fn reset_eventfd(fd: RawFd) {
    let mut count = [0u8; 8];
    // SAFETY: reads 8 bytes into a buffer of 8 from a non-blocking eventfd.
    unsafe { libc::read(fd, count.as_mut_ptr().cast(), 8) };
}

/// A loaded program's `recursion_misses` (`bpf_prog_info`, Linux 5.12+):
/// the runs the kernel skipped because the program was already running on
/// that CPU, as a fentry/fexit program preempted mid-run is (and a BPF LSM
/// program, on kernels before `__bpf_prog_enter_recur`).
/// `Ok(None)` where the kernel's `bpf_prog_info` ends before that field.
///
/// # Errors
/// The `BPF_OBJ_GET_INFO_BY_FD` error (`EBADF`, `EINVAL` for an fd that is
/// not a program).
pub fn prog_recursion_misses(prog: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    use aya_obj::generated::{bpf_cmd, bpf_prog_info};
    // The `info` member of `union bpf_attr` for this command.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: `bpf_prog_info` is plain integers and arrays of them.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: std::mem::size_of::<bpf_prog_info>() as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: `attr` names a zeroed buffer of `info_len` bytes (the kernel
    // writes at most that many, and no pointer inside it is set, so it
    // follows none), and `attr`'s own size is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw mut attr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel writes back how much of the struct it filled.
    let end = std::mem::offset_of!(bpf_prog_info, recursion_misses) + std::mem::size_of::<u64>();
    Ok((attr.info_len as usize >= end).then_some(info.recursion_misses))
}

/// `CLOCK_BOOTTIME` now, in ns: the clock of every event timestamp.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid timespec pointer; CLOCK_BOOTTIME exists since 2.6.39.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Opens `rel` (e.g. `kprobe_events`, `events/GROUP/EVENT/id`) inside
/// tracefs at [`TRACEFS`] with `flags` (`O_NOFOLLOW | O_CLOEXEC` added),
/// and checks that what was opened is on tracefs: a symbolic link in the
/// last component is refused (`ELOOP`), and a file of another file system
/// (something mounted or planted over the path) is refused with `EXDEV`.
/// tracefs itself has no symbolic links and only root can create its
/// entries, so a file that passes is the kernel's.
///
/// # Errors
/// The `open(2)` error, or `EXDEV` when the file is not on tracefs.
pub fn open_tracefs(rel: &str, flags: i32) -> io::Result<std::fs::File> {
    use std::os::{fd::AsFd, unix::fs::OpenOptionsExt};
    let path = Path::new(TRACEFS).join(rel);
    let mut opts = std::fs::OpenOptions::new();
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => opts.write(true),
        libc::O_RDWR => opts.read(true).write(true),
        _ => opts.read(true),
    };
    if flags & libc::O_APPEND != 0 {
        opts.append(true);
    }
    let file = opts.custom_flags((flags & !(libc::O_ACCMODE | libc::O_APPEND)) | libc::O_NOFOLLOW | libc::O_CLOEXEC).open(&path)?;
    if fd_fs_magic(file.as_fd()) != Some(TRACEFS_MAGIC) {
        return Err(io::Error::from_raw_os_error(libc::EXDEV));
    }
    Ok(file)
}

/// The kernel's dynamic preemption switch (`PREEMPT_DYNAMIC`, debugfs).
const SCHED_PREEMPT: &str = "/sys/kernel/debug/sched/preempt";

/// How we know the kernel preempts kernel code at any point (full or lazy
/// preemption, or PREEMPT_RT), or `None` when it does not or we cannot
/// tell. The switch in debugfs (`none voluntary (full)`) decides where it
/// is readable; otherwise `uname -v` (`PREEMPT_RT`, or `PREEMPT` for a
/// kernel built fully preemptible without the switch) and a `preempt=`
/// boot argument of a `PREEMPT_DYNAMIC` kernel.
pub fn full_preemption() -> Option<String> {
    if let Ok(modes) = std::fs::read_to_string(SCHED_PREEMPT) {
        let current = modes.split_whitespace().find(|m| m.starts_with('('))?.trim_matches(|c| c == '(' || c == ')');
        return matches!(current, "full" | "lazy").then(|| format!("{SCHED_PREEMPT} says {current}"));
    }
    let version = std::fs::read_to_string("/proc/sys/kernel/version").unwrap_or_default();
    let built: Vec<&str> = version.split_whitespace().collect();
    if let Some(t) = built.iter().find(|t| matches!(**t, "PREEMPT_RT" | "PREEMPT")) {
        return Some(format!("the kernel is built {t} (uname -v)"));
    }
    if built.contains(&"PREEMPT_DYNAMIC") {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        if let Some(arg) = cmdline.split_whitespace().find(|a| matches!(*a, "preempt=full" | "preempt=lazy")) {
            return Some(format!("the kernel was booted with {arg}"));
        }
    }
    None
}

/// Whether `/proc/kallsyms` names the kernel symbol `name` (names are
/// listed to every user; false when the file cannot be read). Reads the
/// whole file, some 10 MB: for checks off the common path.
pub fn kallsyms_has(name: &str) -> bool {
    std::fs::read_to_string("/proc/kallsyms")
        .map(|s| s.lines().any(|l| l.split_whitespace().nth(2) == Some(name)))
        .unwrap_or(false)
}

/// Whether the kernel can create kprobes: a `kprobe` PMU (4.17+) or a
/// `kprobe_events` file in tracefs. Both are absent without `CONFIG_KPROBES`.
pub fn has_kprobes() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
        || Path::new(TRACEFS).join("kprobe_events").exists()
}

/// Runs `f` on a thread of its own that cannot open files: a seccomp filter
/// installed on that thread alone fails open(2), openat(2) and openat2(2)
/// with `ENOENT`, and ends with the thread. It is for aya 0.14's
/// `EbpfLoader::new()`, which always reads and parses the kernel's BTF
/// (about 14 ms of CPU on the development host, more than a third of a
/// tracepoint-mode load) although [`crate::attach`] drops it at once
/// (`.btf(None)`): there the read fails at once and nothing is parsed.
/// Where the filter cannot be installed (a kernel without
/// `CONFIG_SECCOMP_FILTER`) or no thread can be made, `f` runs with files as
/// usual, so `f` must give the same result either way.
pub fn without_file_opens<T: Send>(f: impl Fn() -> T + Sync) -> T {
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new().name("cg-no-files".into()).spawn_scoped(scope, || {
            // The thread's hash map keys, seeded before the filter: std
            // opens /dev/urandom for them where getrandom(2) fails.
            let _ = std::collections::hash_map::RandomState::new();
            // Refused (no seccomp filters): `f` reads files as usual.
            let _ = deny_file_opens();
            f()
        });
        match spawned.map(|h| h.join()) {
            Ok(Ok(t)) => t,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => f(),
        }
    })
}

/// Elsewhere no filter: [`without_file_opens`] runs its function as is.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn deny_file_opens() -> bool {
    false
}

/// Installs [`without_file_opens`]'s filter on the calling thread; false
/// when the kernel refused it. Irreversible for the thread.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn deny_file_opens() -> bool {
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
    #[cfg(target_arch = "x86_64")]
    const OPENS: [libc::c_long; 3] = [libc::SYS_open, libc::SYS_openat, libc::SYS_openat2];
    #[cfg(target_arch = "aarch64")]
    const OPENS: [libc::c_long; 2] = [libc::SYS_openat, libc::SYS_openat2];
    // `struct seccomp_data`: `nr` at 0, `arch` at 4.
    let stmt = |code: u32, k: u32| libc::sock_filter { code: code as u16, jt: 0, jf: 0, k };
    let jeq =
        |k: u32, jt: u8| libc::sock_filter { code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16, jt, jf: 0, k };
    let mut prog = vec![
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4),
        jeq(AUDIT_ARCH, 1),
        // Another ABI (i386 calls on x86_64): allowed, and none of this
        // thread's calls are one. x32 calls share the arch and pass the
        // number checks below (their numbers carry bit 30): the filter is a
        // short cut for one function, not a boundary.
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
    ];
    for (i, nr) in OPENS.iter().enumerate() {
        // Jumps to the ERRNO return after the ALLOW below.
        prog.push(jeq(*nr as u32, (OPENS.len() - i) as u8));
    }
    prog.push(stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW));
    prog.push(stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ERRNO | libc::ENOENT as u32));
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
    // SAFETY: prctl with valid arguments; `fprog` points at `prog`, alive
    // for the call. Both settings bind this thread only (no TSYNC flag).
    unsafe {
        let (one, zero): (libc::c_ulong, libc::c_ulong) = (1, 0);
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, one, zero, zero, zero) == 0
            && libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::c_ulong::from(libc::SECCOMP_MODE_FILTER),
                &fprog as *const libc::sock_fprog,
            ) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::without_file_opens;

    fn open_status() -> Result<(), Option<i32>> {
        std::fs::File::open("/proc/self/status").map(|_| ()).map_err(|e| e.raw_os_error())
    }

    #[test]
    fn without_file_opens_fails_opens_on_its_own_thread_only() {
        // "Seccomp_filters:" is in /proc/PID/status where the kernel has
        // CONFIG_SECCOMP_FILTER (5.9+ show it).
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        if !status.contains("Seccomp_filters:") {
            eprintln!("skipped: this kernel shows no seccomp filters, so without_file_opens runs its function as is");
            return;
        }
        let (opened, other_calls) =
            without_file_opens(|| (open_status(), std::fs::metadata("/proc/self/status").is_ok()));
        assert_eq!(opened, Err(Some(libc::ENOENT)));
        assert!(other_calls, "a stat is not an open and works there");
        // The calling thread and any later thread open files as before.
        assert_eq!(open_status(), Ok(()));
        assert_eq!(std::thread::spawn(open_status).join().unwrap(), Ok(()));
    }
}
