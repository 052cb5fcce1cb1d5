//! The master <-> worker frames: length-prefixed, carried by the shared-memory rings of
//! [`crate::ring`].
//!
//! Every frame is `len: u32 LE` (bytes after this field), `kind: u8`, `stream: u32 LE`, then a
//! kind-specific payload. `stream` is one of the worker's streams (`--threads` of them, plus
//! its look-ahead), so a worker multiplexes its requests on one pair of rings. Encoding and
//! decoding are pure functions over byte buffers (fuzzed and property-tested); the I/O lives
//! elsewhere.
//!
//! Master -> worker: `Request` (the CGI environ pairs and the whole body), `RequestFile` (the
//! same with the body in a temporary file whose descriptor crosses the worker's socket just
//! before), `Cancel` (the client went away), `Credit` (the stream's response may now carry
//! more body bytes), `Shutdown` (finish in-flight requests and exit).
//! Worker -> master: `Ready`, `Head` (status, headers and the first body bytes; `end` when that
//! is the whole response), `Body`, `End`, `Abort` (the app failed after the head was sent),
//! `Fatal` (the worker cannot run the app; message for the log).
//!
//! Flow control: each stream's response may carry, in its `Head` and `Body` frames together,
//! as many body bytes as the master's last `Credit` for it allows in total, or the window the
//! worker was started with before any ([`crate::spool`]). The master holds what it accepted,
//! so one stream's slow client never stops the others; a worker that sends more breaks the
//! protocol (its link ends, as for any malformed frame).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest frame the master accepts from a worker: a head with up to 1 MiB of body and its
/// headers, or a body piece (workers split larger bodies).
pub const MAX_RESPONSE_FRAME: usize = 4 << 20;

/// Bytes before the payload: length, kind, stream.
pub const HEADER_LEN: usize = 9;
/// Offset of the stream id within a frame, for [`set_stream`].
const STREAM_OFFSET: usize = 5;

/// Frame kinds, as sent on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Master -> worker: run a request.
    Request = 1,
    /// Master -> worker: the client of this stream is gone.
    Cancel = 2,
    /// Master -> worker: finish and exit.
    Shutdown = 3,
    /// Master -> worker: the stream's response may carry more body bytes.
    Credit = 4,
    /// Master -> worker: run a request whose body is in a file passed on the socket.
    RequestFile = 5,
    /// Worker -> master: ready to take requests.
    Ready = 16,
    /// Worker -> master: status line and headers, maybe the body.
    Head = 17,
    /// Worker -> master: more body.
    Body = 18,
    /// Worker -> master: the response is complete.
    End = 19,
    /// Worker -> master: the response failed after its head was sent.
    Abort = 20,
    /// Worker -> master: the worker cannot serve (e.g. the app failed to import).
    Fatal = 21,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Request,
            2 => Kind::Cancel,
            3 => Kind::Shutdown,
            4 => Kind::Credit,
            5 => Kind::RequestFile,
            16 => Kind::Ready,
            17 => Kind::Head,
            18 => Kind::Body,
            19 => Kind::End,
            20 => Kind::Abort,
            21 => Kind::Fatal,
            _ => return None,
        })
    }
}

/// A decoded frame. Byte fields share the receive buffer (no copies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Run a request on `stream`.
    Request {
        /// Stream.
        stream: u32,
        /// CGI environ pairs (keys ASCII, values latin-1 bytes).
        env: Vec<(Bytes, Bytes)>,
        /// The whole request body.
        body: Bytes,
    },
    /// Run a request on `stream` whose body is the file sent on the socket with it.
    RequestFile {
        /// Stream.
        stream: u32,
        /// CGI environ pairs.
        env: Vec<(Bytes, Bytes)>,
        /// Bytes of the body (the file's length).
        len: u64,
    },
    /// The client of `stream` is gone.
    Cancel {
        /// Stream.
        stream: u32,
    },
    /// The response on `stream` may carry `allowed` body bytes in total.
    Credit {
        /// Stream.
        stream: u32,
        /// Body bytes, head's included, the response may have sent in all.
        allowed: u64,
    },
    /// Finish in-flight requests and exit.
    Shutdown,
    /// The worker is ready.
    Ready {
        /// Its process id.
        pid: u32,
    },
    /// Response head.
    Head(Head),
    /// More body for `stream`.
    Body {
        /// Stream.
        stream: u32,
        /// Body bytes.
        data: Bytes,
    },
    /// The response on `stream` is complete.
    End {
        /// Stream.
        stream: u32,
    },
    /// The response on `stream` failed after its head.
    Abort {
        /// Stream.
        stream: u32,
        /// Why, for the log.
        reason: Bytes,
    },
    /// The worker cannot serve.
    Fatal {
        /// Why, for the log (may hold a traceback).
        message: Bytes,
    },
}

