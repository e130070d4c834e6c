//! What a policy is evaluated against, for `evaluatePolicy` in TS
//! (`ts/policy.ts`): the facts the compiler reads from the system.

use napi_derive::napi;

use crate::policy::{compile, Policy, PolicyContext};

/// One `exe` path of a policy and the file it names.
#[napi(object)]
pub struct BindingExeIdentity {
    /// The path as the policy writes it.
    pub path: String,
    /// `s_dev` in the kernel's encoding (major << 20 | minor).
    pub dev: u32,
    /// Inode number, in decimal (it may exceed 2^53).
    pub ino: String,
}

/// The facts a policy was (or would be) compiled with.
#[napi(object)]
pub struct BindingPolicyContext {
    /// The facts could be read (else `error_code`, `error_message`).
    pub ok: bool,
    /// Inode number of the initial mount namespace; 0 when unknown.
    pub initial_mnt_ns: u32,
    /// Each `exe` path and its identity.
    pub exes: Vec<BindingExeIdentity>,
    /// Error code when not `ok`: `INVALID_ARGUMENT`.
    pub error_code: Option<String>,
    /// Error message when not `ok`.
    pub error_message: Option<String>,
}

/// The binding form of a [`PolicyContext`].
pub fn binding_context(c: &PolicyContext) -> BindingPolicyContext {
    BindingPolicyContext {
        ok: true,
        initial_mnt_ns: c.initial_mnt_ns,
        exes: c
            .exes
            .iter()
            .map(|(path, id)| BindingExeIdentity { path: path.clone(), dev: id.dev, ino: id.ino.to_string() })
            .collect(),
        error_code: None,
        error_message: None,
    }
}

/// Compiles the policy (JSON) without loading anything and returns the
/// facts it reads: what `enforce --audit` needs to evaluate it from watch
/// events as the kernel would.
#[napi]
pub fn policy_context(policy_json: String) -> BindingPolicyContext {
    match Policy::from_json(&policy_json).and_then(|p| compile(&p)) {
        Ok(c) => binding_context(&c.context()),
        Err(e) => BindingPolicyContext {
            ok: false,
            initial_mnt_ns: 0,
            exes: Vec::new(),
            error_code: Some(e.code().into()),
            error_message: Some(e.to_string()),
        },
    }
}
