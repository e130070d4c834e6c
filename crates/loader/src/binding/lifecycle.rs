//! What the binding handles share: the batch callback (one
//! threadsafe-function call per batch; sessions, guards and followers) and
//! the lifecycle state machine idle → opening → running → closed (those and
//! the stack counters).
//!
//! Closing joins the ring-buffer thread before the threadsafe function is
//! released, so no call races the release, and a released function no
//! longer keeps Node.js alive. An env cleanup hook closes a handle whose
//! worker thread ends without `close()`.

use std::{
    os::fd::{AsRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
};

use napi::{
    bindgen_prelude::{Buffer, Function},
    threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode},
    CleanupEnvHook, Env, Status,
};
use napi_derive::napi;

use crate::{
    guard::Guard,
    pin::Follower,
    reader::{Batch, Lost, Sink},
    session::{Session, SessionStats},
    stacks::Stacks,
};

/// The kernel's loss and error counters (`reader::Lost`, summed over
/// CPUs), as f64: napi has no u64 that reads as a JS number.
#[napi(object)]
#[derive(Default)]
pub struct BindingLost {
    /// Records not written: the ring buffer was full (events, and decisions
    /// of every action).
    pub ring_buffer_full: f64,
    /// Calls not traced: syscall entry could not get the thread's in-flight
    /// event (`CG_PENDING` task storage not allocated).
    pub pending_full: f64,
    /// Decisions the LSM program could not make fully (the fail action
    /// applied).
    pub lsm_errors: f64,
    /// Allow decisions not written (ring buffer half full).
    pub allow_lost: f64,
    /// Deny decisions not written (ring buffer full).
    pub deny_lost: f64,
    /// Audit decisions not written (ring buffer full).
    pub audit_lost: f64,
    /// kprobe mode: calls whose return the exit kretprobe missed (more in
    /// flight at once than its maxactive), so no event was sent; from the
    /// kernel's `nmissed` in tracefs `kprobe_profile`. 0 in other modes.
    pub kretprobe_missed: f64,
    /// fentry mode: runs of the syscall's entry or exit program the kernel
    /// skipped (already running on that CPU: a preempted run), each losing
    /// one call's own event (an upper bound: see
    /// `reader::Lost::recursion_missed`). 0 in other modes.
    pub recursion_missed: f64,
}

/// The conversions both ways, from one list of the counters (a struct
/// literal names every field, so a counter left out does not compile);
/// JavaScript numbers hold the counts exactly below 2^53.
macro_rules! lost_conversions {
    ($($field:ident),* $(,)?) => {
        impl From<Lost> for BindingLost {
            fn from(l: Lost) -> Self {
                BindingLost { $($field: l.$field as f64),* }
            }
        }

        impl From<&BindingLost> for Lost {
            fn from(l: &BindingLost) -> Self {
                Lost { $($field: l.$field as u64),* }
            }
        }
    };
}

lost_conversions!(
    ring_buffer_full,
    pending_full,
    lsm_errors,
    allow_lost,
    deny_lost,
    audit_lost,
    kretprobe_missed,
    recursion_missed,
);

/// One batch of raw events (`[u32 len][u32 0][record][pad]`...).
#[napi(object)]
pub struct BindingBatch {
    /// The records; empty where the session writes them to stdout itself
    /// (`BindingOpenOptions::output`, `LineSink`).
    pub data: Buffer,
    /// Number of records (written to stdout, for such a session).
    pub events: u32,
    /// Counter totals since load, read after the batch was taken.
    pub lost: BindingLost,
    /// Set when the reader thread stopped on an error: no batch follows.
    pub error: Option<String>,
    /// A session writing to stdout: write(2)'s errno when writing failed
    /// (`error` says how; EPIPE: the reader of stdout is gone). No batch
    /// follows.
    pub output_errno: Option<i32>,
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
    /// Counter totals since load.
    pub lost: BindingLost,
}