/// A response head, possibly with the first (or only) body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Stream.
    pub stream: u32,
    /// True when `body` is the whole response (no `Body`/`End` follow).
    pub end: bool,
    /// Status code.
    pub status: u16,
    /// Reason phrase as the app gave it.
    pub reason: Bytes,
    /// Header names and values (latin-1 bytes).
    pub headers: Vec<(Bytes, Bytes)>,
    /// First body bytes.
    pub body: Bytes,
}

/// A frame that cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// The length prefix is above the configured maximum.
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The length prefix is smaller than a frame header.
    #[error("frame length {0} is shorter than a frame header")]
    TooShort(usize),
    /// An unknown kind byte.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The payload ends inside a field.
    #[error("truncated {0} in frame payload")]
    Truncated(&'static str),
    /// A length or count does not fit its wire field.
    #[error("{0} too long to encode")]
    Overflow(&'static str),
}

/// Decodes one frame from the front of `buf`, if a whole one is there, and removes it.
/// `Ok(None)` means "need more bytes". Frames larger than `max_len` are an error.
pub fn decode(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, ProtoError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max_len {
        return Err(ProtoError::TooLarge { len, max: max_len });
    }
    if len < HEADER_LEN - 4 {
        return Err(ProtoError::TooShort(len));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(4 + len).freeze();
    frame.advance(4);
    let kind_byte = frame.get_u8();
    let stream = frame.get_u32_le();
    let kind = Kind::from_u8(kind_byte).ok_or(ProtoError::UnknownKind(kind_byte))?;
    let mut p = frame;
    Ok(Some(match kind {
        Kind::Request => Frame::Request {
            stream,
            env: take_environ(&mut p)?,
            body: p,
        },
        Kind::RequestFile => {
            let env = take_environ(&mut p)?;
            let len = take_u64(&mut p, "body length")?;
            Frame::RequestFile { stream, env, len }
        }
        Kind::Cancel => Frame::Cancel { stream },
        Kind::Credit => Frame::Credit {
            stream,
            allowed: take_u64(&mut p, "credit")?,
        },
        Kind::Shutdown => Frame::Shutdown,
        Kind::Ready => Frame::Ready {
            pid: take_u32(&mut p, "pid")?,
        },
        Kind::Head => {
            let flags = take_u8(&mut p, "flags")?;
            let status = take_u16(&mut p, "status")?;
            let reason = take_bytes16(&mut p, "reason")?;
            let n = take_u16(&mut p, "header count")?;
            let mut headers = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let k = take_bytes16(&mut p, "header name")?;
                let v = take_bytes32(&mut p, "header value")?;
                headers.push((k, v));
            }
            Frame::Head(Head {
                stream,
                end: flags & 1 != 0,
                status,
                reason,
                headers,
                body: p,
            })
        }
        Kind::Body => Frame::Body { stream, data: p },
        Kind::End => Frame::End { stream },
        Kind::Abort => Frame::Abort { stream, reason: p },
        Kind::Fatal => Frame::Fatal { message: p },
    }))
}

fn take_environ(p: &mut Bytes) -> Result<Vec<(Bytes, Bytes)>, ProtoError> {
    let n = take_u16(p, "environ count")?;
    let mut env = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let k = take_bytes16(p, "environ key")?;
        let v = take_bytes32(p, "environ value")?;
        env.push((k, v));
    }
    Ok(env)
}

fn take_u64(p: &mut Bytes, what: &'static str) -> Result<u64, ProtoError> {
    if p.remaining() < 8 {
        return Err(ProtoError::Truncated(what));
    }
    Ok(p.get_u64_le())
}

fn take_u8(p: &mut Bytes, what: &'static str) -> Result<u8, ProtoError> {
    if p.remaining() < 1 {
        return Err(ProtoError::Truncated(what));
    }
    Ok(p.get_u8())
}

fn take_u16(p: &mut Bytes, what: &'static str) -> Result<u16, ProtoError> {
    if p.remaining() < 2 {
        return Err(ProtoError::Truncated(what));
    }
    Ok(p.get_u16_le())
}

fn take_u32(p: &mut Bytes, what: &'static str) -> Result<u32, ProtoError> {
    if p.remaining() < 4 {
        return Err(ProtoError::Truncated(what));
    }
    Ok(p.get_u32_le())
}

