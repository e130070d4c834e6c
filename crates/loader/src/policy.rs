//! Policies: the validated JSON form the TypeScript layer hands over, and
//! its compilation into the maps of `lsm/path_chroot` (see
//! `chroot_guard_common::policy`).
//!
//! Compilation is pure (no kernel); [`Compiled::write`] then fills the
//! inactive slot and flips `CG_ACTIVE`, so a policy takes effect whole or,
//! on any error, not at all.

use std::collections::HashMap as StdHashMap;

use std::{ffi::OsStr, os::unix::ffi::OsStrExt, path::Path};

use aya::maps::{Array, HashMap, Map, MapData};
use chroot_guard_common::{
    policy::{
        cond, hash_path, policy_flags, rule_flags, ExeKey, PathKey, PathMasks, PolicyHeader, PolicyRule,
        ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY, MAX_EXES, MAX_PATHS, MAX_RULES, MODE_AUDIT, MODE_ENFORCE,
        RULE_ID_BYTES,
    },
    COMM_LEN, RESOLVED_MAX,
};
use serde::Deserialize;

use crate::{
    error::Error,
    identity::{file_identity, initial_mnt_ns, FileIdentity},
};

/// A value or a list of values (any of them matches).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// One value.
    One(T),
    /// Any of these.
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// Conditions of a rule; see `policy.schema.json`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Match {
    /// New root equals one of these.
    pub path: Option<OneOrMany<String>>,
    /// New root at or below one of these.
    pub subtree: Option<OneOrMany<String>>,
    /// Real uid.
    pub uid: Option<OneOrMany<u32>>,
    /// Effective uid.
    pub euid: Option<OneOrMany<u32>>,
    /// Real gid.
    pub gid: Option<OneOrMany<u32>>,
    /// Effective gid.
    pub egid: Option<OneOrMany<u32>>,
    /// comm.
    pub comm: Option<OneOrMany<String>>,
    /// The caller's executable.
    pub exe: Option<OneOrMany<String>>,
    /// cgroup v2 id.
    pub cgroup_id: Option<OneOrMany<u64>>,
    /// Caller already chrooted.
    pub already_chrooted: Option<bool>,
    /// Mount namespace inode number of the caller.
    pub mnt_ns: Option<OneOrMany<u32>>,
    /// Caller in the initial user and mount namespaces.
    pub initial_namespaces: Option<bool>,
    /// Conditions that, when all hold, make the rule not apply (no nested
    /// `not`).
    pub not: Option<Box<Match>>,
}

/// One rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique id.
    pub id: String,
    /// `allow`, `deny` or `audit`.
    pub action: String,
    /// Free text.
    pub description: Option<String>,
    /// Conditions (none: every call).
    #[serde(rename = "match")]
    pub matches: Option<Match>,
}

/// A policy as `policy.schema.json` describes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Ignored (editor support).
    #[serde(rename = "$schema")]
    pub schema: Option<String>,
    /// `enforce` or `audit`.
    pub mode: String,
    /// Action when no rule matches (default `allow`).
    pub default: Option<String>,
    /// Action when a decision cannot be made: `default` (the default
    /// action, the default), `allow` or `deny`.
    #[serde(rename = "failMode")]
    pub fail_mode: Option<String>,
    /// Ordered rules.
    pub rules: Vec<Rule>,
}

impl Policy {
    /// Parses the JSON form.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] with serde's message.
    pub fn from_json(json: &str) -> Result<Policy, Error> {
        serde_json::from_str(json).map_err(|e| Error::InvalidArgument(format!("policy: {e}")))
    }
}

fn action(s: &str, what: &str) -> Result<u8, Error> {
    match s {
        "allow" => Ok(ACTION_ALLOW),
        "deny" => Ok(ACTION_DENY),
        "audit" => Ok(ACTION_AUDIT),
        other => Err(Error::InvalidArgument(format!("{what}: unknown action {other:?} (allow, deny, audit)"))),
    }
}