impl From<SessionStats> for BindingStats {
    fn from(s: SessionStats) -> Self {
        BindingStats { events: s.events as f64, batches: s.batches as f64, bytes: s.bytes as f64, lost: s.lost.into() }
    }
}

type BatchFn = ThreadsafeFunction<BindingBatch, (), BindingBatch, Status, false>;

/// Hands batches to JS through one threadsafe-function call per batch.
///
/// A batch counts as in flight until the JS callback has returned, not
/// merely until JS took it: Node.js's threadsafe functions run up to 1,000
/// queued calls before the event loop turns again, so a reader that could
/// queue the next batch while JS handled one kept the queue full through a
/// call storm and no timer or I/O callback ran for minutes (60 s without a
/// 5 s interval firing, under TCG). With one batch in flight
/// ([`crate::reader::ReaderConfig::max_in_flight`]) the queue is empty when
/// a callback returns, and the loop turns between batches.
pub struct JsSink {
    tsfn: BatchFn,
    in_flight: Arc<AtomicU32>,
    /// [`Shared::paused`].
    paused: Arc<AtomicBool>,
    /// [`Shared::unheld`].
    unheld: Arc<OwnedFd>,
}

impl JsSink {
    /// Wraps the JS callback; nothing goes to it while `shared` is paused.
    fn new(on_batch: &Function<BindingBatch, ()>, shared: &Shared) -> napi::Result<JsSink> {
        let tsfn: BatchFn = on_batch
            .build_threadsafe_function::<BindingBatch>()
            .callee_handled::<false>()
            .build_callback(|ctx| Ok(ctx.value))?;
        Ok(JsSink {
            tsfn,
            in_flight: Arc::new(AtomicU32::new(0)),
            paused: Arc::clone(&shared.paused),
            unheld: Arc::clone(&shared.unheld),
        })
    }

    /// [`Sink::unheld_fd`], for a sink that wraps this one.
    pub(super) fn unheld(&self) -> RawFd {
        self.unheld.as_raw_fd()
    }

    /// Queues `value` for the JS callback; `false` when the callback is
    /// gone for good (the handle closes).
    pub(super) fn call_batch(&self, value: BindingBatch) -> bool {
        self.call(value) != Status::Closing
    }

    /// Queues `value` for the JS callback; `in_flight` drops when the
    /// callback has returned (or thrown).
    fn call(&self, value: BindingBatch) -> Status {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let done = Arc::clone(&self.in_flight);
        let status = self.tsfn.call_with_return_value(value, ThreadsafeFunctionCallMode::NonBlocking, move |_, _| {
            done.fetch_sub(1, Ordering::AcqRel);
            Ok(())
        });
        if status != Status::Ok {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        status
    }
}

impl Sink for JsSink {
    /// While paused one more counts as in flight, so the reader delivers
    /// nothing (at most a batch already on its way goes out).
    fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire) + u32::from(self.paused.load(Ordering::Acquire))
    }

    /// Paused: records wait in the ring buffer, where the programs count
    /// what does not fit; not a stall.
    fn held(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    fn unheld_fd(&self) -> Option<RawFd> {
        Some(self.unheld())
    }

    fn deliver(&self, batch: Batch) -> bool {
        self.call_batch(BindingBatch {
            data: batch.data.into(),
            events: batch.events,
            lost: batch.lost.into(),
            error: None,
            output_errno: None,
        })
    }

    fn failed(&self, reason: String) {
        let value = BindingBatch {
            data: Vec::new().into(),
            events: 0,
            lost: BindingLost::default(),
            error: Some(reason),
            output_errno: None,
        };
        let _ = self.call(value);
    }
}

