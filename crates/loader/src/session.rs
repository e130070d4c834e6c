//! A running kernel session: one attached mode and its ring-buffer thread.

use std::sync::Arc;

use aya::Ebpf;
use chroot_guard_common::Mode;

use crate::{
    attach::{self, LoadOptions, Loaded},
    error::{Error, Refusal},
    kretprobe::Kretprobes,
    reader::{self, Counters, Lost, Reader, ReaderConfig, Sink},
    recursion,
};

/// Programs attached in one mode, plus the thread reading their events.
///
/// States: open (after [`Session::open`]) → closed (after [`Session::close`]
/// or drop). Closing joins the reader thread, then drops the object, which
/// detaches every link and closes every program and map.
pub struct Session {
    ebpf: Option<Ebpf>,
    kretprobes: Option<Kretprobes>,
    reader: Reader,
    counters: Arc<Counters>,
    mode: Mode,
    refusals: Vec<Refusal>,
    blind_spots: Vec<Refusal>,
}

/// Totals of one session (watch or guard).
#[derive(Clone, Copy, Debug, Default)]
pub struct SessionStats {
    /// Events read from the ring buffer.
    pub events: u64,
    /// Batches handed to the sink.
    pub batches: u64,
    /// Bytes of records handed to the sink.
    pub bytes: u64,
    /// What the kernel side could not deliver.
    pub lost: Lost,
}

impl SessionStats {
    /// The reader's totals and the kernel's counters now.
    pub fn read(reader: &Reader, counters: &Counters) -> SessionStats {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        SessionStats {
            events: load(&reader.stats.events),
            batches: load(&reader.stats.batches),
            bytes: load(&reader.stats.bytes),
            lost: counters.read(),
        }
    }
}

impl Session {
    /// Loads and attaches (see [`attach::load`]) and starts the reader.
    ///
    /// # Errors
    /// Every error of [`attach::load`]; [`Error::Object`] when a map is
    /// missing; [`Error::Io`] when the thread cannot start. Nothing stays
    /// loaded after an error.
    pub fn open<S: Sink>(opts: &LoadOptions, sink: S, config: ReaderConfig) -> Result<Session, Error> {
        let Loaded { mut ebpf, kretprobes, mode, refusals, blind_spots } = attach::load(opts)?;
        let recursion = recursion::for_session(&ebpf, mode);
        let (reader, counters) = reader::start_with(&mut ebpf, sink, config, kretprobes.miss_counter(), recursion)?;
        Ok(Session { ebpf: Some(ebpf), kretprobes: Some(kretprobes), reader, counters, mode, refusals, blind_spots })
    }

    /// The attached mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Why better modes were refused (`auto` only).
    pub fn refusals(&self) -> &[Refusal] {
        &self.refusals
    }

    /// Compat-only programs the kernel refused: calls this session does not
    /// see (see [`Loaded::blind_spots`]).
    pub fn blind_spots(&self) -> &[Refusal] {
        &self.blind_spots
    }

    /// The attached programs: name and kernel id, for their run counts and
    /// run time (the kernel shows them in each program's fdinfo, counted
    /// while `kernel.bpf_stats_enabled` is 1). Empty once closed.
    pub fn programs(&self) -> Vec<(String, u32)> {
        let Some(ebpf) = &self.ebpf else { return Vec::new() };
        // Programs of other modes are in the object but not loaded: no info.
        ebpf.programs().filter_map(|(name, p)| p.info().ok().map(|i| (name.to_string(), i.id()))).collect()
    }

    /// Current totals; reads the per-CPU counters from the kernel.
    pub fn stats(&self) -> SessionStats {
        SessionStats::read(&self.reader, &self.counters)
    }

    /// Detaches every program, hands the consumer every record left in the
    /// ring buffer and waits until it has finished with them
    /// ([`Reader::finish`]), then returns the final totals and unloads the
    /// rest. After it the session is closed. Blocks: for as long as the
    /// consumer takes to handle what the ring buffer held (at most
    /// `ring_buffer_bytes` of records), or [`reader::FINISH_STALL`] when it
    /// stops taking batches without holding them back on purpose (then
    /// until it releases them: [`reader::Sink::held`]).
    pub fn finish(&mut self) -> SessionStats {
        // Read once while the kretprobes exist: their missed count outlives
        // them (`MissCounter` keeps its last sum).
        let _ = self.counters.read();
        self.kretprobes.take();
        // The reader holds the ring buffer and the counters: the object can
        // go (every link with it) before the drain.
        self.ebpf.take();
        // Detached: the programs' skips are final; the last read, then the
        // descriptors that kept them loaded go.
        self.counters.release_programs();
        self.reader.finish();
        let stats = self.stats();
        self.close();
        stats
    }

    /// Stops the reader, then detaches and unloads everything: the tracefs
    /// kretprobes are closed and removed from `kprobe_events` before the
    /// object goes. Idempotent.
    pub fn close(&mut self) {
        self.reader.stop();
        self.kretprobes.take();
        self.ebpf.take();
        self.counters.release_programs();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}
