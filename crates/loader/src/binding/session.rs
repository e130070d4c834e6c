//! Kernel sessions for `chrootWatch()` (`ts/session.ts`).

use std::{collections::HashMap, sync::Arc};

use chroot_guard_common::{filter_flags, Filter, COMM_LEN, DEFAULT_RING_BUFFER_BYTES};
use napi::{
    bindgen_prelude::{AsyncTask, BigInt, Buffer, Function},
    Env, Task,
};
use napi_derive::napi;

use super::{
    binding_refusal,
    lifecycle::{handle_methods, BindingBatch, BindingStats, Handle, JsSink, Loaded, Shared},
    output::{BindingOutput, BindingOutputState, LineSink, OutputState},
    BindingFailure, BindingRefusal,
};
use crate::{
    attach::{LoadOptions, ModeRequest},
    error::{Error, Refusal},
    lines::LineText,
    reader::ReaderConfig,
    session::Session,
};

/// Options of [`BindingSession`], validated again here after the TS layer.
#[napi(object)]
pub struct BindingOpenOptions {
    /// `auto`, `fentry`, `kprobe` or `tracepoint`.
    pub mode: String,
    /// Only this tgid.
    pub pid: Option<u32>,
    /// Only this real uid.
    pub uid: Option<u32>,
    /// Only this comm (at most 15 bytes).
    pub comm: Option<String>,
    /// Ring buffer size in bytes.
    pub ring_buffer_bytes: Option<u32>,
    /// Tracepoint mode: also see 32-bit compat and x32 calls (raw
    /// `sys_enter`/`sys_exit`; costs every syscall). Default false.
    pub compat: Option<bool>,
    /// Given, the session writes its events to stdout, as table rows or
    /// NDJSON, on the reader thread (`chroot-guard watch`; `crate::lines`), held
    /// back until [`BindingSession::start_output`]; batches then carry no
    /// records, only their count.
    pub output: Option<BindingOutput>,
}

/// Outcome of `open()`: never a rejected promise, so the TS layer can build
/// its error with every field.
#[napi(object)]
pub struct BindingOpenResult {
    /// Why the session does not run; absent when it runs. Its verifier log
    /// is that of the first verifier rejection, if any.
    pub failure: Option<BindingFailure>,
    /// The attached mode when it runs.
    pub mode: Option<String>,
    /// Refused modes (better ones when it runs; all tried when not).
    pub refusals: Vec<BindingRefusal>,
    /// Programs of the attached mode that only see 32-bit compat calls and
    /// that the kernel refused: the session is blind to those calls.
    pub blind_spots: Vec<BindingRefusal>,
    /// The attached programs, when it runs (empty otherwise).
    pub programs: Vec<BindingProgram>,
}

/// One attached program: its name in the object and its kernel id (by
/// which `/proc/self/fdinfo` shows its `run_cnt` and `run_time_ns`).
#[napi(object)]
pub struct BindingProgram {
    /// The program's name, e.g. `cg_tp_enter`.
    pub name: String,
    /// The kernel's program id.
    pub id: u32,
}

fn parse_options(o: &BindingOpenOptions) -> Result<LoadOptions, Error> {
    let mode: ModeRequest = o.mode.parse()?;
    let mut filter = Filter::default();
    if let Some(pid) = o.pid {
        filter.flags |= filter_flags::PID;
        filter.pid = pid;
    }
    if let Some(uid) = o.uid {
        filter.flags |= filter_flags::UID;
        filter.uid = uid;
    }
    if let Some(comm) = &o.comm {
        let bytes = comm.as_bytes();
        if bytes.is_empty() || bytes.len() >= COMM_LEN {
            return Err(Error::InvalidArgument(format!(
                "comm {comm:?} must be 1 to {} bytes (the kernel's TASK_COMM_LEN - 1)",
                COMM_LEN - 1
            )));
        }
        filter.flags |= filter_flags::COMM;
        filter.comm[..bytes.len()].copy_from_slice(bytes);
    }
    let ring = o.ring_buffer_bytes.unwrap_or(DEFAULT_RING_BUFFER_BYTES);
    let ring_buffer_bytes = crate::attach::check_ring_buffer_bytes(u64::from(ring))?;
    Ok(LoadOptions { mode, filter, ring_buffer_bytes, compat: o.compat.unwrap_or(false) })
}

