//! The core against the real kernel, without Node.js: open a session in
//! `auto` mode, make real chroot calls, receive their events through a
//! channel sink. Needs root; run by `cargo xtask test`.
use std::{
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use chroot_guard_common::{ChrootEvent, Filter, EVENT_HEADER_BYTES};
use chroot_guard_loader::{
    attach::{LoadOptions, ModeRequest},
    reader::{Batch, ReaderConfig, Sink},
    session::Session,
};

mod common;
use common::{event_of, path_of, ChannelSink};

/// Splits a batch into events (`[u32 len][u32 0][record][pad to 8]`…).
fn events(batch: &Batch) -> Vec<ChrootEvent> {
    let mut out = Vec::new();
    for record in chroot_guard_loader::reader::records(&batch.data) {
        let len = record.len();
        assert!(len >= EVENT_HEADER_BYTES && len <= std::mem::size_of::<ChrootEvent>(), "record length {len}");
        let ev = event_of(record);
        assert_eq!(len, ev.record_len(), "record length matches the lengths inside");
        out.push(ev);
    }
    out
}

#[test]
fn auto_mode_reports_real_chroot_calls() {
    let (tx, rx) = mpsc::channel();
    let opts = LoadOptions { mode: ModeRequest::Auto, filter: Filter::default(), ring_buffer_bytes: 1 << 20, compat: false };
    let mut session = match Session::open(&opts, ChannelSink(tx), ReaderConfig::default()) {
        Ok(s) => s,
        Err(e) => panic!("open failed ({}): {e}\nverifier log: {}", e.code(), e.verifier_log().unwrap_or("-")),
    };
    for r in session.refusals() {
        eprintln!("{} refused ({}): {}", r.mode.name(), r.code, r.reason);
    }
    let missing = Command::new("chroot").args(["/nonexistent-chroot-guard", "/bin/true"]).status().expect("run chroot");
    assert!(!missing.success());
    let root = Command::new("chroot").args(["/", "/bin/true"]).status().expect("run chroot");
    assert!(root.success());

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen: Vec<ChrootEvent> = Vec::new();
    while Instant::now() < deadline && seen.len() < 2 {
        if let Ok(b) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.extend(events(&b).into_iter().filter(|e| {
                matches!(path_of(e).as_str(), "/nonexistent-chroot-guard" | "/")
                    && &e.comm[..6] == b"chroot"
            }));
        }
    }
    let missing = seen.iter().find(|e| path_of(e) == "/nonexistent-chroot-guard").expect("event of the failed call");
    assert_eq!(missing.ret, -i64::from(libc::ENOENT));
    assert_eq!(missing.mode, session.mode() as u8);
    let ok = seen.iter().find(|e| path_of(e) == "/").expect("event of the call into /");
    assert_eq!(ok.ret, 0);
    let at = ok.path_len as usize;
    assert_eq!(&ok.data[at..at + ok.resolved_len as usize], b"/");
    assert_eq!(session.stats().lost.total(), 0);
    // Each attached program's skipped runs read through the kernel's
    // `bpf_prog_info` (5.12+): what fentry mode sums into
    // `recursion_missed`, 0 here.
    let ids: Vec<u32> = session.programs().into_iter().map(|(_, id)| id).collect();
    assert!(!ids.is_empty());
    for info in aya::programs::loaded_programs().filter_map(Result::ok).filter(|i| ids.contains(&i.id())) {
        let fd = info.fd().expect("program fd");
        let misses = chroot_guard_loader::sys::prog_recursion_misses(std::os::fd::AsFd::as_fd(&fd));
        assert_eq!(misses.expect("BPF_OBJ_GET_INFO_BY_FD"), Some(0), "program {}", info.id());
    }
    session.close();
    session.close(); // idempotent
}

