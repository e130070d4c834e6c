//! `chroot-guard watch` without JavaScript on the event path: the reader
//! thread turns each record into its line, a table row or a `--json`
//! `chroot` record, and writes the batch to stdout itself, with the `lost`
//! records between them (JSON; the table reports losses on stderr).
//!
//! The text is the TypeScript writers' (`tableLine` in `ts/cli/output.ts`;
//! `chrootRecord` and `lostRecord` in `ts/cli/records.ts`), byte for byte:
//! the same columns or fields in the same order, the display form of raw
//! bytes (`displayBytes` in `ts/events.ts`) and base64 beside it in JSON,
//! `terminalSafe`'s escapes in the table, JSON strings escaped as
//! `jsonString` escapes them. The lists that text depends on (errno names,
//! the characters to escape) and the wall clock's offset come from
//! JavaScript when the session opens ([`LineText`]), so each stays in one
//! place; `test/lines.test.ts` holds the rest equal by property-based tests
//! on generated records and cgroup paths.
//!
//! Why here: the JSON path cost about 3 µs of JavaScript per event (decode
//! into an object, copies, the serializer, base64, GC, one threadsafe
//! call per batch), most of what `watch --json` added per chroot(2) on top
//! of the kernel side; formatting on the reader thread costs a fraction of
//! that and leaves the JS thread idle (`bench/`, contenders C1 and C2).

