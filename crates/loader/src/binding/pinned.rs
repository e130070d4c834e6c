//! Guards pinned in bpffs (`ts/pinned.ts`): status, update, unload and
//! leftovers from any process, and the follower that reads a pinned
//! guard's decisions.

use std::path::Path;

use napi::{bindgen_prelude::Function, Env};
use napi_derive::napi;

use super::{
    guard::{failure, BindingGuardResult},
    lifecycle::{handle_methods, BindingBatch, BindingLost, BindingStats, Handle, Loaded},
    BindingFailure,
};
use crate::{
    error::Error,
    pin::{self, PinnedGuard},
    policy::Policy,
    sys,
};

/// A guard pinned in bpffs, as `chroot-guard status` shows it.
#[napi(object)]
pub struct BindingPinnedStatus {
    /// A guard is pinned at the directory.
    pub pinned: bool,
    /// Generation of the policy in force.
    pub generation: u32,
    /// `enforce` or `audit`.
    pub mode: String,
    /// `allow`, `deny` or `audit`.
    pub default_action: String,
    /// Rule id of each compiled rule.
    pub rule_ids: Vec<String>,
    /// BPF link id.
    pub link_id: u32,
    /// `lsm/path_chroot` program id.
    pub program_id: u32,
    /// Counter totals since the guard was loaded: decisions not delivered
    /// (the ring buffer was full: nobody reads it once the pinning process is
    /// gone) and decisions made with the default action after an error.
    pub lost: BindingLost,
    /// Why the status could not be read; absent when it was.
    pub failure: Option<BindingFailure>,
}

fn action_name(action: u8) -> &'static str {
    use chroot_guard_common::policy::{ACTION_AUDIT, ACTION_DENY};
    match action {
        ACTION_DENY => "deny",
        ACTION_AUDIT => "audit",
        _ => "allow",
    }
}

/// The guard pinned at `dir`, if any.
#[napi]
pub fn pinned_guard_status(dir: String) -> BindingPinnedStatus {
    let empty = BindingPinnedStatus {
        pinned: false,
        generation: 0,
        mode: String::new(),
        default_action: String::new(),
        rule_ids: Vec::new(),
        link_id: 0,
        program_id: 0,
        lost: BindingLost::default(),
        failure: None,
    };
    let status = sys::check_privileges().and_then(|()| match PinnedGuard::open(Path::new(&dir))? {
        Some(mut g) => g.status().map(Some),
        None => Ok(None),
    });
    match status {
        Ok(None) => empty,
        Ok(Some(s)) => BindingPinnedStatus {
            pinned: true,
            generation: s.generation,
            mode: if s.mode == chroot_guard_common::policy::MODE_AUDIT { "audit" } else { "enforce" }.into(),
            default_action: action_name(s.default_action).into(),
            rule_ids: s.rule_ids,
            link_id: s.link_id,
            program_id: s.program_id,
            lost: s.lost.into(),
            ..empty
        },
        Err(e) => BindingPinnedStatus { pinned: Path::new(&dir).exists(), failure: Some((&e).into()), ..empty },
    }
}

/// Replaces the policy of the guard pinned at `dir`; `PIN_FAILED` when none is.
#[napi]
pub fn pinned_guard_update(dir: String, policy_json: String) -> BindingGuardResult {
    let updated = sys::check_privileges().and_then(|()| {
        let policy = Policy::from_json(&policy_json)?;
        match PinnedGuard::open(Path::new(&dir))? {
            Some(mut g) => g.update(&policy).map(Some),
            None => Ok(None),
        }
    });
    match updated {
        Ok(Some((generation, rule_ids))) => {
            BindingGuardResult { failure: None, generation, rule_ids, stopped: false, context: None }
        }
        Ok(None) => failure(&Error::Pin { path: dir, reason: "no guard is pinned here".into() }),
        Err(e) => failure(&e),
    }
}

/// A directory `pinnedGuardUnload` left in place, and why.
#[napi(object)]
pub struct BindingKept {
    /// The directory.
    pub dir: String,
    /// Why it stays, with what to do.
    pub reason: String,
}