/// The record offsets the tracepoint programs read are the kernel's.
#[test]
fn tracepoint_offsets_match_tracefs() {
    use chroot_guard_common::probes::{TP_ENTER_FILENAME_OFFSET, TP_EXIT_RET_OFFSET};
    chroot_guard_loader::sys::ensure_tracing_mounts().expect("tracefs mounted");
    let offset_of = |event: &str, field: &str| -> usize {
        let format = std::fs::read_to_string(format!("/sys/kernel/tracing/events/syscalls/{event}/format"))
            .expect("tracepoint format in tracefs");
        let line = format.lines().find(|l| l.contains(&format!(" {field};"))).expect("field in format");
        let off = line.split("offset:").nth(1).and_then(|s| s.split(';').next()).expect("offset");
        off.trim().parse().expect("number")
    };
    assert_eq!(offset_of("sys_enter_chroot", "filename"), TP_ENTER_FILENAME_OFFSET);
    assert_eq!(offset_of("sys_exit_chroot", "ret"), TP_EXIT_RET_OFFSET);
}

/// `doctor` and `stacks` against the real kernel, printed for the log; the
/// TypeScript suites assert what they must find on each kernel.
#[test]
fn doctor_and_stacks_run() {
    let report = chroot_guard_loader::doctor::doctor();
    for p in &report.points {
        for c in &p.checks {
            eprintln!("{:24} {:10} {}", p.point.name, c.mechanism.name(), c.denial.as_ref().map_or("ok".to_string(), |d| format!("{} {}", d.code, d.reason)));
        }
    }
    let auto = report.auto.expect("some mode works");
    let stacks = chroot_guard_loader::stacks::Stacks::start(chroot_guard_loader::attach::ModeRequest::Auto).expect("stacks start");
    assert_eq!(stacks.mode(), auto);
    for _ in 0..3 {
        Command::new("chroot").args(["/nonexistent-stacks", "/bin/true"]).status().expect("run chroot");
    }
    let counts = stacks.collect().expect("collect");
    for c in &counts {
        eprintln!("{} x{}: {:?}", c.hook, c.count, c.frames.iter().map(|f| f.symbol.clone().unwrap_or_default()).collect::<Vec<_>>());
    }
    assert!(counts.iter().map(|c| c.count).sum::<u64>() >= 3);
}

/// A consumer that takes batches only when the test reads them: each is in
/// flight until then, so the reader stops and the ring buffer keeps the rest.
struct HeldSink {
    tx: mpsc::Sender<Batch>,
    in_flight: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl Sink for HeldSink {
    fn in_flight(&self) -> u32 {
        self.in_flight.load(std::sync::atomic::Ordering::Acquire)
    }
    fn deliver(&self, batch: Batch) -> bool {
        self.in_flight.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.tx.send(batch).is_ok()
    }
}

/// `Session::finish` hands over every record the ring buffer holds when the
/// programs are detached: the calls made while the consumer was stalled
/// all arrive, none counted lost; `close` would have dropped them.
#[test]
fn finish_delivers_what_the_ring_buffer_holds() {
    use std::sync::{atomic::Ordering, Arc};
    const CALLS: usize = 20_000;
    let (tx, rx) = mpsc::channel();
    let in_flight = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut filter = Filter::default();
    filter.flags |= chroot_guard_common::filter_flags::PID;
    filter.pid = std::process::id();
    let opts = LoadOptions { mode: ModeRequest::Auto, filter, ring_buffer_bytes: 16 << 20, compat: false };
    let config = ReaderConfig { max_batch_bytes: 64 << 10, ..ReaderConfig::default() };
    let mut session = Session::open(&opts, HeldSink { tx, in_flight: Arc::clone(&in_flight) }, config).expect("open");
    let path = c"/nonexistent-chroot-guard-finish";
    for _ in 0..CALLS {
        // SAFETY: a valid C string; the call fails with ENOENT.
        assert_eq!(unsafe { libc::chroot(path.as_ptr()) }, -1);
    }
    // The consumer has taken nothing: at most one batch left the reader.
    std::thread::sleep(Duration::from_millis(200));
    assert!(in_flight.load(Ordering::Acquire) <= 1);
    let finishing = std::thread::spawn(move || session.finish());
    let mut seen = 0;
    while let Ok(b) = rx.recv_timeout(Duration::from_secs(20)) {
        seen += events(&b).iter().filter(|e| path_of(e) == "/nonexistent-chroot-guard-finish").count();
        in_flight.fetch_sub(1, Ordering::AcqRel);
    }
    let stats = finishing.join().expect("finish");
    assert_eq!(seen, CALLS);
    assert_eq!(stats.events, CALLS as u64);
    assert_eq!(stats.lost.total(), 0);
}
