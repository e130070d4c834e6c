//! The ring-buffer thread: waits on the `CG_EVENTS` ring buffer with
//! `poll(2)` (no busy loop), copies records into one buffer per batch and
//! hands batches to a [`Sink`].
//!
//! Batching policy: when the consumer is idle a batch goes out as soon as the
//! ring buffer is drained (lowest latency); while the consumer is busy the
//! batch grows, and goes out when the consumer frees up or, where more than
//! one batch may be in flight, when it reaches
//! [`ReaderConfig::max_batch_bytes`] or after [`ReaderConfig::max_hold`].
//! At most [`ReaderConfig::max_in_flight`] batches wait for the consumer;
//! beyond that the thread stops draining, the kernel's ring buffer fills
//! and the programs count what they could not write (`CG_COUNTERS`).
//!
//! Ending: [`Reader::stop`] drops what the ring buffer still holds (the
//! consumer is leaving); [`Reader::finish`], once the programs are
//! detached, hands over every record left and waits until the consumer has
//! taken them all, so the calls made before a Ctrl-C are all seen.

use std::{
    os::fd::{AsRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use chroot_guard_common::{Counter, WAKEUP_NS};

use crate::{kretprobe::MissCounter, recursion::RecursionCounter};

/// Totals of the per-CPU `CG_COUNTERS`, summed over CPUs, since load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lost {
    /// Records the programs could not write for lack of ring buffer space:
    /// events (the ring buffer was full) and decisions of every action (the
    /// three counts below).
    pub ring_buffer_full: u64,
    /// Calls not traced: syscall entry could not get the thread's in-flight
    /// event (`Counter::PendingFull`).
    pub pending_full: u64,
    /// Decisions the LSM program could not make (the fail action applied).
    pub lsm_errors: u64,
    /// Allow decisions not written: the ring buffer was at least half full
    /// (the rest is kept for deny and audit decisions).
    pub allow_lost: u64,
    /// Deny decisions not written: the ring buffer was full.
    pub deny_lost: u64,
    /// Audit decisions not written: the ring buffer was full.
    pub audit_lost: u64,
    /// kprobe mode: calls whose return the exit kretprobe missed (more calls
    /// in flight at once than its `maxactive`), so no event was sent; the
    /// kernel's `nmissed` of our events in tracefs `kprobe_profile`
    /// ([`crate::kretprobe::MissCounter`]). 0 in other modes.
    pub kretprobe_missed: u64,
    /// fentry mode: runs of the syscall's entry or exit program the kernel
    /// skipped because the program was already running on that CPU (a
    /// preempted run), each losing one call's own event; a call skipped at
    /// both ends counts twice. The programs' `recursion_misses`
    /// ([`crate::recursion::RecursionCounter`]). 0 in other modes.
    pub recursion_missed: u64,
}

impl Lost {
    /// Events that never reached user space.
    pub fn total(&self) -> u64 {
        self.ring_buffer_full + self.pending_full + self.kretprobe_missed + self.recursion_missed
    }
}

/// The `CG_COUNTERS` map, and what the kernel counts for us elsewhere: in
/// kprobe mode the returns our kretprobes missed, in fentry mode the runs
/// of our programs it skipped.
pub struct Counters {
    map: PerCpuArray<MapData, u64>,
    kretprobes: Option<MissCounter>,
    recursion: Option<RecursionCounter>,
}

impl Counters {
    /// Wraps the map.
    pub fn new(map: PerCpuArray<MapData, u64>) -> Self {
        Counters { map, kretprobes: None, recursion: None }
    }

    /// The counters' map, to pin it.
    pub(crate) fn map_data(&self) -> &MapData {
        aya::maps::IterableMap::map(&self.map)
    }

    /// Reads the programs' skipped runs one last time and closes their
    /// descriptors (a session detaching its programs lets them go).
    pub fn release_programs(&self) {
        if let Some(r) = &self.recursion {
            r.release();
        }
    }

    /// Reads and sums every CPU's counters (one `BPF_MAP_LOOKUP_ELEM` per
    /// counter), the missed returns (one read of `kprobe_profile`) and the
    /// skipped runs (one `BPF_OBJ_GET_INFO_BY_FD` per program). A failed
    /// map read counts as zero.
    pub fn read(&self) -> Lost {
        let sum = |c: Counter| self.map.get(&(c as u32), 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        let (allow_lost, deny_lost, audit_lost) =
            (sum(Counter::AllowLost), sum(Counter::DenyLost), sum(Counter::AuditLost));
        Lost {
            ring_buffer_full: sum(Counter::RingBufFull) + allow_lost + deny_lost + audit_lost,
            pending_full: sum(Counter::PendingFull),
            lsm_errors: sum(Counter::LsmError),
            allow_lost,
            deny_lost,
            audit_lost,
            kretprobe_missed: self.kretprobes.as_ref().map_or(0, MissCounter::read),
            recursion_missed: self.recursion.as_ref().map_or(0, RecursionCounter::read),
        }
    }
}

/// One delivery: records as `[u32 length][u32 zero][bytes][pad to 8]`.
#[derive(Debug, Default)]
pub struct Batch {
    /// The records.
    pub data: Vec<u8>,
    /// How many records `data` holds.
    pub events: u32,
    /// Counters at the time of the batch.
    pub lost: Lost,
}

/// Where batches go.
pub trait Sink: Send + 'static {
    /// Batches handed over that the consumer has not finished with.
    fn in_flight(&self) -> u32;
    /// Hands a batch over; `false` when the consumer is gone for good.
    fn deliver(&self, batch: Batch) -> bool;
    /// Whether the consumer holds batches back on purpose (a session
    /// writing to stdout until JavaScript has written its first line; a
    /// paused JavaScript consumer): the reader then leaves records in the
    /// ring buffer, and waiting for it is not a stall.
    fn held(&self) -> bool {
        false
    }
    /// An eventfd the consumer writes when it stops holding batches back,
    /// so the reader looks at once rather than at its next poll.
    fn unheld_fd(&self) -> Option<RawFd> {
        None
    }
    /// The reader stopped on an error; no batch follows.
    fn failed(&self, _reason: String) {}
}

/// Tuning of the reader thread.
#[derive(Clone, Copy, Debug)]
pub struct ReaderConfig {
    /// A batch goes out once it holds this many bytes.
    pub max_batch_bytes: usize,
    /// Batches the consumer may hold unfinished at once. One for the JS
    /// consumer (see `binding::lifecycle::JsSink`): the reader fills the
    /// next batch meanwhile.
    pub max_in_flight: u32,
    /// Where more than one batch may be in flight, the longest a record
    /// waits in a batch while the consumer is busy (with one, a batch goes
    /// when the consumer has finished the one before); also how long after
    /// a waiting batch's first record the reader polls for it quickly
    /// (`QUICK_POLL`).
    pub max_hold: Duration,
    /// How often the lost counters are read while idle.
    pub counters_every: Duration,
}

/// Largest batch, in bytes, whatever the ring buffer's size.
pub const MAX_BATCH_BYTES: usize = 2 << 20;

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            max_batch_bytes: MAX_BATCH_BYTES,
            max_in_flight: 1,
            max_hold: Duration::from_millis(2),
            counters_every: Duration::from_millis(100),
        }
    }
}