/// What one binding object has loaded into the kernel: the programs, maps
/// and links of a watch, a guard, a pinned-guard follower or a stack count.
pub enum Loaded {
    /// `chrootWatch()`.
    Watch(Session),
    /// `chrootGuard()`.
    Guard(Box<Guard>),
    /// `followPinnedGuard()`.
    Follow(Follower),
    /// `countStacks()`: detached when dropped; no batches, no counters.
    Stacks(Stacks),
}

impl Loaded {
    fn close(&mut self) {
        match self {
            Loaded::Watch(s) => s.close(),
            Loaded::Guard(g) => g.close(),
            Loaded::Follow(f) => f.close(),
            Loaded::Stacks(_) => {}
        }
    }

    fn stats(&self) -> SessionStats {
        match self {
            Loaded::Watch(s) => s.stats(),
            Loaded::Guard(g) => g.stats(),
            Loaded::Follow(f) => f.stats(),
            Loaded::Stacks(_) => SessionStats::default(),
        }
    }
}

/// Lifecycle states.
pub enum State {
    /// Created, nothing loaded.
    Idle,
    /// `open()` is loading on the libuv pool.
    Opening,
    /// Attached.
    Running(Box<Loaded>),
    /// Closed for good.
    Closed,
}

/// The state, shared with the open task and the env cleanup hook.
pub struct Shared {
    state: Mutex<State>,
    /// Set when the handle closes (also while a finish task drains the
    /// reader): a sink writing to stdout stops at the next line
    /// (`LineSink`).
    pub closing: Arc<AtomicBool>,
    /// Set while JavaScript cannot take more (`pause(true)`): the reader
    /// hands over no batch ([`JsSink`]).
    pub paused: Arc<AtomicBool>,
    /// An eventfd written when a hold ends ([`Shared::unhold`]), which the
    /// reader polls while held.
    pub unheld: Arc<OwnedFd>,
}

impl Shared {
    /// A fresh idle state, closed by `env`'s cleanup if never closed.
    pub fn new(env: &Env) -> napi::Result<(Arc<Shared>, CleanupEnvHook<Arc<Shared>>)> {
        let unheld = crate::sys::eventfd().map_err(|e| napi::Error::from_reason(format!("eventfd: {e}")))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::Idle),
            closing: Arc::new(AtomicBool::new(false)),
            paused: Arc::new(AtomicBool::new(false)),
            unheld: Arc::new(unheld),
        });
        let hook = env.add_env_cleanup_hook(Arc::clone(&shared), |s| s.close())?;
        Ok((shared, hook))
    }

    /// Pauses or resumes delivery to JavaScript ([`JsSink`]); ignored once
    /// the handle is not running (a finish has taken it: it hands
    /// everything over).
    pub fn pause(&self, paused: bool) {
        let state = self.lock();
        if paused && matches!(*state, State::Closed) {
            return;
        }
        self.paused.store(paused, Ordering::Release);
        drop(state);
        if !paused {
            self.unhold();
        }
    }

    /// Wakes the reader from a hold ([`Sink::unheld_fd`]).
    pub fn unhold(&self) {
        crate::sys::signal_eventfd(self.unheld.as_raw_fd());
    }

    /// The state, locked.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// idle → opening.
    ///
    /// # Errors
    /// When already opened.
    pub fn begin_open(&self) -> napi::Result<()> {
        let mut state = self.lock();
        if !matches!(*state, State::Idle) {
            return Err(napi::Error::new(Status::InvalidArg, "already opened"));
        }
        *state = State::Opening;
        Ok(())
    }

    /// opening → running; or, when closed meanwhile, closes `loaded` and
    /// returns false.
    pub fn finish_open(&self, loaded: Loaded) -> bool {
        let mut state = self.lock();
        if matches!(*state, State::Opening) {
            *state = State::Running(Box::new(loaded));
            return true;
        }
        drop(state);
        drop(loaded);
        false
    }

    /// opening → closed after a failed open.
    pub fn fail_open(&self) {
        let mut state = self.lock();
        if matches!(*state, State::Opening) {
            *state = State::Closed;
        }
    }

    /// running → closed, handing over what ran (for a close that blocks,
    /// off the JS thread); `None` when nothing runs.
    pub fn take_running(&self) -> Option<Box<Loaded>> {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, State::Closed) {
            State::Running(loaded) => Some(loaded),
            other => {
                *state = other;
                None
            }
        }
    }

    /// Closes whatever runs. Idempotent.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        let previous = std::mem::replace(&mut *self.lock(), State::Closed);
        if let State::Running(mut loaded) = previous {
            loaded.close();
        }
    }

    /// Totals (zeros unless running).
    pub fn stats(&self) -> BindingStats {
        match &*self.lock() {
            State::Running(k) => k.stats().into(),
            _ => SessionStats::default().into(),
        }
    }
}

