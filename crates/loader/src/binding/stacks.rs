//! Stack counters for `ts/stacks.ts`.

use std::sync::Arc;

use napi::{bindgen_prelude::AsyncTask, Env, Status, Task};
use napi_derive::napi;

use super::{
    binding_refusal,
    lifecycle::{Handle, Loaded, Shared, State},
    BindingFailure, BindingRefusal,
};
use crate::{
    attach::ModeRequest,
    error::Error,
    stacks::{StackCount, Stacks},
};

/// Outcome of `start()`, never a rejection.
#[napi(object)]
pub struct BindingStacksStart {
    /// Why the counters did not attach; absent when they did.
    pub failure: Option<BindingFailure>,
    /// The mode, when attached.
    pub mode: Option<String>,
    /// Hooks counting stacks.
    pub hooks: Vec<String>,
    /// Hooks of the mode that did not attach: `hook: reason`.
    pub skipped: Vec<String>,
    /// Better modes refused (or all, on failure).
    pub refusals: Vec<BindingRefusal>,
}

/// One kernel stack frame.
#[napi(object)]
pub struct BindingFrame {
    /// Address, as a hex string.
    pub address: String,
    /// Symbol, if found.
    pub symbol: Option<String>,
    /// Offset in the symbol.
    pub offset: u32,
}

/// A distinct stack and its count.
#[napi(object)]
pub struct BindingStack {
    /// Hook.
    pub hook: String,
    /// Count.
    pub count: f64,
    /// Frames, innermost first.
    pub frames: Vec<BindingFrame>,
}

/// Stack counters (`crate::stacks::Stacks`) behind a JS object, with the
/// lifecycle of the other handles (`lifecycle.rs`).
#[napi]
pub struct BindingStacks {
    handle: Handle,
    mode: String,
}

#[napi]
impl BindingStacks {
    /// `mode`: `auto`, `fentry`, `kprobe` or `tracepoint`. Nothing loads yet.
    #[napi(constructor)]
    pub fn new(env: Env, mode: String) -> napi::Result<Self> {
        Ok(BindingStacks { handle: Handle::new(&env)?, mode })
    }

    /// Loads and attaches the counters on the libuv pool.
    #[napi(ts_return_type = "Promise<BindingStacksStart>")]
    pub fn start(&self) -> napi::Result<AsyncTask<StartTask>> {
        self.handle.shared.begin_open()?;
        Ok(AsyncTask::new(StartTask { shared: Arc::clone(&self.handle.shared), mode: self.mode.clone() }))
    }

    /// Reads and symbolizes the counts so far, most frequent first.
    #[napi(ts_return_type = "Promise<BindingStack[]>")]
    pub fn collect(&self) -> AsyncTask<CollectTask> {
        AsyncTask::new(CollectTask { shared: Arc::clone(&self.handle.shared) })
    }

    /// Detaches everything. Idempotent; safe while `start()` is still
    /// running (the counters are then detached as soon as they are up).
    #[napi]
    pub fn close(&self, env: Env) -> napi::Result<()> {
        self.handle.close(&env)
    }
}

/// See [`BindingStacks::start`].
pub struct StartTask {
    shared: Arc<Shared>,
    mode: String,
}

impl Task for StartTask {
    type Output = BindingStacksStart;
    type JsValue = BindingStacksStart;

    fn compute(&mut self) -> napi::Result<BindingStacksStart> {
        let started = self.mode.parse::<ModeRequest>().and_then(Stacks::start);
        Ok(match started {
            Ok(stacks) => {
                let out = BindingStacksStart {
                    failure: None,
                    mode: Some(stacks.mode().name().into()),
                    hooks: stacks.hooks(),
                    skipped: stacks.skipped().iter().map(|(h, d)| format!("{h}: {} ({})", d.reason, d.code)).collect(),
                    refusals: stacks.refusals().iter().map(binding_refusal).collect(),
                };
                if self.shared.finish_open(Loaded::Stacks(stacks)) {
                    out
                } else {
                    BindingStacksStart { failure: Some((&Error::Closed { what: "stack counters" }).into()), ..out }
                }
            }
            Err(e) => {
                self.shared.fail_open();
                BindingStacksStart {
                    failure: Some((&e).into()),
                    mode: None,
                    hooks: Vec::new(),
                    skipped: Vec::new(),
                    refusals: e.refusals().iter().map(binding_refusal).collect(),
                }
            }
        })
    }

    fn resolve(&mut self, _env: Env, out: BindingStacksStart) -> napi::Result<BindingStacksStart> {
        Ok(out)
    }
}

/// See [`BindingStacks::collect`].
pub struct CollectTask {
    shared: Arc<Shared>,
}

impl Task for CollectTask {
    type Output = Vec<StackCount>;
    type JsValue = Vec<BindingStack>;

    fn compute(&mut self) -> napi::Result<Vec<StackCount>> {
        let state = self.shared.lock();
        let State::Running(loaded) = &*state else {
            return Err(napi::Error::new(Status::InvalidArg, "stack counters are not running"));
        };
        let Loaded::Stacks(stacks) = loaded.as_ref() else {
            return Err(napi::Error::new(Status::InvalidArg, "not stack counters"));
        };
        stacks.collect().map_err(|e| napi::Error::new(Status::GenericFailure, e.to_string()))
    }

    fn resolve(&mut self, _env: Env, counts: Vec<StackCount>) -> napi::Result<Vec<BindingStack>> {
        Ok(counts
            .into_iter()
            .map(|c| BindingStack {
                hook: c.hook,
                count: c.count as f64,
                frames: c
                    .frames
                    .into_iter()
                    .map(|f| BindingFrame {
                        address: format!("0x{:x}", f.address),
                        symbol: f.symbol,
                        offset: f.offset as u32,
                    })
                    .collect(),
            })
            .collect())
    }
}
