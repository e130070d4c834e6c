//! The CPU architectures chroot-guard ships a platform package for, and how
//! each is built. The eBPF object is built once per architecture: aya-ebpf
//! reads a kprobe's arguments and return value at `struct pt_regs` offsets
//! fixed at compile time by `bpf_target_arch` (x86's `di`/`ax`, arm64's
//! `regs[0]`), so each addon embeds the object of its own architecture. The
//! machine's architecture builds natively; the other one is cross-built with
//! Debian's rustc-web, that target's standard library from Debian
//! (`libstd-rust-web-dev:<arch>`, unpacked into a sysroot of our own, see
//! `cross.rs`) and Debian's cross linker.

use std::path::PathBuf;

use anyhow::{Context, Result};
use xtask::root;

/// One architecture.
#[derive(Debug, PartialEq, Eq)]
pub struct Arch {
    /// Node's and npm's name (`process.arch`, `cpu` in package.json):
    /// `x64`, `arm64`. `--arch` takes it.
    pub name: &'static str,
    /// The Rust target triple, one of package.json's `napi.targets`.
    pub triple: &'static str,
    /// Rust's `target_arch`, which is also the eBPF object's
    /// `bpf_target_arch`.
    pub target_arch: &'static str,
    /// Debian's name for it (`dpkg --print-architecture`).
    pub debian: &'static str,
    /// The Debian package of the C cross compiler that links for it from
    /// another architecture, and the compiler's command.
    pub cross_gcc: (&'static str, &'static str),
    /// The Debian package of its C library for that linker (`crti.o`,
    /// `libdl`): only a recommendation of the compiler's package, which
    /// `--no-install-recommends` leaves out.
    pub cross_libc: &'static str,
    /// Its 32-bit compat userland, where the tests build it apart: the
    /// compiler's package, its command and its C library's package. arm64's
    /// AArch32 (`test/callers/aarch32/`); none for x86-64, whose tests make
    /// ia32 calls from a 64-bit process (`int $0x80`).
    pub compat_gcc: Option<(&'static str, &'static str, &'static str)>,
}

/// x86-64.
pub const X64: Arch = Arch {
    name: "x64",
    triple: "x86_64-unknown-linux-gnu",
    target_arch: "x86_64",
    debian: "amd64",
    cross_gcc: ("gcc-x86-64-linux-gnu", "x86_64-linux-gnu-gcc"),
    cross_libc: "libc6-dev-amd64-cross",
    compat_gcc: None,
};

/// arm64 (AArch64).
pub const ARM64: Arch = Arch {
    name: "arm64",
    triple: "aarch64-unknown-linux-gnu",
    target_arch: "aarch64",
    debian: "arm64",
    cross_gcc: ("gcc-aarch64-linux-gnu", "aarch64-linux-gnu-gcc"),
    cross_libc: "libc6-dev-arm64-cross",
    compat_gcc: Some(("gcc-arm-linux-gnueabihf", "arm-linux-gnueabihf-gcc", "libc6-dev-armhf-cross")),
};

/// Every architecture, the napi targets of package.json in its order.
pub const ARCHES: &[Arch] = &[X64, ARM64];

/// Every architecture, for `build`'s list of those to build.
pub fn all() -> Vec<&'static Arch> {
    ARCHES.iter().collect()
}

/// The architecture xtask runs on (the one built natively).
pub fn host() -> &'static Arch {
    ARCHES.iter().find(|a| a.target_arch == std::env::consts::ARCH).expect("xtask runs on one of ARCHES")
}

/// The architecture `--arch` names, or an error listing them.
pub fn by_name(name: &str) -> Result<&'static Arch> {
    ARCHES.iter().find(|a| a.name == name).with_context(|| {
        format!("no architecture {name}: choose one of {}", ARCHES.iter().map(|a| a.name).collect::<Vec<_>>().join(", "))
    })
}

impl Arch {
    /// Whether this is the machine's own architecture.
    pub fn is_host(&self) -> bool {
        self == host()
    }

    /// Cargo's target directory for this architecture's eBPF object, or
    /// for its legacy object (feature `legacy`, kernels 5.8 to 5.12),
    /// apart so that neither build undoes the other.
    pub fn ebpf_target_dir(&self, legacy: bool) -> PathBuf {
        let dir = if legacy { format!("{}-legacy", self.target_arch) } else { self.target_arch.to_string() };
        root().join("target/ebpf").join(dir)
    }

    /// The eBPF object built for this architecture (or its legacy object);
    /// `crates/loader/build.rs` embeds the ones of the target it builds
    /// for from the same places.
    pub fn ebpf_object(&self, legacy: bool) -> PathBuf {
        self.ebpf_target_dir(legacy).join("bpfel-unknown-none/release/chroot-guard-ebpf")
    }

    /// The napi platform name: `linux-x64-gnu`, the suffix of the platform
    /// package `chroot-guard-linux-x64-gnu` and of the addon file.
    pub fn platform(&self) -> String {
        format!("linux-{}-gnu", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arches_are_package_json_napi_targets() {
        let pkg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(root().join("package.json")).unwrap()).unwrap();
        let targets: Vec<&str> =
            pkg["napi"]["targets"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        assert_eq!(targets, ARCHES.iter().map(|a| a.triple).collect::<Vec<_>>());
    }

    #[test]
    fn names() {
        assert_eq!(by_name("arm64").unwrap().platform(), "linux-arm64-gnu");
        assert!(by_name("ia64").unwrap_err().to_string().contains("x64, arm64"));
        assert!(host().is_host());
    }
}
