//! Points `CHROOT_GUARD_EBPF_OBJECT` and `CHROOT_GUARD_EBPF_OBJECT_LEGACY`
//! at the eBPF objects built by `cargo xtask build-ebpf` for the target's
//! architecture (without DWARF: `xtask/src/build.rs`), which
//! `src/object.rs` embeds, and sets `CHROOT_GUARD_EBPF_SHA256` to the
//! SHA-256 (lowercase hex) of the two, one after the other: their identity
//! in the memory of refused modes (`src/memory.rs`). Hashing 1 MB of
//! objects at every start would cost milliseconds.
use std::path::PathBuf;

use sha2::{Digest, Sha256};

fn main() {
    napi_build::setup();
    let mut sha = Sha256::new();
    for (var, dir_suffix) in [("CHROOT_GUARD_EBPF_OBJECT", ""), ("CHROOT_GUARD_EBPF_OBJECT_LEGACY", "-legacy")] {
        let object = match std::env::var_os(var) {
            Some(path) => PathBuf::from(path),
            None => {
                // One object per architecture (kprobe `pt_regs` offsets
                // differ), where `cargo xtask build-ebpf --arch` puts it.
                let manifest =
                    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
                let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
                manifest
                    .join("../../target/ebpf")
                    .join(format!("{arch}{dir_suffix}"))
                    .join("bpfel-unknown-none/release/chroot-guard-ebpf")
            }
        };
        if !object.exists() {
            panic!(
                "the eBPF object {} is missing: build it first with `cargo xtask build-ebpf` (`--arch arm64` for \
                 arm64) (or set {var} to a built object)",
                object.display()
            );
        }
        println!("cargo:rerun-if-changed={}", object.display());
        println!("cargo:rerun-if-env-changed={var}");
        println!("cargo:rustc-env={var}={}", object.canonicalize().expect("object path").display());
        sha.update(std::fs::read(&object).expect("the eBPF object is readable"));
    }
    let hex: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=CHROOT_GUARD_EBPF_SHA256={hex}");
}