/// The bytes a policy path names: UTF-8, except that `\xHH` (two hex
/// digits) stands for one byte, so a directory whose name is not UTF-8 can
/// be named, and `\\` for a backslash.
///
/// # Errors
/// A sentence naming the first bad escape.
pub fn path_bytes(p: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(p.len());
    let mut rest = p.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match rest {
            [b'\\', tail @ ..] => {
                out.push(b'\\');
                rest = tail;
            }
            [b'x', h, l, tail @ ..] if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                out.push(hex(*h) << 4 | hex(*l));
                rest = tail;
            }
            _ => return Err("has a backslash that is not \\xHH (one byte) or \\\\ (a backslash)".into()),
        }
    }
    if out.contains(&0) {
        return Err("names a NUL byte".into());
    }
    Ok(out)
}

/// Checks a host-absolute path and returns its canonical bytes (escapes
/// decoded by [`path_bytes`]): absolute, no `.` or `..` components, no
/// empty components, no trailing `/` (but `/` itself), at most
/// `RESOLVED_MAX - 1` bytes.
///
/// # Errors
/// [`Error::InvalidArgument`] saying what is wrong.
pub fn canonical_path(p: &str, what: &str) -> Result<Vec<u8>, Error> {
    let bad = |why: &str| Err(Error::InvalidArgument(format!("{what}: {p:?} {why}")));
    let bytes = match path_bytes(p) {
        Ok(b) => b,
        Err(why) => return bad(&why),
    };
    if bytes.first() != Some(&b'/') {
        return bad("is not absolute (paths are host-absolute, like resolvedPath)");
    }
    let parts: Vec<&[u8]> = bytes.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
    if parts.iter().any(|c| *c == b"." || *c == b"..") {
        return bad("has . or .. components");
    }
    let mut canon = Vec::with_capacity(bytes.len());
    for part in &parts {
        canon.push(b'/');
        canon.extend_from_slice(part);
    }
    if canon.is_empty() {
        canon.push(b'/');
    }
    if canon.len() >= RESOLVED_MAX {
        return bad("is too long");
    }
    Ok(canon)
}

/// What a compiled policy was matched against besides the call itself: the
/// facts read when it was compiled, which another evaluator of the same
/// policy needs to decide alike.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyContext {
    /// Inode number of the initial mount namespace (0 when unknown).
    pub initial_mnt_ns: u32,
    /// Each `exe` path the policy names and the identity it was found with,
    /// in policy order.
    pub exes: Vec<(String, FileIdentity)>,
}

/// A policy compiled for the maps.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Header (generation and seed are set by [`Compiled::write`]).
    pub header: PolicyHeader,
    /// Rules in order.
    pub rules: Vec<PolicyRule>,
    /// Id of each compiled rule's source rule.
    pub rule_ids: Vec<String>,
    /// Paths (`path`, `subtree`) → masks.
    pub paths: StdHashMap<Vec<u8>, PathMasks>,
    /// Executables, by identity → rule mask.
    pub exes: StdHashMap<FileIdentity, u64>,
    /// Each `exe` path the policy names and the identity it was found with,
    /// in policy order: what `exe` rules match (reported to callers so they
    /// can evaluate the same policy, see `evaluatePolicy` in TS).
    pub exe_identities: Vec<(String, FileIdentity)>,
}

impl Compiled {
    /// The facts this policy was compiled with.
    pub fn context(&self) -> PolicyContext {
        PolicyContext { initial_mnt_ns: self.header.init_mnt_ns, exes: self.exe_identities.clone() }
    }
}

/// One `match` (or `not`) block, expanded: a compiled rule per combination
/// of its listed values, and the paths and executables it names.
struct Expanded {
    variants: Vec<PolicyRule>,
    paths: Vec<Vec<u8>>,
    subtrees: Vec<Vec<u8>>,
    exes: Vec<FileIdentity>,
}

