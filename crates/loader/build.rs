//! Points `CHROOT_GUARD_EBPF_OBJECT` at the eBPF object built by
//! `cargo xtask build-ebpf` for the target's architecture, which
//! `src/object.rs` embeds, and sets
//! `CHROOT_GUARD_EBPF_SHA256` to its SHA-256 (lowercase hex), the object's
//! identity in the memory of refused modes (`src/memory.rs`): hashing the
//! 2 MB object at every start would cost milliseconds.
use std::path::PathBuf;

use sha2::{Digest, Sha256};

fn main() {
    napi_build::setup();
    let object = match std::env::var_os("CHROOT_GUARD_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            // One object per architecture (kprobe `pt_regs` offsets differ),
            // where `cargo xtask build-ebpf --arch` puts it.
            let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
            let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
            manifest.join("../../target/ebpf").join(arch).join("bpfel-unknown-none/release/chroot-guard-ebpf")
        }
    };
    if !object.exists() {
        panic!(
            "the eBPF object {} is missing: build it first with `cargo xtask build-ebpf` (`--arch arm64` for arm64) \
             (or set CHROOT_GUARD_EBPF_OBJECT to a built object)",
            object.display()
        );
    }
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rerun-if-env-changed=CHROOT_GUARD_EBPF_OBJECT");
    println!("cargo:rustc-env=CHROOT_GUARD_EBPF_OBJECT={}", object.canonicalize().expect("object path").display());
    let bytes = std::fs::read(&object).expect("the eBPF object is readable");
    let hex: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=CHROOT_GUARD_EBPF_SHA256={hex}");
}
