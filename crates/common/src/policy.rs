//! The compiled policy as the `lsm/path_chroot` program reads it from maps.
//!
//! User space (`crates/loader/src/policy/`) compiles a validated policy
//! into one of two slots and then flips `CG_ACTIVE` to it, so a policy takes
//! effect whole or not at all. Rule order is preserved: the first rule that
//! matches decides.
//!
//! Paths are compared as strings: the new root's absolute path in the
//! caller's mount namespace (as `resolvedPath` in events), walked from the
//! kernel's dentries and mounts. Every prefix that ends at a `/` and the
//! whole path are hashed with [`hash_step`] (keyed by the per-policy
//! [`PolicyHeader::seed`]) and looked up, with their length, in `CG_PATHS`.
//! Executables are compared by identity: the device and inode number of
//! `current->mm->exe_file`, looked up in `CG_EXES` ([`ExeKey`]).
//!
//! A rule's `not` block compiles into rules flagged [`rule_flags::SKIP`]
//! placed before the rule's own: when one matches, the remaining compiled
//! rules of the same source rule are passed over.

/// Most rules a compiled policy holds (rule masks are `u64`). `CG_RULES`
/// and `CG_RULE_IDS` hold this many per slot.
pub const MAX_RULES: usize = 64;

/// Most distinct `path`/`subtree` paths one policy may name: `CG_PATHS`
/// holds both slots, so twice this many.
pub const MAX_PATHS: usize = 1024;

/// Most distinct `exe` paths one policy may name: `CG_EXES` (one entry per
/// file, at most one per path) holds both slots, so twice this many.
pub const MAX_EXES: usize = 512;

/// Bytes of one entry of `CG_RULE_IDS`: a rule id (at most 64 bytes by the
/// schema), zero-padded.
pub const RULE_ID_BYTES: usize = 64;

/// Rule index in decision events when no rule matched (the default action).
pub const NO_RULE: u16 = 0xffff;

/// Allow the call.
pub const ACTION_ALLOW: u8 = 0;
/// Deny the call with EPERM (in enforce mode).
pub const ACTION_DENY: u8 = 1;
/// Allow the call and report the match.
pub const ACTION_AUDIT: u8 = 2;

/// Policy mode: deny for real.
pub const MODE_ENFORCE: u8 = 0;
/// Policy mode: never deny, report what would have been denied.
pub const MODE_AUDIT: u8 = 1;

/// Bits of [`PolicyRule::conds`]: which conditions a rule has.
pub mod cond {
    /// The new root equals one of the rule's `path`s.
    pub const PATH: u32 = 1 << 0;
    /// The new root is at or below one of the rule's `subtree`s.
    pub const SUBTREE: u32 = 1 << 1;
    /// Real uid equals [`super::PolicyRule::uid`].
    pub const UID: u32 = 1 << 2;
    /// Effective uid equals [`super::PolicyRule::euid`].
    pub const EUID: u32 = 1 << 3;
    /// Real gid equals [`super::PolicyRule::gid`].
    pub const GID: u32 = 1 << 4;
    /// Effective gid equals [`super::PolicyRule::egid`].
    pub const EGID: u32 = 1 << 5;
    /// comm equals [`super::PolicyRule::comm`].
    pub const COMM: u32 = 1 << 6;
    /// The executable is one of the rule's `exe`s.
    pub const EXE: u32 = 1 << 7;
    /// cgroup id equals [`super::PolicyRule::cgroup_id`].
    pub const CGROUP: u32 = 1 << 8;
    /// Whether the caller is already chrooted equals
    /// [`super::PolicyRule::chrooted`].
    pub const CHROOTED: u32 = 1 << 9;
    /// The caller's mount namespace inode equals [`super::PolicyRule::mnt_ns`].
    pub const MNT_NS: u32 = 1 << 10;
    /// Whether the caller is in the initial user namespace and the initial
    /// mount namespace ([`super::PolicyHeader::init_mnt_ns`]) equals
    /// [`super::PolicyRule::init_ns`].
    pub const INIT_NS: u32 = 1 << 11;
    /// Whether the new root is not at or below the caller's root
    /// (`flags::ESCAPES_ROOT` of the decision) equals
    /// [`super::PolicyRule::escapes_root`]; unknown when the walk could not
    /// tell.
    pub const ESCAPES_ROOT: u32 = 1 << 12;
    /// Whether the caller's cwd is not at or below the new root
    /// (`flags::CWD_OUTSIDE_ROOT`) equals
    /// [`super::PolicyRule::cwd_outside_root`]; unknown when the walk could
    /// not tell.
    pub const CWD_OUTSIDE_ROOT: u32 = 1 << 13;
}

/// Bits of [`PolicyRule::flags`].
pub mod rule_flags {
    /// A rule of a `not` block: when it matches, the remaining compiled
    /// rules with the same [`super::PolicyRule::source`] do not apply.
    pub const SKIP: u8 = 1 << 0;
    /// A condition that cannot be judged (a path cut short or not reachable,
    /// no executable, an escape fact the walk could not tell) holds. Set for the rules of deny rules, and for the
    /// `not` rules of every other rule: either way the uncertain call gets
    /// the deny rather than the pass.
    pub const UNKNOWN_HOLDS: u8 = 1 << 1;
}

