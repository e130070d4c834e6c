//! chroot-guard's loader: loads the eBPF object with aya, picks the best
//! attach mode the running kernel allows, reads the ring buffer on its own
//! thread and hands batches of raw events to Node.js.
//!
//! - [`attach`]: mode selection (fentry → kprobe → tracepoint) and refusals.
//! - [`memory`]: the refusals `auto` remembers, so it skips what must fail.
//! - [`run_dir`]: `/run/chroot-guard`, the private directory of lock files
//!   and that memory.
//! - [`kretprobe`]: kprobe mode's exit hooks through tracefs, with a
//!   higher `maxactive`, and the count of the returns they still miss.
//! - [`recursion`]: the runs of fentry/fexit programs the kernel skipped.
//! - [`btf`]: kernel struct offsets from BTF (our stand-in for CO-RE).
//! - [`features`]: the kernel features the object needs, told from BTF.
//! - [`reader`]: the ring-buffer thread and its batching policy.
//! - [`ps`]: the chrooted processes now, from the task iterator or
//!   [`proc_scan`].
//! - [`session`]: one attached mode plus its reader; the unit of lifecycle.
//! - [`cgroup`]: cgroup v2 ids to paths (container attribution).
//! - `binding` (feature `napi`): the thin, internal Node.js binding.

pub mod attach;
pub mod btf;
pub mod cgroup;
pub mod doctor;
pub mod error;
pub mod features;
pub mod guard;
pub mod identity;
pub mod kretprobe;
pub mod layout;
pub mod memory;
pub mod lines;
pub mod object;
pub mod pin;
pub mod policy;
pub mod proc_scan;
pub mod ps;
pub mod reader;
pub mod recursion;
pub mod run_dir;
pub mod session;
pub mod stacks;
pub mod sys;

#[cfg(feature = "napi")]
mod binding;

pub use error::{Error, Refusal};