use std::{
    collections::{HashMap, VecDeque},
    io,
    mem::offset_of,
    os::fd::{FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use chroot_guard_common::{exe_flags, flags, ChrootEvent, EventKind, Mode, COMM_LEN, EVENT_HEADER_BYTES};

use crate::{
    cgroup::{cgroup_path, container_of, CgroupPath, Container},
    reader::Lost,
};

/// Which lines: the table or NDJSON.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LineFormat {
    /// `chroot` and `lost` records.
    #[default]
    Json,
    /// Table rows, their times as JavaScript prints them: `wall_offset_ns`
    /// turns an event's `ts` (ns since boot) into ns since the epoch
    /// (`wallClockOffsetNs` in `ts/clock.ts`), and `zone` gives the local
    /// time's offset from UTC from each instant on (`zoneOffsets`, found
    /// with JavaScript's own `Date`, so the time zone database and `TZ`
    /// are Node.js's, not libc's).
    Table {
        /// CLOCK_REALTIME − CLOCK_BOOTTIME, ns.
        wall_offset_ns: i128,
        /// `(from, minutes)`: from `from` (ms since the epoch, ascending)
        /// local time is UTC + `minutes`; the first entry also holds
        /// before it, the last after it.
        zone: Vec<(i64, i32)>,
    },
}

/// What JavaScript decides about the text, handed over when the session
/// opens: one source for each list.
#[derive(Clone, Debug, Default)]
pub struct LineText {
    /// The table or JSON.
    pub format: LineFormat,
    /// Name of each errno by number (`errno_names[2]` is `ENOENT`), as
    /// Node.js's `os.constants.errno` gives them; an empty or missing name
    /// is written `E<n>`.
    pub errno_names: Vec<String>,
    /// Inclusive code point ranges to escape: JSON, those written as
    /// `\uXXXX` beyond what JSON.stringify escapes (`JSON_UNSAFE_RANGES` in
    /// `ts/cli/output.ts`); the table, those `terminalSafe` writes as
    /// `\xNN` bytes (`UNSAFE_RANGES`, the backslash among them, written
    /// `\\`).
    pub escaped: Vec<(u32, u32)>,
}

/// A cgroup id's attribution, rendered for each format.
struct CgroupLines {
    /// `"cgroupPath":…` to `"podUid":…`.
    json: Box<[u8]>,
    /// ` [runtime 0123456789ab]`, or empty outside containers
    /// (`containerMark`).
    mark: Box<[u8]>,
}

/// Distinct cgroup ids whose rendered attribution is kept (as
/// `CGROUP_CACHE_ENTRIES` in `ts/cgroup.ts`); the oldest goes first.
const CGROUP_CACHE_ENTRIES: usize = 4096;

/// The line writer of one session: the text rules, the cgroup lookups
/// made so far, what the stream has reported lost, the last second shown.
pub struct Lines {
    text: LineText,
    /// Cgroup id → its attribution rendered.
    cgroups: HashMap<u64, CgroupLines>,
    /// Ids in `cgroups`, oldest first.
    cgroup_order: VecDeque<u64>,
    /// When the counts of the last `lost` record (or the `attach` record)
    /// were read: ns since boot.
    since_ts: u64,
    /// Totals the stream has reported lost.
    reported: Lost,
    /// The table's last second (since the epoch) and its local `HH:MM:SS`.
    clock: (i64, [u8; 8]),
}

/// A little-endian integer of the record at the field's offset (the header
/// is checked to be whole before any read).
macro_rules! field {
    ($r:expr, $name:ident, $ty:ty) => {{
        const AT: usize = offset_of!(ChrootEvent, $name);
        let mut b = [0u8; size_of::<$ty>()];
        b.copy_from_slice(&$r[AT..AT + size_of::<$ty>()]);
        <$ty>::from_le_bytes(b)
    }};
}

/// `r[from..to]` clamped to `r`, as `Buffer.subarray` clamps.
fn clamped(r: &[u8], from: usize, to: usize) -> &[u8] {
    let from = from.min(r.len());
    &r[from..to.clamp(from, r.len())]
}

/// The bytes before the first NUL of `r[at..at + max]` (a `comm`).
fn c_string(r: &[u8], at: usize, max: usize) -> &[u8] {
    let raw = clamped(r, at, at + max);
    raw.iter().position(|&b| b == 0).map_or(raw, |end| &raw[..end])
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl Lines {
    /// A writer with `text`'s rules; `since_ts` (ns since boot) is the
    /// `ts` of the stream's `attach` record, where the first `lost`
    /// record's interval starts.
    pub fn new(text: LineText, since_ts: u64) -> Lines {
        Lines {
            text,
            cgroups: HashMap::new(),
            cgroup_order: VecDeque::new(),
            since_ts,
            reported: Lost::default(),
            clock: (i64::MIN, [b' '; 8]),
        }
    }

    /// Appends the line of `r` in the session's format ([`Lines::chroot`] or
    /// [`Lines::table`]); `false`, writing nothing, for a record that is not
    /// a chroot event or shorter than the header.
    pub fn line(&mut self, r: &[u8], out: &mut Vec<u8>) -> bool {
        match self.text.format {
            LineFormat::Json => self.chroot(r, out),
            LineFormat::Table { wall_offset_ns, .. } => self.table(r, wall_offset_ns, out),
        }
    }

    /// Starts the first `lost` interval at `ts` (ns since boot): the
    /// `attach` record's.
    pub fn set_since(&mut self, ts: u64) {
        self.since_ts = ts;
    }

    /// Appends the `chroot` line of `r` (one record as the ring buffer holds
    /// it: the `ChrootEvent` header and its used data bytes), newline
    /// included; `false`, writing nothing, for a record that is not a
    /// chroot event (a decision) or shorter than the header.
    pub fn chroot(&mut self, r: &[u8], out: &mut Vec<u8>) -> bool {
        let Some(Parts { fl, xf, path, resolved, exe, parent_exe, comm, parent_comm, ret }) = Parts::of(r) else {
            return false;
        };
        let pf = xf >> exe_flags::PARENT_SHIFT;

        out.extend_from_slice(b"{\"type\":\"chroot\",\"ts\":");
        int(out, field!(r, ts_ns, u64));
        key_int(out, b"pid", field!(r, pid, u32));
        key_int(out, b"tid", field!(r, tid, u32));
        key_int(out, b"nsPid", field!(r, ns_pid, u32));
        key_int(out, b"nsTid", field!(r, ns_tid, u32));
        key_int(out, b"ppid", field!(r, ppid, u32));
        key_int(out, b"uid", field!(r, uid, u32));
        key_int(out, b"gid", field!(r, gid, u32));
        key_int(out, b"euid", field!(r, euid, u32));
        key_int(out, b"egid", field!(r, egid, u32));
        self.key_bytes(out, b"comm", b"commBase64", Some(comm));
        let cgroup_id = field!(r, cgroup_id, u64);
        key_int(out, b"cgroupId", cgroup_id);
        out.push(b',');
        out.extend_from_slice(&self.cgroup(cgroup_id).json);
        key_int(out, b"mntNs", field!(r, mnt_ns, u32));
        key_int(out, b"pidNs", field!(r, pid_ns, u32));
        key_int(out, b"userNs", field!(r, user_ns, u32));
        key_int(out, b"exeDev", field!(r, exe_dev, u32));
        key_int(out, b"exeIno", field!(r, exe_ino, u64));
        key_bool(out, b"exeUnknown", fl & flags::EXE_UNKNOWN != 0);
        self.key_bytes(out, b"exe", b"exeBase64", exe);
        key_exe_facts(out, [b"exeTruncated", b"exeUnreachable", b"exeDeleted", b"exeMemfd"], xf);
        self.key_bytes(out, b"parentComm", b"parentCommBase64", Some(parent_comm));
        self.key_bytes(out, b"parentExe", b"parentExeBase64", parent_exe);
        key_exe_facts(
            out,
            [b"parentExeTruncated", b"parentExeUnreachable", b"parentExeDeleted", b"parentExeMemfd"],
            pf,
        );
        self.key_bytes(out, b"path", b"pathBase64", Some(path));
        key_bool(out, b"pathTruncated", fl & flags::PATH_TRUNCATED != 0);
        key_bool(out, b"pathUnreadable", fl & flags::PATH_UNREADABLE != 0);
        key_bool(out, b"pathReadLate", fl & flags::PATH_READ_LATE != 0);
        self.key_bytes(out, b"resolvedPath", b"resolvedPathBase64", resolved);
        key_bool(out, b"resolvedPathTruncated", fl & flags::RESOLVED_TRUNCATED != 0);
        key_bool(out, b"resolvedPathUnreachable", fl & flags::RESOLVED_UNREACHABLE != 0);
        key_bool(out, b"callerChrooted", fl & flags::CALLER_CHROOTED != 0);
        key_fact(out, b"escapesRoot", fl, flags::ESCAPES_ROOT, flags::ESCAPES_ROOT_UNKNOWN);
        key_fact(out, b"cwdOutsideRoot", fl, flags::CWD_OUTSIDE_ROOT, flags::CWD_OUTSIDE_ROOT_UNKNOWN);
        key_int(out, b"enterTs", field!(r, enter_ns, u64));
        key(out, b"ret");
        out.extend_from_slice(itoa::Buffer::new().format(ret).as_bytes());
        key(out, b"errno");
        if ret < 0 {
            self.errno_name(ret.unsigned_abs(), out);
        } else {
            out.extend_from_slice(b"null");
        }
        key(out, b"lsmRet");
        if fl & flags::LSM_CALLED != 0 {
            out.extend_from_slice(itoa::Buffer::new().format(field!(r, lsm_ret, i32)).as_bytes());
        } else {
            out.extend_from_slice(b"null");
        }
        key(out, b"probe");
        let mode = field!(r, mode, u8);
        let probe = Mode::ALL.iter().find(|m| **m as u8 == mode).map_or("tracepoint", |m| m.name());
        out.push(b'"');
        out.extend_from_slice(probe.as_bytes());
        out.extend_from_slice(b"\"}\n");
        true
    }

    /// Appends the table row of `r` (`tableLine` in `ts/cli/output.ts`):
    /// local time, pid, comm, uid, result, path → resolved path and its
    /// marks, the container; `false` as [`Lines::chroot`].
    pub fn table(&mut self, r: &[u8], wall_offset_ns: i128, out: &mut Vec<u8>) -> bool {
        let Some(Parts { fl, path, resolved, comm, ret, .. }) = Parts::of(r) else {
            return false;
        };
        // As `toWallClock`: whole ms since the epoch, then local time.
        let ms = i64::try_from((i128::from(field!(r, ts_ns, u64)) + wall_offset_ns) / 1_000_000).unwrap_or(i64::MAX);
        let start = out.len();
        out.extend_from_slice(&self.hms(ms));
        out.push(b'.');
        let millis = ms.rem_euclid(1000) as u32;
        out.extend_from_slice(&[
            b'0' + (millis / 100) as u8,
            b'0' + (millis / 10 % 10) as u8,
            b'0' + (millis % 10) as u8,
        ]);
        cell_end(out, start, 12);
        let start = out.len();
        int(out, field!(r, pid, u32));
        cell_end(out, start, 7);
        let start = out.len();
        self.terminal_safe(comm, out);
        cell_end(out, start, 16);
        let start = out.len();
        int(out, field!(r, uid, u32));
        cell_end(out, start, 6);
        let start = out.len();
        if ret < 0 {
            self.errno_text(ret.unsigned_abs(), out);
        } else {
            out.extend_from_slice(b"ok");
        }
        cell_end(out, start, 8);
        if fl & flags::PATH_UNREADABLE != 0 {
            out.extend_from_slice(b"<unreadable>");
        } else {
            self.terminal_safe(path, out);
            if fl & flags::PATH_TRUNCATED != 0 {
                out.extend_from_slice("…".as_bytes());
            }
        }
        if let Some(resolved) = resolved {
            out.extend_from_slice(" → ".as_bytes());
            if fl & flags::RESOLVED_UNREACHABLE != 0 {
                out.extend_from_slice(b"[unreachable]");
            } else if fl & flags::RESOLVED_TRUNCATED != 0 {
                out.extend_from_slice("…".as_bytes());
            }
            self.terminal_safe(resolved, out);
            for (name, yes, unknown) in [
                (&b"ESCAPE"[..], flags::ESCAPES_ROOT, flags::ESCAPES_ROOT_UNKNOWN),
                (b"cwd-out", flags::CWD_OUTSIDE_ROOT, flags::CWD_OUTSIDE_ROOT_UNKNOWN),
            ] {
                // `rootMarks`: nothing for a known false, `?` for unknown.
                let known = fl & flags::ROOTS_COMPARED != 0 && fl & unknown == 0;
                if known && fl & yes == 0 {
                    continue;
                }
                out.extend_from_slice(b" [");
                out.extend_from_slice(name);
                if !known {
                    out.push(b'?');
                }
                out.push(b']');
            }
        }
        out.extend_from_slice(&self.cgroup(field!(r, cgroup_id, u64)).mark);
        out.push(b'\n');
        true
    }

    /// Local `HH:MM:SS` of `ms` since the epoch, by the offsets of
    /// [`LineFormat::Table`] (cached for the second).
    fn hms(&mut self, ms: i64) -> [u8; 8] {
        let secs = ms.div_euclid(1000);
        if self.clock.0 != secs {
            let minutes = match &self.text.format {
                LineFormat::Table { zone, .. } => {
                    let at = zone.partition_point(|&(from, _)| from <= ms);
                    zone.get(at.saturating_sub(1)).map_or(0, |&(_, m)| i64::from(m))
                }
                LineFormat::Json => 0,
            };
            let of_day = (secs + minutes * 60).rem_euclid(86_400);
            let two = |n: i64| [b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8];
            let (h, m, s) = (two(of_day / 3600), two(of_day / 60 % 60), two(of_day % 60));
            self.clock = (secs, [h[0], h[1], b':', m[0], m[1], b':', s[0], s[1]]);
        }
        self.clock.1
    }

    /// `terminalSafe` of `bytes` (`ts/cli/output.ts`): every byte of a
    /// character in [`LineText::escaped`] and every byte that is not part
    /// of well-formed UTF-8 as `\xNN`, a backslash as `\\`.
    fn terminal_safe(&self, bytes: &[u8], out: &mut Vec<u8>) {
        for chunk in bytes.utf8_chunks() {
            let valid = chunk.valid();
            let mut run = 0;
            for (i, c) in valid.char_indices() {
                let cp = u32::from(c);
                if !self.text.escaped.iter().any(|&(lo, hi)| cp >= lo && cp <= hi) {
                    continue;
                }
                out.extend_from_slice(&valid.as_bytes()[run..i]);
                if c == '\\' {
                    out.extend_from_slice(b"\\\\");
                } else {
                    for &b in &valid.as_bytes()[i..i + c.len_utf8()] {
                        hex_escape(b, out);
                    }
                }
                run = i + c.len_utf8();
            }
            out.extend_from_slice(&valid.as_bytes()[run..]);
            for &b in chunk.invalid() {
                hex_escape(b, out);
            }
        }
    }

    /// Appends a `lost` line when `total` (the counters' totals, read at
    /// `ts`, ns since boot) shows calls lost or LSM errors since the last
    /// one, as `lostSince` in `ts/batch.ts` decides; returns whether it did.
    /// The table writes none: its losses go to stderr, from JavaScript.
    pub fn lost(&mut self, total: Lost, ts: u64, out: &mut Vec<u8>) -> bool {
        if self.text.format != LineFormat::Json {
            return false;
        }
        let seen = self.reported;
        // JS numbers subtracted: a count read lower than before (a failed
        // read counts zero) gives a negative difference there too.
        let d = |now: u64, then: u64| now as i128 - then as i128;
        let calls = d(total.total(), seen.total());
        if calls <= 0 && d(total.lsm_errors, seen.lsm_errors) <= 0 {
            return false;
        }
        out.extend_from_slice(b"{\"type\":\"lost\",\"sinceTs\":");
        int(out, self.since_ts);
        key_int(out, b"ts", ts);
        for (name, now, then) in counters(&total, &seen) {
            key(out, name);
            out.extend_from_slice(itoa::Buffer::new().format(d(now, then)).as_bytes());
        }
        out.extend_from_slice(b",\"total\":{");
        for (i, (name, now, _)) in counters(&total, &seen).into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(name);
            out.extend_from_slice(b"\":");
            int(out, now);
        }
        out.extend_from_slice(b"}}\n");
        self.reported = total;
        self.since_ts = ts;
        true
    }

    /// `,"NAME":"display","BASE64NAME":"base64"`, or both null for `None`.
    fn key_bytes(&self, out: &mut Vec<u8>, name: &[u8], base64_name: &[u8], bytes: Option<&[u8]>) {
        key(out, name);
        match bytes {
            Some(b) => self.json_display(b, out),
            None => out.extend_from_slice(b"null"),
        }
        key(out, base64_name);
        match bytes {
            Some(b) => {
                out.push(b'"');
                base64(b, out);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
    }

    /// `"ENOENT"` for 2 ([`Lines::errno_text`] quoted).
    fn errno_name(&self, errno: u64, out: &mut Vec<u8>) {
        out.push(b'"');
        self.errno_text(errno, out);
        out.push(b'"');
    }

    /// `ENOENT` for 2, from the names JavaScript gave; `E<n>` without one.
    fn errno_text(&self, errno: u64, out: &mut Vec<u8>) {
        match usize::try_from(errno).ok().and_then(|n| self.text.errno_names.get(n)).filter(|n| !n.is_empty()) {
            Some(name) => out.extend_from_slice(name.as_bytes()),
            None => {
                out.push(b'E');
                int(out, errno);
            }
        }
    }

    /// The attribution of cgroup `id` rendered, from the cache or looked up
    /// (`cgroupAttribution` in `ts/cgroup.ts`).
    fn cgroup(&mut self, id: u64) -> &CgroupLines {
        if !self.cgroups.contains_key(&id) {
            let lines = self.cgroup_lines(id);
            if self.cgroup_order.len() >= CGROUP_CACHE_ENTRIES {
                if let Some(old) = self.cgroup_order.pop_front() {
                    self.cgroups.remove(&old);
                }
            }
            self.cgroup_order.push_back(id);
            self.cgroups.insert(id, lines);
        }
        &self.cgroups[&id]
    }

    fn cgroup_lines(&self, id: u64) -> CgroupLines {
        let mut json = Vec::with_capacity(256);
        let mut mark = Vec::new();
        let container = self.cgroup_fields(id, &mut json);
        if let (Some(runtime), Some(cid)) = (container.runtime, container.id) {
            mark.extend_from_slice(b" [");
            mark.extend_from_slice(runtime.as_bytes());
            mark.push(b' ');
            mark.extend_from_slice(&cid.as_bytes()[..cid.len().min(12)]);
            mark.push(b']');
        }
        CgroupLines { json: json.into_boxed_slice(), mark: mark.into_boxed_slice() }
    }

    fn cgroup_fields(&self, id: u64, out: &mut Vec<u8>) -> Container {
        let (path, lookup) = match cgroup_path(id) {
            Ok(CgroupPath::Found(p)) => (Some(display(&p)), "found"),
            Ok(CgroupPath::Removed) => (None, "removed"),
            Err(_) => (None, "failed"),
        };
        let container = path.as_deref().map(container_of).unwrap_or_default();
        out.extend_from_slice(b"\"cgroupPath\":");
        self.json_opt(path.as_deref(), out);
        out.extend_from_slice(b",\"cgroupLookup\":\"");
        out.extend_from_slice(lookup.as_bytes());
        out.extend_from_slice(b"\",\"containerRuntime\":");
        self.json_opt(container.runtime, out);
        out.extend_from_slice(b",\"containerId\":");
        self.json_opt(container.id.as_deref(), out);
        out.extend_from_slice(b",\"podUid\":");
        self.json_opt(container.pod_uid.as_deref(), out);
        container
    }

    fn json_opt(&self, s: Option<&str>, out: &mut Vec<u8>) {
        match s {
            Some(s) => self.json_str(s, out),
            None => out.extend_from_slice(b"null"),
        }
    }

    /// `s` as a JSON string, as `jsonString` writes it.
    pub fn json_str(&self, s: &str, out: &mut Vec<u8>) {
        out.push(b'"');
        self.json_chars(s, b"\\\\", out);
        out.push(b'"');
    }

    /// The display form of `bytes` (`displayBytes`) as a JSON string, in
    /// one pass: well-formed UTF-8 as JSON escapes it, a backslash as the
    /// display form's `\\` (JSON `\\\\`), each other byte as `\xNN` (JSON
    /// `\\xNN`).
    fn json_display(&self, bytes: &[u8], out: &mut Vec<u8>) {
        out.push(b'"');
        for chunk in bytes.utf8_chunks() {
            self.json_chars(chunk.valid(), b"\\\\\\\\", out);
            for &b in chunk.invalid() {
                out.extend_from_slice(b"\\\\x");
                out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
            }
        }
        out.push(b'"');
    }

    /// The characters of `s` inside a JSON string: JSON.stringify's
    /// escapes, `\uXXXX` for [`LineText::escaped`], and `backslash` for a
    /// backslash.
    fn json_chars(&self, s: &str, backslash: &[u8], out: &mut Vec<u8>) {
        let bytes = s.as_bytes();
        let mut run = 0;
        for (i, &b) in bytes.iter().enumerate() {
            // Printable ASCII but `"`, `\` and DEL is written as is; so are
            // the bytes of most other characters, checked once per
            // character below.
            if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
                continue;
            }
            if (0x80..0xc0).contains(&b) {
                continue; // a continuation byte, judged with its first
            }
            let escape: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => backslash,
                0x08 => b"\\b",
                0x09 => b"\\t",
                0x0a => b"\\n",
                0x0c => b"\\f",
                0x0d => b"\\r",
                _ => &[],
            };
            if !escape.is_empty() {
                out.extend_from_slice(&bytes[run..i]);
                out.extend_from_slice(escape);
                run = i + 1;
                continue;
            }
            let (cp, len) = if b < 0x80 { (u32::from(b), 1) } else { decode_at(s, i) };
            if b < 0x20 || self.text.escaped.iter().any(|&(lo, hi)| cp >= lo && cp <= hi) {
                out.extend_from_slice(&bytes[run..i]);
                out.extend_from_slice(b"\\u");
                for shift in [12, 8, 4, 0] {
                    out.push(HEX[((cp >> shift) & 15) as usize]);
                }
                run = i + len;
            }
        }
        out.extend_from_slice(&bytes[run..]);
    }
}

/// The parts of a chroot record both formats read (`decodeOne` in
/// `ts/events.ts`).
struct Parts<'a> {
    fl: u32,
    xf: u16,
    path: &'a [u8],
    resolved: Option<&'a [u8]>,
    exe: Option<&'a [u8]>,
    parent_exe: Option<&'a [u8]>,
    comm: &'a [u8],
    parent_comm: &'a [u8],
    ret: i64,
}

