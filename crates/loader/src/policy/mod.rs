//! Policies: the validated JSON form the TypeScript layer hands over, and
//! its compilation into the maps of `lsm/path_chroot` (see
//! `chroot_guard_common::policy`).
//!
//! Compiling touches no BPF map (it reads only the caller's mount namespace
//! and each `exe` file's identity); [`Compiled::write`] then fills the
//! inactive slot and flips `CG_ACTIVE`, so a policy takes effect whole or,
//! on any error, not at all.
//!
//! - `model.rs`: the policy as its JSON says it ([`Policy`]).
//! - `compile.rs`: [`compile()`] checks it and turns it into map contents
//!   ([`Compiled`]).
//! - `slots.rs`: the maps' two slots ([`PolicyMaps`], [`Slots`]) and
//!   [`Compiled::write`].

mod compile;
mod model;
mod slots;

pub use compile::{canonical_path, compile, path_bytes, Compiled, PolicyContext};
pub use model::{Match, OneOrMany, Policy, Rule};
pub use slots::{PolicyMaps, Slots, POLICY_MAPS};
