//! The policy model: the types the validated JSON from the TypeScript
//! layer deserialises into, as `policy.schema.json` describes them.

use serde::Deserialize;

use crate::error::Error;

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
    pub(super) fn to_vec(&self) -> Vec<T> {
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
    /// The new root is not at or below the caller's root.
    pub escapes_root: Option<bool>,
    /// The caller's cwd is not at or below the new root.
    pub cwd_outside_root: Option<bool>,
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
    /// action, the default), `allow` or `deny`; one without per-thread
    /// memory denies whatever this says (`lsm.rs`, `failure_action`).
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
