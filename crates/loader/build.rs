//! Points `CHROOT_GUARD_EBPF_OBJECT` and `CHROOT_GUARD_EBPF_OBJECT_LEGACY`
//! at the eBPF objects built by `cargo xtask build-ebpf` for the target's
//! architecture, with their DWARF removed ([`strip_dwarf`]), which
//! `src/object.rs` embeds, and sets `CHROOT_GUARD_EBPF_SHA256` to the
//! SHA-256 (lowercase hex) of the two embedded objects, one after the
//! other: their identity in the memory of refused modes (`src/memory.rs`).
//! Hashing 1 MB of objects at every start would cost milliseconds.
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The object without its DWARF (`.debug_*` sections and their
/// `.rel.debug_*` relocations): bpf-linker makes BTF from DWARF, so the
/// build must emit it (`-C debuginfo=2`), but nothing reads it after that;
/// the kernel gets BTF and `.BTF.ext` (function and line info), which stay.
/// Without it the object is about a quarter of its size, and aya parses it
/// about 3.5 ms faster at every load (on the development host).
///
/// The removed sections' headers become `SHT_NULL` (all zero) in place and
/// their bytes are dropped, so that no section, symbol or relocation index
/// changes. (`llvm-objcopy --strip-debug` is not on every build machine,
/// and the `object` crate's ELF builder cannot write an object whose
/// section names share `.strtab` with its symbols, as bpf-linker's do.)
fn strip_dwarf(object: &Path) -> Vec<u8> {
    let data = std::fs::read(object).expect("the eBPF object is readable");
    let u16_at = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().expect("2 bytes"));
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().expect("8 bytes")) as usize;
    // ELF64, little-endian (bpfel), relocatable, no program headers.
    assert!(
        data.len() >= 64
            && data[..4] == *b"\x7fELF"
            && data[4] == 2
            && data[5] == 1
            && u16_at(16) == 1
            && u16_at(56) == 0,
        "{} is not a little-endian ELF64 relocatable object",
        object.display()
    );
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), usize::from(u16_at(0x3a)), usize::from(u16_at(0x3c)), usize::from(u16_at(0x3e)));
    assert_eq!(shentsize, 64, "ELF64 section headers are 64 bytes");
    let header = |i: usize| &data[shoff + i * 64..shoff + (i + 1) * 64];
    let names = u64_at(shoff + shstrndx * 64 + 24);
    let name = |i: usize| {
        let start = names + u32_at(shoff + i * 64) as usize;
        let len = data[start..].iter().position(|&b| b == 0).expect("section names end with NUL");
        &data[start..start + len]
    };
    let mut out = data[..64].to_vec();
    let mut headers = Vec::with_capacity(shnum * 64);
    for i in 0..shnum {
        let mut h = header(i).to_vec();
        let n = name(i);
        if i != 0 && (n.starts_with(b".debug_") || n.starts_with(b".rel.debug_")) {
            h.fill(0);
        } else if i != 0 {
            const SHT_NOBITS: u32 = 8;
            let (kind, offset, size, align) = (
                u32_at(shoff + i * 64 + 4),
                u64_at(shoff + i * 64 + 24),
                u64_at(shoff + i * 64 + 32),
                u64_at(shoff + i * 64 + 48).max(1),
            );
            out.resize(out.len().next_multiple_of(align), 0);
            h[24..32].copy_from_slice(&(out.len() as u64).to_le_bytes());
            if kind != SHT_NOBITS {
                out.extend_from_slice(&data[offset..offset + size]);
            }
        }
        headers.extend_from_slice(&h);
    }
    out.resize(out.len().next_multiple_of(8), 0);
    let new_shoff = out.len() as u64;
    out[0x28..0x30].copy_from_slice(&new_shoff.to_le_bytes());
    out.extend_from_slice(&headers);
    out
}

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
        let stripped = strip_dwarf(&object);
        let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
            .join(format!("chroot-guard-ebpf{dir_suffix}.o"));
        std::fs::write(&out, &stripped).expect("OUT_DIR is writable");
        println!("cargo:rustc-env={var}={}", out.display());
        sha.update(&stripped);
    }
    let hex: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=CHROOT_GUARD_EBPF_SHA256={hex}");
}
