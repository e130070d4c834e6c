//! Points `CHROOT_GUARD_EBPF_OBJECT` at the eBPF object built by
//! `cargo xtask build-ebpf`, which `src/object.rs` embeds.
use std::path::PathBuf;

fn main() {
    napi_build::setup();
    let object = match std::env::var_os("CHROOT_GUARD_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        None => {
            let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
            manifest.join("../../target/bpfel-unknown-none/release/chroot-guard-ebpf")
        }
    };
    if !object.exists() {
        panic!(
            "the eBPF object {} is missing: build it first with `cargo xtask build-ebpf` \
             (or set CHROOT_GUARD_EBPF_OBJECT to a built object)",
            object.display()
        );
    }
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rerun-if-env-changed=CHROOT_GUARD_EBPF_OBJECT");
    println!("cargo:rustc-env=CHROOT_GUARD_EBPF_OBJECT={}", object.canonicalize().expect("object path").display());
}
