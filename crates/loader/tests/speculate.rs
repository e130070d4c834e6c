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
    reader::{Batch, ReaderConfig, Sink},
    session::Session,
};

struct ChannelSink(mpsc::Sender<Batch>);

impl Sink for ChannelSink {
    fn in_flight(&self) -> u32 {
        0
    }
    fn deliver(&self, batch: Batch) -> bool {
        self.0.send(batch).is_ok()
    }
}

/// The headers and argument paths of a batch's records.
fn calls(batch: &Batch) -> Vec<(ChrootEvent, String)> {
    chroot_guard_loader::reader::records(&batch.data)
        .map(|record| {
            let mut ev = std::mem::MaybeUninit::<ChrootEvent>::zeroed();
            let len = record.len().min(std::mem::size_of::<ChrootEvent>());
            assert!(len >= EVENT_HEADER_BYTES, "record length {len}");
            // SAFETY: `len` bytes fit in the event; every bit pattern is valid.
            let ev = unsafe {
                std::ptr::copy_nonoverlapping(record.as_ptr(), ev.as_mut_ptr().cast::<u8>(), len);
                ev.assume_init()
            };
            let path = String::from_utf8_lossy(&ev.data[..ev.path_len as usize]).into_owned();
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

/// Makes `path`'s chroot call in this process (fails with ENOENT) and, when
/// `child`, in a child process too; returns the calls of `path` seen within
/// a few seconds.
fn seen_calls(rx: &mpsc::Receiver<Batch>, path: &str, child: bool) -> Vec<ChrootEvent> {
    let c = std::ffi::CString::new(path).expect("no NUL");
    // SAFETY: a valid C string; the call fails with ENOENT.
    assert_eq!(unsafe { libc::chroot(c.as_ptr()) }, -1);
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
    seen
}

#[test]
fn speculated_programs_serve_default_sessions_only_and_leave_nothing() {
    let before = bpf_fds();
    let me = std::process::id();

    // Default options: the speculated programs (or, where the prewarm could
    // not make them, the session's own) attach and see the call, with the
    // caller's identity as the kernel has it.
    attach::prewarm(true);
    let (tx, rx) = mpsc::channel();
    let mut session =
        Session::open(&LoadOptions::default(), ChannelSink(tx), ReaderConfig::default()).expect("open with defaults");
    let seen = seen_calls(&rx, "/nonexistent-chroot-guard-speculate-a", false);
    let ev = seen.first().expect("the call is seen");
    // SAFETY: gettid cannot fail.
    assert_eq!((ev.pid, ev.tid), (me, unsafe { libc::gettid() } as u32), "tgid and thread id");
    // SAFETY: getuid/getgid cannot fail.
    assert_eq!((ev.uid, ev.gid), unsafe { (libc::getuid(), libc::getgid()) });
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
    let seen = seen_calls(&rx, "/nonexistent-chroot-guard-speculate-b", true);
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
