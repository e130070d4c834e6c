//! The memory of refused attach modes: `auto` skips a mode whose refusal is
//! certain to repeat, without loading anything.
//!
//! A refusal is remembered only when the same attempt must fail again until
//! the machine reboots ([`lasting`]): the kernel refused the program type
//! (`EPERM` at load: lockdown), a target is missing from the kernel's BTF
//! (`NO_BTF_FUNC`), the kernel has no kprobes (`NO_KPROBES`), or the
//! verifier rejected this exact object with these exact inputs
//! (`VERIFIER`). Never a transient one (`ENOMEM`, `EBUSY`, `EAGAIN`, map
//! creation, attach failures).
//!
//! It holds for one [`Key`]: the boot (`/proc/sys/kernel/random/boot_id`),
//! the kernel (`/proc/version`: `uname -r` and `uname -v`), this build's
//! eBPF object (its SHA-256, computed by `build.rs`) and the process's
//! effective capabilities (a process with fewer may be refused what root is
//! not). Anything else in the file is ignored.
//!
//! The file is [`MEMORY_FILE`] in [`RUN_DIR`] (`/run/chroot-guard`, 0700,
//! root's: [`RunDir`]), JSON, at most [`MAX_MEMORY_BYTES`]:
//!
//! ```json
//! {"version":1,"bootId":"…","kernel":"Linux version 6.18.0 …","object":"sha256:…",
//!  "capabilities":"000001fffeffffff",
//!  "refusals":[{"mode":"fentry","program":"cg_fexit_sys","target":"__x64_sys_chroot",
//!    "stage":"load","code":"EPERM","errno":"EPERM","reason":"…","verifierLog":null,"inputs":null}]}
//! ```
//!
//! It is read without following a symbolic link, and only when it is a
//! regular file of root's (or this user's) that group and others cannot
//! access; written to a temporary file and renamed into place. A file that
//! fails any check, does not parse, has another version or key, or names a
//! program, code or errno this build does not know is ignored whole: the
//! real attempts are made, and what they find replaces it.

use chroot_guard_common::{probes::PROBES, Filter, Mode};
use serde::{Deserialize, Serialize};

use crate::{
    error::{errno_named, Refusal, RefusalRecord},
    run_dir::{RunDir, RUN_DIR},
    sys,
};

/// The file's name in [`RUN_DIR`].
pub const MEMORY_FILE: &str = "refused-modes.json";
/// The largest file that is read, in bytes; a larger one is ignored.
pub const MAX_MEMORY_BYTES: usize = 64 * 1024;
/// The file format's `version`.
pub const FORMAT_VERSION: u32 = 1;
/// The most of a verifier log a remembered refusal keeps, in bytes: its end,
/// where the verifier says why.
pub const MAX_LOG_BYTES: usize = 8 * 1024;
/// The SHA-256 of `EBPF_OBJECT` followed by `EBPF_OBJECT_LEGACY`,
/// lowercase hex (`build.rs`): a kernel always gets the same one of the
/// two, and the key names the kernel.
pub const OBJECT_SHA256: &str = env!("CHROOT_GUARD_EBPF_SHA256");

/// What a remembered refusal holds for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// `/proc/sys/kernel/random/boot_id`: new at every boot.
    pub boot_id: String,
    /// `/proc/version`: the release and build of the running kernel.
    pub kernel: String,
    /// `sha256:` and [`OBJECT_SHA256`].
    pub object: String,
    /// The effective capability set (`CapEff` of `/proc/self/status`), hex.
    pub capabilities: String,
}

impl Key {
    /// The key of this process on this boot; `None` when a part cannot be
    /// read (then nothing is remembered or recalled).
    pub fn current() -> Option<Key> {
        let read =
            |path: &str| std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        Some(Key {
            boot_id: read("/proc/sys/kernel/random/boot_id")?,
            kernel: read("/proc/version")?,
            object: format!("sha256:{OBJECT_SHA256}"),
            capabilities: format!("{:016x}", sys::effective_caps().ok()?),
        })
    }
}

