//! The kernel side of chroot-guard alone, for the benchmarks (contender
//! "O1"): programs attached, the ring buffer drained by the reader thread,
//! no JavaScript. Prints `attached <mode>` once attached, then, when stdin
//! closes, one JSON line of totals.
//!
//! `drain [--mode auto|fentry|kprobe|tracepoint] [--ring-buffer-bytes N]
//!        [--compat] [--guard allow|deny --path DIR]`
//!
//! `--compat` sets [`LoadOptions::compat`]: in tracepoint mode, also the raw
//! `sys_enter`/`sys_exit` programs for 32-bit compat and x32 calls (the
//! bench's "O1c", the cost they add to every syscall). The totals name the
//! mode and how many blind spots it has (0 when those programs attached).
//!
//! With `--guard`, attaches `lsm/path_chroot` with a one-rule policy on
//! `--path` instead of the watch programs (the VM's LSM cost figures).
use std::{
    io::Read,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use chroot_guard_common::{Filter, DEFAULT_RING_BUFFER_BYTES};
use chroot_guard_loader::{
    attach::{LoadOptions, ModeRequest},
    guard::Guard,
    policy::Policy,
    reader::{Batch, ReaderConfig, Sink},
    session::{Session, SessionStats},
};

#[derive(Clone, Default)]
struct Count(Arc<AtomicU64>, Arc<std::sync::Mutex<Vec<u64>>>);

impl Sink for Count {
    fn in_flight(&self) -> u32 {
        0
    }
    fn deliver(&self, batch: Batch) -> bool {
        self.0.fetch_add(u64::from(batch.events), Ordering::Relaxed);
        // Latency from the kernel timestamp to this thread, ns.
        let now = chroot_guard_loader::sys::boottime_ns();
        let ts_at = std::mem::offset_of!(chroot_guard_common::ChrootEvent, ts_ns);
        let mut lat = self.1.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for record in chroot_guard_loader::reader::records(&batch.data) {
            let ts = record.get(ts_at..ts_at + 8).and_then(|b| b.try_into().ok()).unwrap_or_default();
            lat.push(now.saturating_sub(u64::from_le_bytes(ts)));
        }
        true
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ring = arg(&args, "--ring-buffer-bytes").map_or(DEFAULT_RING_BUFFER_BYTES, |v| v.parse().expect("bytes"));
    let count = Count::default();
    let stats: Box<dyn Fn() -> SessionStats>;
    let attached: (&str, usize);
    let _keep: Box<dyn std::any::Any>;
    if let Some(action) = arg(&args, "--guard") {
        let path = arg(&args, "--path").unwrap_or_else(|| "/".into());
        let json = format!(r#"{{"mode":"enforce","rules":[{{"id":"bench","action":"{action}","match":{{"path":"{path}"}}}}]}}"#);
        let policy = Policy::from_json(&json).expect("policy");
        let guard = Arc::new(Guard::open(&policy, ring, count.clone()).unwrap_or_else(|e| {
            eprintln!("drain: {e}");
            std::process::exit(1)
        }));
        println!("attached lsm");
        attached = ("lsm", 0);
        let g = Arc::clone(&guard);
        stats = Box::new(move || g.stats());
        _keep = Box::new(guard);
    } else {
        let mode: ModeRequest = arg(&args, "--mode").unwrap_or_else(|| "auto".into()).parse().expect("mode");
        let compat = args.iter().any(|a| a == "--compat");
        let opts = LoadOptions { mode, filter: Filter::default(), ring_buffer_bytes: ring, compat };
        let session = Arc::new(Session::open(&opts, count.clone(), ReaderConfig::default()).unwrap_or_else(|e| {
            eprintln!("drain: {e}");
            std::process::exit(1)
        }));
        println!("attached {}", session.mode().name());
        for b in session.blind_spots() {
            eprintln!("drain: blind spot: {} on {} ({}): {}", b.program, b.target, b.code, b.reason);
        }
        attached = (session.mode().name(), session.blind_spots().len());
        let s = Arc::clone(&session);
        stats = Box::new(move || s.stats());
        _keep = Box::new(session);
    }
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    // Let the reader drain what is left before reading the totals.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let s = stats();
    let mut lat = count.1.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    lat.sort_unstable();
    let pct = |p: usize| lat.get((lat.len() * p / 100).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    eprintln!("drain: reader-thread latency p50 {} ns, p99 {} ns, max {} ns over {}", pct(50), pct(99), lat.last().copied().unwrap_or(0), lat.len());
    println!(
        r#"{{"mode":"{}","blindSpots":{},"events":{},"delivered":{},"batches":{},"ringBufferFull":{},"pendingFull":{},"lsmErrors":{}}}"#,
        attached.0,
        attached.1,
        s.events,
        count.0.load(Ordering::Relaxed),
        s.batches,
        s.lost.ring_buffer_full,
        s.lost.pending_full,
        s.lost.lsm_errors
    );
}
