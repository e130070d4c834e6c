//! Kernel struct offsets from BTF, the loader's stand-in for CO-RE: Rust
//! eBPF code gets no relocations from the compiler, so the offsets of every
//! field the programs read are looked up here at load time and passed in the
//! read-only global `OFFSETS`.

use std::{cell::RefCell, collections::HashMap, ops::Deref};

use btf_rs::{Btf, BtfType, Type};
use chroot_guard_common::{probes::PROBES, KernelOffsets};

use crate::{error::Error, features::FEATURES};

/// Kernel BTF, present with `CONFIG_DEBUG_INFO_BTF=y` (5.4+).
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Reads the running kernel's BTF.
///
/// # Errors
/// [`Error::NoBtf`] when the file is missing or unreadable.
pub fn kernel_btf() -> Result<Btf, Error> {
    // The mmap backend reads only what the lookups touch: parsing the whole
    // of vmlinux's BTF up front costs about 100 ms and 100 MB here.
    Btf::from_file_with_backend(VMLINUX_BTF, btf_rs::Backend::Mmap)
        .or_else(|_| Btf::from_file(VMLINUX_BTF))
        .map_err(|source| Error::NoBtf { path: VMLINUX_BTF, source })
}

/// Lookups of BTF types by name. A `Btf` (btf-rs's mmap backend) scans
/// every type for each (about 0.6 ms in vmlinux's BTF on the development
/// host, and start-up made about 30); [`KernelBtf`] answers the names
/// start-up needs from one scan.
pub trait TypesByName {
    /// The BTF itself, for everything but lookups by name.
    fn btf(&self) -> &Btf;
    /// Every type named `name` (none when a read fails).
    fn types_by_name(&self, name: &str) -> Vec<Type>;
}

impl TypesByName for Btf {
    fn btf(&self) -> &Btf {
        self
    }

    fn types_by_name(&self, name: &str) -> Vec<Type> {
        self.resolve_types_by_name(name).unwrap_or_default()
    }
}

/// The running kernel's BTF ([`kernel_btf`]), with the ids of every name
/// the loader looks up as it starts found in one scan: the structs
/// [`kernel_offsets`] reads, the marks of [`FEATURES`], `bpf_loop` and the
/// fentry/fexit targets of [`PROBES`]. Other names are looked up by a scan
/// each, as in a `Btf`.
pub struct KernelBtf {
    btf: Btf,
    ids: HashMap<String, Vec<u32>>,
}

impl KernelBtf {
    /// Reads the running kernel's BTF and finds the names.
    ///
    /// # Errors
    /// [`Error::NoBtf`] when the file is missing or unreadable.
    pub fn read() -> Result<KernelBtf, Error> {
        let btf = kernel_btf()?;
        let mut names = offset_structs();
        names.extend(FEATURES.iter().map(|f| f.mark.type_name()));
        names.push("bpf_loop");
        names.extend(PROBES.iter().map(|p| p.target));
        names.sort_unstable();
        names.dedup();
        let ids = Self::scan(&btf, &names).unwrap_or_default();
        Ok(KernelBtf { btf, ids })
    }

    /// The ids of each of `names`, from one scan (btf-rs's by-regex
    /// lookup); `None` when the scan fails, so each name is looked up alone.
    fn scan(btf: &Btf, names: &[&str]) -> Option<HashMap<String, Vec<u32>>> {
        let alternatives: Vec<String> = names.iter().map(|n| regex::escape(n)).collect();
        let re = regex::Regex::new(&format!("^(?:{})$", alternatives.join("|"))).ok()?;
        let mut ids: HashMap<String, Vec<u32>> = names.iter().map(|n| (n.to_string(), Vec::new())).collect();
        for id in btf.resolve_ids_by_regex(&re).ok()? {
            let t = btf.resolve_type_by_id(id).ok()?;
            let name = btf.resolve_name(t.as_btf_type()?).ok()?;
            ids.get_mut(&name)?.push(id);
        }
        Some(ids)
    }
}

impl Deref for KernelBtf {
    type Target = Btf;

    fn deref(&self) -> &Btf {
        &self.btf
    }
}

impl TypesByName for KernelBtf {
    fn btf(&self) -> &Btf {
        &self.btf
    }

    fn types_by_name(&self, name: &str) -> Vec<Type> {
        match self.ids.get(name) {
            Some(ids) => ids.iter().filter_map(|&id| self.btf.resolve_type_by_id(id).ok()).collect(),
            None => self.btf.types_by_name(name),
        }
    }
}