impl ReaderConfig {
    /// The default tuning, with batches no larger than the kernel ring
    /// buffer (`ring_buffer_bytes`, bytes). `ringBufferBytes` is then the
    /// whole buffering budget: while the consumer is busy, user space holds
    /// at most `(max_in_flight + 1) × min(ring_buffer_bytes, 2 MiB)` bytes of
    /// records; past that the reader stops draining, the kernel ring buffer
    /// fills and its drops are counted (`Counter::RingBufferFull`).
    pub fn for_ring_buffer(ring_buffer_bytes: u32) -> Self {
        let bytes = usize::try_from(ring_buffer_bytes).unwrap_or(MAX_BATCH_BYTES);
        ReaderConfig { max_batch_bytes: bytes.min(MAX_BATCH_BYTES), ..ReaderConfig::default() }
    }
}

/// Running totals of the reader thread.
#[derive(Debug, Default)]
pub struct ReaderStats {
    /// Records read from the ring buffer.
    pub events: AtomicU64,
    /// Batches delivered.
    pub batches: AtomicU64,
    /// Bytes of records delivered.
    pub bytes: AtomicU64,
}

/// Takes the object's `CG_EVENTS` ring buffer and `CG_COUNTERS` map and
/// starts the reader on them.
///
/// # Errors
/// [`crate::Error::Object`] when a map is missing or of the wrong type;
/// [`crate::Error::Io`] when the thread cannot start.
pub fn start<S: Sink>(
    ebpf: &mut aya::Ebpf,
    sink: S,
    config: ReaderConfig,
) -> Result<(Reader, Arc<Counters>), crate::Error> {
    start_with(ebpf, sink, config, None, None)
}