/// What each binding object holds: its state, and the env cleanup hook
/// that closes it if JS never does. Binding methods take `&self`: napi-rs
/// keeps a method's borrow for as long as the promise it returns is
/// pending, so `close()` during `open()` would fail with `&mut self`.
pub struct Handle {
    /// The state, shared with open tasks.
    pub shared: Arc<Shared>,
    cleanup: Mutex<Option<CleanupEnvHook<Arc<Shared>>>>,
}

impl Handle {
    /// A fresh idle state, closed by `env`'s cleanup if never closed.
    ///
    /// # Errors
    /// When the cleanup hook cannot be added.
    pub fn new(env: &Env) -> napi::Result<Handle> {
        let (shared, hook) = Shared::new(env)?;
        Ok(Handle { shared, cleanup: Mutex::new(Some(hook)) })
    }

    /// The sink of this handle's reader: batches go to `on_batch`.
    ///
    /// # Errors
    /// When the threadsafe function cannot be made.
    pub fn sink(&self, on_batch: &Function<BindingBatch, ()>) -> napi::Result<JsSink> {
        JsSink::new(on_batch, &self.shared)
    }

    /// Closes (which sets [`Shared::closing`] first), then removes the
    /// cleanup hook. Idempotent.
    ///
    /// # Errors
    /// When the cleanup hook cannot be removed.
    pub fn close(&self, env: &Env) -> napi::Result<()> {
        self.shared.close();
        if let Some(hook) = self.cleanup.lock().unwrap_or_else(PoisonError::into_inner).take() {
            env.remove_env_cleanup_hook(hook)?;
        }
        Ok(())
    }

    /// Totals (zeros unless running).
    pub fn stats(&self) -> BindingStats {
        self.shared.stats()
    }
}

/// `close()`, `stats()` and `pause()` of a binding class holding a
/// [`Handle`] in `self.handle`, with `close`'s doc (what closing releases for that
/// class). napi-rs classes have no inheritance: each class declares its
/// own JavaScript methods, in a second `#[napi] impl` block here.
macro_rules! handle_methods {
    ($class:ty, $close_doc:literal) => {
        #[napi]
        impl $class {
            #[doc = $close_doc]
            #[napi]
            pub fn close(&self, env: Env) -> napi::Result<()> {
                self.handle.close(&env)
            }

            /// Totals so far (zeros unless running).
            #[napi]
            pub fn stats(&self) -> BindingStats {
                self.handle.stats()
            }

            /// `true`: hand JavaScript no batch until `pause(false)`, for a
            /// consumer that cannot keep up (a blocked stdout); a batch
            /// already on its way still arrives. The reader leaves records
            /// in the kernel ring buffer, where the programs count what does
            /// not fit (`ringBufferFull`, by action for decisions): memory
            /// stays bounded and nothing is lost uncounted. Resuming wakes
            /// the reader, which hands over what the ring buffer kept, then
            /// the counts. Ignored once a finish has begun.
            #[napi]
            pub fn pause(&self, paused: bool) {
                self.handle.shared.pause(paused);
            }
        }
    };
}
pub(crate) use handle_methods;