impl<'a> Parts<'a> {
    /// `None` for a record that is not a chroot event or is shorter than
    /// the header.
    fn of(r: &'a [u8]) -> Option<Parts<'a>> {
        if r.len() < EVENT_HEADER_BYTES || field!(r, kind, u8) != EventKind::Chroot as u8 {
            return None;
        }
        let fl = field!(r, flags, u32);
        let xf = field!(r, exe_flags, u16);
        let pf = xf >> exe_flags::PARENT_SHIFT;
        let data = offset_of!(ChrootEvent, data);
        let path_len = usize::from(field!(r, path_len, u16));
        let resolved_len = usize::from(field!(r, resolved_len, u16));
        let exe_len = usize::from(field!(r, exe_len, u16));
        let parent_exe_len = usize::from(field!(r, parent_exe_len, u16));
        // The argument, the resolved path, the executable and the parent's
        // back to back; a length counts whether or not its flag is set.
        let mut at = data + path_len;
        let resolved = (fl & flags::RESOLVED_PRESENT != 0).then(|| clamped(r, at, at + resolved_len));
        at += resolved_len;
        let exe = (xf & exe_flags::PRESENT != 0).then(|| clamped(r, at, at + exe_len));
        at += exe_len;
        Some(Parts {
            fl,
            xf,
            path: clamped(r, data, data + path_len),
            resolved,
            exe,
            parent_exe: (pf & exe_flags::PRESENT != 0).then(|| clamped(r, at, at + parent_exe_len)),
            comm: c_string(r, offset_of!(ChrootEvent, comm), COMM_LEN),
            parent_comm: c_string(r, offset_of!(ChrootEvent, parent_comm), COMM_LEN),
            ret: field!(r, ret, i64),
        })
    }
}

/// Pads the cell begun at `start` to `width` UTF-16 code units (as
/// `padEnd` counts) and ends it with a space, as the table's `row` does.
fn cell_end(out: &mut Vec<u8>, start: usize, width: usize) {
    let units: usize =
        std::str::from_utf8(&out[start..]).map_or(out.len() - start, |s| s.chars().map(char::len_utf16).sum());
    out.resize(out.len() + width.saturating_sub(units) + 1, b' ');
}

/// `\xNN`, two lower-case hex digits.
fn hex_escape(b: u8, out: &mut Vec<u8>) {
    out.extend_from_slice(&[b'\\', b'x', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
}

/// The code point starting at byte `i` of `s` and its length in bytes.
fn decode_at(s: &str, i: usize) -> (u32, usize) {
    s.get(i..).and_then(|t| t.chars().next()).map_or((0xfffd, 1), |c| (u32::from(c), c.len_utf8()))
}

/// The counters in `lost` record order (`LOSS_COUNTERS` in `ts/batch.ts`):
/// name, now, at the last record.
fn counters(now: &Lost, then: &Lost) -> [(&'static [u8], u64, u64); 8] {
    [
        (b"ringBufferFull", now.ring_buffer_full, then.ring_buffer_full),
        (b"pendingFull", now.pending_full, then.pending_full),
        (b"kretprobeMissed", now.kretprobe_missed, then.kretprobe_missed),
        (b"recursionMissed", now.recursion_missed, then.recursion_missed),
        (b"lsmErrors", now.lsm_errors, then.lsm_errors),
        (b"allowLost", now.allow_lost, then.allow_lost),
        (b"denyLost", now.deny_lost, then.deny_lost),
        (b"auditLost", now.audit_lost, then.audit_lost),
    ]
}

fn key(out: &mut Vec<u8>, name: &[u8]) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name);
    out.extend_from_slice(b"\":");
}

fn int<I: itoa::Integer>(out: &mut Vec<u8>, n: I) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn key_int<I: itoa::Integer>(out: &mut Vec<u8>, name: &[u8], n: I) {
    key(out, name);
    int(out, n);
}

fn key_bool(out: &mut Vec<u8>, name: &[u8], v: bool) {
    key(out, name);
    out.extend_from_slice(if v { b"true" } else { b"false" });
}

/// An executable's facts from its `exe_flags` bits, under `names` (the
/// truncated, unreachable, deleted and memfd keys).
fn key_exe_facts(out: &mut Vec<u8>, names: [&[u8]; 4], f: u16) {
    let bits = [exe_flags::TRUNCATED, exe_flags::UNREACHABLE, exe_flags::DELETED, exe_flags::MEMFD];
    for (name, bit) in names.into_iter().zip(bits) {
        key_bool(out, name, f & bit != 0);
    }
}

/// A fact that may be absent or unknown (`fact` in `ts/events.ts`): null
/// unless the roots were compared and the answer is known.
fn key_fact(out: &mut Vec<u8>, name: &[u8], fl: u32, yes: u32, unknown: u32) {
    key(out, name);
    out.extend_from_slice(if fl & flags::ROOTS_COMPARED == 0 || fl & unknown != 0 {
        b"null"
    } else if fl & yes != 0 {
        b"true"
    } else {
        b"false"
    });
}

/// Standard base64 with padding (`Buffer#toString('base64')`).
fn base64(bytes: &[u8], out: &mut Vec<u8>) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut chunks = bytes.chunks_exact(3);
    for c in &mut chunks {
        let n = u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2]);
        out.extend_from_slice(&[0, 6, 12, 18].map(|s| ALPHABET[((n >> (18 - s)) & 63) as usize]));
    }
    match *chunks.remainder() {
        [a] => {
            let n = u32::from(a) << 16;
            out.extend_from_slice(&[ALPHABET[(n >> 18) as usize], ALPHABET[((n >> 12) & 63) as usize], b'=', b'=']);
        }
        [a, b] => {
            let n = u32::from(a) << 16 | u32::from(b) << 8;
            out.extend_from_slice(&[
                ALPHABET[(n >> 18) as usize],
                ALPHABET[((n >> 12) & 63) as usize],
                ALPHABET[((n >> 6) & 63) as usize],
                b'=',
            ]);
        }
        _ => {}
    }
}

