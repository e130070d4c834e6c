//! `chroot-guard watch` lines written by the reader thread
//! ([`crate::lines`]): the sink that writes each batch's lines to stdout
//! and hands JavaScript only the counters, and what JavaScript reads back
//! at the end to write the stream's last line.

use std::{
    os::fd::RawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use napi::bindgen_prelude::{BigInt, Buffer};
use napi_derive::napi;

use super::lifecycle::{BindingBatch, BindingLost, JsSink};
use crate::{
    lines::{write_all, LineFormat, LineText, Lines, Stdout, WriteEnd},
    reader::{records, Batch, Lost, Sink},
};

/// What JavaScript decides about the lines ([`LineText`]); given, the
/// session writes its table rows, or its `chroot` and `lost` records, to
/// stdout itself.
#[napi(object)]
pub struct BindingOutput {
    /// `table` or `json`.
    pub format: String,
    /// The table: CLOCK_REALTIME − CLOCK_BOOTTIME in ns, as JavaScript
    /// turns event times into wall-clock times.
    pub wall_offset_ns: Option<BigInt>,
    /// The table: the local time's offset from UTC as `[from, minutes]`
    /// pairs, flattened: from `from` (ms since the epoch, ascending) on,
    /// local time is UTC + `minutes` (`zoneOffsets` in `ts/clock.ts`).
    pub zone: Option<Vec<f64>>,
    /// Name of each errno by number (index 2: `ENOENT`), as Node.js's
    /// `os.constants.errno` gives them; `""` where there is none.
    pub errno_names: Vec<String>,
    /// Code point ranges to escape ([`LineText::escaped`]), as inclusive
    /// `[lo, hi]` pairs, flattened.
    pub escaped: Vec<u32>,
}

impl From<&BindingOutput> for LineText {
    fn from(o: &BindingOutput) -> LineText {
        let format = if o.format == "table" {
            let (negative, ns, _) = o.wall_offset_ns.as_ref().map_or((false, 0, true), BigInt::get_u128);
            let zone =
                o.zone.as_deref().unwrap_or_default().chunks_exact(2).map(|p| (p[0] as i64, p[1] as i32)).collect();
            LineFormat::Table { wall_offset_ns: if negative { -(ns as i128) } else { ns as i128 }, zone }
        } else {
            LineFormat::Json
        };
        LineText {
            format,
            errno_names: o.errno_names.clone(),
            escaped: o.escaped.chunks_exact(2).map(|p| (p[0], p[1])).collect(),
        }
    }
}

/// What a session writing to stdout has written, read by JavaScript at the
/// end ([`OutputState::read`]).
#[napi(object)]
pub struct BindingOutputState {
    /// `chroot` records written, whole lines only.
    pub records: f64,
    /// The `ts` (ns since boot) of the last `lost` record written whole;
    /// absent when none was.
    pub lost_ts: Option<BigInt>,
    /// The totals that record reported; absent as `lost_ts`.
    pub lost: Option<BindingLost>,
    /// The last write stopped within a line (the session closed while the
    /// reader of stdout took nothing for 2 s, or write(2) failed): what
    /// follows must start a line of its own.
    pub torn: bool,
}

/// Bytes of lines held before a write within one batch.
const FLUSH_AT: usize = 256 << 10;

/// No `since` handed over yet.
const UNSET: u64 = u64::MAX;

/// Shared by a session's binding object and its [`LineSink`]: whether
/// JavaScript has written the line the session's lines follow, where the
/// first `lost` interval starts, and what went out.
pub struct OutputState {
    started: AtomicBool,
    since_ts: AtomicU64,
    records: AtomicU64,
    torn: AtomicBool,
    /// `ts` and totals of the last `lost` record written whole.
    last_lost: Mutex<Option<(u64, Lost)>>,
}

impl OutputState {
    /// Nothing set or written yet.
    pub fn new() -> Arc<OutputState> {
        Arc::new(OutputState {
            started: AtomicBool::new(false),
            since_ts: AtomicU64::new(UNSET),
            records: AtomicU64::new(0),
            torn: AtomicBool::new(false),
            last_lost: Mutex::new(None),
        })
    }

    /// JavaScript has written the header or the `attach` record, whose
    /// `ts` (ns since boot) is `since_ts`: the sink's lines may follow.
    pub fn start(&self, since_ts: u64) {
        self.since_ts.store(since_ts, Ordering::Release);
        self.started.store(true, Ordering::Release);
    }

    /// What has gone out so far; after the reader has stopped, the stream's
    /// final state: the last `lost` record JavaScript writes starts from it.
    pub fn read(&self) -> BindingOutputState {
        let last = *self.last_lost.lock().unwrap_or_else(PoisonError::into_inner);
        BindingOutputState {
            records: self.records.load(Ordering::Acquire) as f64,
            lost_ts: last.map(|(ts, _)| BigInt::from(ts)),
            lost: last.map(|(_, l)| l.into()),
            torn: self.torn.load(Ordering::Acquire),
        }
    }
}

/// What one write of a batch's lines holds: `chroot` records, and the
/// `lost` record at its end, if any (its offset, `ts` and totals).
#[derive(Clone, Copy, Default)]
struct Chunk {
    records: u64,
    lost: Option<(usize, u64, Lost)>,
}

/// Formats each batch into table rows or NDJSON on the reader thread and writes it to
/// `fd` (stdout), then hands JavaScript an empty batch with the event count
/// and the counters (for its notes on stderr). A full pipe blocks the
/// reader, so the backlog waits in the ring buffer (its drops are counted
/// and written as `lost` records once the pipe drains); a closing session
/// ends the wait. A write error ends the reader: it is handed over as
/// `outputErrno` (EPIPE: the reader of stdout is gone).
pub struct LineSink {
    js: JsSink,
    stdout: Stdout,
    writer: Mutex<(Lines, Vec<u8>)>,
    state: Arc<OutputState>,
    closing: Arc<AtomicBool>,
}

impl LineSink {
    /// A sink writing to stdout with `text`'s rules; `state` is shared with
    /// JavaScript, `closing` ends a wait on a full pipe.
    pub fn new(js: JsSink, text: LineText, state: Arc<OutputState>, closing: Arc<AtomicBool>) -> LineSink {
        LineSink {
            js,
            stdout: Stdout::open(),
            writer: Mutex::new((Lines::new(text, 0), Vec::with_capacity(FLUSH_AT))),
            state,
            closing,
        }
    }

    /// Nothing may be written yet ([`OutputState::start`]), unless the
    /// session closes, when the batches are dropped instead.
    fn waiting(&self) -> bool {
        !self.state.started.load(Ordering::Acquire) && !self.closing.load(Ordering::Acquire)
    }

    /// Writes `out` (holding `chunk`) and counts what went out whole.
    fn write(&self, out: &mut Vec<u8>, chunk: Chunk) -> Result<(), WriteEnd> {
        let r = write_all(self.stdout.fd(), out, &self.closing);
        let written = match &r {
            Ok(()) => out.len(),
            Err(WriteEnd::Closing { written } | WriteEnd::Failed { written, .. }) => *written,
        };
        let lost_at = chunk.lost.map_or(out.len(), |(at, _, _)| at);
        let records = if written >= lost_at {
            chunk.records
        } else {
            out[..written].iter().filter(|&&b| b == b'\n').count() as u64
        };
        self.state.records.fetch_add(records, Ordering::AcqRel);
        if written > 0 && out[written - 1] != b'\n' {
            self.state.torn.store(true, Ordering::Release);
        }
        if let Some((_, ts, totals)) = chunk.lost.filter(|_| written == out.len()) {
            *self.state.last_lost.lock().unwrap_or_else(PoisonError::into_inner) = Some((ts, totals));
        }
        out.clear();
        r
    }
}

impl Sink for LineSink {
    /// Until JavaScript has written its first line one more counts as in
    /// flight, so the reader delivers nothing: the records wait in the ring
    /// buffer.
    fn in_flight(&self) -> u32 {
        self.js.in_flight() + u32::from(self.waiting())
    }

    /// Waiting for JavaScript's first line (or a pause) is not a stall: a
    /// finish waits.
    fn held(&self) -> bool {
        self.waiting() || self.js.held()
    }

    /// `start_output` writes it, as a resume does.
    fn unheld_fd(&self) -> Option<RawFd> {
        Some(self.js.unheld())
    }

    fn deliver(&self, batch: Batch) -> bool {
        // Closing (the session closes, or a second signal cut its finish
        // short): what the reader still hands over is dropped.
        if self.closing.load(Ordering::Acquire) {
            return false;
        }
        let mut guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let (lines, out) = &mut *guard;
        let since = self.state.since_ts.swap(UNSET, Ordering::AcqRel);
        if since != UNSET {
            lines.set_since(since);
        }
        let mut written = Ok(());
        let mut chunk = Chunk::default();
        for record in records(&batch.data) {
            chunk.records += u64::from(lines.line(record, out));
            if out.len() >= FLUSH_AT {
                written = self.write(out, std::mem::take(&mut chunk));
                if written.is_err() {
                    break;
                }
            }
        }
        if written.is_ok() {
            let ts = crate::sys::boottime_ns();
            let at = out.len();
            if lines.lost(batch.lost, ts, out) {
                chunk.lost = Some((at, ts, batch.lost));
            }
            written = self.write(out, chunk);
        }
        drop(guard);
        match written {
            Ok(()) => self.js.call_batch(summary(&batch, None)),
            Err(WriteEnd::Closing { .. }) => false,
            Err(WriteEnd::Failed { err, .. }) => {
                let mut value = summary(&batch, Some(err.raw_os_error().unwrap_or(libc::EIO)));
                value.error = Some(format!("writing to stdout failed: {err}"));
                self.js.call_batch(value);
                false
            }
        }
    }

    fn failed(&self, reason: String) {
        self.js.failed(reason);
    }
}

/// The batch JavaScript gets: no records, their count, the counters.
fn summary(batch: &Batch, output_errno: Option<i32>) -> BindingBatch {
    BindingBatch {
        data: Vec::new().into(),
        events: batch.events,
        lost: BindingLost::from(batch.lost),
        error: None,
        output_errno,
    }
}

/// The lines of a batch (`[u32 length][u32 0][record][pad to 8]`…) in
/// `output`'s format as the reader thread writes them, then (JSON) a `lost`
/// line for each of
/// `lost` (counter totals, read at ts 1, 2, …; the first interval from 0)
/// that reports something. Internal, for the differential test against
/// `ts/cli/records.ts`.
#[napi]
pub fn output_lines(batch: Buffer, output: BindingOutput, lost: Vec<BindingLost>) -> Buffer {
    let mut lines = Lines::new(LineText::from(&output), 0);
    let mut out = Vec::new();
    for record in records(&batch) {
        lines.line(record, &mut out);
    }
    for (i, l) in lost.iter().enumerate() {
        lines.lost(Lost::from(l), i as u64 + 1, &mut out);
    }
    out.into()
}

/// What [`crate::cgroup::container_of`] finds in a cgroup path (fields as
/// `ContainerAttribution` in `ts/cgroup.ts`).
#[napi(object)]
pub struct BindingContainer {
    /// The runtime, or none.
    pub container_runtime: Option<String>,
    /// The container id, or none.
    pub container_id: Option<String>,
    /// The pod's uid, or none.
    pub pod_uid: Option<String>,
}

/// [`crate::cgroup::container_of`]. Internal, for the differential test
/// against `containerOf` in `ts/cgroup.ts`.
#[napi]
pub fn native_container_of(path: String) -> BindingContainer {
    let c = crate::cgroup::container_of(&path);
    BindingContainer { container_runtime: c.runtime.map(str::to_string), container_id: c.id, pod_uid: c.pod_uid }
}
