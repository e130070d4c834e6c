//! Policies without the kernel: the facts a compile reads from the system
//! (for `evaluatePolicy` in TS, `ts/policy/evaluate.ts`), and, internal for
//! tests, the compiler and its limits, reachable from Node.js without the
//! BPF LSM or privileges, so tests can hold `chroot-guard check`
//! (TypeScript) and the compiler (Rust) to the same limits on any host.

use chroot_guard_common::{
    policy::{MAX_EXES, MAX_PATHS, MAX_RULES, RULE_ID_BYTES},
    COMM_LEN, RESOLVED_MAX,
};
use napi_derive::napi;

use super::BindingFailure;
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
    /// Why the facts could not be read (`INVALID_ARGUMENT`); absent when
    /// they were.
    pub failure: Option<BindingFailure>,
    /// Inode number of the initial mount namespace; 0 when unknown.
    pub initial_mnt_ns: u32,
    /// Each `exe` path and its identity.
    pub exes: Vec<BindingExeIdentity>,
}

/// The binding form of a [`PolicyContext`].
pub fn binding_context(c: &PolicyContext) -> BindingPolicyContext {
    BindingPolicyContext {
        failure: None,
        initial_mnt_ns: c.initial_mnt_ns,
        exes: c
            .exes
            .iter()
            .map(|(path, id)| BindingExeIdentity { path: path.clone(), dev: id.dev, ino: id.ino.to_string() })
            .collect(),
    }
}

/// Compiles the policy (JSON) without loading anything and returns the
/// facts it reads: what `enforce --audit` needs to evaluate it from watch
/// events as the kernel would.
#[napi]
pub fn policy_context(policy_json: String) -> BindingPolicyContext {
    match Policy::from_json(&policy_json).and_then(|p| compile(&p)) {
        Ok(c) => binding_context(&c.context()),
        Err(e) => BindingPolicyContext { failure: Some((&e).into()), initial_mnt_ns: 0, exes: Vec::new() },
    }
}

/// What `compilePolicy()` found; never a throw.
#[napi(object)]
pub struct BindingCompiledPolicy {
    /// Why the policy did not compile (the `INVALID_ARGUMENT` the guard
    /// would give); absent when it compiled.
    pub failure: Option<BindingFailure>,
    /// Compiled rules (lists expanded); 0 when not compiled.
    pub compiled_rules: u32,
    /// Distinct `path`/`subtree` entries; 0 when not compiled.
    pub paths: u32,
    /// Distinct `exe` entries; 0 when not compiled.
    pub exes: u32,
}

/// Parses and compiles a policy (its JSON, as `ts/guard.ts` sends it) and
/// reports the outcome. Internal, for tests: loads nothing and needs no
/// privileges.
#[napi]
pub fn compile_policy(policy_json: String) -> BindingCompiledPolicy {
    match Policy::from_json(&policy_json).and_then(|p| compile(&p)) {
        Ok(c) => BindingCompiledPolicy {
            failure: None,
            compiled_rules: c.rules.len() as u32,
            paths: c.paths.len() as u32,
            exes: c.exes.len() as u32,
        },
        Err(e) => BindingCompiledPolicy { failure: Some((&e).into()), compiled_rules: 0, paths: 0, exes: 0 },
    }
}

/// The compiler's limits, from the constants it uses.
#[napi(object)]
pub struct BindingPolicyLimits {
    /// Compiled rules (`MAX_RULES`).
    pub max_rules: u32,
    /// Distinct `path`/`subtree` paths (`MAX_PATHS`).
    pub max_paths: u32,
    /// Distinct `exe` paths (`MAX_EXES`).
    pub max_exes: u32,
    /// Bytes of a canonical path (`RESOLVED_MAX - 1`).
    pub max_path_bytes: u32,
    /// Bytes of a comm (`COMM_LEN - 1`).
    pub max_comm_bytes: u32,
    /// Bytes of a rule id (`RULE_ID_BYTES`).
    pub max_rule_id_bytes: u32,
}

/// The compiler's limits, from `chroot_guard_common` (where the kernel's
/// map sizes come from too). Internal, for tests: `ts/policy/types.ts`
/// keeps its own copies (so `check` works without the addon) and a test
/// compares them.
#[napi]
pub fn policy_limits() -> BindingPolicyLimits {
    BindingPolicyLimits {
        max_rules: MAX_RULES as u32,
        max_paths: MAX_PATHS as u32,
        max_exes: MAX_EXES as u32,
        max_path_bytes: (RESOLVED_MAX - 1) as u32,
        max_comm_bytes: (COMM_LEN - 1) as u32,
        max_rule_id_bytes: RULE_ID_BYTES as u32,
    }
}