/// The file, as stored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Stored {
    version: u32,
    boot_id: String,
    kernel: String,
    object: String,
    capabilities: String,
    refusals: Vec<StoredRefusal>,
}

/// One remembered refusal, as stored: [`RefusalRecord`]'s fields, and the
/// load inputs a `VERIFIER` refusal holds for.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredRefusal {
    #[serde(flatten)]
    refusal: RefusalRecord,
    inputs: Option<String>,
}

/// A remembered refusal and, for `VERIFIER`, the load [`inputs`] it holds
/// for (the verifier sees the filter as frozen values, so other values may
/// pass).
#[derive(Debug, Clone)]
struct Entry {
    refusal: Refusal,
    inputs: Option<String>,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Entry) -> bool {
        let (a, b) = (&self.refusal, &o.refusal);
        (a.mode, a.program, a.target, a.stage, a.code, a.errno, &a.reason, &a.verifier_log, &self.inputs)
            == (b.mode, b.program, b.target, b.stage, b.code, b.errno, &b.reason, &b.verifier_log, &o.inputs)
    }
}

/// Whether a refusal is certain to repeat until reboot on the same kernel,
/// object and capabilities: `EPERM` at load (the kernel refuses the program
/// type), `NO_BTF_FUNC`, `NO_KPROBES`, and `VERIFIER` with the errno of a
/// rejection (`EINVAL`, `EACCES`, `E2BIG`; not `ENOMEM` or others a busy
/// machine can cause).
pub fn lasting(r: &Refusal) -> bool {
    match r.code {
        "EPERM" => r.stage == "load",
        "NO_BTF_FUNC" | "NO_KPROBES" => true,
        "VERIFIER" => matches!(r.errno, Some("EINVAL" | "EACCES" | "E2BIG")),
        _ => false,
    }
}

/// The codes [`lasting`] can accept, as `'static` strs for parsing.
const LASTING_CODES: [&str; 4] = ["EPERM", "NO_BTF_FUNC", "NO_KPROBES", "VERIFIER"];

/// What a load is verified with besides the object: the filter (frozen
/// globals the verifier folds), the ring buffer size and `compat`. A
/// remembered `VERIFIER` refusal holds only for the same inputs.
pub fn inputs(filter: &Filter, ring_buffer_bytes: u32, compat: bool) -> String {
    let comm: String = filter.comm.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "flags={} pid={} uid={} comm={comm} ringBufferBytes={ring_buffer_bytes} compat={compat}",
        filter.flags, filter.pid, filter.uid
    )
}

fn entry_of(stored: StoredRefusal) -> Result<Entry, String> {
    let s = stored.refusal;
    let mode =
        Mode::ALL.into_iter().find(|m| m.name() == s.mode).ok_or_else(|| format!("unknown mode {:?}", s.mode))?;
    let spec = PROBES
        .iter()
        .find(|p| p.mode == mode && p.program == s.program && p.target == s.target)
        .ok_or_else(|| format!("{} on {} is no program of {} mode in this build", s.program, s.target, s.mode))?;
    let stage =
        ["load", "attach"].into_iter().find(|x| *x == s.stage).ok_or_else(|| format!("unknown stage {:?}", s.stage))?;
    let code = LASTING_CODES
        .into_iter()
        .find(|c| *c == s.code)
        .ok_or_else(|| format!("code {:?} is not remembered", s.code))?;
    let errno = match &s.errno {
        None => None,
        Some(e) => Some(errno_named(e).ok_or_else(|| format!("unknown errno {e:?}"))?),
    };
    if s.verifier_log.as_ref().is_some_and(|l| l.len() > MAX_LOG_BYTES) {
        return Err("a verifier log longer than the memory keeps".into());
    }
    let refusal = Refusal {
        mode,
        program: spec.program,
        target: spec.target,
        stage,
        code,
        errno,
        reason: s.reason,
        verifier_log: s.verifier_log,
        remembered: false,
    };
    if !lasting(&refusal) {
        return Err(format!("{} at {} with {:?} is not certain to repeat", refusal.code, refusal.stage, refusal.errno));
    }
    Ok(Entry { refusal, inputs: stored.inputs })
}