/// [`start`], with `kretprobes` read into [`Lost::kretprobe_missed`] and
/// `recursion` into [`Lost::recursion_missed`] alongside the map (kprobe
/// mode's exit kretprobes, fentry mode's syscall programs).
///
/// # Errors
/// As [`start`].
pub fn start_with<S: Sink>(
    ebpf: &mut aya::Ebpf,
    sink: S,
    config: ReaderConfig,
    kretprobes: Option<MissCounter>,
    recursion: Option<RecursionCounter>,
) -> Result<(Reader, Arc<Counters>), crate::Error> {
    use crate::Error;
    let mut take = |name: &str| ebpf.take_map(name).ok_or_else(|| Error::Object(format!("map {name} missing")));
    let ring = RingBuf::try_from(take("CG_EVENTS")?).map_err(|e| Error::Object(format!("CG_EVENTS: {e}")))?;
    let counters = PerCpuArray::try_from(take("CG_COUNTERS")?).map_err(|e| Error::Object(format!("CG_COUNTERS: {e}")))?;
    let counters = Arc::new(Counters { map: counters, kretprobes, recursion });
    let reader = Reader::spawn(ring, Arc::clone(&counters), sink, config)?;
    Ok((reader, counters))
}

/// The running thread; [`Reader::stop`] or [`Reader::finish`] ends and
/// joins it.
pub struct Reader {
    thread: Option<JoinHandle<()>>,
    stop: OwnedFd,
    /// Set by [`Reader::finish`] before it wakes the thread.
    drain: Arc<AtomicBool>,
    /// Totals, shared with the thread.
    pub stats: Arc<ReaderStats>,
}

impl Reader {
    /// Starts the thread.
    ///
    /// # Errors
    /// When the eventfd or the thread cannot be created.
    pub fn spawn<S: Sink>(
        ring: RingBuf<MapData>,
        counters: Arc<Counters>,
        sink: S,
        config: ReaderConfig,
    ) -> std::io::Result<Reader> {
        let stop = crate::sys::eventfd()?;
        let stats = Arc::new(ReaderStats::default());
        let thread_stats = Arc::clone(&stats);
        let stop_fd = stop.as_raw_fd();
        let drain = Arc::new(AtomicBool::new(false));
        let thread_drain = Arc::clone(&drain);
        let thread = std::thread::Builder::new()
            .name("chroot-guard-rb".into())
            .spawn(move || run(ring, &counters, &sink, stop_fd, &thread_drain, &thread_stats, config))?;
        Ok(Reader { thread: Some(thread), stop, drain, stats })
    }

    /// Wakes the thread, waits for it to end; records still in the ring
    /// buffer are dropped. Idempotent.
    pub fn stop(&mut self) {
        self.wake_and_join();
    }

    /// Ends the thread once it has handed over every record the ring buffer
    /// holds and the consumer has finished with every batch (the last one
    /// carries the counters read after the drain). Call it after the
    /// programs are detached: records written meanwhile would be taken too,
    /// and a storm would keep it going. It gives up on a consumer that takes
    /// no batch for [`FINISH_STALL`], unless the consumer holds batches back
    /// ([`Sink::held`]): then it waits until released. Blocks; idempotent,
    /// and a no-op after [`Reader::stop`].
    pub fn finish(&mut self) {
        self.drain.store(true, Ordering::Release);
        self.wake_and_join();
    }