/// The display form of raw bytes (`displayBytes` in `ts/events.ts`):
/// well-formed UTF-8 as it is, a backslash as `\\`, each other byte as
/// `\xNN`.
pub fn display(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for part in chunk.valid().split_inclusive('\\') {
            match part.strip_suffix('\\') {
                Some(head) => {
                    s.push_str(head);
                    s.push_str("\\\\");
                }
                None => s.push_str(part),
            }
        }
        for &b in chunk.invalid() {
            s.push_str("\\x");
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    s
}

/// Stdout as the reader thread writes it: a descriptor of its own,
/// non-blocking, for anything but a regular file (a pipe, a terminal, a
/// socket, /dev/null), opened again through `/proc/self/fd/1`, so that
/// write(2) never blocks the thread (Node.js leaves a terminal's stdout
/// blocking, where a stopped terminal would hold the thread, and a close,
/// for good); fd 1 itself for a regular file, whose writes do not wait on
/// a reader and whose file offset must stay the one Node.js writes at, and
/// where the file cannot be opened again.
pub struct Stdout {
    fd: RawFd,
    _own: Option<OwnedFd>,
}

impl Stdout {
    /// Opens it (see [`Stdout`]).
    pub fn open() -> Stdout {
        let fd1 = libc::STDOUT_FILENO;
        // SAFETY: fstat into a zeroed stat; fd 1 may be closed (then -1).
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let regular = unsafe { libc::fstat(fd1, &raw mut st) } == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG;
        if !regular {
            let flags = libc::O_WRONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
            // SAFETY: a valid C string; the result is checked.
            let fd = unsafe { libc::open(c"/proc/self/fd/1".as_ptr(), flags) };
            if fd >= 0 {
                // SAFETY: a descriptor just opened, owned here.
                return Stdout { fd, _own: Some(unsafe { OwnedFd::from_raw_fd(fd) }) };
            }
        }
        Stdout { fd: fd1, _own: None }
    }

    /// The descriptor to write to.
    pub fn fd(&self) -> RawFd {
        self.fd
    }
}

/// How a write to stdout ended without writing everything; `written`:
/// the bytes it wrote before.
#[derive(Debug)]
pub enum WriteEnd {
    /// The session closes: what was not written is dropped.
    Closing {
        /// Bytes written.
        written: usize,
    },
    /// write(2) failed: `EPIPE` when the reader of the pipe is gone.
    Failed {
        /// Bytes written.
        written: usize,
        /// write(2)'s error.
        err: io::Error,
    },
}

/// How long a write waits for a full pipe before it looks whether the
/// session closes.
const WRITE_POLL: Duration = Duration::from_millis(100);

/// How long a closing session still waits to finish a line it began.
const FINISH_LINE: Duration = Duration::from_secs(2);

/// Writes all of `buf` (whole lines) to `fd`, a non-blocking descriptor
/// ([`Stdout`]): when the reader of stdout is slower (a full pipe, a
/// stopped terminal), write(2) says `EAGAIN` and the thread waits in
/// poll(2), so it stops draining and the backlog stays in the kernel ring
/// buffer, whose drops are counted. `closing` stops it at the next line
/// boundary, also while waiting: a line begun is finished if the reader
/// takes it within [`FINISH_LINE`], else left cut (the error's `written`
/// says where).
///
/// # Errors
/// [`WriteEnd::Closing`] once `closing` is set;
/// [`WriteEnd::Failed`] with write(2)'s error.
pub fn write_all(fd: RawFd, buf: &[u8], closing: &AtomicBool) -> Result<(), WriteEnd> {
    let all = buf.len();
    let mut buf = buf;
    let mut line_start = true;
    let mut deadline: Option<std::time::Instant> = None;
    // Bytes after the line begun, dropped once the session closes.
    let mut rest = 0;
    while !buf.is_empty() {
        if line_start && closing.load(Ordering::Acquire) {
            return Err(WriteEnd::Closing { written: all - rest - buf.len() });
        }
        // SAFETY: `buf` is valid for `buf.len()` bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if let Ok(n) = usize::try_from(n) {
            if n > 0 {
                line_start = buf[n - 1] == b'\n';
            }
            buf = &buf[n..];
            continue;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) => loop {
                if closing.load(Ordering::Acquire) {
                    if line_start || deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                        return Err(WriteEnd::Closing { written: all - rest - buf.len() });
                    }
                    if deadline.is_none() {
                        // Only the rest of the line begun.
                        let end = buf.iter().position(|&b| b == b'\n').map_or(buf.len(), |i| i + 1);
                        rest = buf.len() - end;
                        buf = &buf[..end];
                        deadline = Some(std::time::Instant::now() + FINISH_LINE);
                    }
                }
                let mut pfd = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
                // SAFETY: one valid pollfd.
                let rc = unsafe { libc::poll(&raw mut pfd, 1, WRITE_POLL.as_millis() as i32) };
                if rc != 0 {
                    break; // writable, an error to read from write(2), or EINTR
                }
            },
            _ => return Err(WriteEnd::Failed { written: all - rest - buf.len(), err }),
        }
    }
    if deadline.is_some() {
        return Err(WriteEnd::Closing { written: all - rest });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_form() {
        assert_eq!(display(b"/a b"), "/a b");
        assert_eq!(display(b"a\\b"), "a\\\\b");
        assert_eq!(display(b"\xff\xe2\x82"), "\\xff\\xe2\\x82");
        assert_eq!(display("é\u{1b}".as_bytes()), "é\u{1b}");
    }

    #[test]
    fn base64_as_node_writes_it() {
        let b64 = |b: &[u8]| {
            let mut v = Vec::new();
            base64(b, &mut v);
            String::from_utf8(v).expect("ascii")
        };
        assert_eq!(b64(b""), "");
        assert_eq!(b64(b"f"), "Zg==");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"\xff\xfe\xfd\xfc"), "//79/A==");
    }

    #[test]
    fn json_escapes() {
        let w = Lines::new(
            LineText { format: LineFormat::Json, errno_names: vec![], escaped: vec![(0x7f, 0x9f), (0x2028, 0x202e)] },
            0,
        );
        let j = |s: &str| {
            let mut v = Vec::new();
            w.json_str(s, &mut v);
            String::from_utf8(v).expect("utf-8")
        };
        assert_eq!(j("plain"), "\"plain\"");
        assert_eq!(j("q\"b\\\n\t\u{1}"), "\"q\\\"b\\\\\\n\\t\\u0001\"");
        assert_eq!(j("\u{7f}\u{9b}é\u{2028}"), "\"\\u007f\\u009bé\\u2028\"");
        let mut v = Vec::new();
        w.json_display(b"a\\\xff\x1b", &mut v);
        assert_eq!(String::from_utf8(v).expect("utf-8"), "\"a\\\\\\\\\\\\xff\\u001b\"");
    }
}
