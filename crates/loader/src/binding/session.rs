//! Kernel sessions for `chrootWatch()` (`ts/session.ts`).
//!
//! Lifecycle of a [`BindingSession`]: idle → opening (`open()`, loads on the
//! libuv pool) → running → closed (`close()`, idempotent; or the env cleanup
//! hook when a worker thread ends). Closing joins the ring-buffer thread
//! before the threadsafe function is released, so no call races the release,
//! and a released function no longer keeps Node.js alive.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
};

use chroot_guard_common::{filter_flags, Filter, COMM_LEN, DEFAULT_RING_BUFFER_BYTES};
use napi::{
    bindgen_prelude::{AsyncTask, BigInt, Buffer, Function},
    threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode},
    CleanupEnvHook, Env, Status, Task,
};
use napi_derive::napi;

use super::{binding_refusal, BindingRefusal};
use crate::{
    attach::{LoadOptions, ModeRequest},
    error::{Error, Refusal},
    reader::{Batch, ReaderConfig, Sink},
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
}

/// One batch of raw events (`[u32 len][u32 0][record][pad]`...).
#[napi(object)]
pub struct BindingBatch {
    /// The records.
    pub data: Buffer,
    /// Number of records.
    pub events: u32,
    /// Total events lost to a full ring buffer since load.
    pub ring_buffer_full: f64,
    /// Total calls not traced because `CG_PENDING` was full, since load.
    pub pending_full: f64,
}

/// Outcome of `open()`: never a rejected promise, so the TS layer can build
/// its error with every field.
#[napi(object)]
pub struct BindingOpenResult {
    /// Whether the session runs.
    pub ok: bool,
    /// The attached mode when `ok`.
    pub mode: Option<String>,
    /// Refused modes (better ones when `ok`; all tried when not).
    pub refusals: Vec<BindingRefusal>,
    /// Error code when not `ok` (`Error::code`), or `CLOSED`.
    pub error_code: Option<String>,
    /// Error message when not `ok`.
    pub error_message: Option<String>,
    /// Verifier log of the first verifier rejection, if any.
    pub verifier_log: Option<String>,
}

/// Totals of a session.
#[napi(object)]
pub struct BindingStats {
    /// Events read from the ring buffer.
    pub events: f64,
    /// Batches delivered to JS.
    pub batches: f64,
    /// Bytes delivered to JS.
    pub bytes: f64,
    /// Events lost to a full ring buffer.
    pub ring_buffer_full: f64,
    /// Calls not traced: `CG_PENDING` full.
    pub pending_full: f64,
}

type BatchFn = ThreadsafeFunction<BindingBatch, (), BindingBatch, Status, false>;

/// Hands batches to JS through one threadsafe-function call per batch.
struct JsSink {
    tsfn: BatchFn,
    in_flight: Arc<AtomicU32>,
}

impl Sink for JsSink {
    fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    fn deliver(&self, batch: Batch) -> bool {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let value = BindingBatch {
            data: batch.data.into(),
            events: batch.events,
            ring_buffer_full: batch.lost.ring_buffer_full as f64,
            pending_full: batch.lost.pending_full as f64,
        };
        let status = self.tsfn.call(value, ThreadsafeFunctionCallMode::NonBlocking);
        if status != Status::Ok {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return status != Status::Closing;
        }
        true
    }
}

enum State {
    Idle,
    Opening,
    Running(Box<Session>),
    Closed,
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn close(&self) {
        let previous = {
            let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            std::mem::replace(&mut *state, State::Closed)
        };
        if let State::Running(mut session) = previous {
            session.close();
        }
    }
}

/// A kernel session for the TS layer (`ts/src/session.ts`).
#[napi]
pub struct BindingSession {
    shared: Arc<Shared>,
    options: Option<LoadOptions>,
    options_error: Option<Error>,
    cleanup: Option<CleanupEnvHook<Arc<Shared>>>,
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
    Ok(LoadOptions { mode, filter, ring_buffer_bytes })
}

#[napi]
impl BindingSession {
    /// Validates the options; touches no kernel state.
    #[napi(constructor)]
    pub fn new(env: Env, options: BindingOpenOptions) -> napi::Result<Self> {
        let shared = Arc::new(Shared { state: Mutex::new(State::Idle) });
        // A worker thread that ends without close() still detaches.
        let cleanup = env.add_env_cleanup_hook(Arc::clone(&shared), |s| s.close())?;
        let (options, options_error) = match parse_options(&options) {
            Ok(o) => (Some(o), None),
            Err(e) => (None, Some(e)),
        };
        Ok(BindingSession { shared, options, options_error, cleanup: Some(cleanup) })
    }

