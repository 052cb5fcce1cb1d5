//! The master <-> worker transport in shared memory: two single-producer single-consumer byte
//! rings (master -> worker, worker -> master) carrying the same frames as [`crate::proto`],
//! and need-wakeup doorbells.
//!
//! This module is the pure part: the ring arithmetic and the sleep/wake protocol over a
//! [`Mem`] (the mapped region in production, [`VecMem`] in tests). It never trusts the
//! peer's memory: each side keeps its own index privately and only *reads* the peer's, and a
//! peer index that does not fit (a consumer ahead of the producer, more bytes announced than
//! the ring holds) is [`Corrupt`]. Bytes are copied out of the ring into private buffers
//! before anything decodes them, so a peer that rewrites the ring while it is read cannot
//! make the decoder see two different values of one field. A worker that scribbles over its
//! region can therefore only break its own link (and so fail its own requests).
//!
//! Doorbells follow io_uring's need-wakeup flag: a side that is about to sleep sets its flag,
//! checks once more, and only then blocks on its eventfd; the other side rings only when it
//! finds the flag set after making progress. Under load neither side sleeps, so neither makes
//! a system call per request.

use std::sync::atomic::{fence, AtomicU64, AtomicU8, Ordering};

use bytes::BytesMut;

/// One of the two rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Master -> worker: requests, cancels, shutdown.
    ToWorker,
    /// Worker -> master: responses.
    ToMaster,
}

/// The shared 64-bit words of a region's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Word {
    /// Bytes ever written to a ring (its producer's index).
    Tail(Dir),
    /// Bytes ever read from a ring (its consumer's index).
    Head(Dir),
    /// The master is about to sleep: ring its bell after writing responses or reading
    /// requests.
    MasterWaits,
    /// The worker's reader is about to sleep: ring its bell after writing requests.
    WorkerReadWaits,
    /// A worker writer is about to sleep on a full response ring: ring its bell after
    /// reading responses.
    WorkerWriteWaits,
}

impl Word {
    /// Index of the word in the header (each on its own cache line).
    pub fn index(self) -> usize {
        match self {
            Word::Tail(Dir::ToWorker) => 1,
            Word::Head(Dir::ToWorker) => 2,
            Word::Tail(Dir::ToMaster) => 3,
            Word::Head(Dir::ToMaster) => 4,
            Word::MasterWaits => 5,
            Word::WorkerReadWaits => 6,
            Word::WorkerWriteWaits => 7,
        }
    }

    /// Number of header words (the highest index plus one).
    pub const COUNT: usize = 8;
}

/// Streams (a worker's threads plus its look-ahead) a region has claim words for.
pub const MAX_STREAMS: usize = 384;

/// Memory holding two rings of [`Mem::capacity`] bytes each and the header words. The ring
/// code guarantees `off + len <= capacity` on every call.
pub trait Mem {
    /// Bytes of each ring (a power of two).
    fn capacity(&self) -> usize;
    /// A header word.
    fn word(&self, w: Word) -> &AtomicU64;
    /// The claim word of `stream` (below [`MAX_STREAMS`]).
    fn claim_word(&self, stream: usize) -> &AtomicU64;
    /// Copies `src` into ring `dir` at `off`.
    fn write_at(&self, dir: Dir, off: usize, src: &[u8]);
    /// Appends `len` bytes of ring `dir` from `off` to `out`.
    fn read_at(&self, dir: Dir, off: usize, len: usize, out: &mut BytesMut);
}

/// The peer's index of a ring does not fit the ring: its memory was overwritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shared ring corrupt: peer index {peer} against ours {ours} (capacity {capacity})")]
pub struct Corrupt {
    /// The index read from shared memory.
    pub peer: u64,
    /// Our own index.
    pub ours: u64,
    /// Ring capacity.
    pub capacity: usize,
}

/// The writing end of one ring. Its index lives here; the shared copy is only published.
#[derive(Debug)]
pub struct Producer {
    dir: Dir,
    tail: u64,
}

