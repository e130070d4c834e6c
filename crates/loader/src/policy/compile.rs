//! Compile: checks a [`Policy`] and turns it into what the maps hold (rule
//! records, path masks, executable identities, the header), without
//! touching the kernel.

use std::{collections::HashMap, ffi::OsStr, os::unix::ffi::OsStrExt, path::Path};

use chroot_guard_common::{
    policy::{
        cond, policy_flags, rule_flags, PathMasks, PolicyHeader, PolicyRule, ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY,
        MAX_EXES, MAX_PATHS, MAX_RULES, MODE_AUDIT, MODE_ENFORCE, RULE_ID_BYTES,
    },
    COMM_LEN, RESOLVED_MAX,
};

use super::model::{Match, OneOrMany, Policy};
use crate::{
    error::Error,
    identity::{file_identity, initial_mnt_ns, FileIdentity},
};

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
    pub paths: HashMap<Vec<u8>, PathMasks>,
    /// Executables, by identity → rule mask.
    pub exes: HashMap<FileIdentity, u64>,
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
    if let Some(c) = m.escapes_root {
        base.conds |= cond::ESCAPES_ROOT;
        base.escapes_root = u8::from(c);
    }
    if let Some(c) = m.cwd_outside_root {
        base.conds |= cond::CWD_OUTSIDE_ROOT;
        base.cwd_outside_root = u8::from(c);
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
        paths: HashMap::new(),
        exes: HashMap::new(),
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
    fn escape_facts_compile_to_their_conditions_and_values() {
        let c = policy(
            r#"{"mode":"enforce","rules":[
                {"id":"a","action":"deny","match":{"escapesRoot":true}},
                {"id":"b","action":"allow","match":{"cwdOutsideRoot":false,"not":{"escapesRoot":false}}}]}"#,
        )
        .expect("compiles");
        assert_eq!(c.rule_ids, ["a", "b", "b"]);
        assert_eq!((c.rules[0].conds, c.rules[0].escapes_root), (cond::ESCAPES_ROOT, 1));
        assert_eq!((c.rules[1].conds, c.rules[1].escapes_root), (cond::ESCAPES_ROOT, 0));
        assert_eq!((c.rules[2].conds, c.rules[2].cwd_outside_root), (cond::CWD_OUTSIDE_ROOT, 0));
        assert_ne!(c.rules[0].flags & rule_flags::UNKNOWN_HOLDS, 0, "an unknown escape holds for a deny");
        assert_eq!(c.rules[2].flags & rule_flags::UNKNOWN_HOLDS, 0);
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
