//! The guard for `chrootGuard()` (`ts/guard.ts`).

use std::sync::Arc;

use napi::{
    bindgen_prelude::{AsyncTask, Function},
    CleanupEnvHook, Env, Task,
};
use napi_derive::napi;

use super::lifecycle::{self, BindingBatch, BindingStats, JsSink, Kernel, Shared, State};
use crate::{error::Error, guard::Guard, policy::Policy};

/// Outcome of `open()` and `update()`; never a rejection.
#[napi(object)]
pub struct BindingGuardResult {
    /// The policy is in force.
    pub ok: bool,
    /// Its generation (decision events carry it).
    pub generation: u32,
    /// Rule id of each compiled rule index (decision events carry the index).
    pub rule_ids: Vec<String>,
    /// Error code when not `ok`: `INVALID_ARGUMENT`, `LSM_UNAVAILABLE`,
    /// `EPERM`, `LOAD_FAILED`, `CLOSED`, …
    pub error_code: Option<String>,
    /// Error message when not `ok`.
    pub error_message: Option<String>,
    /// Verifier log when the program was rejected.
    pub verifier_log: Option<String>,
}

fn failure(e: &Error) -> BindingGuardResult {
    BindingGuardResult {
        ok: false,
        generation: 0,
        rule_ids: Vec::new(),
        error_code: Some(e.code().into()),
        error_message: Some(e.to_string()),
        verifier_log: e.verifier_log().map(str::to_string),
    }
}

fn success(g: &Guard) -> BindingGuardResult {
    BindingGuardResult {
        ok: true,
        generation: g.generation(),
        rule_ids: g.rule_ids().to_vec(),
        error_code: None,
        error_message: None,
        verifier_log: None,
    }
}

/// `lsm/path_chroot` with a policy.
#[napi]
pub struct BindingGuard {
    shared: Arc<Shared>,
    ring_buffer_bytes: u32,
    // `&self` methods, see `BindingSession`.
    cleanup: std::sync::Mutex<Option<CleanupEnvHook<Arc<Shared>>>>,
}

#[napi]
impl BindingGuard {
    /// Nothing loads yet.
    #[napi(constructor)]
    pub fn new(env: Env, ring_buffer_bytes: u32) -> napi::Result<Self> {
        let (shared, hook) = Shared::new(&env)?;
        Ok(BindingGuard { shared, ring_buffer_bytes, cleanup: std::sync::Mutex::new(Some(hook)) })
    }

    /// Compiles the policy (JSON), loads, attaches and starts reading, on
    /// the libuv pool.
    #[napi(ts_return_type = "Promise<BindingGuardResult>")]
    pub fn open(&self, policy_json: String, on_batch: Function<BindingBatch, ()>) -> napi::Result<AsyncTask<GuardOpenTask>> {
        let sink = JsSink::new(&on_batch)?;
        self.shared.begin_open()?;
        Ok(AsyncTask::new(GuardOpenTask {
            shared: Arc::clone(&self.shared),
            policy_json,
            ring_buffer_bytes: self.ring_buffer_bytes,
            sink: Some(sink),
        }))
    }

    /// Replaces the policy atomically; on any error the old one stays.
    #[napi]
    pub fn update(&self, policy_json: String) -> BindingGuardResult {
        let mut state = self.shared.lock();
        let State::Running(kernel) = &mut *state else {
            return failure(&Error::Object("the guard is not running".into()));
        };
        let Kernel::Guard(guard) = kernel.as_mut() else {
            return failure(&Error::Object("not a guard".into()));
        };
        match Policy::from_json(&policy_json).and_then(|p| guard.update(&p)) {
            Ok(_) => success(guard),
            Err(e) => failure(&e),
        }
    }

    /// Detaches the program, frees the maps, joins the reader. Idempotent.
    #[napi]
    pub fn close(&self, env: Env) -> napi::Result<()> {
        lifecycle::close(&env, &self.shared, &self.cleanup)
    }

    /// Totals so far.
    #[napi]
    pub fn stats(&self) -> BindingStats {
        self.shared.stats()
    }
}

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
                if self.shared.finish_open(Kernel::Guard(guard)) {
                    out
                } else {
                    BindingGuardResult { ok: false, error_code: Some("CLOSED".into()), ..out }
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