/// The named struct (not a forward declaration) in `btf`.
pub fn find_struct(btf: &(impl TypesByName + ?Sized), name: &str) -> Option<btf_rs::Struct> {
    btf.types_by_name(name).into_iter().find_map(|t| match t {
        Type::Struct(s) => Some(s),
        _ => None,
    })
}

/// Skips typedefs and qualifiers to the type they name.
fn strip(btf: &Btf, mut t: Type) -> Option<Type> {
    loop {
        t = match t {
            Type::Typedef(ref x) => btf.resolve_chained_type(x).ok()?,
            Type::Const(ref x) | Type::Volatile(ref x) | Type::Restrict(ref x) => {
                btf.resolve_chained_type(x).ok()?
            }
            Type::TypeTag(ref x) => btf.resolve_chained_type(x).ok()?,
            other => return Some(other),
        };
    }
}

/// Every named field of `st` with its byte offset, looking into anonymous
/// structs and unions the way C does (`qstr.len` lives in an anonymous
/// union); where a name repeats, the first one in declaration order.
fn fields(btf: &Btf, st: &btf_rs::Struct) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    add_fields(btf, st, 0, &mut out);
    out
}

fn add_fields(btf: &Btf, st: &btf_rs::Struct, base: u32, out: &mut HashMap<String, u32>) {
    for m in &st.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        let at = base + m.bit_offset() / 8;
        if !name.is_empty() {
            out.entry(name).or_insert(at);
        } else if let Some(Type::Struct(s) | Type::Union(s)) = btf.resolve_chained_type(m).ok().and_then(|t| strip(btf, t)) {
            add_fields(btf, &s, at, out);
        }
    }
}

/// A struct's size and the offsets of its fields.
struct Layout {
    size: u32,
    fields: HashMap<String, u32>,
}

/// The layouts of named structs, each struct looked up and read once: a
/// lookup by name scans vmlinux's BTF (about 0.6 ms each here).
struct Structs<'a, B: TypesByName + ?Sized> {
    btf: &'a B,
    seen: HashMap<&'a str, Option<Layout>>,
}

impl<'a, B: TypesByName + ?Sized> Structs<'a, B> {
    fn new(btf: &'a B) -> Self {
        Structs { btf, seen: HashMap::new() }
    }

    fn layout(&mut self, strukt: &'a str) -> Option<&Layout> {
        let btf = self.btf;
        self.seen
            .entry(strukt)
            .or_insert_with(|| find_struct(btf, strukt).map(|s| Layout { size: s.size() as u32, fields: fields(btf.btf(), &s) }))
            .as_ref()
    }

    fn offset(&mut self, strukt: &'a str, field: &str) -> Result<u32, Error> {
        self.layout(strukt)
            .and_then(|l| l.fields.get(field).copied())
            .ok_or_else(|| Error::BtfField { what: format!("struct {strukt}.{field}") })
    }

    fn size(&mut self, strukt: &'a str) -> Result<u32, Error> {
        self.layout(strukt).map(|l| l.size).ok_or_else(|| Error::BtfField { what: format!("struct {strukt}") })
    }
}

/// Byte offset of `strukt.field` (the field may sit in anonymous members).
///
/// # Errors
/// [`Error::BtfField`] when the struct or field does not exist.
pub fn offset_of(btf: &(impl TypesByName + ?Sized), strukt: &str, field: &str) -> Result<u32, Error> {
    Structs::new(btf).offset(strukt, field)
}

/// `sizeof(struct strukt)`.
///
/// # Errors
/// [`Error::BtfField`] when the struct does not exist.
pub fn size_of(btf: &(impl TypesByName + ?Sized), strukt: &str) -> Result<u32, Error> {
    Structs::new(btf).size(strukt)
}

/// The struct and field holding the first syscall argument in the user
/// `struct pt_regs` the syscall wrappers receive.
#[cfg(target_arch = "aarch64")]
const PT_REGS_ARG0: (&str, &str) = ("pt_regs", "regs");
#[cfg(not(target_arch = "aarch64"))]
const PT_REGS_ARG0: (&str, &str) = ("pt_regs", "di");

/// The field holding the first argument of a 32-bit compat syscall (ia32:
/// `ebx`), and the one holding the syscall number.
#[cfg(not(target_arch = "aarch64"))]
const PT_REGS_COMPAT: [(&str, &str); 2] = [("pt_regs", "bx"), ("pt_regs", "orig_ax")];
/// arm64 compat syscalls go through the native entry points with the same
/// registers: nothing of its own to read.
#[cfg(target_arch = "aarch64")]
const PT_REGS_COMPAT: [(&str, &str); 2] = [("pt_regs", "regs"), ("pt_regs", "syscallno")];