/// A kernel session for `chrootWatch()`.
#[napi]
pub struct BindingSession {
    handle: Handle,
    options: Result<LoadOptions, String>,
    /// The line rules of a session writing to stdout.
    output: Option<LineText>,
    output_state: Arc<OutputState>,
}

#[napi]
impl BindingSession {
    /// Validates the options; touches no kernel state.
    #[napi(constructor)]
    pub fn new(env: Env, options: BindingOpenOptions) -> napi::Result<Self> {
        let handle = Handle::new(&env)?;
        let output = options.output.as_ref().map(LineText::from);
        Ok(BindingSession { handle, options: parse_options(&options).map_err(|e| e.to_string()), output, output_state: OutputState::new() })
    }

    /// Loads, attaches and starts reading on the libuv pool. `onBatch`
    /// receives one [`BindingBatch`] per batch on the JS thread.
    #[napi(ts_return_type = "Promise<BindingOpenResult>")]
    pub fn open(&self, on_batch: Function<BindingBatch, ()>) -> napi::Result<AsyncTask<OpenTask>> {
        let js = self.handle.sink(&on_batch)?;
        let sink = match &self.output {
            Some(text) => SessionSink::Lines(Box::new(LineSink::new(js, text.clone(), Arc::clone(&self.output_state), Arc::clone(&self.handle.shared.closing)))),
            None => SessionSink::Js(js),
        };
        self.handle.shared.begin_open()?;
        Ok(AsyncTask::new(OpenTask { shared: Arc::clone(&self.handle.shared), options: self.options.clone(), sink: Some(sink) }))
    }
}

#[napi]
impl BindingSession {
    /// Detaches the programs, then hands `onBatch` every record left in the
    /// ring buffer ([`Session::finish`]) and resolves with the final totals
    /// once every batch has been handled; the session is closed after it
    /// (call `close()` still, to release the env cleanup hook). Resolves
    /// with zeros when the session is not running.
    #[napi(ts_return_type = "Promise<BindingStats>")]
    pub fn finish(&self) -> AsyncTask<FinishTask> {
        AsyncTask::new(FinishTask { shared: Arc::clone(&self.handle.shared) })
    }

    /// A session writing to stdout (`output`): JavaScript has written the
    /// `attach` record, whose `ts` (ns since boot) is `sinceTs`, the start
    /// of the first `lost` record's interval; the session's lines follow
    /// it from now on.
    #[napi]
    pub fn start_output(&self, since_ts: BigInt) {
        self.output_state.start(since_ts.get_u64().1);
        self.handle.shared.unhold();
    }

    /// A session writing to stdout: what it has written there (nothing for
    /// another session); also after `close()`, which stops the writes, when
    /// it is the stream's final state.
    #[napi]
    pub fn output_state(&self) -> BindingOutputState {
        self.output_state.read()
    }
}

/// Where a session's batches go: to JavaScript, or to stdout by the reader
/// thread with a count to JavaScript.
pub enum SessionSink {
    /// Records to JavaScript.
    Js(JsSink),
    /// Lines to stdout (boxed: its writer state is large, and the enum
    /// only crosses to the open task once).
    Lines(Box<LineSink>),
}

/// Runs [`Session::finish`] off the JS thread, which must stay free to
/// take the last batches.
pub struct FinishTask {
    shared: Arc<Shared>,
}

impl Task for FinishTask {
    type Output = BindingStats;
    type JsValue = BindingStats;

    fn compute(&mut self) -> napi::Result<BindingStats> {
        // A finish hands everything over: a pause would hold it forever.
        // Taken first: from then on a pause is ignored.
        let running = self.shared.take_running().map(|l| *l);
        self.shared.pause(false);
        Ok(match running {
            Some(Loaded::Watch(mut session)) => session.finish().into(),
            _ => crate::session::SessionStats::default().into(),
        })
    }

    fn resolve(&mut self, _env: Env, stats: BindingStats) -> napi::Result<BindingStats> {
        Ok(stats)
    }
}

handle_methods!(BindingSession, "Stops the reader thread, releases the callback and detaches every program. Idempotent; safe while `open()` is still running (the session is then closed as soon as it is up).");

/// Runs [`Session::open`] off the JS thread.
pub struct OpenTask {
    shared: Arc<Shared>,
    options: Result<LoadOptions, String>,
    sink: Option<SessionSink>,
}

/// What [`OpenTask`] found, carried back to the JS thread.
pub struct OpenOutcome {
    mode: Option<&'static str>,
    refusals: Vec<Refusal>,
    blind_spots: Vec<Refusal>,
    programs: Vec<(String, u32)>,
    failure: Option<BindingFailure>,
}

