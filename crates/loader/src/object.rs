//! The eBPF object built by `cargo xtask build-ebpf`, embedded so nothing is
//! compiled or read from disk at run time.

/// The ELF object with every program of `chroot_guard_common::probes::PROBES`
/// and its BTF, 8-byte aligned as the ELF parser needs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("CHROOT_GUARD_EBPF_OBJECT"));
