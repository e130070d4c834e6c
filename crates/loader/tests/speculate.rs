//! The speculative load of `attach::prewarm(true)` against the real
//! kernel: a session with the default options attaches the programs loaded
//! ahead and sees real calls; a session with other options (a pid filter
//! here) gets its own programs, so the filter holds; and nothing the
//! speculation made outlives the sessions (every BPF fd of this process is
//! closed again). One test in its own binary: the prewarmed probe is
//! process-wide, and a test beside it would take it. Needs root; run by
//! `cargo xtask test`.
use std::{
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use chroot_guard_common::{filter_flags, ChrootEvent, Filter, EVENT_HEADER_BYTES};
use chroot_guard_loader::{
    attach::{self, LoadOptions},
    reader::{Batch, ReaderConfig},
    session::Session,
};

mod common;
use common::{event_of, path_of, ChannelSink};

/// The headers and argument paths of a batch's records.
fn calls(batch: &Batch) -> Vec<(ChrootEvent, String)> {
    chroot_guard_loader::reader::records(&batch.data)
        .map(|record| {
            let len = record.len().min(std::mem::size_of::<ChrootEvent>());
            assert!(len >= EVENT_HEADER_BYTES, "record length {len}");
            let ev = event_of(record);
            let path = path_of(&ev);
            (ev, path)
        })
        .collect()
}

/// This process's open BPF objects: `anon_inode:bpf-prog`, `-map`, `-link`
/// fds.
fn bpf_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("anon_inode:bpf"))
        .count()
}

/// Makes `path`'s chroot call (which fails with ENOENT) on a thread of its
/// own whose real uid and gid are 1000 and 1234 (effective ids still 0, so
/// the call is allowed: raw setresuid/setresgid change only the calling
/// thread) and, when `child`, in a child process too; returns the thread's
/// id and the calls of `path` seen within a few seconds.
fn seen_calls(rx: &mpsc::Receiver<Batch>, path: &str, child: bool) -> (u32, Vec<ChrootEvent>) {
    let c = std::ffi::CString::new(path).expect("no NUL");
    let tid = std::thread::spawn(move || {
        // SAFETY: raw syscalls on this thread's own credentials; the
        // effective and saved ids stay 0, so its capabilities stay too.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresgid, 1234, 0, 0), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, 1000, 0, 0), 0);
            assert_eq!(libc::chroot(c.as_ptr()), -1);
            libc::gettid() as u32
        }
    })
    .join()
    .expect("the calling thread");
    if child {
        let status = Command::new("chroot").args([path, "/bin/true"]).status().expect("run chroot");
        assert!(!status.success());
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(b) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.extend(calls(&b).into_iter().filter(|(_, p)| p == path).map(|(e, _)| e));
        }
    }
    (tid, seen)
}

#[test]
fn speculated_programs_serve_default_sessions_only_and_leave_nothing() {
    let before = bpf_fds();
    let me = std::process::id();

    // Default options: the session takes the speculated programs (the mode
    // `auto` tries first: where the kernel refuses it, the next one loads
    // afresh) and sees the call, with the caller's identity as the kernel
    // has it.
    attach::prewarm(true);
    let (tx, rx) = mpsc::channel();
    let mut session =
        Session::open(&LoadOptions::default(), ChannelSink(tx), ReaderConfig::default()).expect("open with defaults");
    assert_eq!(attach::speculations_taken(), 1, "the default session took the programs loaded ahead");
    let (tid, seen) = seen_calls(&rx, "/nonexistent-chroot-guard-speculate-a", false);
    let ev = seen.first().expect("the call is seen");
    assert_eq!((ev.pid, ev.tid), (me, tid), "tgid and thread id");
    assert_eq!((ev.uid, ev.gid, ev.euid, ev.egid), (1000, 1234, 0, 0), "real and effective ids");
    session.close();
    drop(session);

    // A pid filter: the prewarm speculates the defaults again, which this
    // session must not take, or the child's call would show.
    attach::prewarm(true);
    let (tx, rx) = mpsc::channel();
    let mut filter = Filter::default();
    filter.flags |= filter_flags::PID;
    filter.pid = me;
    let opts = LoadOptions { filter, ..LoadOptions::default() };
    let mut session = Session::open(&opts, ChannelSink(tx), ReaderConfig::default()).expect("open with a pid filter");
    assert_eq!(attach::speculations_taken(), 1, "a session with a filter loads its own programs");
    let (_, seen) = seen_calls(&rx, "/nonexistent-chroot-guard-speculate-b", true);
    assert!(!seen.is_empty(), "this process's call is seen");
    assert!(
        seen.iter().all(|e| e.pid == me),
        "only this process's calls pass the filter: {:?}",
        seen.iter().map(|e| e.pid).collect::<Vec<_>>()
    );
    session.close();
    drop(session);

    assert_eq!(bpf_fds(), before, "every program, map and link fd is closed again, the unused speculation's too");
}
