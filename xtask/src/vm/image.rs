//! The kernel image: Debian ships a compressed bzImage (`vmlinuz`); the
//! ELF `vmlinux` inside it, when it has a PVH entry note, lets QEMU start
//! the kernel directly and saves the guest seconds of decompression under
//! TCG. This file takes that ELF file out of the bzImage and checks it.

use std::{
    fs::{self, File},
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// Writes the ELF `vmlinux` inside the bzImage `vmlinuz` to `to`, if it is
/// compressed with xz, gzip or zstd and has a PVH entry point (QEMU can then
/// boot it directly, without the guest decompressing it, which takes seconds
/// under TCG).
pub(super) fn extract_pvh_vmlinux(vmlinuz: &Path, to: &Path) -> Result<()> {
    let image = fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let u32_at = |at: usize| -> Option<u32> { Some(u32::from_le_bytes(image.get(at..at + 4)?.try_into().ok()?)) };
    // x86 boot protocol: the setup sectors, then the protected-mode code,
    // whose payload_offset/payload_length (at 0x248/0x24c) locate the
    // compressed kernel.
    if image.get(0x202..0x206) != Some(b"HdrS") {
        bail!("{} is not a bzImage", vmlinuz.display());
    }
    let setup_sects = match image.get(0x1f1).copied() {
        Some(0) => 4,
        Some(n) => usize::from(n),
        None => bail!("{} is truncated", vmlinuz.display()),
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248).context("bzImage payload_offset")? as usize;
    let len = u32_at(0x24c).context("bzImage payload_length")? as usize;
    let payload = image.get(start..start + len).context("bzImage payload out of bounds")?;
    let (tool, args): (&str, &[&str]) = if payload.starts_with(b"\xfd7zXZ\0") {
        ("xz", &["-dc", "--single-stream"])
    } else if payload.starts_with(&[0x1f, 0x8b]) {
        ("gzip", &["-dc"])
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        ("zstd", &["-dc"])
    } else {
        bail!("the kernel payload's compression is not xz, gzip or zstd");
    };
    let out = File::create(to).with_context(|| format!("creating {}", to.display()))?;
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {tool}"))?;
    let mut stdin = child.stdin.take().context("decompressor stdin")?;
    // The payload may end with the 4-byte uncompressed size: decompressors
    // may complain about it, so the result is judged by its content below.
    let _ = stdin.write_all(payload);
    drop(stdin);
    child.wait().with_context(|| format!("waiting for {tool}"))?;
    let elf = fs::read(to).with_context(|| format!("reading {}", to.display()))?;
    if !has_pvh_note(&elf) {
        bail!("the decompressed kernel is not an ELF file with a PVH entry note");
    }
    Ok(())
}

/// Whether `elf` is a 64-bit little-endian ELF file with a
/// `XEN_ELFNOTE_PHYS32_ENTRY` note (type 18, name "Xen"): QEMU boots such
/// files through PVH.
fn has_pvh_note(elf: &[u8]) -> bool {
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    let u16_at = |at: usize| elf.get(at..at + 2).and_then(|b| b.try_into().ok()).map(u16::from_le_bytes);
    let u32_at = |at: usize| elf.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    let u64_at = |at: usize| elf.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    let align4 = |n: usize| (n + 3) & !3;
    (0..usize::from(phnum)).any(|i| {
        let ph = phoff as usize + i * usize::from(phentsize);
        if u32_at(ph) != Some(PT_NOTE) {
            return false;
        }
        let (Some(offset), Some(size)) = (u64_at(ph + 8), u64_at(ph + 32)) else {
            return false;
        };
        let (mut at, end) = (offset as usize, offset as usize + size as usize);
        while at + 12 <= end {
            let (Some(namesz), Some(descsz), Some(kind)) = (u32_at(at), u32_at(at + 4), u32_at(at + 8)) else {
                return false;
            };
            let name = elf.get(at + 12..at + 12 + namesz as usize).unwrap_or_default();
            if kind == XEN_ELFNOTE_PHYS32_ENTRY && name.starts_with(b"Xen") {
                return true;
            }
            at += 12 + align4(namesz as usize) + align4(descsz as usize);
        }
        false
    })
}
