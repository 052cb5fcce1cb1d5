//! The shared-memory region of one worker's link (a memfd the master creates before asking
//! for the fork and maps on both sides) and its three doorbells (eventfds). The ring logic
//! itself is safe code in [`crate::ring`]; this file holds the mapping's `unsafe` (the only
//! other module with any is [`crate::sys`]).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

use bytes::{BufMut, BytesMut};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use crate::ring::{Dir, Mem, Word};

/// Bytes of the header page holding the shared words (one per cache line).
const HEADER: usize = 4096;
/// Distance between two shared words.
const LINE: usize = 64;
/// Offset of the claim words (8 bytes each) in the header.
const CLAIMS: usize = 1024;
const _: () = assert!(CLAIMS + 8 * crate::ring::MAX_STREAMS <= HEADER);
const _: () = assert!(crate::ring::Word::COUNT * LINE <= CLAIMS);

/// Bytes of each ring by default: a 64 KiB POST or a few dozen responses fit at once.
pub const DEFAULT_CAPACITY: usize = 256 * 1024;

/// A mapped region: the header and the two rings.
#[derive(Debug)]
pub struct Region {
    base: NonNull<u8>,
    len: usize,
    capacity: usize,
}

// SAFETY: the region is plain shared memory; all access goes through atomics (the words) or
// bounds-checked copies of bytes whose ownership the ring protocol assigns to one side.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` offers no non-atomic access to shared bytes except copies.
unsafe impl Sync for Region {}

fn os(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Region {
    /// Creates a region with rings of `capacity` bytes (a power of two) in a new memfd;
    /// returns the mapping and the descriptor to hand to the worker.
    pub fn create(capacity: usize) -> io::Result<(Region, OwnedFd)> {
        if !capacity.is_power_of_two() || capacity < 4096 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ring capacity must be a power of two of at least 4096",
            ));
        }
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::memfd::MFdFlags;
        let fd = nix::sys::memfd::memfd_create(
            c"wsgiscale-link",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(os)?;
        let len = HEADER + 2 * capacity;
        nix::unistd::ftruncate(&fd, len as i64).map_err(os)?;
        // Sealed at its size: a worker holding the descriptor cannot shrink the file under
        // the master's mapping (which would make the master's next access a SIGBUS).
        fcntl(
            &fd,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        )
        .map_err(os)?;
        let region = Self::map(fd.as_fd(), len, capacity)?;
        Ok((region, fd))
    }

    /// Maps a region received from the master; the ring size follows from the file's.
    pub fn open(fd: &OwnedFd) -> io::Result<Region> {
        let len = nix::sys::stat::fstat(fd).map_err(os)?.st_size as usize;
        let capacity = len.saturating_sub(HEADER) / 2;
        if len != HEADER + 2 * capacity || !capacity.is_power_of_two() || capacity < 4096 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the link region has an unexpected size of {len} bytes"),
            ));
        }
        Self::map(fd.as_fd(), len, capacity)
    }

    fn map(fd: BorrowedFd<'_>, len: usize, capacity: usize) -> io::Result<Region> {
        let size = std::num::NonZeroUsize::new(len).ok_or(io::ErrorKind::InvalidInput)?;
        // SAFETY: a fresh shared mapping of a memfd we hold, at an address the kernel picks;
        // nothing else in this process aliases it. It is unmapped only on drop.
        let ptr = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .map_err(os)?;
        Ok(Region {
            base: ptr.cast(),
            len,
            capacity,
        })
    }

    fn ring_base(&self, dir: Dir) -> *mut u8 {
        let at = match dir {
            Dir::ToWorker => HEADER,
            Dir::ToMaster => HEADER + self.capacity,
        };
        // SAFETY: `at` is within the mapping (HEADER + 2 * capacity == len).
        unsafe { self.base.as_ptr().add(at) }
    }
}

impl Mem for Region {
    fn capacity(&self) -> usize {
        self.capacity
    }

    fn word(&self, w: Word) -> &AtomicU64 {
        let at = w.index() * LINE;
        debug_assert!(at + 8 <= HEADER);
        // SAFETY: the word lies inside the header page, is 8-byte aligned (the mapping is
        // page aligned, LINE is a multiple of 8) and lives as long as `self`; every access
        // to it, on either side, is atomic.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(at).cast()) }
    }