impl Producer {
    /// The producer of ring `dir`, which must be fresh (both indices zero).
    pub fn new(dir: Dir) -> Self {
        Producer { dir, tail: 0 }
    }

    /// The consumer's index at which this ring is full (our index minus the capacity): a
    /// producer that found no room knows the consumer was there, and any other index means
    /// the consumer has made room since.
    pub fn full_at(&self, mem: &impl Mem) -> u64 {
        self.tail.wrapping_sub(mem.capacity() as u64)
    }

    /// Bytes the consumer has not read yet, or [`Corrupt`].
    fn used(&self, mem: &impl Mem) -> Result<usize, Corrupt> {
        let head = mem.word(Word::Head(self.dir)).load(Ordering::Acquire);
        let used = self.tail.wrapping_sub(head);
        if used > mem.capacity() as u64 {
            return Err(Corrupt {
                peer: head,
                ours: self.tail,
                capacity: mem.capacity(),
            });
        }
        Ok(used as usize)
    }

    /// Free bytes now.
    pub fn free(&self, mem: &impl Mem) -> Result<usize, Corrupt> {
        Ok(mem.capacity() - self.used(mem)?)
    }

    /// Writes as much of `src` as fits and publishes it; returns how many bytes went in.
    pub fn push(&mut self, mem: &impl Mem, src: &[u8]) -> Result<usize, Corrupt> {
        let cap = mem.capacity();
        let n = src.len().min(cap - self.used(mem)?);
        if n == 0 {
            return Ok(0);
        }
        let off = (self.tail as usize) & (cap - 1);
        let first = n.min(cap - off);
        mem.write_at(self.dir, off, &src[..first]);
        if first < n {
            mem.write_at(self.dir, 0, &src[first..n]);
        }
        self.tail = self.tail.wrapping_add(n as u64);
        mem.word(Word::Tail(self.dir))
            .store(self.tail, Ordering::Release);
        Ok(n)
    }
}

/// The reading end of one ring.
#[derive(Debug)]
pub struct Consumer {
    dir: Dir,
    head: u64,
}

impl Consumer {
    /// The consumer of ring `dir`, which must be fresh.
    pub fn new(dir: Dir) -> Self {
        Consumer { dir, head: 0 }
    }

    /// Bytes ever consumed (the private index).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Bytes waiting to be read, or [`Corrupt`].
    pub fn available(&self, mem: &impl Mem) -> Result<usize, Corrupt> {
        let tail = mem.word(Word::Tail(self.dir)).load(Ordering::Acquire);
        let avail = tail.wrapping_sub(self.head);
        if avail > mem.capacity() as u64 {
            return Err(Corrupt {
                peer: tail,
                ours: self.head,
                capacity: mem.capacity(),
            });
        }
        Ok(avail as usize)
    }

    /// Moves up to `max` waiting bytes to the end of `out` and frees their space; returns
    /// how many.
    pub fn pull(
        &mut self,
        mem: &impl Mem,
        out: &mut BytesMut,
        max: usize,
    ) -> Result<usize, Corrupt> {
        let cap = mem.capacity();
        let n = self.available(mem)?.min(max);
        if n == 0 {
            return Ok(0);
        }
        out.reserve(n);
        let off = (self.head as usize) & (cap - 1);
        let first = n.min(cap - off);
        mem.read_at(self.dir, off, first, out);
        if first < n {
            mem.read_at(self.dir, 0, n - first, out);
        }
        self.head = self.head.wrapping_add(n as u64);
        mem.word(Word::Head(self.dir))
            .store(self.head, Ordering::Release);
        Ok(n)
    }
}

/// About to sleep on `flag`'s bell: announce it. The caller must then check its condition
/// once more and sleep only if it still holds, and [`retract`] when it wakes.
pub fn announce(mem: &impl Mem, flag: Word) {
    mem.word(flag).store(1, Ordering::SeqCst);
    fence(Ordering::SeqCst);
}