/// The end of `log`, at most [`MAX_LOG_BYTES`] bytes, cut at a character.
fn log_tail(log: &str) -> String {
    let mut at = log.len().saturating_sub(MAX_LOG_BYTES);
    while !log.is_char_boundary(at) {
        at += 1;
    }
    log[at..].to_string()
}

fn stored_of(e: &Entry) -> StoredRefusal {
    let verifier_log = e.refusal.verifier_log.as_deref().map(log_tail);
    StoredRefusal { refusal: RefusalRecord { verifier_log, ..(&e.refusal).into() }, inputs: e.inputs.clone() }
}

/// Parses the file's bytes into the entries it remembers for `key`, in
/// [`Mode::ALL`] order.
///
/// # Errors
/// A sentence saying why the whole file is ignored.
fn parse(bytes: &[u8], key: &Key) -> Result<Vec<Entry>, String> {
    let stored: Stored = serde_json::from_slice(bytes).map_err(|e| format!("it does not parse: {e}"))?;
    if stored.version != FORMAT_VERSION {
        return Err(format!("it is version {}, not {FORMAT_VERSION}", stored.version));
    }
    let mismatch = [
        ("boot", stored.boot_id != key.boot_id),
        ("kernel", stored.kernel != key.kernel),
        ("eBPF object", stored.object != key.object),
        ("capability set", stored.capabilities != key.capabilities),
    ];
    if let Some((what, _)) = mismatch.iter().find(|(_, differs)| *differs) {
        return Err(format!("it is of another {what}"));
    }
    let mut entries: Vec<Entry> = Vec::new();
    for s in stored.refusals {
        let e = entry_of(s)?;
        if entries.iter().any(|x| x.refusal.mode == e.refusal.mode) {
            return Err(format!("{} mode is in it twice", e.refusal.mode.name()));
        }
        entries.push(e);
    }
    entries.sort_by_key(|e| mode_index(e.refusal.mode));
    Ok(entries)
}

