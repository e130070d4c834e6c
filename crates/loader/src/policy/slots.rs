//! Slots: the policy maps of one loaded object, which of their two slots
//! is active, and the write that fills the other slot and flips
//! `CG_ACTIVE` to it.

use aya::maps::{Array, HashMap, Map, MapData};
use chroot_guard_common::policy::{
    hash_path, ExeKey, PathKey, PathMasks, PolicyHeader, PolicyRule, MAX_RULES, RULE_ID_BYTES,
};

use super::compile::Compiled;
use crate::error::Error;

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
