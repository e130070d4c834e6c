//! What the kernel tests share: a sink that forwards each batch to a
//! channel, and a record read back into a `ChrootEvent`.
use std::sync::mpsc;

use chroot_guard_common::ChrootEvent;
use chroot_guard_loader::reader::{Batch, Sink};

/// Sends each batch to the test's receiver; never holds one in flight.
pub struct ChannelSink(pub mpsc::Sender<Batch>);

impl Sink for ChannelSink {
    fn in_flight(&self) -> u32 {
        0
    }
    fn deliver(&self, batch: Batch) -> bool {
        self.0.send(batch).is_ok()
    }
}

/// One ring buffer record as an event: records carry only the used part of
/// `data`, copied into a zeroed event (at most the event's size).
pub fn event_of(record: &[u8]) -> ChrootEvent {
    let len = record.len().min(std::mem::size_of::<ChrootEvent>());
    let mut ev = std::mem::MaybeUninit::<ChrootEvent>::zeroed();
    // SAFETY: `len` bytes fit in the event; every bit pattern is valid.
    unsafe {
        std::ptr::copy_nonoverlapping(record.as_ptr(), ev.as_mut_ptr().cast::<u8>(), len);
        ev.assume_init()
    }
}

/// The event's argument path (lossy UTF-8).
pub fn path_of(ev: &ChrootEvent) -> String {
    String::from_utf8_lossy(&ev.data[..ev.path_len as usize]).into_owned()
}