fn take_bytes16(p: &mut Bytes, what: &'static str) -> Result<Bytes, ProtoError> {
    let n = take_u16(p, what)? as usize;
    if p.remaining() < n {
        return Err(ProtoError::Truncated(what));
    }
    Ok(p.split_to(n))
}

fn take_bytes32(p: &mut Bytes, what: &'static str) -> Result<Bytes, ProtoError> {
    let n = take_u32(p, what)? as usize;
    if p.remaining() < n {
        return Err(ProtoError::Truncated(what));
    }
    Ok(p.split_to(n))
}

/// Writes frames into a buffer. Each `begin_*` starts a frame; [`FrameBuf::finish`] patches
/// its length. Several frames may be written back to back into one buffer.
pub struct FrameBuf<'a> {
    out: &'a mut BytesMut,
    start: usize,
}

impl<'a> FrameBuf<'a> {
    /// Starts a frame of `kind` on `stream` at the end of `out`.
    pub fn begin(out: &'a mut BytesMut, kind: Kind, stream: u32) -> Self {
        let start = out.len();
        out.put_u32_le(0);
        out.put_u8(kind as u8);
        out.put_u32_le(stream);
        FrameBuf { out, start }
    }

    /// Appends raw payload bytes.
    pub fn put(&mut self, bytes: &[u8]) {
        self.out.put_slice(bytes);
    }

    /// Appends a u8.
    pub fn put_u8(&mut self, v: u8) {
        self.out.put_u8(v);
    }

    /// Appends a u16.
    pub fn put_u16(&mut self, v: u16) {
        self.out.put_u16_le(v);
    }

    /// Appends a u32.
    pub fn put_u32(&mut self, v: u32) {
        self.out.put_u32_le(v);
    }

    /// Appends a u64.
    pub fn put_u64(&mut self, v: u64) {
        self.out.put_u64_le(v);
    }

    /// Changes the kind of the frame being written.
    pub fn set_kind(&mut self, kind: Kind) {
        self.out[self.start + 4] = kind as u8;
    }

    /// Appends a u16-length-prefixed byte string.
    pub fn put_bytes16(&mut self, b: &[u8], what: &'static str) -> Result<(), ProtoError> {
        let n = u16::try_from(b.len()).map_err(|_| ProtoError::Overflow(what))?;
        self.out.put_u16_le(n);
        self.out.put_slice(b);
        Ok(())
    }

    /// Appends a u32-length-prefixed byte string.
    pub fn put_bytes32(&mut self, b: &[u8], what: &'static str) -> Result<(), ProtoError> {
        let n = u32::try_from(b.len()).map_err(|_| ProtoError::Overflow(what))?;
        self.out.put_u32_le(n);
        self.out.put_slice(b);
        Ok(())
    }

    /// Offset in the buffer where the next byte goes, for patching counts later.
    pub fn position(&self) -> usize {
        self.out.len()
    }

    /// Overwrites a u16 at `pos` (a count written before its items).
    pub fn patch_u16(&mut self, pos: usize, v: u16) {
        self.out[pos..pos + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// Completes the frame by writing its length.
    pub fn finish(self) -> Result<(), ProtoError> {
        let len = self.out.len() - self.start - 4;
        let len = u32::try_from(len).map_err(|_| ProtoError::Overflow("frame"))?;
        self.out[self.start..self.start + 4].copy_from_slice(&len.to_le_bytes());
        Ok(())
    }
}

/// Sets the stream id of the single frame held in `frame` (a request encoded before it was
/// known which stream would run it).
pub fn set_stream(frame: &mut [u8], stream: u32) {
    frame[STREAM_OFFSET..STREAM_OFFSET + 4].copy_from_slice(&stream.to_le_bytes());
}

/// Encodes a frame without payload-specific fields.
pub fn encode_simple(out: &mut BytesMut, kind: Kind, stream: u32, payload: &[u8]) {
    let mut f = FrameBuf::begin(out, kind, stream);
    f.put(payload);
    f.finish()
        .expect("simple frames are small or were bounded by the caller");
}

/// Encodes a `Ready` frame.
pub fn encode_ready(out: &mut BytesMut, pid: u32) {
    encode_simple(out, Kind::Ready, 0, &pid.to_le_bytes());
}

/// Encodes a `Credit` frame: `stream` may have sent `allowed` body bytes in all.
pub fn encode_credit(out: &mut BytesMut, stream: u32, allowed: u64) {
    encode_simple(out, Kind::Credit, stream, &allowed.to_le_bytes());
}

/// Encodes a response head (see [`Head`]).
pub fn encode_head<'h>(
    out: &mut BytesMut,
    stream: u32,
    end: bool,
    status: u16,
    reason: &[u8],
    headers: impl ExactSizeIterator<Item = (&'h [u8], &'h [u8])>,
    body: &[&[u8]],
) -> Result<(), ProtoError> {
    let n = u16::try_from(headers.len()).map_err(|_| ProtoError::Overflow("header count"))?;
    let mut f = FrameBuf::begin(out, Kind::Head, stream);
    f.put_u8(u8::from(end));
    f.put_u16(status);
    f.put_bytes16(reason, "reason")?;
    f.put_u16(n);
    for (k, v) in headers {
        f.put_bytes16(k, "header name")?;
        f.put_bytes32(v, "header value")?;
    }
    for part in body {
        f.put(part);
    }
    f.finish()
}

/// Encodes a request frame: environ pairs pushed one by one, then the body (stream 0; see
/// [`set_stream`]).
pub struct RequestEncoder<'a> {
    frame: FrameBuf<'a>,
    count_at: usize,
    count: u32,
    error: Option<ProtoError>,
}