/// The `thread_info` field whose bit marks a compat syscall (see
/// `in_compat_syscall` in crates/ebpf): x86_64's `status` (`TS_COMPAT`),
/// arm64's `flags` (`TIF_32BIT`).
#[cfg(not(target_arch = "aarch64"))]
const THREAD_INFO_COMPAT: (&str, &str) = ("thread_info", "status");
/// The `thread_info` field whose bit marks a compat syscall (see
/// `in_compat_syscall` in crates/ebpf): x86_64's `status` (`TS_COMPAT`),
/// arm64's `flags` (`TIF_32BIT`).
#[cfg(target_arch = "aarch64")]
const THREAD_INFO_COMPAT: (&str, &str) = ("thread_info", "flags");

/// Every offset the programs need, from the running kernel's BTF.
///
/// # Errors
/// [`Error::BtfField`] naming the first struct or field the kernel lacks.
pub fn kernel_offsets(btf: &(impl TypesByName + ?Sized)) -> Result<KernelOffsets, Error> {
    let structs = RefCell::new(Structs::new(btf));
    let offsets = offsets_from(
        &|s, f| structs.borrow_mut().offset(s, f),
        &|s| structs.borrow_mut().size(s),
        has_func(btf, "bpf_loop"),
    )?;
    check_windows(&offsets)?;
    Ok(offsets)
}

/// The structs [`kernel_offsets`] reads, in its order (with repeats):
/// [`offsets_from`] run with every offset and size 0.
fn offset_structs() -> Vec<&'static str> {
    let names = RefCell::new(Vec::new());
    let _ = offsets_from(
        &|s, _| {
            names.borrow_mut().push(s);
            Ok(0)
        },
        &|s| {
            names.borrow_mut().push(s);
            Ok(0)
        },
        false,
    );
    names.into_inner()
}