impl Task for OpenTask {
    type Output = OpenOutcome;
    type JsValue = BindingOpenResult;

    fn compute(&mut self) -> napi::Result<OpenOutcome> {
        let sink = self.sink.take().ok_or_else(|| napi::Error::from_reason("open task ran twice"))?;
        let opened = match &self.options {
            Ok(options) => {
                let config = ReaderConfig::for_ring_buffer(options.ring_buffer_bytes);
                match sink {
                    SessionSink::Js(sink) => Session::open(options, sink, config),
                    SessionSink::Lines(sink) => Session::open(options, *sink, config),
                }
            }
            Err(e) => Err(Error::InvalidArgument(e.clone())),
        };
        Ok(match opened {
            Ok(session) => {
                let mode = Some(session.mode().name());
                let refusals = session.refusals().to_vec();
                let blind_spots = session.blind_spots().to_vec();
                let programs = session.programs();
                let failure = if self.shared.finish_open(Loaded::Watch(session)) {
                    None
                } else {
                    Some((&Error::Closed { what: "session" }).into())
                };
                OpenOutcome { mode, refusals, blind_spots, programs, failure }
            }
            Err(e) => {
                self.shared.fail_open();
                OpenOutcome {
                    mode: None,
                    refusals: e.refusals().to_vec(),
                    blind_spots: Vec::new(),
                    programs: Vec::new(),
                    failure: Some((&e).into()),
                }
            }
        })
    }

    fn resolve(&mut self, _env: Env, out: OpenOutcome) -> napi::Result<BindingOpenResult> {
        Ok(BindingOpenResult {
            failure: out.failure,
            mode: out.mode.map(str::to_string),
            refusals: out.refusals.iter().map(binding_refusal).collect(),
            blind_spots: out.blind_spots.iter().map(binding_refusal).collect(),
            programs: out.programs.into_iter().map(|(name, id)| BindingProgram { name, id }).collect(),
        })
    }
}

/// Offsets and constants of the event record, see `layout::event_layout`.
#[napi]
pub fn event_layout() -> HashMap<String, u32> {
    crate::layout::event_layout().into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// `CLOCK_BOOTTIME` now, in ns: the clock of event timestamps.
#[napi]
pub fn boottime_ns() -> BigInt {
    BigInt::from(crate::sys::boottime_ns())
}

/// A cgroup id looked up ([`crate::cgroup::cgroup_path`]).
#[napi(object)]
pub struct BindingCgroupPath {
    /// `found` (`path` is set), `removed` (no cgroup has the id now) or
    /// `failed` (the lookup itself failed: `reason` says why).
    pub state: String,
    /// The path's bytes, relative to the cgroup v2 hierarchy's root.
    pub path: Option<Buffer>,
    /// For `failed`: the sentence of [`crate::cgroup::CgroupError`].
    pub reason: Option<String>,
}

/// The path of the cgroup v2 cgroup `id` (an event's `cgroupId`): a
/// blocking lookup of two syscalls, for `ts/cgroup.ts`, which caches it.
#[napi]
pub fn cgroup_path(id: BigInt) -> BindingCgroupPath {
    let (negative, id, lossless) = id.get_u64();
    if negative || !lossless {
        return BindingCgroupPath { state: "failed".into(), path: None, reason: Some("a cgroup id is an integer from 0 to 2^64 - 1".into()) };
    }
    match crate::cgroup::cgroup_path(id) {
        Ok(crate::cgroup::CgroupPath::Found(p)) => BindingCgroupPath { state: "found".into(), path: Some(p.into()), reason: None },
        Ok(crate::cgroup::CgroupPath::Removed) => BindingCgroupPath { state: "removed".into(), path: None, reason: None },
        Err(e) => BindingCgroupPath { state: "failed".into(), path: None, reason: Some(e.to_string()) },
    }
}

/// Starts the kernel probe (BTF read and parsed, features checked) on a
/// thread now, for the next load to take ([`crate::attach::prewarm`]): the
/// CLI calls it first thing for a command that loads programs. With
/// `speculate` (default false) the thread then also creates the maps and
/// loads, unattached, the programs a session with no options would attach
/// first; a session with other options drops them and loads its own.
#[napi]
pub fn prewarm(speculate: Option<bool>) {
    crate::attach::prewarm(speculate.unwrap_or(false));
}