/// [`announce`] without its fence, for a caller that raises several flags and then issues
/// one `fence(SeqCst)` before it checks its conditions.
pub fn raise(mem: &impl Mem, flag: Word) {
    mem.word(flag).store(1, Ordering::Relaxed);
}

/// Awake again (or not sleeping after all).
pub fn retract(mem: &impl Mem, flag: Word) {
    mem.word(flag).store(0, Ordering::Relaxed);
}

/// After making progress the sleeper waits for: whether its bell must be rung. True at most
/// once per announcement (the flag is taken).
pub fn must_ring(mem: &impl Mem, flag: Word) -> bool {
    fence(Ordering::SeqCst);
    let w = mem.word(flag);
    w.load(Ordering::Relaxed) != 0 && w.swap(0, Ordering::SeqCst) != 0
}

/// The states of a stream's claim word: a request handed to a worker is *offered*; the worker
/// *takes* it before running it, unless the master *revoked* it first (to give it to a
/// worker that became free sooner). One compare-and-swap each way decides, so a request runs
/// once or goes back to the queue, never both.
pub mod claim {
    /// No request on the stream.
    pub const FREE: u64 = 0;
    /// A request waits on the stream, not started.
    pub const OFFERED: u64 = 1;
    /// The worker started it.
    pub const TAKEN: u64 = 2;
    /// The master took it back; the worker must skip it (and say so with an `End`).
    pub const REVOKED: u64 = 3;
}

/// The worker's answer on starting a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Run it.
    Run,
    /// The master took it back: skip it and end the stream.
    Skip,
}

fn claim_of(mem: &impl Mem, stream: u32) -> Option<&AtomicU64> {
    let s = stream as usize;
    (s < MAX_STREAMS).then(|| mem.claim_word(s))
}

/// Master: a request goes onto `stream`.
pub fn offer(mem: &impl Mem, stream: u32) {
    if let Some(w) = claim_of(mem, stream) {
        w.store(claim::OFFERED, Ordering::Release);
    }
}

/// Master: the stream's request is over (its response ended).
pub fn release(mem: &impl Mem, stream: u32) {
    if let Some(w) = claim_of(mem, stream) {
        w.store(claim::FREE, Ordering::Release);
    }
}

