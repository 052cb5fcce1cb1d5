//! Response buffering in the master, as nginx's proxy buffering does it: each streamed response
//! has a [`Spool`] between its worker's link (which pushes what the worker sends, and never
//! waits) and the client's connection (which takes it out at the client's pace). A response
//! keeps up to `memory` bytes in memory; beyond that its bytes go to a temporary file of its
//! own (unnamed: created with `O_TMPFILE` where the file system has it, otherwise created and
//! unlinked at once), whose consumed part is freed as the client reads it (`fallocate`
//! punching holes) and which is closed, so gone, when the response is.
//!
//! The worker cannot send more than the spool may hold: the link gives each stream a credit
//! (the body bytes it may send in total, [`crate::proto::Kind::Credit`]) of `window` =
//! `memory + spill` bytes beyond what its client has taken, and grants more as the client
//! reads. So a response that fits in the window never holds its worker, whatever the client's
//! speed; a larger one to a slower client makes that one stream wait (its worker thread
//! blocks on the credit; the worker's other threads and the link go on).
//!
//! [`place`] and [`Credit`] are the pure decisions; the rest moves bytes.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

/// Most bytes read from a spill file at once.
const READ_CHUNK: usize = 256 * 1024;
/// Consumed file bytes are freed in steps of this many (a multiple of any block size).
const FREE_STEP: u64 = 1 << 20;

/// How responses are buffered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Bytes of a response held in memory (`--response-buffer`).
    pub memory: usize,
    /// Bytes of a response held in its temporary file beyond that (`--response-spill`).
    pub spill: u64,
    /// Where temporary files go (`--temp-dir`).
    pub dir: PathBuf,
}

impl SpoolConfig {
    /// The response settings of `--response-buffer`, `--response-spill`, `--temp-dir`.
    pub fn from_settings(b: &wsgiscale_core::config::BufferConfig) -> SpoolConfig {
        SpoolConfig {
            memory: usize::try_from(b.response_buffer).unwrap_or(usize::MAX),
            spill: b.response_spill,
            dir: b.temp_dir(),
        }
    }

    /// The largest body piece a worker sends in one frame: a piece that fits the memory
    /// budget stays in memory when the client keeps up.
    pub fn piece(&self) -> usize {
        self.memory.clamp(1, crate::worker::wsgi::MAX_PIECE)
    }

    /// The credit window: the most body bytes of one response the master holds.
    pub fn window(&self) -> u64 {
        (self.memory as u64).saturating_add(self.spill)
    }
}

/// Where new bytes of a response go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// In memory: the file is empty and they fit the memory budget.
    Memory,
    /// To the end of the file: they do not fit in memory, or the file still has unread
    /// bytes (which are older, so the new ones must come after them).
    File,
}

/// Decides where `incoming` bytes go, given the bytes in memory and unread in the file.
pub fn place(in_memory: usize, in_file: u64, incoming: usize, memory: usize) -> Place {
    if in_file == 0 && in_memory.saturating_add(incoming) <= memory {
        Place::Memory
    } else {
        Place::File
    }
}

/// A stream's credit: the body bytes the worker may have sent in total. The link grants
/// `taken + window` (the client's progress plus the window); a new grant is worth a frame
/// only once it has moved by half a window, as HTTP/2's window updates are batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    /// The window.
    pub window: u64,
    /// The last grant (the initial one is the window itself).
    pub granted: u64,
}

impl Credit {
    /// A stream's credit at its start.
    pub fn new(window: u64) -> Credit {
        Credit {
            window,
            granted: window,
        }
    }

    /// Whether, with `taken` bytes handed to the client, a new grant is due.
    pub fn due(&self, taken: u64) -> bool {
        taken.saturating_add(self.window) >= self.granted.saturating_add(self.window / 2)
            && taken.saturating_add(self.window) > self.granted
    }