fn serialize(entries: &[Entry], key: &Key) -> Vec<u8> {
    let stored = Stored {
        version: FORMAT_VERSION,
        boot_id: key.boot_id.clone(),
        kernel: key.kernel.clone(),
        object: key.object.clone(),
        capabilities: key.capabilities.clone(),
        refusals: entries.iter().map(stored_of).collect(),
    };
    let mut bytes = serde_json::to_vec(&stored).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

fn mode_index(mode: Mode) -> usize {
    Mode::ALL.iter().position(|m| *m == mode).unwrap_or(usize::MAX)
}

/// What is in the file for `key`.
enum Read {
    /// No file, or no directory.
    Missing,
    /// The entries it remembers.
    Valid(Vec<Entry>),
    /// A file that is ignored, and why.
    Ignored(String),
}

fn read(dir: &RunDir, key: &Key) -> Read {
    match dir.read_private(MEMORY_FILE, MAX_MEMORY_BYTES) {
        Ok(None) => Read::Missing,
        Ok(Some(bytes)) => parse(&bytes, key).map_or_else(Read::Ignored, Read::Valid),
        Err(why) => Read::Ignored(why),
    }
}

/// What one attempt at a mode ended in, for [`Memory::learn`].
pub enum Outcome<'a> {
    /// The mode's programs loaded and attached: forget any refusal of it.
    Attached,
    /// Refused: remembered when [`lasting`], else what was remembered stays.
    Refused(&'a Refusal),
}

/// The refusals remembered for this process's [`Key`], read once.
pub struct Memory {
    entries: Vec<Entry>,
}

/// What the memory holds after [`Memory::learn`] (or now, [`Memory::peek`]),
/// and what went wrong.
#[derive(Debug, Clone)]
pub struct Learned {
    /// The refusals remembered now, [`Refusal::remembered`] set, best mode
    /// first.
    pub refusals: Vec<Refusal>,
    /// Whether the file was written.
    pub written: bool,
    /// Why the file could not be read, was ignored, or could not be
    /// written; `None` when all went well.
    pub problem: Option<String>,
}

const NO_KEY: &str = "the boot id, kernel version or capabilities could not be read";

/// The entries remembered for this process's key now, and why there are
/// none when something is wrong.
fn entries_now() -> (Vec<Entry>, Option<String>) {
    let Some(key) = Key::current() else { return (Vec::new(), Some(NO_KEY.into())) };
    match RunDir::open(false) {
        Ok(Some(dir)) => match read(&dir, &key) {
            Read::Valid(e) => (e, None),
            Read::Missing => (Vec::new(), None),
            Read::Ignored(why) => {
                (Vec::new(), Some(format!("{} is ignored: {why}", RunDir::path(MEMORY_FILE).display())))
            }
        },
        Ok(None) => (Vec::new(), None),
        Err(e) => (Vec::new(), Some(format!("{RUN_DIR} is not used: {}", e.why()))),
    }
}

fn marked(entries: Vec<Entry>) -> Vec<Refusal> {
    entries.into_iter().map(|e| Refusal { remembered: true, ..e.refusal }).collect()
}

impl Memory {
    /// Nothing remembered (what a forced mode starts from).
    pub fn empty() -> Memory {
        Memory { entries: Vec::new() }
    }

    /// Reads what is remembered for this process's key. Empty when the
    /// directory or file is missing, is not chroot-guard's, or the file is
    /// ignored (see the module's doc): never an error.
    pub fn recall() -> Memory {
        Memory { entries: entries_now().0 }
    }

    /// What is remembered now, without trying or writing anything (what
    /// `doctor` reports when it could not try the modes).
    pub fn peek() -> Learned {
        let (entries, problem) = entries_now();
        Learned { refusals: marked(entries), written: false, problem }
    }

    /// The remembered refusal of `mode` that holds for a load with `inputs`
    /// (see [`inputs`]), with [`Refusal::remembered`] set.
    pub fn refusal(&self, mode: Mode, inputs: &str) -> Option<Refusal> {
        self.entries
            .iter()
            .find(|e| e.refusal.mode == mode && e.inputs.as_deref().is_none_or(|i| i == inputs))
            .map(|e| Refusal { remembered: true, ..e.refusal.clone() })
    }

    /// Records what attempts found, made with `inputs`: the file is read
    /// again (another process may have written it), then each attached mode
    /// is forgotten and each [`lasting`] refusal remembered in place of what
    /// was there; other refusals leave the mode as it was. The file is
    /// written when that changes what it holds, or it was ignored, or with
    /// `always`; never when [`RUN_DIR`] is not chroot-guard's.
    pub fn learn(outcomes: &[(Mode, Outcome<'_>)], inputs: &str, always: bool) -> Learned {
        let fail = |why: String| Learned { refusals: Vec::new(), written: false, problem: Some(why) };
        let Some(key) = Key::current() else { return fail(NO_KEY.into()) };
        let dir = match RunDir::open(true) {
            Ok(Some(d)) => d,
            Ok(None) => return fail(format!("{RUN_DIR} vanished while it was created")),
            Err(e) => return fail(format!("{RUN_DIR} is not used: {}", e.why())),
        };
        let path = RunDir::path(MEMORY_FILE);
        let (before, mut problem) = match read(&dir, &key) {
            Read::Missing => (None, None),
            Read::Valid(e) => (Some(e), None),
            Read::Ignored(why) => (None, Some(format!("{} was ignored and replaced: {why}", path.display()))),
        };
        let mut entries = before.clone().unwrap_or_default();
        for (mode, outcome) in outcomes {
            match outcome {
                Outcome::Attached => entries.retain(|e| e.refusal.mode != *mode),
                Outcome::Refused(r) if lasting(r) => {
                    entries.retain(|e| e.refusal.mode != *mode);
                    let inputs = (r.code == "VERIFIER").then(|| inputs.to_string());
                    entries.push(Entry { refusal: Refusal { remembered: false, ..(*r).clone() }, inputs });
                }
                Outcome::Refused(_) => {}
            }
        }
        entries.sort_by_key(|e| mode_index(e.refusal.mode));
        let changed = match &before {
            Some(b) => *b != entries,
            None => !entries.is_empty() || problem.is_some(),
        };
        let mut written = false;
        if always || changed {
            match dir.write_atomic(MEMORY_FILE, &serialize(&entries, &key)) {
                Ok(()) => written = true,
                Err(e) => {
                    problem = Some(format!("{} could not be written: {e}", path.display()));
                    entries = before.unwrap_or_default();
                }
            }
        }
        Learned { refusals: marked(entries), written, problem }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key {
            boot_id: "0b1c7d2e-2f4a-4d5e-9a8b-1234567890ab".into(),
            kernel: "Linux version 6.18.0 (builder) #1 SMP".into(),
            object: format!("sha256:{OBJECT_SHA256}"),
            capabilities: "000001ffffffffff".into(),
        }
    }

    fn fentry_eperm() -> Refusal {
        let spec = PROBES.iter().find(|p| p.mode == Mode::Fentry).expect("an fentry program");
        Refusal {
            mode: Mode::Fentry,
            program: spec.program,
            target: spec.target,
            stage: "load",
            code: "EPERM",
            errno: Some("EPERM"),
            reason: "the kernel refused to load the fentry program with EPERM".into(),
            verifier_log: None,
            remembered: false,
        }
    }

    fn bytes_of(refusals: &[Refusal], key: &Key) -> Vec<u8> {
        let entries: Vec<Entry> = refusals.iter().map(|r| Entry { refusal: r.clone(), inputs: None }).collect();
        serialize(&entries, key)
    }

    fn json_of(refusals: &[Refusal]) -> serde_json::Value {
        serde_json::from_slice(&bytes_of(refusals, &key())).expect("json")
    }

    fn parse_value(v: &serde_json::Value) -> Result<Vec<Entry>, String> {
        parse(&serde_json::to_vec(v).expect("json"), &key())
    }

    #[test]
    fn what_is_written_reads_back_the_same() {
        let r = fentry_eperm();
        let entries = parse(&bytes_of(std::slice::from_ref(&r), &key()), &key()).expect("parses");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0], Entry { refusal: r, inputs: None });
        assert_eq!(parse(&bytes_of(&[], &key()), &key()).expect("parses").len(), 0);
    }

    #[test]
    fn the_object_hash_is_that_of_the_embedded_object() {
        use sha2::{Digest, Sha256};
        let mut sha = Sha256::new();
        sha.update(crate::object::EBPF_OBJECT);
        sha.update(crate::object::EBPF_OBJECT_LEGACY);
        let hex: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, OBJECT_SHA256);
    }

    #[test]
    fn another_boot_kernel_object_or_capability_set_is_ignored() {
        let bytes = bytes_of(&[fentry_eperm()], &key());
        let others = [
            Key { boot_id: "ffffffff-2f4a-4d5e-9a8b-1234567890ab".into(), ..key() },
            Key { kernel: "Linux version 6.1.0-57-amd64".into(), ..key() },
            Key { object: format!("sha256:{}", "0".repeat(64)), ..key() },
            Key { capabilities: "000001fffeffffff".into(), ..key() },
        ];
        for (other, what) in others.iter().zip(["boot", "kernel", "eBPF object", "capability set"]) {
            assert_eq!(parse(&bytes, other).err(), Some(format!("it is of another {what}")));
        }
    }

    #[test]
    fn garbage_other_versions_and_unknown_names_are_ignored_whole() {
        assert!(parse(b"", &key()).is_err());
        assert!(parse(b"\xff\xfe{", &key()).is_err());
        assert!(parse(b"[]", &key()).is_err());
        assert!(parse(b"{\"version\":1}", &key()).is_err());
        let good = json_of(&[fentry_eperm()]);
        let with = |path: &[&str], value: serde_json::Value| {
            let mut v = good.clone();
            let mut at = &mut v;
            for p in &path[..path.len() - 1] {
                at = if let Ok(i) = p.parse::<usize>() { &mut at[i] } else { &mut at[*p] };
            }
            at[path[path.len() - 1]] = value;
            parse_value(&v)
        };
        assert!(with(&["version"], 2.into()).unwrap_err().contains("version 2"));
        assert!(with(&["extra"], 1.into()).is_err(), "unknown fields are refused");
        for (field, value) in [
            ("mode", "lsm"),
            ("program", "cg_tp_exit"),
            ("target", "do_chroot"),
            ("stage", "verify"),
            ("code", "ENOMEM"),
            ("code", "ATTACH_FAILED"),
            ("errno", "EWHATEVER"),
        ] {
            assert!(with(&["refusals", "0", field], value.into()).is_err(), "{field} = {value}");
        }
        // EPERM is certain at load only; at attach it is not remembered.
        assert!(with(&["refusals", "0", "stage"], "attach".into()).is_err());
        let twice = serde_json::json!([good["refusals"][0], good["refusals"][0]]);
        assert!(with(&["refusals"], twice).unwrap_err().contains("twice"));
        assert!(with(&["refusals", "0", "verifierLog"], "x".repeat(MAX_LOG_BYTES + 1).into()).is_err());
    }

    #[test]
    fn only_refusals_certain_to_repeat_are_lasting() {
        let r = fentry_eperm();
        let with = |code: &'static str, stage: &'static str, errno: Option<&'static str>| {
            lasting(&Refusal { code, stage, errno, ..r.clone() })
        };
        assert!(with("EPERM", "load", Some("EPERM")));
        assert!(!with("EPERM", "attach", Some("EPERM")));
        assert!(with("NO_BTF_FUNC", "load", None));
        assert!(with("NO_KPROBES", "attach", None));
        assert!(with("VERIFIER", "load", Some("EACCES")));
        assert!(with("VERIFIER", "load", Some("EINVAL")));
        assert!(with("VERIFIER", "load", Some("E2BIG")));
        for errno in ["ENOMEM", "EBUSY", "EPERM"] {
            assert!(!with("VERIFIER", "load", Some(errno)), "{errno}");
        }
        assert!(!with("VERIFIER", "load", None));
        for code in ["ATTACH_FAILED", "NO_TRACEPOINT", "NO_BTF", "LOAD_FAILED", "COMPAT_OFF", "INTERNAL"] {
            assert!(!with(code, "load", None), "{code}");
        }
    }

    #[test]
    fn a_verifier_refusal_holds_only_for_its_inputs_and_logs_keep_their_end() {
        let log = format!("{}é{}", "a".repeat(MAX_LOG_BYTES), "the reason at the end");
        let r = Refusal { code: "VERIFIER", errno: Some("EACCES"), verifier_log: Some(log), ..fentry_eperm() };
        let a = inputs(&Filter::default(), 4096, false);
        let b = inputs(&Filter { flags: 1, pid: 7, ..Filter::default() }, 4096, false);
        assert_ne!(a, b);
        let entry = Entry { refusal: r, inputs: Some(a.clone()) };
        let stored = stored_of(&entry);
        let kept = stored.refusal.verifier_log.clone().expect("a log");
        assert!(kept.len() <= MAX_LOG_BYTES && kept.ends_with("the reason at the end"));
        let bytes = serialize(&[entry], &key());
        let memory = Memory { entries: parse(&bytes, &key()).expect("parses") };
        let recalled = memory.refusal(Mode::Fentry, &a).expect("holds for its inputs");
        assert!(recalled.remembered);
        assert!(memory.refusal(Mode::Fentry, &b).is_none());
        assert!(memory.refusal(Mode::Kprobe, &a).is_none());
    }
}