    fn wake_and_join(&mut self) {
        if let Some(thread) = self.thread.take() {
            crate::sys::signal_eventfd(self.stop.as_raw_fd());
            let _ = thread.join();
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long after the last record the reader keeps polling every ms.
const RECENT: Duration = Duration::from_millis(3);

/// Poll interval shortly after activity in a stream: the programs do not
/// wake the reader for a record that comes within [`WAKEUP_NS`] of a
/// wakeup, nor for one that finds a record before it still unread, so
/// this finds them there.
const SHORT_POLL: Duration = Duration::from_millis(1);

/// Poll interval in a trickle ([`TRICKLE_RECORDS`]) after a read that found
/// records, and while they wait for the consumer to finish the batch
/// before (until [`ReaderConfig::max_hold`] after the batch's first record
/// was read): twice [`WAKEUP_NS`], so a record that got no wakeup, or that
/// the consumer kept waiting, goes out within this rather than
/// [`SHORT_POLL`] (with three callers at 1,000 calls a second each, 8 to
/// 12 % of the records waited 0.8 to 1.2 ms in `bench/`).
const QUICK_POLL: Duration = Duration::from_nanos(2 * WAKEUP_NS);

/// A trickle: at most this many records found in the current [`Rate`]
/// window and the one before (1 to 3 ms; a steady rate up to about 4,000 a
/// second), where each record's latency matters and [`QUICK_POLL`] costs a
/// wakeup per read that found some, and up to 20 while a batch waits for
/// the consumer. More is a stream, where waiting [`SHORT_POLL`] gathers larger
/// batches: polling every 100 µs there too cost the JavaScript subscriber
/// 200 to 400 ns more per chroot(2) at full speed (`bench/`).
const TRICKLE_RECORDS: u32 = 8;

/// Records found by recent reads, counted per window of at least
/// [`SHORT_POLL`] (a window begins at the first read that finds records
/// once the one before is that old): the rate that tells a trickle from a
/// stream ([`TRICKLE_RECORDS`]).
struct Rate {
    /// Start of the current window.
    since: Instant,
    /// Records found in the current window.
    now: u32,
    /// Records found in the window before, when it was the one just before.
    before: u32,
}

impl Rate {
    fn new() -> Self {
        Rate { since: Instant::now(), now: 0, before: 0 }
    }

    /// Counts `n` records found at `at`.
    fn add(&mut self, at: Instant, n: u32) {
        let age = at.duration_since(self.since);
        if age >= SHORT_POLL {
            self.before = if age < 2 * SHORT_POLL { self.now } else { 0 };
            self.now = 0;
            self.since = at;
        }
        self.now = self.now.saturating_add(n);
    }

    /// Whether the records found lately are a trickle.
    fn trickle(&self) -> bool {
        self.now.saturating_add(self.before) <= TRICKLE_RECORDS
    }
}

/// [`Reader::finish`] gives up when the consumer has not finished a batch
/// for this long (a JS thread that stopped turning its event loop).
pub const FINISH_STALL: Duration = Duration::from_secs(10);

fn push_record(batch: &mut Vec<u8>, record: &[u8]) {
    batch.extend_from_slice(&(record.len() as u32).to_le_bytes());
    batch.extend_from_slice(&[0; 4]);
    batch.extend_from_slice(record);
    let pad = (8 - record.len() % 8) % 8;
    batch.extend_from_slice(&[0; 8][..pad]);
}

/// The records of a batch's `data`, as [`push_record`] lays them out; a
/// length running past the end ends the walk.
pub fn records(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize;
        let record = data.get(at + 8..at + 8 + len)?;
        at += 8 + len.next_multiple_of(8);
        Some(record)
    })
}

fn run<S: Sink>(
    mut ring: RingBuf<MapData>,
    counters: &Counters,
    sink: &S,
    stop_fd: RawFd,
    drain: &AtomicBool,
    stats: &ReaderStats,
    cfg: ReaderConfig,
) {
    let ring_fd = ring.as_raw_fd();
    let mut batch = Batch { data: Vec::with_capacity(64 << 10), ..Batch::default() };
    let mut held_since: Option<Instant> = None;
    let mut last_event: Option<Instant> = None;
    let mut lost = Lost::default();
    let mut lost_dirty = false;
    let mut lost_read_at = Instant::now();
    let mut found = false;
    let mut rate = Rate::new();
    loop {
        // Held: the records stay in the ring buffer (where the programs
        // count what does not fit) rather than in this thread's memory,
        // and a stop then loses none of a pinned ring buffer's records.
        let held = sink.held();
        let full = held || batch.data.len() >= cfg.max_batch_bytes;
        let waiting = batch.events > 0 || lost_dirty;
        // The programs do not wake us for every record (`event::send` in
        // crates/ebpf): after a read that found some, look again for those
        // that got no wakeup, soon in a trickle, within SHORT_POLL in a
        // stream.
        let recent = last_event.is_some_and(|t| t.elapsed() < RECENT);
        let quick = rate.trickle()
            && (found || held_since.is_some_and(|t| batch.events > 0 && t.elapsed() < cfg.max_hold));
        // Held (the consumer waits on purpose, for as long as it takes): no
        // batch can go, so look no more often than for the counters; the
        // hold's end wakes the thread (`Sink::unheld_fd`).
        let timeout = if held {
            cfg.counters_every
        } else if quick {
            QUICK_POLL
        } else if waiting || recent {
            SHORT_POLL
        } else {
            cfg.counters_every
        };
        let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32) };
        let mut fds = [
            libc::pollfd { fd: stop_fd, events: libc::POLLIN, revents: 0 },
            // poll(2) skips an entry whose fd is negative.
            libc::pollfd { fd: sink.unheld_fd().unwrap_or(-1), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: ring_fd, events: libc::POLLIN, revents: 0 },
        ];
        // While the batch is full or held the ring buffer is not watched: it
        // stays readable and would wake us at once.
        let nfds = if full { 2 } else { 3 };
        // SAFETY: `fds` outlives the call and holds `nfds` entries; `ts` is
        // a valid timespec; no signal mask.
        let rc = unsafe { libc::ppoll(fds.as_mut_ptr(), nfds, &ts, std::ptr::null()) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                sink.failed(format!("poll(2) on the ring buffer failed: {err}"));
                return;
            }
        }
        if fds[0].revents != 0 {
            if drain.load(Ordering::Acquire) {
                finish(&mut ring, counters, sink, stats, cfg, batch);
            }
            return;
        }
        if fds[1].revents != 0 {
            crate::sys::reset_eventfd(fds[1].fd);
        }
        // Again: the hold may have ended while we waited.
        let held = sink.held();
        let before = batch.events;
        while !held && batch.data.len() < cfg.max_batch_bytes {
            let Some(item) = ring.next() else { break };
            push_record(&mut batch.data, &item);
            batch.events += 1;
        }
        found = batch.events > before;
        let now = Instant::now();
        if found {
            rate.add(now, batch.events - before);
        }
        if batch.events > 0 {
            last_event = Some(now);
            if held_since.is_none() {
                held_since = Some(now);
            }
        }
        if now.duration_since(lost_read_at) >= cfg.counters_every {
            lost_read_at = now;
            let current = counters.read();
            if current != lost {
                lost = current;
                lost_dirty = true;
            }
        }
        if batch.events == 0 && !lost_dirty {
            continue;
        }
        let in_flight = sink.in_flight();
        let full = batch.data.len() >= cfg.max_batch_bytes;
        let hold_expired = held_since.is_some_and(|t| now.duration_since(t) >= cfg.max_hold);
        if in_flight >= cfg.max_in_flight || !(in_flight == 0 || full || hold_expired) {
            continue;
        }
        held_since = None;
        lost_dirty = false;
        if !deliver(sink, stats, &mut batch, lost) {
            return;
        }
    }
}

