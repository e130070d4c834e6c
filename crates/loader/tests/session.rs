//! The core against the real kernel: open a session, make a real chroot
//! call, receive its event. Needs root; run by `cargo xtask test`.
use std::{
    process::Command,
    sync::mpsc,
    time::{Duration, Instant},
};

use chroot_guard_common::{ChrootEvent, Filter};
use chroot_guard_loader::{
    attach::{LoadOptions, ModeRequest},
    reader::{Batch, ReaderConfig, Sink},
    session::Session,
};

struct ChannelSink(mpsc::Sender<Batch>);
impl Sink for ChannelSink {
    fn in_flight(&self) -> u32 {
        0
    }
    fn deliver(&self, batch: Batch) -> bool {
        self.0.send(batch).is_ok()
    }
}

fn events(batch: &Batch) -> Vec<ChrootEvent> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < batch.data.len() {
        let len = u32::from_le_bytes(batch.data[at..at + 4].try_into().unwrap()) as usize;
        let rec = &batch.data[at + 8..at + 8 + len];
        assert_eq!(len, std::mem::size_of::<ChrootEvent>());
        // SAFETY: the record is a whole ChrootEvent; read_unaligned copies it.
        out.push(unsafe { std::ptr::read_unaligned(rec.as_ptr().cast::<ChrootEvent>()) });
        at += 8 + len.div_ceil(8) * 8;
    }
    out
}

#[test]
fn auto_mode_reports_a_real_chroot() {
    let (tx, rx) = mpsc::channel();
    let opts = LoadOptions {
        mode: ModeRequest::Auto,
        filter: Filter::default(),
        ring_buffer_bytes: 1 << 20,
    };
    let mut session = Session::open(&opts, ChannelSink(tx), ReaderConfig::default())
        .unwrap_or_else(|e| { if let Some(l) = e.verifier_log() { let t: Vec<_> = l.lines().collect(); eprintln!("{}", t[t.len().saturating_sub(40)..].join("\n")); } panic!("open failed: {e} ({})", e.code()) });
    eprintln!("mode: {:?}, refused: {:?}", session.mode(), session.refusals().iter().map(|r| (&r.code, &r.reason)).collect::<Vec<_>>());
    let child = Command::new("chroot").arg("/nonexistent-chroot-guard").arg("/bin/true").status().unwrap();
    assert!(!child.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut found = None;
    while Instant::now() < deadline && found.is_none() {
        if let Ok(b) = rx.recv_timeout(Duration::from_millis(200)) {
            for ev in events(&b) {
                let path = String::from_utf8_lossy(&ev.path[..ev.path_len as usize]).to_string();
                eprintln!("event pid={} comm={:?} path={path} ret={} mnt_ns={} pid_ns={} ppid={}", ev.pid, String::from_utf8_lossy(&ev.comm), ev.ret, ev.mnt_ns, ev.pid_ns, ev.ppid);
                if path == "/nonexistent-chroot-guard" {
                    found = Some(ev);
                }
            }
        }
    }
    let ev = found.expect("an event for the chroot call");
    assert_eq!(ev.ret, -2);
    session.close();
}