/// Expands `m` into compiled rules carrying `base`'s action, source and
/// flags. `exe` paths are identified here (see [`file_identity`]).
fn expand(
    m: &Match,
    base: PolicyRule,
    what: &str,
    identities: &mut Vec<(String, FileIdentity)>,
) -> Result<Expanded, Error> {
    let mut base = base;
    let mut out = Expanded { variants: Vec::new(), paths: Vec::new(), subtrees: Vec::new(), exes: Vec::new() };
    if let Some(v) = &m.path {
        base.conds |= cond::PATH;
        for p in v.to_vec() {
            out.paths.push(canonical_path(&p, what)?);
        }
    }
    if let Some(v) = &m.subtree {
        let list: Vec<Vec<u8>> = v.to_vec().iter().map(|p| canonical_path(p, what)).collect::<Result<_, _>>()?;
        // A subtree of `/` holds for every path: no condition.
        if !list.iter().any(|p| p.as_slice() == b"/") {
            base.conds |= cond::SUBTREE;
            out.subtrees = list;
        }
    }
    if let Some(v) = &m.exe {
        base.conds |= cond::EXE;
        for p in v.to_vec() {
            let bytes = canonical_path(&p, what)?;
            let id = file_identity(Path::new(OsStr::from_bytes(&bytes))).map_err(|e| {
                Error::InvalidArgument(format!(
                    "{what}: exe {p:?} cannot be identified ({e}); exe rules match the file by device and inode, so it must exist when the policy loads"
                ))
            })?;
            identities.push((p.clone(), id));
            out.exes.push(id);
        }
    }
    if let Some(c) = m.already_chrooted {
        base.conds |= cond::CHROOTED;
        base.chrooted = u8::from(c);
    }
    if let Some(c) = m.initial_namespaces {
        base.conds |= cond::INIT_NS;
        base.init_ns = u8::from(c);
    }
    let list = |o: &Option<OneOrMany<u32>>| o.as_ref().map(OneOrMany::to_vec);
    let comms: Option<Vec<[u8; COMM_LEN]>> = match &m.comm {
        None => None,
        Some(v) => Some(
            v.to_vec()
                .iter()
                .map(|c| {
                    let b = c.as_bytes();
                    if b.is_empty() || b.len() >= COMM_LEN {
                        return Err(Error::InvalidArgument(format!("{what}: comm {c:?} must be 1 to 15 bytes")));
                    }
                    let mut a = [0u8; COMM_LEN];
                    a[..b.len()].copy_from_slice(b);
                    Ok(a)
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    // Cartesian product of the scalar lists.
    let mut variants = vec![base];
    let mut product = |values: Option<Vec<u32>>, bit: u32, set: fn(&mut PolicyRule, u32)| {
        if let Some(values) = values {
            variants = variants
                .iter()
                .flat_map(|r| {
                    values.iter().map(move |&v| {
                        let mut r = *r;
                        r.conds |= bit;
                        set(&mut r, v);
                        r
                    })
                })
                .collect();
        }
    };
    product(list(&m.uid), cond::UID, |r, v| r.uid = v);
    product(list(&m.euid), cond::EUID, |r, v| r.euid = v);
    product(list(&m.gid), cond::GID, |r, v| r.gid = v);
    product(list(&m.egid), cond::EGID, |r, v| r.egid = v);
    product(list(&m.mnt_ns), cond::MNT_NS, |r, v| r.mnt_ns = v);
    if let Some(comms) = comms {
        variants = variants
            .iter()
            .flat_map(|r| comms.iter().map(move |c| PolicyRule { conds: r.conds | cond::COMM, comm: *c, ..*r }))
            .collect();
    }
    if let Some(ids) = m.cgroup_id.as_ref().map(OneOrMany::to_vec) {
        variants = variants
            .iter()
            .flat_map(|r| ids.iter().map(move |&id| PolicyRule { conds: r.conds | cond::CGROUP, cgroup_id: id, ..*r }))
            .collect();
    }
    out.variants = variants;
    Ok(out)
}

/// Compiles a policy: expands lists into rules (at most [`MAX_RULES`]),
/// canonicalizes paths and collects them into masks, identifies `exe`
/// files, and puts each rule's `not` block (as [`rule_flags::SKIP`] rules)
/// before the rule itself.
///
/// # Errors
/// [`Error::InvalidArgument`] for an unknown action, mode or fail mode, a
/// bad path or comm, an `exe` that cannot be identified, a nested `not`,
/// duplicate ids or ids longer than [`RULE_ID_BYTES`], too many rules,
/// paths or executables, or an `initialNamespaces` rule when the initial
/// mount namespace cannot be read.
pub fn compile(p: &Policy) -> Result<Compiled, Error> {
    let mode = match p.mode.as_str() {
        "enforce" => MODE_ENFORCE,
        "audit" => MODE_AUDIT,
        other => return Err(Error::InvalidArgument(format!("mode: unknown {other:?} (enforce, audit)"))),
    };
    let default_action = action(p.default.as_deref().unwrap_or("allow"), "default")?;
    let fail_action = match p.fail_mode.as_deref().unwrap_or("default") {
        "default" => default_action,
        "allow" => ACTION_ALLOW,
        "deny" => ACTION_DENY,
        other => return Err(Error::InvalidArgument(format!("failMode: unknown {other:?} (default, allow, deny)"))),
    };
    let mut out = Compiled {
        header: PolicyHeader { mode, default_action, fail_action, ..PolicyHeader::default() },
        rules: Vec::new(),
        rule_ids: Vec::new(),
        paths: StdHashMap::new(),
        exes: StdHashMap::new(),
        exe_identities: Vec::new(),
    };
    let mut uses_init_ns = false;
    let mut seen = std::collections::HashSet::new();
    for (source, r) in p.rules.iter().enumerate() {
        let what = format!("rules[{source}] ({})", r.id);
        if !seen.insert(r.id.as_str()) {
            return Err(Error::InvalidArgument(format!("{what}: duplicate id")));
        }
        // `CG_RULE_IDS` holds RULE_ID_BYTES per id: a longer id would be cut.
        if r.id.is_empty() || r.id.len() > RULE_ID_BYTES {
            return Err(Error::InvalidArgument(format!("{what}: the id is {} bytes; 1 to {RULE_ID_BYTES}", r.id.len())));
        }
        let act = action(&r.action, &what)?;
        let m = r.matches.clone().unwrap_or_default();
        let deny = act == ACTION_DENY;
        let mut blocks = Vec::new();
        if let Some(not) = &m.not {
            if not.not.is_some() {
                return Err(Error::InvalidArgument(format!("{what}: a not block cannot hold another not")));
            }
            // Unknown conditions resolve toward denying: a `not` block of a
            // deny rule does not hold on them, of any other rule it does.
            let flags = rule_flags::SKIP | if deny { 0 } else { rule_flags::UNKNOWN_HOLDS };
            let base = PolicyRule { action: act, source: source as u16, flags, ..PolicyRule::default() };
            blocks.push(expand(not, base, &what, &mut out.exe_identities)?);
            uses_init_ns |= not.initial_namespaces.is_some();
        }
        let flags = if deny { rule_flags::UNKNOWN_HOLDS } else { 0 };
        let base = PolicyRule { action: act, source: source as u16, flags, ..PolicyRule::default() };
        blocks.push(expand(&m, base, &what, &mut out.exe_identities)?);
        uses_init_ns |= m.initial_namespaces.is_some();
        for block in blocks {
            for v in block.variants {
                let index = out.rules.len();
                if index >= MAX_RULES {
                    return Err(Error::InvalidArgument(format!(
                        "{what}: the policy expands to more than {MAX_RULES} rules (each value of a uid, euid, gid, egid, mntNs, comm or cgroupId list counts once per combination, in match and in not)"
                    )));
                }
                let bit = 1u64 << index;
                for p in &block.paths {
                    out.paths.entry(p.clone()).or_default().exact |= bit;
                }
                for p in &block.subtrees {
                    out.paths.entry(p.clone()).or_default().subtree |= bit;
                }
                for id in &block.exes {
                    *out.exes.entry(*id).or_default() |= bit;
                }
                if v.conds & cond::EXE != 0 {
                    out.header.flags |= policy_flags::USES_EXE;
                }
                out.rules.push(v);
                out.rule_ids.push(r.id.clone());
            }
        }
    }
    if out.paths.len() > MAX_PATHS {
        return Err(Error::InvalidArgument(format!(
            "the policy names {} distinct paths (path and subtree); at most {MAX_PATHS}",
            out.paths.len()
        )));
    }
    // Counted by path, as `check` counts them (two paths may name one file).
    let exe_paths: std::collections::HashSet<Vec<u8>> =
        out.exe_identities.iter().filter_map(|(p, _)| canonical_path(p, "exe").ok()).collect();
    if exe_paths.len() > MAX_EXES {
        return Err(Error::InvalidArgument(format!(
            "the policy names {} distinct executables; at most {MAX_EXES}",
            exe_paths.len()
        )));
    }
    out.header.init_mnt_ns = match initial_mnt_ns() {
        Ok(ns) => ns,
        Err(e) if uses_init_ns => {
            return Err(Error::InvalidArgument(format!(
                "initialNamespaces: cannot read the initial mount namespace at {} ({e})",
                crate::identity::INITIAL_MNT_NS
            )))
        }
        // No rule asks; decisions then never carry the initial-namespaces flag.
        Err(_) => 0,
    };
    out.header.rule_count = out.rules.len() as u32;
    Ok(out)
}

/// A random seed for the path hash.
fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: getrandom writes at most 8 bytes into the buffer.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), 8, 0) };
    if n == 8 {
        u64::from_ne_bytes(seed)
    } else {
        crate::sys::boottime_ns() ^ 0x9e37_79b9_7f4a_7c15
    }
}