    fn claim_word(&self, stream: usize) -> &AtomicU64 {
        assert!(
            stream < crate::ring::MAX_STREAMS,
            "claim word out of bounds"
        );
        // SAFETY: inside the header (checked above and by the const assertion), 8-byte
        // aligned, and only ever accessed atomically.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(CLAIMS + 8 * stream).cast()) }
    }

    fn write_at(&self, dir: Dir, off: usize, src: &[u8]) {
        assert!(off + src.len() <= self.capacity, "ring write out of bounds");
        // SAFETY: the destination range is inside the ring (checked above) and the ring
        // protocol gives this side those bytes until it publishes them; `src` is private
        // memory, so the ranges cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ring_base(dir).add(off), src.len())
        }
    }

    fn read_at(&self, dir: Dir, off: usize, len: usize, out: &mut BytesMut) {
        assert!(off + len <= self.capacity, "ring read out of bounds");
        out.reserve(len);
        // SAFETY: the source range is inside the ring (checked above); the destination is
        // `len` bytes of `out`'s spare capacity (reserved above), which the copy initialises
        // before `advance_mut` exposes them. A peer writing the same bytes concurrently can
        // only change their values, which the decoder treats as untrusted anyway.
        unsafe {
            let dst = out.chunk_mut().as_mut_ptr();
            std::ptr::copy_nonoverlapping(self.ring_base(dir).add(off), dst, len);
            out.advance_mut(len);
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly the mapping made in `map`, unmapped once.
        let _ = unsafe { munmap(self.base.cast(), self.len) };
    }
}

/// An eventfd doorbell.
#[derive(Debug)]
pub struct Bell(OwnedFd);

impl Bell {
    /// A new bell (non-blocking, close-on-exec).
    pub fn new() -> io::Result<Bell> {
        EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
            .map(|e| Bell(e.into()))
            .map_err(os)
    }

    /// Wraps a descriptor received from the master (an eventfd it made with [`Bell::new`]).
    pub fn from_fd(fd: OwnedFd) -> Bell {
        Bell(fd)
    }

    /// Wakes the sleeper.
    pub fn ring(&self) {
        // EAGAIN means the counter is saturated: the sleeper is woken anyway.
        let _ = nix::unistd::write(&self.0, &1u64.to_ne_bytes());
    }

    /// Resets the bell after waking (non-blocking).
    pub fn clear(&self) {
        let mut b = [0u8; 8];
        let _ = nix::unistd::read(&self.0, &mut b);
    }

    /// A duplicate descriptor, to send to the worker.
    pub fn to_owned_fd(&self) -> io::Result<OwnedFd> {
        self.0.try_clone()
    }
}

impl AsFd for Bell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl From<Bell> for OwnedFd {
    fn from(b: Bell) -> OwnedFd {
        b.0
    }
}

impl AsRawFd for Bell {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{Consumer, Producer};

    /// The mapping made from the descriptor (as the worker does) sees what the creator's
    /// mapping writes: the same pages, not a copy.
    #[test]
    fn both_mappings_share_the_rings() {
        let (master, fd) = Region::create(4096).expect("region");
        let worker = Region::open(&fd).expect("open");
        assert_eq!(worker.capacity(), 4096);
        let mut p = Producer::new(Dir::ToWorker);
        let mut c = Consumer::new(Dir::ToWorker);
        let data: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
        let mut out = BytesMut::new();
        let mut at = 0;
        while at < data.len() {
            at += p.push(&master, &data[at..]).expect("push");
            c.pull(&worker, &mut out, usize::MAX).expect("pull");
        }
        assert_eq!(&out[..], &data[..]);
    }

    /// A hostile worker cannot truncate the region under the master's mapping.
    #[test]
    fn the_region_cannot_be_resized() {
        let (_master, fd) = Region::create(4096).expect("region");
        assert!(
            nix::unistd::ftruncate(&fd, 0).is_err(),
            "shrinking is sealed"
        );
        assert!(
            nix::unistd::ftruncate(&fd, 1 << 20).is_err(),
            "growing is sealed"
        );
    }

    #[test]
    fn a_region_of_the_wrong_size_is_refused() {
        let fd = nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .expect("memfd");
        nix::unistd::ftruncate(&fd, 5000).expect("truncate");
        assert!(Region::open(&fd).is_err());
    }
}