/// Outcome of `pinnedGuardUnload` (see `pin::Unloaded`).
#[napi(object)]
pub struct BindingUnload {
    /// A guard (its pins, or its empty directory) was there and is removed.
    pub removed: bool,
    /// Why the pin directory itself was kept: it holds names chroot-guard
    /// does not pin.
    pub kept: Option<String>,
    /// `NAME-pinning-PID` leftovers removed.
    pub leftovers_removed: Vec<String>,
    /// `NAME-pinning-PID` directories kept, with why.
    pub leftovers_kept: Vec<BindingKept>,
    /// Why it failed; absent on success.
    pub failure: Option<BindingFailure>,
}

fn path_strings(paths: Vec<std::path::PathBuf>) -> Vec<String> {
    paths.into_iter().map(|p| p.display().to_string()).collect()
}

/// Removes the guard pinned at `dir` and the leftovers beside it (see
/// `pin::unload`).
#[napi]
pub fn pinned_guard_unload(dir: String) -> BindingUnload {
    let none = BindingUnload { removed: false, kept: None, leftovers_removed: Vec::new(), leftovers_kept: Vec::new(), failure: None };
    match sys::check_privileges().and_then(|()| pin::unload(Path::new(&dir))) {
        Ok(u) => BindingUnload {
            removed: u.removed,
            kept: u.kept,
            leftovers_removed: path_strings(u.leftovers_removed),
            leftovers_kept: u.leftovers_kept.into_iter().map(|(p, reason)| BindingKept { dir: p.display().to_string(), reason }).collect(),
            ..none
        },
        Err(e) => BindingUnload { failure: Some((&e).into()), ..none },
    }
}

/// Outcome of `pinnedGuardLeftovers`.
#[napi(object)]
pub struct BindingLeftovers {
    /// `NAME-pinning-PID` directories whose process is gone (see
    /// `pin::leftovers`).
    pub dirs: Vec<String>,
    /// Why it failed; absent on success.
    pub failure: Option<BindingFailure>,
}

/// What unfinished pins left beside `dir` (see `pin::leftovers`).
#[napi]
pub fn pinned_guard_leftovers(dir: String) -> BindingLeftovers {
    match sys::check_privileges().and_then(|()| pin::leftovers(Path::new(&dir))) {
        Ok(dirs) => BindingLeftovers { dirs: path_strings(dirs), failure: None },
        Err(e) => BindingLeftovers { dirs: Vec::new(), failure: Some((&e).into()) },
    }
}

/// Reads the decisions of a guard pinned in bpffs (`followPinnedGuard()`).
#[napi]
pub struct BindingPinnedFollower {
    handle: Handle,
    dir: String,
}

#[napi]
impl BindingPinnedFollower {
    /// Nothing is read yet.
    #[napi(constructor)]
    pub fn new(env: Env, dir: String) -> napi::Result<Self> {
        Ok(BindingPinnedFollower { handle: Handle::new(&env)?, dir })
    }

    /// Opens the pinned ring buffer and starts the reader thread (a few
    /// `bpf(2)` calls, so synchronous). The result carries the generation
    /// and rule ids in force; `PIN_FAILED` when nothing is pinned or
    /// another process reads it, `EPERM` without privileges.
    #[napi]
    pub fn open(&self, on_batch: Function<BindingBatch, ()>) -> napi::Result<BindingGuardResult> {
        let sink = self.handle.sink(&on_batch)?;
        self.handle.shared.begin_open()?;
        let dir = Path::new(&self.dir);
        let opened = sys::check_privileges().and_then(|()| {
            let follower = pin::follow(dir, sink)?;
            let status = match PinnedGuard::open(dir)? {
                Some(mut g) => g.status()?,
                None => return Err(Error::Pin { path: self.dir.clone(), reason: "no guard is pinned here (unloaded just now)".into() }),
            };
            Ok((follower, status))
        });
        Ok(match opened {
            Ok((follower, status)) => {
                let out = BindingGuardResult {
                    failure: None,
                    generation: status.generation,
                    rule_ids: status.rule_ids,
                    stopped: false,
                    context: None,
                };
                if self.handle.shared.finish_open(Loaded::Follow(follower)) {
                    out
                } else {
                    BindingGuardResult { failure: Some((&Error::Closed { what: "follower" }).into()), ..out }
                }
            }
            Err(e) => {
                self.handle.shared.fail_open();
                failure(&e)
            }
        })
    }
}

handle_methods!(BindingPinnedFollower, "Stops reading; the guard stays pinned. Idempotent.");