/// `PROC_USER_INIT_INO` (`include/linux/proc_ns.h`): the inode number of
/// the initial user namespace, fixed since Linux 3.8.
pub const INIT_USER_NS_INUM: u32 = 0xEFFF_FFFD;

/// Bits of [`PolicyHeader::flags`].
pub mod policy_flags {
    /// Some rule has an `exe` condition: the program reads the executable's
    /// identity.
    pub const USES_EXE: u32 = 1 << 0;
}

/// One slot's policy, entry `slot` of `CG_POLICY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyHeader {
    /// Generation, counted up by every update; decision events carry it.
    pub generation: u32,
    /// Number of rules in this slot of `CG_RULES`.
    pub rule_count: u32,
    /// [`MODE_ENFORCE`] or [`MODE_AUDIT`].
    pub mode: u8,
    /// `ACTION_*` when no rule matches.
    pub default_action: u8,
    /// `ACTION_*` when the decision cannot be made (a kernel read failed,
    /// or the policy was replaced twice during the decision): the policy's
    /// `failMode`. Not for a decision without per-thread memory, which
    /// denies (the LSM program's `failure_action`).
    pub fail_action: u8,
    /// Explicit padding, always zero.
    pub _pad0: u8,
    /// [`policy_flags`] bits.
    pub flags: u32,
    /// Key of the path hash, random per policy.
    pub seed: u64,
    /// Inode number of the initial mount namespace (`/proc/1/ns/mnt` when
    /// the policy was written), for [`cond::INIT_NS`].
    pub init_mnt_ns: u32,
    /// Explicit padding, always zero.
    pub _pad1: u32,
}

/// One compiled rule, entry `slot * MAX_RULES + index` of `CG_RULES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyRule {
    /// [`cond`] bits.
    pub conds: u32,
    /// `ACTION_*`.
    pub action: u8,
    /// 1 when [`cond::CHROOTED`] asks for "already chrooted", 0 for "not".
    pub chrooted: u8,
    /// Index of the source rule in the policy file (lists are expanded into
    /// several compiled rules with the same source).
    pub source: u16,
    /// [`rule_flags`] bits.
    pub flags: u8,
    /// 1 when [`cond::INIT_NS`] asks for "in the initial namespaces", 0 for
    /// "not".
    pub init_ns: u8,
    /// 1 when [`cond::ESCAPES_ROOT`] asks for "escapes the caller's
    /// root", 0 for "does not".
    pub escapes_root: u8,
    /// 1 when [`cond::CWD_OUTSIDE_ROOT`] asks for "the cwd is left outside
    /// the new root", 0 for "is not".
    pub cwd_outside_root: u8,
    /// Real uid.
    pub uid: u32,
    /// Effective uid.
    pub euid: u32,
    /// Real gid.
    pub gid: u32,
    /// Effective gid.
    pub egid: u32,
    /// Mount namespace inode number.
    pub mnt_ns: u32,
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// comm, NUL padded.
    pub comm: [u8; 16],
}

/// Key of `CG_EXES`: an executable's identity in one slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExeKey {
    /// Policy slot (0 or 1).
    pub slot: u32,
    /// `inode->i_sb->s_dev` in the kernel's encoding (`MKDEV(major,
    /// minor)`: major << 20 | minor).
    pub dev: u32,
    /// `inode->i_ino`.
    pub ino: u64,
}

/// The kernel's `MKDEV` encoding of a device number (`s_dev`), from its
/// major and minor numbers as user space sees them.
pub const fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xf_ffff)
}

/// Key of `CG_PATHS`: a hashed path in one slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PathKey {
    /// Policy slot (0 or 1).
    pub slot: u32,
    /// Length of the path in bytes.
    pub len: u32,
    /// `hash_path(seed, path)`.
    pub hash: u64,
}

/// Value of `CG_PATHS`: which rules name this path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathMasks {
    /// Rules whose `path` is this path (bit = compiled rule index).
    pub exact: u64,
    /// Rules whose `subtree` is this path.
    pub subtree: u64,
}

/// One step of the path hash: FNV-1a's round, keyed by starting from the
/// policy's random seed instead of the fixed offset basis.
#[inline(always)]
pub const fn hash_step(h: u64, byte: u8) -> u64 {
    (h ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3)
}

/// The hash of a whole path (user space; the program hashes as it scans).
pub fn hash_path(seed: u64, path: &[u8]) -> u64 {
    path.iter().fold(seed, |h, &b| hash_step(h, b))
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: `#[repr(C)]` integers and byte arrays with explicit padding.
    unsafe impl aya::Pod for super::PolicyHeader {}
    unsafe impl aya::Pod for super::PolicyRule {}
    unsafe impl aya::Pod for super::PathKey {}
    unsafe impl aya::Pod for super::ExeKey {}
    unsafe impl aya::Pod for super::PathMasks {}
}