/// Master: takes back the request on `stream` if the worker has not started it.
pub fn revoke(mem: &impl Mem, stream: u32) -> bool {
    claim_of(mem, stream).is_some_and(|w| {
        w.compare_exchange(
            claim::OFFERED,
            claim::REVOKED,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok()
    })
}

/// Worker: starts the request on `stream` unless it was taken back (or never offered).
pub fn take(mem: &impl Mem, stream: u32) -> Take {
    let Some(w) = claim_of(mem, stream) else {
        return Take::Skip;
    };
    match w.compare_exchange(
        claim::OFFERED,
        claim::TAKEN,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => Take::Run,
        Err(_) => Take::Skip,
    }
}

/// A [`Mem`] on the heap, for tests and the fuzzer.
#[derive(Debug)]
pub struct VecMem {
    words: Vec<AtomicU64>,
    claims: Vec<AtomicU64>,
    rings: [Vec<AtomicU8>; 2],
}

impl VecMem {
    /// Two rings of `capacity` bytes (a power of two).
    pub fn new(capacity: usize) -> Self {
        assert!(capacity.is_power_of_two());
        let ring = || (0..capacity).map(|_| AtomicU8::new(0)).collect::<Vec<_>>();
        VecMem {
            words: (0..Word::COUNT).map(|_| AtomicU64::new(0)).collect(),
            claims: (0..MAX_STREAMS).map(|_| AtomicU64::new(0)).collect(),
            rings: [ring(), ring()],
        }
    }

    fn ring(&self, dir: Dir) -> &[AtomicU8] {
        &self.rings[dir as usize]
    }
}

impl Mem for VecMem {
    fn capacity(&self) -> usize {
        self.rings[0].len()
    }
    fn word(&self, w: Word) -> &AtomicU64 {
        &self.words[w.index()]
    }
    fn claim_word(&self, stream: usize) -> &AtomicU64 {
        &self.claims[stream]
    }
    fn write_at(&self, dir: Dir, off: usize, src: &[u8]) {
        for (cell, b) in self.ring(dir)[off..off + src.len()].iter().zip(src) {
            cell.store(*b, Ordering::Relaxed);
        }
    }
    fn read_at(&self, dir: Dir, off: usize, len: usize, out: &mut BytesMut) {
        out.extend(
            self.ring(dir)[off..off + len]
                .iter()
                .map(|c| c.load(Ordering::Relaxed)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(Vec<u8>),
        Pull(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..70).prop_map(Op::Push),
            (0usize..90).prop_map(Op::Pull),
        ]
    }

    proptest! {
        /// Random interleavings of writes and reads of any size, wrapping the ring many
        /// times: the reader gets exactly the bytes written, in order, none lost or twice,
        /// and the free space always adds up.
        #[test]
        fn bytes_come_out_as_they_went_in(ops in proptest::collection::vec(op(), 1..300)) {
            let mem = VecMem::new(64);
            let mut p = Producer::new(Dir::ToWorker);
            let mut c = Consumer::new(Dir::ToWorker);
            let mut sent: Vec<u8> = Vec::new();
            let mut got = BytesMut::new();
            let mut counter = 0u8;
            for op in ops {
                match op {
                    Op::Push(bytes) => {
                        // Distinct bytes so reordering or duplication would show.
                        let bytes: Vec<u8> = bytes.iter().map(|_| { counter = counter.wrapping_add(1); counter }).collect();
                        let before = p.free(&mem).unwrap();
                        let n = p.push(&mem, &bytes).unwrap();
                        prop_assert_eq!(n, bytes.len().min(before));
                        sent.extend_from_slice(&bytes[..n]);
                    }
                    Op::Pull(max) => {
                        let avail = c.available(&mem).unwrap();
                        let n = c.pull(&mem, &mut got, max).unwrap();
                        prop_assert_eq!(n, avail.min(max));
                    }
                }
                let pending = sent.len() - got.len();
                prop_assert_eq!(c.available(&mem).unwrap(), pending);
                prop_assert_eq!(p.free(&mem).unwrap(), 64 - pending);
            }
            c.pull(&mem, &mut got, usize::MAX).unwrap();
            prop_assert_eq!(&got[..], &sent[..]);
        }

        /// Whatever the peer writes into its index, the other side gets `Corrupt` or a
        /// count within the ring, never a panic or an access outside it.
        #[test]
        fn a_scribbled_index_is_caught(tail in any::<u64>(), head in any::<u64>(), pushed in 0usize..64) {
            let mem = VecMem::new(64);
            let mut p = Producer::new(Dir::ToMaster);
            let mut c = Consumer::new(Dir::ToMaster);
            p.push(&mem, &vec![7u8; pushed]).unwrap();
            mem.word(Word::Tail(Dir::ToMaster)).store(tail, Ordering::Relaxed);
            match c.available(&mem) {
                Ok(n) => prop_assert!(n <= 64 && tail <= 64),
                Err(e) => prop_assert!(tail > 64, "{e}"),
            }
            let mut out = BytesMut::new();
            if let Ok(n) = c.pull(&mem, &mut out, usize::MAX) {
                prop_assert_eq!(out.len(), n);
            }
            mem.word(Word::Head(Dir::ToMaster)).store(head, Ordering::Relaxed);
            match p.free(&mem) {
                Ok(n) => prop_assert!(n <= 64),
                Err(_) => prop_assert!((pushed as u64).wrapping_sub(head) > 64),
            }
            let _ = p.push(&mem, &[1u8; 100]);
        }
    }

    /// Two threads, a small ring and a million bytes: the concurrent path (acquire/release
    /// of the indices) loses and reorders nothing.
    #[test]
    fn concurrent_producer_and_consumer_agree() {
        let mem = std::sync::Arc::new(VecMem::new(256));
        let total = 1 << 20;
        let m = mem.clone();
        let writer = std::thread::spawn(move || {
            let mut p = Producer::new(Dir::ToMaster);
            let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
            let mut at = 0;
            while at < data.len() {
                let end = (at + 1000).min(data.len());
                at += p.push(&*m, &data[at..end]).expect("consistent");
                std::hint::spin_loop();
            }
        });
        let mut c = Consumer::new(Dir::ToMaster);
        let mut got = BytesMut::new();
        while got.len() < total {
            c.pull(&*mem, &mut got, 300).expect("consistent");
            std::hint::spin_loop();
        }
        writer.join().expect("writer");
        assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    }

    /// The worker taking and the master revoking race on every offer, from two threads:
    /// exactly one wins each time, so a request runs once or is requeued once.
    #[test]
    fn take_and_revoke_never_both_win() {
        use std::sync::atomic::AtomicU32;
        let mem = std::sync::Arc::new(VecMem::new(64));
        let rounds = 20_000;
        let go = std::sync::Arc::new(AtomicU32::new(0));
        let done = std::sync::Arc::new(AtomicU32::new(0));
        let (m, g, d) = (mem.clone(), go.clone(), done.clone());
        let worker = std::thread::spawn(move || {
            let mut ran = 0;
            for round in 1..=rounds {
                while g.load(Ordering::Acquire) < round {
                    std::hint::spin_loop();
                }
                if take(&*m, 5) == Take::Run {
                    ran += 1;
                }
                d.store(round, Ordering::Release);
            }
            ran
        });
        let mut revoked = 0;
        for round in 1..=rounds {
            offer(&*mem, 5);
            go.store(round, Ordering::Release);
            if revoke(&*mem, 5) {
                revoked += 1;
            }
            while done.load(Ordering::Acquire) < round {
                std::hint::spin_loop();
            }
            let state = mem.claim_word(5).load(Ordering::Acquire);
            assert!(state == claim::TAKEN || state == claim::REVOKED);
            release(&*mem, 5);
        }
        let ran = worker.join().expect("worker");
        assert_eq!(ran + revoked, rounds, "each offer is run or revoked, once");
    }

    #[test]
    fn claims_out_of_range_are_skipped() {
        let mem = VecMem::new(64);
        assert_eq!(take(&mem, MAX_STREAMS as u32), Take::Skip);
        assert!(!revoke(&mem, u32::MAX));
        assert_eq!(take(&mem, 3), Take::Skip, "never offered");
        offer(&mem, 3);
        assert_eq!(take(&mem, 3), Take::Run);
        assert!(!revoke(&mem, 3), "started: too late");
    }

    #[test]
    fn a_full_ring_knows_where_its_consumer_is() {
        let mem = VecMem::new(64);
        let mut p = Producer::new(Dir::ToWorker);
        let mut c = Consumer::new(Dir::ToWorker);
        let mut out = BytesMut::new();
        p.push(&mem, &[1; 40]).expect("push");
        c.pull(&mem, &mut out, 30).expect("pull");
        assert_eq!(p.push(&mem, &[2; 100]).expect("push"), 54, "fills the ring");
        assert_eq!(p.push(&mem, &[3]).expect("push"), 0, "full");
        assert_eq!(
            p.full_at(&mem),
            c.head(),
            "full exactly at the consumer's index"
        );
    }

    #[test]
    fn the_bell_rings_once_per_announcement() {
        let mem = VecMem::new(64);
        assert!(!must_ring(&mem, Word::MasterWaits), "nobody sleeps");
        announce(&mem, Word::MasterWaits);
        assert!(must_ring(&mem, Word::MasterWaits));
        assert!(!must_ring(&mem, Word::MasterWaits), "already rung");
        announce(&mem, Word::WorkerReadWaits);
        retract(&mem, Word::WorkerReadWaits);
        assert!(!must_ring(&mem, Word::WorkerReadWaits), "woke by itself");
    }
}
