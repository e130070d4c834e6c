//! The Node.js binding: thin and internal. Every type is prefixed `Binding`
//! and wrapped by `ts/`, which is the only public API.
//!
//! Failures cross as data, in one shape: a result object (never a
//! rejection) whose `failure` is absent on success and a [`BindingFailure`]
//! otherwise, which `errorFromBinding` in `ts/errors.ts` turns into a
//! `ChrootGuardError`.

mod doctor;
mod guard;
mod lifecycle;
mod output;
mod pinned;
mod policy;
mod ps;
mod session;
mod stacks;

use napi_derive::napi;

use crate::error::{Code, Error, Refusal};

/// Why a mode was refused: [`crate::error::RefusalRecord`], `BindingRefusal` in
/// JavaScript.
pub(crate) use crate::error::RefusalRecord as BindingRefusal;

fn binding_refusal(r: &Refusal) -> BindingRefusal {
    r.into()
}

/// Why a call failed: an [`Error`] as data (`failure` of every result).
#[napi(object)]
pub struct BindingFailure {
    /// `Error::code`: one of [`error_codes`].
    pub code: String,
    /// Sentence for people (`Error`'s `Display`).
    pub message: String,
    /// Verifier log of the rejected program, if any.
    pub verifier_log: Option<String>,
}

impl From<&Error> for BindingFailure {
    fn from(e: &Error) -> Self {
        BindingFailure {
            code: e.code().into(),
            message: e.to_string(),
            verifier_log: e.verifier_log().map(str::to_string),
        }
    }
}

/// Every attach mode (`Mode::ALL`), best first: the order `auto` tries
/// them in. Internal, for tests: `ts/errors.ts` keeps the list
/// (`ATTACH_MODES`, so the CLI knows it without the addon) and a test
/// compares them.
#[napi]
pub fn attach_modes() -> Vec<String> {
    chroot_guard_common::Mode::ALL.iter().map(|m| m.name().to_string()).collect()
}

/// Every code a [`BindingFailure`] can carry (`Code::ALL`). Internal, for
/// tests: `ts/errors.ts` keeps the list and a test compares them.
#[napi]
pub fn error_codes() -> Vec<String> {
    Code::ALL.iter().map(|c| c.as_str().to_string()).collect()
}