    /// Grants what `taken` allows; returns the new total.
    pub fn grant(&mut self, taken: u64) -> u64 {
        self.granted = self.granted.max(taken.saturating_add(self.window));
        self.granted
    }

    /// Whether `received` body bytes in total stay within the credit.
    pub fn allows(&self, received: u64) -> bool {
        received <= self.granted
    }
}

/// Why a spooled response stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The worker aborted the response (or died).
    #[error("response aborted")]
    Aborted,
    /// The temporary file failed.
    #[error("response spill file: {0}")]
    File(#[source] io::Error),
}

/// Counters of spilled responses (shared with the metrics registry).
#[derive(Debug, Clone, Default)]
pub struct SpillStats {
    /// Temporary files created.
    pub files: Counter,
    /// Bytes written to them.
    pub bytes: Counter,
    /// Responses cut short because their file failed.
    pub errors: Counter,
}

#[derive(Debug)]
struct Spill {
    file: File,
    /// Offsets in the file: consumed up to `read`, written up to `write`, freed up to `freed`.
    read: u64,
    write: u64,
    freed: u64,
}

impl Spill {
    fn unread(&self) -> u64 {
        self.write - self.read
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Done,
    Aborted,
}

#[derive(Debug)]
struct State {
    /// Bytes in memory, oldest first; all older than the file's unread bytes.
    memory: VecDeque<Bytes>,
    in_memory: usize,
    spill: Option<Spill>,
    /// Bytes handed to the client.
    taken: u64,
    credit: Credit,
    /// The link has been told that a grant is due (it takes it with [`Spool::grant`]).
    credit_flagged: bool,
    end: Option<End>,
    /// The client's side was dropped (it went away, or hyper stopped polling the body).
    gone: bool,
    waker: Option<Waker>,
}

/// One response's buffer. The link holds it as [`Spool`]; the client's body as
/// [`SpoolReader`].
#[derive(Debug)]
pub struct Spool {
    state: Mutex<State>,
    cfg: Arc<SpoolConfig>,
    /// Wakes the link: a grant is due, or the client went away.
    link: Arc<Notify>,
    stats: SpillStats,
}

impl Spool {
    /// A new, empty spool whose link is woken through `link`.
    pub fn new(cfg: Arc<SpoolConfig>, link: Arc<Notify>, stats: SpillStats) -> Arc<Spool> {
        Arc::new(Spool {
            state: Mutex::new(State {
                memory: VecDeque::new(),
                in_memory: 0,
                spill: None,
                taken: 0,
                credit: Credit::new(cfg.window()),
                credit_flagged: false,
                end: None,
                gone: false,
                waker: None,
            }),
            cfg,
            link,
            stats,
        })
    }

    /// The consumer's end.
    pub fn reader(self: &Arc<Self>) -> SpoolReader {
        SpoolReader {
            spool: self.clone(),
        }
    }

    /// The worker's credit now: the most body bytes it may have sent in total.
    pub fn granted(&self) -> u64 {
        self.state.lock().credit.granted
    }

    /// Whether the client went away.
    pub fn is_gone(&self) -> bool {
        self.state.lock().gone
    }

    /// A grant that is due (the new total credit), at most once per flag.
    pub fn grant(&self) -> Option<u64> {
        let mut st = self.state.lock();
        if !st.credit_flagged || st.end.is_some() || st.gone {
            return None;
        }
        st.credit_flagged = false;
        let taken = st.taken;
        Some(st.credit.grant(taken))
    }