/// [`KernelOffsets`] from `o(struct, field)` (a byte offset) and
/// `size(struct)`, and whether the kernel has `bpf_loop`.
fn offsets_from(
    o: &dyn Fn(&'static str, &'static str) -> Result<u32, Error>,
    size: &dyn Fn(&'static str) -> Result<u32, Error>,
    has_bpf_loop: bool,
) -> Result<KernelOffsets, Error> {
    Ok(KernelOffsets {
        task_real_parent: o("task_struct", "real_parent")?,
        task_tgid: o("task_struct", "tgid")?,
        task_fs: o("task_struct", "fs")?,
        task_nsproxy: o("task_struct", "nsproxy")?,
        task_cred: o("task_struct", "cred")?,
        task_thread_pid: o("task_struct", "thread_pid")?,
        fs_root: o("fs_struct", "root")?,
        path_mnt: o("path", "mnt")?,
        path_dentry: o("path", "dentry")?,
        dentry_parent: o("dentry", "d_parent")?,
        dentry_name: o("dentry", "d_name")?,
        qstr_len: o("qstr", "len")?,
        qstr_name: o("qstr", "name")?,
        mount_mnt: o("mount", "mnt")?,
        mount_parent: o("mount", "mnt_parent")?,
        mount_mountpoint: o("mount", "mnt_mountpoint")?,
        vfsmount_root: o("vfsmount", "mnt_root")?,
        nsproxy_mnt_ns: o("nsproxy", "mnt_ns")?,
        mnt_ns_inum: o("mnt_namespace", "ns")? + o("ns_common", "inum")?,
        pid_level: o("pid", "level")?,
        pid_numbers: o("pid", "numbers")?,
        upid_size: size("upid")?,
        upid_ns: o("upid", "ns")?,
        upid_nr: o("upid", "nr")?,
        task_group_leader: o("task_struct", "group_leader")?,
        pid_ns_inum: o("pid_namespace", "ns")? + o("ns_common", "inum")?,
        cred_euid: o("cred", "euid")?,
        cred_egid: o("cred", "egid")?,
        pt_regs_arg0: o(PT_REGS_ARG0.0, PT_REGS_ARG0.1)?,
        task_mm: o("task_struct", "mm")?,
        mm_exe_file: o("mm_struct", "exe_file")?,
        mnt_ns_root: o("mnt_namespace", "root")?,
        cred_user_ns: o("cred", "user_ns")?,
        user_ns_inum: o("user_namespace", "ns")? + o("ns_common", "inum")?,
        file_f_inode: o("file", "f_inode")?,
        inode_ino: o("inode", "i_ino")?,
        inode_sb: o("inode", "i_sb")?,
        sb_dev: o("super_block", "s_dev")?,
        pt_regs_compat_arg0: o(PT_REGS_COMPAT[0].0, PT_REGS_COMPAT[0].1)?,
        pt_regs_syscall_nr: o(PT_REGS_COMPAT[1].0, PT_REGS_COMPAT[1].1)?,
        task_ti_compat: o("task_struct", "thread_info")? + o(THREAD_INFO_COMPAT.0, THREAD_INFO_COMPAT.1)?,
        task_comm: o("task_struct", "comm")?,
        file_f_path: o("file", "f_path")?,
        mount_mnt_ns: o("mount", "mnt_ns")?,
        dentry_hash_pprev: o("dentry", "d_hash")? + o("hlist_bl_node", "pprev")?,
        cred_uid: o("cred", "uid")?,
        cred_gid: o("cred", "gid")?,
        task_pid: o("task_struct", "pid")?,
        task_start_boottime: o("task_struct", "start_boottime")?,
        task_self_exec_id: o("task_struct", "self_exec_id")?,
        fs_pwd: o("fs_struct", "pwd")?,
        task_cgroups: o("task_struct", "cgroups")?,
        css_set_dfl_cgrp: o("css_set", "dfl_cgrp")?,
        cgroup_kn: o("cgroup", "kn")?,
        kernfs_node_id: o("kernfs_node", "id")?,
        has_bpf_loop: u32::from(has_bpf_loop),
    })
}

/// The programs read some structs in one window each (`DentryWindow`,
/// `MountWindow`, `PathWindow`, `UpidWindow` in `crates/ebpf/src/kernel.rs`):
/// `d_parent` then `d_name` (hash, len, name); `mnt_parent`,
/// `mnt_mountpoint`, then `mnt.mnt_root`; `struct path`'s `mnt` then
/// `dentry`; `struct upid`'s `nr` then `ns`. The first two have held since
/// Linux 3.3, the last two longer; a kernel without them gets a clear error
/// rather than wrong paths and ids.
///
/// # Errors
/// [`Error::BtfField`] naming the layout that differs.
fn check_windows(k: &KernelOffsets) -> Result<(), Error> {
    let ptr = std::mem::size_of::<usize>() as u32;
    if k.dentry_name != k.dentry_parent + ptr || k.qstr_len != 4 || k.qstr_name != 8 {
        return Err(Error::BtfField { what: "struct dentry with d_name (hash, len, name) right after d_parent".into() });
    }
    if k.mount_mountpoint != k.mount_parent + ptr || k.mount_mnt + k.vfsmount_root != k.mount_parent + 2 * ptr {
        return Err(Error::BtfField { what: "struct mount with mnt_parent, mnt_mountpoint, mnt.mnt_root in a row".into() });
    }
    if k.path_dentry != k.path_mnt + ptr {
        return Err(Error::BtfField { what: "struct path with dentry right after mnt".into() });
    }
    if k.upid_ns != k.upid_nr + ptr {
        return Err(Error::BtfField { what: "struct upid with ns right after nr".into() });
    }
    Ok(())
}

/// Whether the kernel's BTF has a function named `name` (fentry, fexit and
/// LSM programs attach by BTF id).
pub fn has_func(btf: &(impl TypesByName + ?Sized), name: &str) -> bool {
    btf.types_by_name(name).iter().any(|t| matches!(t, Type::Func(_)))
}

/// Name of a BTF type, empty when anonymous.
pub fn name_of(btf: &Btf, t: &dyn BtfType) -> String {
    btf.resolve_name(t).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one scan finds what a scan per name finds, for every name it
    /// holds, and the offsets read through it are the same.
    #[test]
    fn the_index_answers_as_a_scan_per_name_would() {
        let Ok(kernel) = KernelBtf::read() else {
            eprintln!("skipped: no kernel BTF at {VMLINUX_BTF}");
            return;
        };
        assert!(offset_structs().contains(&"task_struct"));
        assert!(kernel.ids.get("task_struct").is_some_and(|ids| !ids.is_empty()), "task_struct not indexed");
        for name in kernel.ids.keys() {
            assert_eq!(kernel.types_by_name(name), kernel.btf.types_by_name(name), "{name}");
        }
        assert_eq!(kernel_offsets(&kernel).expect("offsets"), kernel_offsets(&kernel.btf).expect("offsets"));
    }
}
