//! Fuzzes the master's side of a worker's shared rings against a hostile worker: the input is
//! a script of what the worker does to the shared memory (publish frames, write any bytes
//! anywhere in its ring, set either ring's indices or any claim word to any value), between
//! which the master does what its link does (pull, decode, push a request, revoke). The
//! master must never panic or touch memory outside the region, must report a corrupt index
//! as an error rather than act on it, and never sees more bytes than the ring holds.
#![no_main]

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wsgiscale_sidecar::proto;
use wsgiscale_sidecar::ring::{self, Consumer, Dir, Mem, Producer, VecMem, Word, MAX_STREAMS};

const CAP: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mem = VecMem::new(CAP);
    let mut from_worker = Consumer::new(Dir::ToMaster);
    let mut to_worker = Producer::new(Dir::ToWorker);
    let mut worker_tx = Producer::new(Dir::ToMaster);
    let mut inbuf = BytesMut::new();
    let mut broken = false;
    let mut ops = data.chunks(11);
    for op in ops.by_ref() {
        if op.len() < 11 {
            break;
        }
        let arg = u64::from_le_bytes(op[3..11].try_into().expect("8 bytes"));
        let small = u16::from_le_bytes([op[1], op[2]]) as usize;
        match op[0] % 8 {
            // The worker publishes bytes honestly (frames or garbage).
            0 => {
                let bytes: Vec<u8> = (0..small % 600).map(|i| (arg as usize).wrapping_add(i) as u8).collect();
                let _ = worker_tx.push(&mem, &bytes);
            }
            // The worker scribbles anywhere in its ring.
            1 => mem.write_at(Dir::ToMaster, small % CAP, &arg.to_le_bytes()[..(8).min(CAP - small % CAP)]),
            // The worker sets an index word to anything.
            2 => mem.word(Word::Tail(Dir::ToMaster)).store(arg, Ordering::Relaxed),
            3 => mem.word(Word::Head(Dir::ToWorker)).store(arg, Ordering::Relaxed),
            // The worker sets a claim word to anything.
            4 => mem.claim_word(small % MAX_STREAMS).store(arg, Ordering::Relaxed),
            // The master drains and decodes, as its link does.
            5 if !broken => match from_worker.pull(&mem, &mut inbuf, usize::MAX) {
                Ok(n) => {
                    assert!(n <= CAP, "more bytes than the ring holds");
                    loop {
                        match proto::decode(&mut inbuf, 1 << 16) {
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(_) => {
                                broken = true;
                                break;
                            }
                        }
                    }
                }
                Err(_) => broken = true,
            },
            // The master writes a request and may revoke a stream.
            6 if !broken => {
                if to_worker.push(&mem, &vec![0xab; small % 2000]).is_err() {
                    broken = true;
                }
                ring::offer(&mem, (arg % 500) as u32);
            }
            7 => {
                let _ = ring::revoke(&mem, (arg % 500) as u32);
                let _ = ring::must_ring(&mem, Word::MasterWaits);
            }
            _ => {}
        }
    }
});