/// The policy maps of one loaded object.
pub struct PolicyMaps<'a> {
    /// `CG_ACTIVE`.
    pub active: Array<&'a mut MapData, u32>,
    /// `CG_POLICY`.
    pub headers: Array<&'a mut MapData, PolicyHeader>,
    /// `CG_RULES`.
    pub rules: Array<&'a mut MapData, PolicyRule>,
    /// `CG_PATHS`.
    pub paths: HashMap<&'a mut MapData, PathKey, PathMasks>,
    /// `CG_EXES`.
    pub exes: HashMap<&'a mut MapData, ExeKey, u64>,
    /// `CG_RULE_IDS`.
    pub rule_ids: Array<&'a mut MapData, [u8; RULE_ID_BYTES]>,
}

/// The names of the maps in [`PolicyMaps`], in field order.
pub const POLICY_MAPS: [&str; 6] = ["CG_ACTIVE", "CG_POLICY", "CG_RULES", "CG_PATHS", "CG_EXES", "CG_RULE_IDS"];

impl<'a> PolicyMaps<'a> {
    /// Types the maps named by [`POLICY_MAPS`], in that order.
    ///
    /// # Errors
    /// [`Error::Object`] when a map is missing or has another type or value
    /// size (e.g. a guard pinned by another version of chroot-guard).
    pub fn new(maps: [Option<&'a mut Map>; 6]) -> Result<PolicyMaps<'a>, Error> {
        let [active, headers, rules, paths, exes, rule_ids] = maps;
        fn typed<'a, T>(name: &str, map: Option<&'a mut Map>) -> Result<T, Error>
        where
            T: TryFrom<&'a mut Map, Error = aya::maps::MapError>,
        {
            let map = map.ok_or_else(|| Error::Object(format!("map {name} missing")))?;
            T::try_from(map).map_err(|e| Error::Object(format!("{name}: {e}")))
        }
        Ok(PolicyMaps {
            active: typed("CG_ACTIVE", active)?,
            headers: typed("CG_POLICY", headers)?,
            rules: typed("CG_RULES", rules)?,
            paths: typed("CG_PATHS", paths)?,
            exes: typed("CG_EXES", exes)?,
            rule_ids: typed("CG_RULE_IDS", rule_ids)?,
        })
    }
}

/// What is in each slot, so an update can clear the slot it reuses.
#[derive(Debug, Default)]
pub struct Slots {
    /// The slot `CG_ACTIVE` points at.
    pub active: u32,
    /// Generation of the active policy.
    pub generation: u32,
    /// Rule ids of the active policy, by compiled index.
    pub rule_ids: Vec<String>,
    path_keys: [Vec<PathKey>; 2],
    exe_keys: [Vec<ExeKey>; 2],
}

impl Slots {
    /// Reads what the maps hold: the state a later process needs to update
    /// a pinned guard.
    ///
    /// # Errors
    /// [`Error::Object`] when a map cannot be read.
    pub fn read(maps: &PolicyMaps<'_>) -> Result<Slots, Error> {
        let map_err = |what: &'static str| move |e: aya::maps::MapError| Error::Object(format!("reading {what}: {e}"));
        let active = maps.active.get(&0, 0).map_err(map_err("CG_ACTIVE"))? & 1;
        let header = maps.headers.get(&active, 0).map_err(map_err("CG_POLICY"))?;
        let mut rule_ids = Vec::with_capacity(header.rule_count as usize);
        for i in 0..header.rule_count.min(MAX_RULES as u32) {
            let raw = maps.rule_ids.get(&(active * MAX_RULES as u32 + i), 0).map_err(map_err("CG_RULE_IDS"))?;
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            rule_ids.push(String::from_utf8_lossy(&raw[..end]).into_owned());
        }
        let mut slots = Slots { active, generation: header.generation, rule_ids, ..Slots::default() };
        for key in maps.paths.keys() {
            let key = key.map_err(map_err("CG_PATHS"))?;
            slots.path_keys[(key.slot & 1) as usize].push(key);
        }
        for key in maps.exes.keys() {
            let key = key.map_err(map_err("CG_EXES"))?;
            slots.exe_keys[(key.slot & 1) as usize].push(key);
        }
        Ok(slots)
    }
}

impl Compiled {
    /// Writes the policy into the slot not in use, then points `CG_ACTIVE`
    /// at it. On error `CG_ACTIVE` is untouched and the old policy holds.
    ///
    /// # Errors
    /// [`Error::Object`] when a map write fails (e.g. a map is full).
    pub fn write(&self, maps: &mut PolicyMaps<'_>, slots: &mut Slots, first: bool) -> Result<u32, Error> {
        let map_err = |what: &'static str| move |e: aya::maps::MapError| Error::Object(format!("writing {what}: {e}"));
        let slot = if first { 0 } else { slots.active ^ 1 };
        let seed = random_seed();
        // Generation 0 marks the slot as being rewritten: a decision still
        // reading it from before the previous flip sees the change and
        // applies the default action instead of mixing two policies.
        maps.headers.set(slot, PolicyHeader::default(), 0).map_err(map_err("CG_POLICY"))?;
        for key in std::mem::take(&mut slots.path_keys[slot as usize]) {
            let _ = maps.paths.remove(&key);
        }
        for key in std::mem::take(&mut slots.exe_keys[slot as usize]) {
            let _ = maps.exes.remove(&key);
        }
        for (i, (rule, id)) in self.rules.iter().zip(&self.rule_ids).enumerate() {
            let index = slot * MAX_RULES as u32 + i as u32;
            maps.rules.set(index, rule, 0).map_err(map_err("CG_RULES"))?;
            let mut raw = [0u8; RULE_ID_BYTES];
            let n = id.len().min(RULE_ID_BYTES);
            raw[..n].copy_from_slice(&id.as_bytes()[..n]);
            maps.rule_ids.set(index, raw, 0).map_err(map_err("CG_RULE_IDS"))?;
        }
        for (path, masks) in &self.paths {
            let key = PathKey { slot, len: path.len() as u32, hash: hash_path(seed, path) };
            maps.paths.insert(key, masks, 0).map_err(map_err("CG_PATHS"))?;
            slots.path_keys[slot as usize].push(key);
        }
        for (id, mask) in &self.exes {
            let key = ExeKey { slot, dev: id.dev, ino: id.ino };
            maps.exes.insert(key, mask, 0).map_err(map_err("CG_EXES"))?;
            slots.exe_keys[slot as usize].push(key);
        }
        let generation = slots.generation.wrapping_add(1);
        let header = PolicyHeader { generation, seed, ..self.header };
        maps.headers.set(slot, header, 0).map_err(map_err("CG_POLICY"))?;
        // The switch: one 4-byte write the program reads once per decision.
        maps.active.set(0, slot, 0).map_err(map_err("CG_ACTIVE"))?;
        slots.active = slot;
        slots.generation = generation;
        slots.rule_ids = self.rule_ids.clone();
        Ok(generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Result<Compiled, Error> {
        compile(&Policy::from_json(json)?)
    }

    #[test]
    fn lists_expand_in_order_and_paths_collect_masks() {
        let c = policy(
            r#"{"mode":"enforce","default":"allow","rules":[
                {"id":"a","action":"deny","match":{"subtree":["/srv/jails/","/opt"],"uid":[1,2]}},
                {"id":"b","action":"audit","match":{"path":"/srv//x","comm":["mock","schroot"]}},
                {"id":"c","action":"allow","match":{"subtree":"/"}}]}"#,
        )
        .expect("compiles");
        assert_eq!(c.rule_ids, ["a", "a", "b", "b", "c"]);
        assert_eq!(c.rules.iter().map(|r| r.uid).collect::<Vec<_>>(), [1, 2, 0, 0, 0]);
        assert_eq!(c.paths[b"/srv/jails".as_slice()].subtree, 0b11);
        assert_eq!(c.paths[b"/opt".as_slice()].subtree, 0b11);
        assert_eq!(c.paths[b"/srv/x".as_slice()].exact, 0b1100);
        assert_eq!(c.rules[4].conds, 0, "subtree / is no condition");
        assert_eq!(&c.rules[3].comm[..8], b"schroot\0");
    }

