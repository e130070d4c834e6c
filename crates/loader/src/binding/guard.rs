//! The live guard for `chrootGuard()` (`ts/guard.ts`); guards pinned in
//! bpffs are in `pinned.rs`.

use std::{path::Path, sync::Arc};

use napi::{
    bindgen_prelude::{AsyncTask, Function},
    Env, Task,
};
use napi_derive::napi;

use super::{
    lifecycle::{handle_methods, BindingBatch, BindingStats, Handle, JsSink, Loaded, Shared, State},
    policy::{binding_context, BindingPolicyContext},
    BindingFailure,
};
use crate::{error::Error, guard::Guard, policy::Policy};

/// Outcome of `open()` and `update()`; never a rejection.
#[napi(object)]
pub struct BindingGuardResult {
    /// Why the policy is not in force; absent when it is.
    pub failure: Option<BindingFailure>,
    /// Its generation (decision events carry it).
    pub generation: u32,
    /// Rule id of each compiled rule index (decision events carry the index).
    pub rule_ids: Vec<String>,
    /// After a failed `pin()`: the guard stopped (the kernel refused to pin
    /// its link, and dropping it detached the program).
    pub stopped: bool,
    /// The facts the policy in force was compiled with (live guards only).
    pub context: Option<BindingPolicyContext>,
}

pub(super) fn failure(e: &Error) -> BindingGuardResult {
    BindingGuardResult { failure: Some(e.into()), generation: 0, rule_ids: Vec::new(), stopped: false, context: None }
}

fn success(g: &Guard) -> BindingGuardResult {
    BindingGuardResult {
        failure: None,
        generation: g.generation(),
        rule_ids: g.rule_ids().to_vec(),
        stopped: false,
        context: Some(binding_context(g.context())),
    }
}

/// `lsm/path_chroot` with a policy.
#[napi]
pub struct BindingGuard {
    handle: Handle,
    ring_buffer_bytes: u32,
}

#[napi]
impl BindingGuard {
    /// Nothing loads yet.
    #[napi(constructor)]
    pub fn new(env: Env, ring_buffer_bytes: u32) -> napi::Result<Self> {
        Ok(BindingGuard { handle: Handle::new(&env)?, ring_buffer_bytes })
    }

    /// Compiles the policy (JSON), loads, attaches and starts reading, on
    /// the libuv pool.
    #[napi(ts_return_type = "Promise<BindingGuardResult>")]
    pub fn open(&self, policy_json: String, on_batch: Function<BindingBatch, ()>) -> napi::Result<AsyncTask<GuardOpenTask>> {
        let sink = self.handle.sink(&on_batch)?;
        self.handle.shared.begin_open()?;
        Ok(AsyncTask::new(GuardOpenTask {
            shared: Arc::clone(&self.handle.shared),
            policy_json,
            ring_buffer_bytes: self.ring_buffer_bytes,
            sink: Some(sink),
        }))
    }

    /// Replaces the policy atomically; on any error the old one stays.
    #[napi]
    pub fn update(&self, policy_json: String) -> BindingGuardResult {
        self.with_guard(|guard| match Policy::from_json(&policy_json).and_then(|p| guard.update(&p)) {
            Ok(_) => success(guard),
            Err(e) => failure(&e),
        })
    }

    /// Pins the running guard under `dir` (see `Guard::pin`).
    #[napi]
    pub fn pin(&self, dir: String) -> BindingGuardResult {
        self.with_guard(|guard| match guard.pin(Path::new(&dir)) {
            Ok(()) => success(guard),
            Err(e) => BindingGuardResult { stopped: !guard.running(), ..failure(&e) },
        })
    }
}

impl BindingGuard {
    /// `f` on the running guard, under the state lock; `NotRunning` when it
    /// is not running.
    fn with_guard(&self, f: impl FnOnce(&mut Guard) -> BindingGuardResult) -> BindingGuardResult {
        let mut state = self.handle.shared.lock();
        match &mut *state {
            State::Running(loaded) => match loaded.as_mut() {
                Loaded::Guard(guard) => f(guard),
                _ => failure(&Error::NotRunning { what: "guard" }),
            },
            _ => failure(&Error::NotRunning { what: "guard" }),
        }
    }
}

handle_methods!(BindingGuard, "Detaches the program, frees the maps, joins the reader. Idempotent.");

/// Runs [`Guard::open`] off the JS thread.
pub struct GuardOpenTask {
    shared: Arc<Shared>,
    policy_json: String,
    ring_buffer_bytes: u32,
    sink: Option<JsSink>,
}

impl Task for GuardOpenTask {
    type Output = BindingGuardResult;
    type JsValue = BindingGuardResult;

    fn compute(&mut self) -> napi::Result<BindingGuardResult> {
        let sink = self.sink.take().ok_or_else(|| napi::Error::from_reason("open task ran twice"))?;
        let opened = crate::attach::check_ring_buffer_bytes(u64::from(self.ring_buffer_bytes))
            .and_then(|bytes| Policy::from_json(&self.policy_json).and_then(|p| Guard::open(&p, bytes, sink)));
        Ok(match opened {
            Ok(guard) => {
                let out = success(&guard);
                if self.shared.finish_open(Loaded::Guard(Box::new(guard))) {
                    out
                } else {
                    BindingGuardResult { failure: Some((&Error::Closed { what: "guard" }).into()), ..out }
                }
            }
            Err(e) => {
                self.shared.fail_open();
                failure(&e)
            }
        })
    }

    fn resolve(&mut self, _env: Env, out: BindingGuardResult) -> napi::Result<BindingGuardResult> {
        Ok(out)
    }
}