    /// Loads, attaches and starts reading on the libuv pool. `onBatch`
    /// receives one [`BindingBatch`] per batch on the JS thread.
    #[napi(ts_return_type = "Promise<BindingOpenResult>")]
    pub fn open(&mut self, on_batch: Function<BindingBatch, ()>) -> napi::Result<AsyncTask<OpenTask>> {
        let in_flight = Arc::new(AtomicU32::new(0));
        let taken = Arc::clone(&in_flight);
        let tsfn: BatchFn = on_batch
            .build_threadsafe_function::<BindingBatch>()
            .callee_handled::<false>()
            .build_callback(move |ctx| {
                taken.fetch_sub(1, Ordering::AcqRel);
                Ok(ctx.value)
            })?;
        let options = match (self.options.clone(), self.options_error.take()) {
            (Some(o), _) => Ok(o),
            (None, Some(e)) => Err(e),
            (None, None) => Err(Error::InvalidArgument("options already rejected".into())),
        };
        {
            let mut state = self.shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !matches!(*state, State::Idle) {
                return Err(napi::Error::new(Status::InvalidArg, "session already opened"));
            }
            *state = State::Opening;
        }
        Ok(AsyncTask::new(OpenTask {
            shared: Arc::clone(&self.shared),
            options,
            sink: Some(JsSink { tsfn, in_flight }),
        }))
    }

    /// Stops the reader thread, releases the callback and detaches every
    /// program. Idempotent; safe while `open()` is still running (the
    /// session is then closed as soon as it is up).
    #[napi]
    pub fn close(&mut self, env: Env) -> napi::Result<()> {
        self.shared.close();
        if let Some(hook) = self.cleanup.take() {
            env.remove_env_cleanup_hook(hook)?;
        }
        Ok(())
    }

    /// Totals so far (zeros unless running).
    #[napi]
    pub fn stats(&self) -> BindingStats {
        let state = self.shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = match &*state {
            State::Running(session) => session.stats(),
            _ => Default::default(),
        };
        BindingStats {
            events: s.events as f64,
            batches: s.batches as f64,
            bytes: s.bytes as f64,
            ring_buffer_full: s.lost.ring_buffer_full as f64,
            pending_full: s.lost.pending_full as f64,
        }
    }
}

/// Runs [`Session::open`] off the JS thread.
pub struct OpenTask {
    shared: Arc<Shared>,
    options: Result<LoadOptions, Error>,
    sink: Option<JsSink>,
}

/// What [`OpenTask`] found, carried back to the JS thread.
pub struct OpenOutcome {
    mode: Option<&'static str>,
    refusals: Vec<Refusal>,
    error: Option<(String, String, Option<String>)>,
}

impl Task for OpenTask {
    type Output = OpenOutcome;
    type JsValue = BindingOpenResult;

    fn compute(&mut self) -> napi::Result<OpenOutcome> {
        let Some(sink) = self.sink.take() else {
            return Err(napi::Error::new(Status::GenericFailure, "open task ran twice"));
        };
        let opened = match &self.options {
            Ok(options) => Session::open(options, sink, ReaderConfig::default()),
            Err(e) => Err(Error::InvalidArgument(e.to_string())),
        };
        let code = |e: &Error| match e {
            Error::InvalidArgument(_) => "INVALID_ARGUMENT",
            other => other.code(),
        };
        let mut state = self.shared.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(match opened {
            Ok(session) => {
                let outcome = OpenOutcome {
                    mode: Some(session.mode().name()),
                    refusals: session.refusals().to_vec(),
                    error: None,
                };
                if matches!(*state, State::Opening) {
                    *state = State::Running(Box::new(session));
                    outcome
                } else {
                    drop(state);
                    drop(session);
                    OpenOutcome {
                        error: Some(("CLOSED".into(), "closed while opening".into(), None)),
                        ..outcome
                    }
                }
            }
            Err(e) => {
                if matches!(*state, State::Opening) {
                    *state = State::Closed;
                }
                OpenOutcome {
                    mode: None,
                    refusals: e.refusals().to_vec(),
                    error: Some((code(&e).into(), e.to_string(), e.verifier_log().map(str::to_string))),
                }
            }
        })
    }

    fn resolve(&mut self, _env: Env, out: OpenOutcome) -> napi::Result<BindingOpenResult> {
        let (error_code, error_message, verifier_log) = match out.error {
            Some((c, m, v)) => (Some(c), Some(m), v),
            None => (None, None, None),
        };
        Ok(BindingOpenResult {
            ok: error_code.is_none(),
            mode: out.mode.map(str::to_string),
            refusals: out.refusals.iter().map(binding_refusal).collect(),
            error_code,
            error_message,
            verifier_log,
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