    #[test]
    fn not_blocks_compile_before_their_rule_as_skip_rules() {
        let c = policy(
            r#"{"mode":"enforce","failMode":"deny","rules":[
                {"id":"a","action":"deny","match":{"subtree":"/srv","not":{"initialNamespaces":true,"uid":[0,1]}}},
                {"id":"b","action":"allow","match":{"not":{"comm":"x"}}}]}"#,
        )
        .expect("compiles");
        assert_eq!(c.rule_ids, ["a", "a", "a", "b", "b"]);
        let skip = |i: usize| c.rules[i].flags & rule_flags::SKIP != 0;
        let unknown = |i: usize| c.rules[i].flags & rule_flags::UNKNOWN_HOLDS != 0;
        assert_eq!((0..5).map(skip).collect::<Vec<_>>(), [true, true, false, true, false]);
        // Unknowns resolve toward denying: a deny rule's own conditions
        // hold on them, its not block does not; the reverse for others.
        assert_eq!((0..5).map(unknown).collect::<Vec<_>>(), [false, false, true, true, false]);
        assert_eq!(c.rules[0].conds, cond::INIT_NS | cond::UID);
        assert_eq!((c.rules[0].init_ns, c.rules[1].uid), (1, 1));
        assert_eq!(c.rules[2].conds, cond::SUBTREE);
        assert_eq!(c.paths[b"/srv".as_slice()].subtree, 0b100);
        assert_eq!(c.header.fail_action, ACTION_DENY);
        assert_eq!(policy(r#"{"mode":"enforce","default":"deny","rules":[]}"#).expect("compiles").header.fail_action, ACTION_DENY);
    }

    #[test]
    fn exe_rules_match_the_file_by_identity() {
        let c = policy(r#"{"mode":"enforce","rules":[{"id":"sh","action":"allow","match":{"exe":["/bin/sh","/bin/sh"]}}]}"#)
            .expect("compiles");
        let id = file_identity(Path::new("/bin/sh")).expect("/bin/sh exists");
        assert_eq!(c.exes[&id], 1);
        assert_eq!(c.header.flags & policy_flags::USES_EXE, policy_flags::USES_EXE);
        let err = policy(r#"{"mode":"enforce","rules":[{"id":"x","action":"allow","match":{"exe":"/nonexistent/cg"}}]}"#)
            .expect_err("a missing exe is refused")
            .to_string();
        assert!(err.contains("cannot be identified"), "{err}");
    }

    #[test]
    fn paths_name_bytes_with_escapes() {
        assert_eq!(canonical_path(r"/srv/caf\xe9//x/", "t").expect("valid"), b"/srv/caf\xe9/x");
        assert_eq!(canonical_path(r"/a\\b", "t").expect("valid"), b"/a\\b");
        assert_eq!(canonical_path("/café", "t").expect("valid"), "/café".as_bytes());
        for bad in [r"/a\q", r"/a\x4", r"/a\x00b", r"/a\"] {
            assert!(canonical_path(bad, "t").is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_policies_are_rejected_with_the_rule_named() {
        let err = |j: &str| policy(j).expect_err("rejected").to_string();
        assert!(err(r#"{"mode":"enforce","rules":[{"id":"x","action":"deny","match":{"path":"srv"}}]}"#)
            .contains("rules[0] (x): \"srv\" is not absolute"));
        assert!(err(r#"{"mode":"enforce","rules":[{"id":"x","action":"deny"},{"id":"x","action":"allow"}]}"#)
            .contains("rules[1] (x): duplicate id"));
        assert!(err(r#"{"mode":"enforce","rules":[{"id":"x","action":"deny","match":{"subtree":"/a/../b"}}]}"#)
            .contains(". or .."));
        assert!(err(r#"{"mode":"sometimes","rules":[]}"#).contains("mode"));
        assert!(err(r#"{"mode":"enforce","failMode":"open","rules":[]}"#).contains("failMode"));
        assert!(err(r#"{"mode":"enforce","rules":[{"id":"x","action":"deny","match":{"not":{"not":{"uid":1}}}}]}"#)
            .contains("cannot hold another not"));
        let many = format!(
            r#"{{"mode":"enforce","rules":[{{"id":"x","action":"deny","match":{{"uid":[{}]}}}}]}}"#,
            (0..65).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
        );
        assert!(err(&many).contains("more than 64 rules"));
        let id = |n: usize| format!(r#"{{"mode":"enforce","rules":[{{"id":"{}","action":"deny"}}]}}"#, "i".repeat(n));
        assert!(policy(&id(RULE_ID_BYTES)).is_ok());
        assert!(err(&id(RULE_ID_BYTES + 1)).contains("rules[0] (iii"));
        assert!(err(&id(RULE_ID_BYTES + 1)).contains("the id is 65 bytes; 1 to 64"));
        assert!(err(&id(0)).contains("the id is 0 bytes"));
    }
}
