//! The kernel modules the guest needs to mount the host's file system over
//! virtio and 9p: which ones ([`MODULES`]), finding them in the unpacked
//! package (plain or compressed), decompressing them, and ordering them by
//! the `depends=` of their `.modinfo` so `/init` can `insmod` them without
//! `modprobe` or `modules.dep`.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// Kernel modules the initramfs needs: the virtio PCI transport and 9p. They
/// are loaded in the order their `depends=` fields demand (in 6.1.0-56,
/// virtio needs virtio_ring, fscache needs netfs), else in this order.
pub(super) const MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "netfs",
    "fscache",
    "9pnet",
    "9pnet_virtio",
    "9p",
];

/// [`MODULES`] some kernels do not have at all, neither as a file nor
/// built in: 5.10's `virtio_pci` holds the legacy and modern device code
/// that 5.14 split out, `netfs` came in 5.13, and 6.7 folded `fscache`
/// into `netfs`.
pub(super) const MODULES_NOT_IN_EVERY_KERNEL: &[&str] = &["virtio_pci_legacy_dev", "virtio_pci_modern_dev", "netfs", "fscache"];

/// Every module file (`.ko`, `.ko.xz`, `.ko.zst`) under `dir`.
pub(super) fn collect_modules(dir: &Path, into: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_modules(&path, into)?;
        } else if module_name(&path).is_some() {
            into.push(path);
        }
    }
    Ok(())
}

/// `foo` for `.../foo.ko`, `foo.ko.xz` or `foo.ko.zst`.
pub(super) fn module_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem =
        name.strip_suffix(".ko").or_else(|| name.strip_suffix(".ko.xz")).or_else(|| name.strip_suffix(".ko.zst"))?;
    Some(stem.to_string())
}

/// The `depends=` field of a module's `.modinfo` section (the modules it
/// needs loaded first).
pub(super) fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let value = &ko[at + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).split(',').filter(|d| !d.is_empty()).map(str::to_string).collect()
}

/// Orders `(module, depends)` so every module comes after what it depends
/// on, keeping the given order otherwise. A dependency outside the list must
/// be built into the kernel.
pub(super) fn load_order(modules: &[(String, Vec<String>)], is_builtin: impl Fn(&str) -> bool) -> Result<Vec<String>> {
    let mut order: Vec<String> = Vec::new();
    while order.len() < modules.len() {
        let next = modules.iter().find(|(name, deps)| {
            !order.contains(name)
                && deps.iter().all(|d| order.contains(d) || (!modules.iter().any(|(m, _)| m == d) && is_builtin(d)))
        });
        match next {
            Some((name, _)) => order.push(name.clone()),
            None => {
                let stuck: Vec<String> = modules
                    .iter()
                    .filter(|(name, _)| !order.contains(name))
                    .map(|(name, deps)| format!("{name} (needs {})", deps.join(", ")))
                    .collect();
                bail!(
                    "cannot order the VM's kernel modules: {} (a dependency missing from MODULES in xtask/src/vm/modules.rs, \
                     or a cycle)",
                    stuck.join("; ")
                );
            }
        }
    }
    Ok(order)
}

/// Copies a module to `to`, decompressing `.xz` and `.zst`.
pub(super) fn decompress_module(from: &Path, to: &Path) -> Result<()> {
    let tool = match from.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        _ => {
            fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
            return Ok(());
        }
    };
    let out = File::create(to).with_context(|| format!("creating {}", to.display()))?;
    let status = Command::new(tool).arg("-dc").arg(from).stdout(out).status().with_context(|| {
        format!("cannot run {tool} to decompress {}: apt-get install xz-utils zstd", from.display())
    })?;
    if !status.success() {
        bail!("{tool} -dc {} failed with {status}", from.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_after_their_dependencies() -> Result<()> {
        let m = |name: &str, deps: &[&str]| (name.to_string(), deps.iter().map(|d| d.to_string()).collect());
        let list = [m("virtio", &["virtio_ring"]), m("virtio_ring", &[]), m("9p", &["virtio", "crc"])];
        assert_eq!(load_order(&list, |d| d == "crc")?, ["virtio_ring", "virtio", "9p"]);
        assert!(load_order(&list, |_| false).is_err());
        assert_eq!(modinfo_depends(b"x\0license=GPL\0depends=a,b\0vermagic=6"), ["a", "b"]);
        assert!(modinfo_depends(b"\0depends=\0").is_empty());
        Ok(())
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name(Path::new("a/9pnet_virtio.ko.xz")).as_deref(), Some("9pnet_virtio"));
        assert_eq!(module_name(Path::new("kernel/fs/9p/9p.ko")).as_deref(), Some("9p"));
        assert_eq!(module_name(Path::new("modules.dep")), None);
    }
}
