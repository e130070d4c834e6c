//! Policy compilation without the kernel (internal): what `chrootGuard()`
//! and `updatePinnedGuard()` do to a policy before anything reaches a map,
//! reachable from Node.js without the BPF LSM or privileges, so tests can
//! hold `chroot-guard check` (TypeScript) and the compiler (Rust) to the
//! same limits on any host.

use chroot_guard_common::{
    policy::{MAX_RULES, RULE_ID_BYTES},
    COMM_LEN, RESOLVED_MAX,
};
use napi_derive::napi;

use crate::policy::{compile, Policy, MAX_EXES, MAX_PATHS};

/// What `compilePolicy()` found; never a throw.
#[napi(object)]
pub struct BindingCompiledPolicy {
    /// The policy compiled.
    pub ok: bool,
    /// Compiled rules (lists expanded); 0 when not `ok`.
    pub compiled_rules: u32,
    /// Distinct `path`/`subtree` entries; 0 when not `ok`.
    pub paths: u32,
    /// Distinct `exe` entries; 0 when not `ok`.
    pub exes: u32,
    /// Why not, when not `ok` (the `INVALID_ARGUMENT` message the guard would give).
    pub error_message: Option<String>,
}

/// Parses and compiles a policy (its JSON, as `ts/guard.ts` sends it) and
/// reports the outcome. Internal, for tests: loads nothing and needs no
/// privileges.
#[napi]
pub fn compile_policy(policy_json: String) -> BindingCompiledPolicy {
    match Policy::from_json(&policy_json).and_then(|p| compile(&p)) {
        Ok(c) => BindingCompiledPolicy {
            ok: true,
            compiled_rules: c.rules.len() as u32,
            paths: c.paths.len() as u32,
            exes: c.exes.len() as u32,
            error_message: None,
        },
        Err(e) => BindingCompiledPolicy { ok: false, compiled_rules: 0, paths: 0, exes: 0, error_message: Some(e.to_string()) },
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

/// The compiler's limits. Internal, for tests: `ts/policy.ts` keeps its own
/// copies (so `check` works without the addon) and a test compares them.
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