    /// Adds body bytes. Never waits: they go to memory or to the file. A file that cannot
    /// be created or written ends the response (the client's connection is closed) and is
    /// reported, so the link stops the worker's stream.
    pub fn push(&self, data: Bytes) -> Result<(), SpoolError> {
        if data.is_empty() {
            return Ok(());
        }
        let mut st = self.state.lock();
        if st.gone || st.end.is_some() {
            return Ok(());
        }
        let in_file = st.spill.as_ref().map_or(0, Spill::unread);
        let result = match place(st.in_memory, in_file, data.len(), self.cfg.memory) {
            Place::Memory => {
                st.in_memory += data.len();
                st.memory.push_back(data);
                Ok(())
            }
            Place::File => self.write_file(&mut st, &data),
        };
        if result.is_err() {
            self.stats.errors.inc();
            st.end = Some(End::Aborted);
        }
        if let Some(w) = st.waker.take() {
            w.wake();
        }
        result
    }

    fn write_file(&self, st: &mut State, data: &[u8]) -> Result<(), SpoolError> {
        if st.spill.is_none() {
            let file = tempfile::tempfile_in(&self.cfg.dir).map_err(SpoolError::File)?;
            self.stats.files.inc();
            st.spill = Some(Spill {
                file,
                read: 0,
                write: 0,
                freed: 0,
            });
        }
        let spill = st.spill.as_mut().expect("created above");
        spill
            .file
            .write_all_at(data, spill.write)
            .map_err(SpoolError::File)?;
        spill.write += data.len() as u64;
        self.stats.bytes.inc_by(data.len() as u64);
        Ok(())
    }

    /// The worker ended the response.
    pub fn finish(&self) {
        self.end(End::Done);
    }

    /// The response failed part-way: the client's connection is closed.
    pub fn abort(&self) {
        self.end(End::Aborted);
    }

    fn end(&self, how: End) {
        let mut st = self.state.lock();
        if st.end.is_none() {
            st.end = Some(how);
        }
        if let Some(w) = st.waker.take() {
            w.wake();
        }
    }
}

/// The client's end of a [`Spool`]: yields the response's bytes in order.
#[derive(Debug)]
pub struct SpoolReader {
    spool: Arc<Spool>,
}

impl SpoolReader {
    /// The next bytes; `None` at the end of the response.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, SpoolError>>> {
        let spool = &*self.spool;
        let mut st = spool.state.lock();
        let st = &mut *st;
        let next = match st.memory.pop_front() {
            Some(b) => {
                st.in_memory -= b.len();
                Some(Ok(b))
            }
            None => st.spill.as_mut().filter(|s| s.unread() > 0).map(read_file),
        };
        match next {
            Some(Ok(b)) => {
                st.taken += b.len() as u64;
                if !st.credit_flagged && st.end.is_none() && st.credit.due(st.taken) {
                    st.credit_flagged = true;
                    spool.link.notify_one();
                }
                Poll::Ready(Some(Ok(b)))
            }
            Some(Err(e)) => {
                spool.stats.errors.inc();
                st.end = Some(End::Aborted);
                // The worker may still be sending: the link stops it.
                st.gone = true;
                spool.link.notify_one();
                Poll::Ready(Some(Err(SpoolError::File(e))))
            }
            None => match st.end {
                Some(End::Done) => Poll::Ready(None),
                Some(End::Aborted) => Poll::Ready(Some(Err(SpoolError::Aborted))),
                None => {
                    st.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            },
        }
    }

