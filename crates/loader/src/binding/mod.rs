//! The Node.js binding: thin and internal. Every type is prefixed `Binding`
//! and wrapped by `ts/`, which is the only public API.

mod doctor;
mod guard;
mod lifecycle;
mod policy;
mod session;
mod stacks;

use napi_derive::napi;

use crate::error::Refusal;

/// Why a mode was refused.
#[napi(object)]
pub struct BindingRefusal {
    /// Refused mode.
    pub mode: String,
    /// Program that failed.
    pub program: String,
    /// Its target function or tracepoint.
    pub target: String,
    /// `load` or `attach`.
    pub stage: String,
    /// Reason code (see `Refusal::code`).
    pub code: String,
    /// errno name, if any.
    pub errno: Option<String>,
    /// Sentence for people.
    pub reason: String,
    /// Verifier log, for `VERIFIER`.
    pub verifier_log: Option<String>,
}

fn binding_refusal(r: &Refusal) -> BindingRefusal {
    BindingRefusal {
        mode: r.mode.name().into(),
        program: r.program.into(),
        target: r.target.into(),
        stage: r.stage.into(),
        code: r.code.into(),
        errno: r.errno.map(str::to_string),
        reason: r.reason.clone(),
        verifier_log: r.verifier_log.clone(),
    }
}