impl<'a> RequestEncoder<'a> {
    /// Starts a request frame at the end of `out`.
    pub fn new(out: &'a mut BytesMut) -> Self {
        let mut frame = FrameBuf::begin(out, Kind::Request, 0);
        let count_at = frame.position();
        frame.put_u16(0);
        RequestEncoder {
            frame,
            count_at,
            count: 0,
            error: None,
        }
    }

    /// Adds one environ pair; the first encoding error is kept and reported by `finish`.
    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let result = self
            .frame
            .put_bytes16(key, "environ key")
            .and_then(|_| self.frame.put_bytes32(value, "environ value"));
        match result {
            Ok(()) => self.count += 1,
            Err(e) => self.error = Some(e),
        }
    }

    /// Appends the body and completes the frame.
    pub fn finish(mut self, body: &[u8]) -> Result<(), ProtoError> {
        self.close_environ()?;
        self.frame.put(body);
        self.frame.finish()
    }

    /// Completes the frame as a `RequestFile`: the body, `len` bytes, travels as a file.
    pub fn finish_file(mut self, len: u64) -> Result<(), ProtoError> {
        self.close_environ()?;
        self.frame.put_u64(len);
        self.frame.set_kind(Kind::RequestFile);
        self.frame.finish()
    }

    fn close_environ(&mut self) -> Result<(), ProtoError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let n = u16::try_from(self.count).map_err(|_| ProtoError::Overflow("environ count"))?;
        self.frame.patch_u16(self.count_at, n);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    fn roundtrip(buf: &mut BytesMut) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = decode(buf, MAX).expect("valid frames") {
            out.push(f);
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn request_round_trip_and_stream_patch() {
        let mut buf = BytesMut::new();
        let mut enc = RequestEncoder::new(&mut buf);
        enc.push(b"REQUEST_METHOD", b"POST");
        enc.push(b"PATH_INFO", b"/x");
        enc.finish(b"hello").expect("encodes");
        set_stream(&mut buf, 3);
        let frames = roundtrip(&mut buf);
        assert_eq!(
            frames,
            vec![Frame::Request {
                stream: 3,
                env: vec![
                    (
                        Bytes::from_static(b"REQUEST_METHOD"),
                        Bytes::from_static(b"POST")
                    ),
                    (Bytes::from_static(b"PATH_INFO"), Bytes::from_static(b"/x")),
                ],
                body: Bytes::from_static(b"hello"),
            }]
        );
    }

    #[test]
    fn request_file_and_credit_round_trip() {
        let mut buf = BytesMut::new();
        let mut enc = RequestEncoder::new(&mut buf);
        enc.push(b"REQUEST_METHOD", b"PUT");
        enc.finish_file(1 << 33).expect("encodes");
        set_stream(&mut buf, 2);
        encode_credit(&mut buf, 2, u64::MAX - 1);
        let frames = roundtrip(&mut buf);
        assert_eq!(
            frames,
            vec![
                Frame::RequestFile {
                    stream: 2,
                    env: vec![(
                        Bytes::from_static(b"REQUEST_METHOD"),
                        Bytes::from_static(b"PUT")
                    )],
                    len: 1 << 33,
                },
                Frame::Credit {
                    stream: 2,
                    allowed: u64::MAX - 1
                },
            ]
        );
        let mut short = BytesMut::new();
        encode_simple(&mut short, Kind::Credit, 1, &[1, 2, 3]);
        assert_eq!(
            decode(&mut short, MAX),
            Err(ProtoError::Truncated("credit"))
        );
    }

    #[test]
    fn head_body_end_back_to_back() {
        let mut buf = BytesMut::new();
        let hdrs: Vec<(&[u8], &[u8])> = vec![(b"Content-Type", b"text/plain")];
        encode_head(
            &mut buf,
            1,
            false,
            200,
            b"OK",
            hdrs.into_iter(),
            &[b"ab", b"c"],
        )
        .expect("encodes");
        encode_simple(&mut buf, Kind::Body, 1, b"more");
        encode_simple(&mut buf, Kind::End, 1, b"");
        encode_ready(&mut buf, 42);
        let frames = roundtrip(&mut buf);
        assert_eq!(frames.len(), 4);
        match &frames[0] {
            Frame::Head(h) => {
                assert_eq!((h.stream, h.end, h.status), (1, false, 200));
                assert_eq!(&h.reason[..], b"OK");
                assert_eq!(&h.body[..], b"abc");
                assert_eq!(h.headers.len(), 1);
            }
            other => panic!("expected head, got {other:?}"),
        }
        assert_eq!(
            frames[1],
            Frame::Body {
                stream: 1,
                data: Bytes::from_static(b"more")
            }
        );
        assert_eq!(frames[2], Frame::End { stream: 1 });
        assert_eq!(frames[3], Frame::Ready { pid: 42 });
    }

    #[test]
    fn partial_input_waits_for_more() {
        let mut whole = BytesMut::new();
        encode_simple(&mut whole, Kind::Body, 0, b"0123456789");
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert_eq!(decode(&mut part, MAX), Ok(None), "cut at {cut}");
            assert_eq!(part.len(), cut, "nothing consumed");
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut big = BytesMut::from(&(MAX as u32 + 1).to_le_bytes()[..]);
        assert!(matches!(
            decode(&mut big, MAX),
            Err(ProtoError::TooLarge { .. })
        ));
        let mut short = BytesMut::from(&[1u8, 0, 0, 0, 0][..]);
        assert_eq!(decode(&mut short, MAX), Err(ProtoError::TooShort(1)));
        let mut unknown = BytesMut::new();
        encode_simple(&mut unknown, Kind::End, 0, b"");
        unknown[4] = 99;
        assert_eq!(decode(&mut unknown, MAX), Err(ProtoError::UnknownKind(99)));
        let mut trunc = BytesMut::new();
        encode_simple(&mut trunc, Kind::Ready, 0, b"\x01");
        assert_eq!(decode(&mut trunc, MAX), Err(ProtoError::Truncated("pid")));
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder, and it never consumes a partial frame.
        #[test]
        fn decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&data[..]);
            loop {
                let before = buf.len();
                match decode(&mut buf, 4096) {
                    Ok(Some(_)) => prop_assert!(buf.len() < before),
                    Ok(None) | Err(_) => break,
                }
            }
        }

        /// Any head encodes and decodes to itself, whatever way the bytes are split.
        #[test]
        fn head_round_trips(
            status in 100u16..1000,
            reason in proptest::collection::vec(any::<u8>(), 0..40),
            headers in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 1..20), proptest::collection::vec(any::<u8>(), 0..60)), 0..8),
            body in proptest::collection::vec(any::<u8>(), 0..300),
            end in any::<bool>(),
            split in 0usize..400,
        ) {
            let mut buf = BytesMut::new();
            encode_head(&mut buf, 7, end, status, &reason,
                headers.iter().map(|(k, v)| (&k[..], &v[..])).collect::<Vec<_>>().into_iter(), &[&body]).expect("encodes");
            let split = split.min(buf.len());
            let mut first = BytesMut::from(&buf[..split]);
            let got = match decode(&mut first, MAX).expect("prefix is valid") {
                Some(f) => f,
                None => {
                    first.extend_from_slice(&buf[split..]);
                    decode(&mut first, MAX).expect("valid").expect("complete")
                }
            };
            let want = Frame::Head(Head {
                stream: 7, end, status, reason: Bytes::from(reason),
                headers: headers.into_iter().map(|(k, v)| (Bytes::from(k), Bytes::from(v))).collect(),
                body: Bytes::from(body),
            });
            prop_assert_eq!(got, want);
        }
    }
}