    /// Whether nothing is left: the response ended and every byte was taken.
    pub fn is_done(&self) -> bool {
        let st = self.spool.state.lock();
        st.end == Some(End::Done)
            && st.in_memory == 0
            && st.spill.as_ref().is_none_or(|s| s.unread() == 0)
    }
}

impl Drop for SpoolReader {
    fn drop(&mut self) {
        let mut st = self.spool.state.lock();
        st.gone = true;
        // What is buffered is of no use any more: free it now, not when the link lets go.
        st.memory.clear();
        st.in_memory = 0;
        st.spill = None;
        if st.end.is_none() {
            self.spool.link.notify_one();
        }
    }
}

/// Reads the next bytes of the file and frees what has been read in whole steps; a file read
/// to its end is emptied, so the next spill starts at its beginning.
fn read_file(spill: &mut Spill) -> io::Result<Bytes> {
    let n = spill.unread().min(READ_CHUNK as u64) as usize;
    let mut buf = BytesMut::zeroed(n);
    spill.file.read_exact_at(&mut buf, spill.read)?;
    spill.read += n as u64;
    if spill.read == spill.write {
        spill.file.set_len(0)?;
        spill.read = 0;
        spill.write = 0;
        spill.freed = 0;
    } else if spill.read - spill.freed >= FREE_STEP {
        let upto = spill.read - spill.read % FREE_STEP;
        free_range(&spill.file, spill.freed, upto - spill.freed)?;
        spill.freed = upto;
    }
    Ok(buf.freeze())
}

/// Gives the blocks of `len` bytes at `offset` back to the file system (the file keeps its
/// size; those bytes read as zeros).
fn free_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Ok(());
    };
    match fallocate(
        file,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    ) {
        Ok(()) => Ok(()),
        // A file system without hole punching keeps the blocks until the file is emptied or
        // closed; that only costs disk, so it is not an error.
        Err(nix::Error::EOPNOTSUPP) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::MetadataExt;

    fn cfg(memory: usize, spill: u64) -> Arc<SpoolConfig> {
        Arc::new(SpoolConfig {
            memory,
            spill,
            dir: std::env::temp_dir(),
        })
    }

    fn spool(memory: usize) -> (Arc<Spool>, SpoolReader, Arc<Notify>) {
        let link = Arc::new(Notify::new());
        let s = Spool::new(cfg(memory, 1 << 30), link.clone(), SpillStats::default());
        let r = s.reader();
        (s, r, link)
    }

    /// Takes what is ready now (`None`: nothing yet; `Some(None)`: the end).
    fn poll(r: &mut SpoolReader) -> Option<Option<Result<Bytes, SpoolError>>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match r.poll_next(&mut cx) {
            Poll::Ready(x) => Some(x),
            Poll::Pending => None,
        }
    }

    #[test]
    fn bytes_stay_in_memory_while_they_fit_and_the_file_is_empty() {
        assert_eq!(place(0, 0, 10, 10), Place::Memory);
        assert_eq!(place(4, 0, 6, 10), Place::Memory);
        assert_eq!(place(4, 0, 7, 10), Place::File, "over the budget");
        assert_eq!(
            place(0, 1, 1, 10),
            Place::File,
            "behind older bytes in the file"
        );
        assert_eq!(place(0, 0, 11, 10), Place::File, "larger than the budget");
    }

    #[test]
    fn credit_is_the_window_beyond_what_the_client_took() {
        let mut c = Credit::new(100);
        assert!(c.allows(100) && !c.allows(101));
        assert!(!c.due(0) && !c.due(49), "less than half a window moved");
        assert!(c.due(50));
        assert_eq!(c.grant(50), 150);
        assert!(c.allows(150) && !c.allows(151));
        assert!(!c.due(60));
        assert_eq!(c.grant(10), 150, "a grant never shrinks");
    }

    proptest! {
        /// The worker's bytes come out as they went in, whatever the budget and however
        /// pushes and takes interleave, and memory never holds more than the budget.
        #[test]
        fn bytes_come_out_in_order_within_the_budget(
            memory in 1usize..64,
            ops in proptest::collection::vec((any::<bool>(), 0usize..100), 1..60),
        ) {
            let (s, mut r, _link) = spool(memory);
            let (mut sent, mut got) = (Vec::new(), Vec::new());
            let mut counter = 0u8;
            for (push, n) in ops {
                if push {
                    let data: Vec<u8> = (0..n).map(|_| { counter = counter.wrapping_add(1); counter }).collect();
                    sent.extend_from_slice(&data);
                    s.push(Bytes::from(data)).expect("push");
                } else if let Some(Some(Ok(b))) = poll(&mut r) {
                    got.extend_from_slice(&b);
                }
                let st = s.state.lock();
                prop_assert!(st.in_memory <= memory);
                prop_assert_eq!(st.in_memory, st.memory.iter().map(Bytes::len).sum::<usize>());
            }
            s.finish();
            loop {
                match poll(&mut r) {
                    Some(Some(Ok(b))) => got.extend_from_slice(&b),
                    Some(None) => break,
                    other => prop_assert!(false, "unexpected {:?}", other.map(|o| o.map(|r| r.map(|b| b.len())))),
                }
            }
            prop_assert_eq!(got, sent);
            prop_assert!(r.is_done());
        }
    }

    /// Whether the temp dir's file system frees punched holes (tmpfs, ext4, xfs, btrfs do).
    fn holes_are_freed() -> bool {
        let f = tempfile::tempfile().expect("temp file");
        f.write_all_at(&vec![1u8; 4 << 20], 0).expect("write");
        f.sync_all().expect("sync");
        let before = f.metadata().expect("stat").blocks();
        free_range(&f, 0, 2 << 20).expect("punch");
        f.metadata().expect("stat").blocks() < before
    }

    /// The file gives back what the client has read, as it reads, and is emptied (so
    /// memory is used again) once it is drained; the client's leaving closes it.
    #[test]
    fn the_file_is_freed_as_it_is_read_and_dropped_with_the_client() {
        let (s, mut r, link) = spool(4096);
        let piece = Bytes::from(vec![7u8; 1 << 20]);
        for _ in 0..8 {
            s.push(piece.clone()).expect("push");
        }
        let blocks = |s: &Spool| {
            let st = s.state.lock();
            st.spill
                .as_ref()
                .map(|f| f.file.metadata().expect("stat").blocks() * 512)
        };
        let mut read = 0;
        let mut read_to = |r: &mut SpoolReader, upto: usize| {
            while read < upto {
                read += poll(r).expect("ready").expect("data").expect("ok").len();
            }
        };
        read_to(&mut r, 5 << 20);
        if holes_are_freed() {
            let held = blocks(&s).expect("a file");
            assert!(
                held <= (8 << 20) - (4 << 20),
                "{held} bytes still allocated after 5 MiB read"
            );
        }
        read_to(&mut r, 8 << 20);
        {
            let st = s.state.lock();
            let spill = st
                .spill
                .as_ref()
                .expect("the file stays for the next spill");
            assert_eq!((spill.read, spill.write), (0, 0));
            assert_eq!(spill.file.metadata().expect("stat").len(), 0, "emptied");
        }
        s.push(Bytes::from_static(b"small")).expect("push");
        assert_eq!(s.state.lock().in_memory, 5, "memory again");
        assert!(!s.is_gone());
        drop(r);
        assert!(s.is_gone());
        assert!(
            s.state.lock().spill.is_none(),
            "the file is closed with the client"
        );
        // The link was told (a stored permit: its next wait returns at once).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(5), link.notified())
                .await
                .expect("the link is woken");
        });
        s.push(Bytes::from_static(b"late"))
            .expect("dropped quietly");
    }

    /// Taking half a window flags a grant for the link, once, and the grant is what was
    /// taken plus the window; an aborted response ends the client's body with an error.
    #[test]
    fn grants_follow_the_client_and_an_abort_reaches_it() {
        let link = Arc::new(Notify::new());
        let s = Spool::new(cfg(64, 64), link, SpillStats::default());
        let mut r = s.reader();
        assert_eq!(s.granted(), 128);
        s.push(Bytes::from(vec![1u8; 64])).expect("push");
        assert_eq!(s.grant(), None, "nothing taken yet");
        let b = poll(&mut r).expect("ready").expect("data").expect("ok");
        assert_eq!(b.len(), 64);
        assert_eq!(s.grant(), Some(192));
        assert_eq!(s.grant(), None, "once");
        s.abort();
        assert!(matches!(poll(&mut r), Some(Some(Err(SpoolError::Aborted)))));
    }
}