/// Hands `batch` over with `lost`, leaving an empty one in its place;
/// `false` when the consumer is gone.
fn deliver<S: Sink>(sink: &S, stats: &ReaderStats, batch: &mut Batch, lost: Lost) -> bool {
    let out = std::mem::replace(batch, Batch { data: Vec::with_capacity(64 << 10), ..Batch::default() });
    stats.events.fetch_add(u64::from(out.events), Ordering::Relaxed);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.bytes.fetch_add(out.data.len() as u64, Ordering::Relaxed);
    sink.deliver(Batch { lost, ..out })
}

/// Waits until the consumer holds fewer than `below` batches; `false` when
/// it finished none for [`FINISH_STALL`] without holding them back on
/// purpose ([`Sink::held`]).
fn wait_for_consumer<S: Sink>(sink: &S, below: u32) -> bool {
    let mut last = (sink.in_flight(), Instant::now());
    loop {
        let n = sink.in_flight();
        if n < below {
            return true;
        }
        if n < last.0 || sink.held() {
            last = (n, Instant::now());
        } else if last.1.elapsed() >= FINISH_STALL {
            return false;
        }
        std::thread::sleep(SHORT_POLL);
    }
}

/// [`Reader::finish`]'s end: the records left in the ring buffer (and in
/// `batch`) go out in full batches, the last with the counters read now;
/// returns when the consumer has finished them all.
fn finish<S: Sink>(ring: &mut RingBuf<MapData>, counters: &Counters, sink: &S, stats: &ReaderStats, cfg: ReaderConfig, mut batch: Batch) {
    loop {
        while batch.data.len() < cfg.max_batch_bytes {
            let Some(item) = ring.next() else { break };
            push_record(&mut batch.data, &item);
            batch.events += 1;
        }
        let last = batch.data.len() < cfg.max_batch_bytes;
        if !wait_for_consumer(sink, cfg.max_in_flight) {
            return;
        }
        // The counters go with the last batch, even an empty one, so the
        // consumer's final totals include what was lost before the end.
        if !deliver(sink, stats, &mut batch, counters.read()) {
            return;
        }
        if last {
            break;
        }
    }
    wait_for_consumer(sink, 1);
}
