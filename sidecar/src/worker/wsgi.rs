//! PEP 3333 inside a worker: the environ dict, `wsgi.input`, `start_response` with its
//! `write()` callable, `wsgi.file_wrapper`, and running one request through the app.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use pyo3::exceptions::{PyAssertionError, PyOSError, PyStopIteration, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple, PyType};

use super::conn::{Body, Job, Writer};
use super::flow::{Flow, Wait};
use crate::proto::{self, Kind};
use crate::python::format_traceback;

/// Most distinct environ keys kept as interned Python strings.
const KEY_CACHE_LIMIT: usize = 512;
/// Block size for sending a file from `wsgi.file_wrapper`.
const FILE_BLOCK: usize = 256 * 1024;
/// Most body bytes in one frame; larger bodies are sent in pieces (the master bounds the
/// frames it accepts, see [`crate::proto::MAX_RESPONSE_FRAME`], and sets a smaller piece when
/// its memory budget per response is smaller, see [`crate::spool::SpoolConfig::piece`]).
pub const MAX_PIECE: usize = 1 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the data (plain buffers) is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Everything a worker keeps between requests.
pub struct Ctx {
    app: Py<PyAny>,
    version: Py<PyTuple>,
    errors: Py<PyAny>,
    file_wrapper: Py<PyType>,
    multithread: bool,
    /// Most body bytes in one frame.
    piece: usize,
    keys: Mutex<HashMap<Bytes, Py<PyString>>>,
    /// Shared writer to the master.
    pub out: Arc<Writer>,
    /// Cancels, credits and the master's end, per stream ([`Flow`]).
    pub flow: Arc<Flow>,
    /// Reads the master's messages in this thread (single-threaded workers have no reader
    /// thread): without blocking, or (`true`) waiting for at least one. `Cancel` and `Credit`
    /// go to `flow`, the rest waits for the worker's loop.
    pub inbox: Option<Box<dyn Fn(bool) + Send + Sync>>,
    /// The `pre-request`/`post-request` hooks, if configured.
    pub hooks: Option<crate::hooks::RequestHooks>,
}

impl Ctx {
    /// Prepares the per-worker Python objects; responses start with `init.response_window`
    /// bytes of credit and go in pieces of `init.response_piece` bytes at most.
    pub fn new(
        py: Python<'_>,
        app: Py<PyAny>,
        init: &crate::control::ZygoteInit,
        out: Arc<Writer>,
    ) -> PyResult<Ctx> {
        let sys = py.import("sys")?;
        Ok(Ctx {
            app,
            version: PyTuple::new(py, [1u8, 0u8])?.unbind(),
            errors: sys.getattr("stderr")?.unbind(),
            file_wrapper: py.get_type::<FileWrapper>().unbind(),
            multithread: init.threads > 1,
            piece: init.response_piece.clamp(1, MAX_PIECE),
            keys: Mutex::new(HashMap::new()),
            out,
            // Every stream the master may use (threads plus look-ahead).
            flow: Arc::new(Flow::new(crate::ring::MAX_STREAMS, init.response_window)),
            inbox: None,
            hooks: None,
        })
    }

    fn key<'py>(&self, py: Python<'py>, k: &Bytes) -> Bound<'py, PyString> {
        let mut keys = lock(&self.keys);
        if let Some(s) = keys.get(k) {
            return s.bind(py).clone();
        }
        let s = latin1(py, k);
        if keys.len() < KEY_CACHE_LIMIT {
            keys.insert(k.clone(), s.clone().unbind());
        }
        s
    }

    fn cancelled(&self, stream: u32) -> bool {
        if let Some(read) = &self.inbox {
            read(false);
        }
        self.flow.is_cancelled(stream)
    }

    /// Waits (call it without the GIL) until `stream`, which has sent `sent` body bytes, may
    /// send more, its client left or the master is gone.
    fn wait_credit(&self, stream: u32, sent: u64) -> Wait {
        loop {
            if let Some(w) = self.flow.check(stream, sent) {
                return w;
            }
            match &self.inbox {
                Some(read) => read(true),
                None => return self.flow.wait(stream, sent),
            }
        }
    }

    /// Whether the master is gone (the worker must exit).
    pub fn is_broken(&self) -> bool {
        self.flow.is_broken()
    }

    /// Sends a frame, releasing the GIL while writing.
    fn send(&self, py: Python<'_>, frame: &[u8]) -> PyResult<()> {
        let out = &self.out;
        match py.detach(|| out.send(frame)) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.flow.set_broken();
                Err(master_lost(&e))
            }
        }
    }
}

fn master_lost(e: &dyn std::fmt::Display) -> PyErr {
    PyOSError::new_err(format!("connection to the master lost: {e}"))
}

/// Decodes latin-1 bytes into a Python str (each byte is one code point).
fn latin1<'py>(py: Python<'py>, b: &[u8]) -> Bound<'py, PyString> {
    match std::str::from_utf8(b) {
        Ok(s) if b.is_ascii() => PyString::new(py, s),
        _ => {
            let s: String = b.iter().map(|&c| c as char).collect();
            PyString::new(py, &s)
        }
    }
}

/// Encodes a Python str as latin-1 bytes; code points above 255 are an error.
fn to_latin1(s: &Bound<'_, PyString>, what: &str) -> PyResult<Vec<u8>> {
    let text = s.to_str()?;
    if text.is_ascii() {
        return Ok(text.as_bytes().to_vec());
    }
    text.chars()
        .map(|c| {
            u8::try_from(u32::from(c)).map_err(|_| {
                PyValueError::new_err(format!("{what} {text:?} is not latin-1 encodable"))
            })
        })
        .collect()
}

/// Bytes read from a body file at a time for `readline` and iteration.
const INPUT_BLOCK: usize = 64 * 1024;

/// `wsgi.input`: the request body, complete: in memory, or in the master's temporary file
/// (read with positional reads, without the GIL). Reads never go past it.
#[pyclass(module = "wsgiscale", frozen)]
pub struct Input {
    state: Mutex<Source>,
}

enum Source {
    Memory {
        data: Bytes,
        pos: usize,
    },
    File {
        file: File,
        len: u64,
        /// File offset of the first byte not read into `ahead`.
        next: u64,
        /// Bytes read ahead by `readline`, not yet returned.
        ahead: BytesMut,
    },
}

impl Input {
    fn new(body: Body) -> Input {
        let source = match body {
            Body::Memory(data) => Source::Memory { data, pos: 0 },
            Body::File(file, len) => Source::File {
                file,
                len,
                next: 0,
                ahead: BytesMut::new(),
            },
        };
        Input {
            state: Mutex::new(source),
        }
    }

    /// The next `limit` bytes (all that is left without one); with `line`, up to and
    /// including the first newline within them.
    fn take(&self, limit: Option<usize>, line: bool) -> std::io::Result<Bytes> {
        let mut st = lock(&self.state);
        match &mut *st {
            Source::Memory { data, pos } => {
                let rest = &data[*pos..];
                let mut n = limit.unwrap_or(rest.len()).min(rest.len());
                if line {
                    if let Some(i) = rest[..n].iter().position(|&b| b == b'\n') {
                        n = i + 1;
                    }
                }
                let out = data.slice(*pos..*pos + n);
                *pos += n;
                Ok(out)
            }
            Source::File {
                file,
                len,
                next,
                ahead,
            } => {
                let left = (*len - *next) as usize + ahead.len();
                let n = limit.unwrap_or(left).min(left);
                if !line {
                    if ahead.len() >= n {
                        return Ok(ahead.split_to(n).freeze());
                    }
                    let mut out = BytesMut::zeroed(n);
                    let have = ahead.len();
                    out[..have].copy_from_slice(ahead);
                    ahead.clear();
                    file.read_exact_at(&mut out[have..], *next)?;
                    *next += (n - have) as u64;
                    return Ok(out.freeze());
                }
                loop {
                    let window = ahead.len().min(n);
                    if let Some(i) = ahead[..window].iter().position(|&b| b == b'\n') {
                        return Ok(ahead.split_to(i + 1).freeze());
                    }
                    if ahead.len() >= n || *next == *len {
                        return Ok(ahead.split_to(window).freeze());
                    }
                    let more = ((*len - *next) as usize).min(INPUT_BLOCK);
                    let at = ahead.len();
                    ahead.resize(at + more, 0);
                    file.read_exact_at(&mut ahead[at..], *next)?;
                    *next += more as u64;
                }
            }
        }
    }

    /// [`Input::take`] without the GIL, as a Python bytes object (an OSError if the body
    /// file cannot be read).
    fn take_py<'py>(
        &self,
        py: Python<'py>,
        limit: Option<usize>,
        line: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let data = py
            .detach(|| self.take(limit, line))
            .map_err(|e| PyOSError::new_err(format!("reading the request body: {e}")))?;
        Ok(PyBytes::new(py, &data))
    }
}

fn size_arg(size: Option<isize>) -> Option<usize> {
    size.and_then(|s| usize::try_from(s).ok())
}

#[pymethods]
impl Input {
    /// read(size=-1)
    #[pyo3(signature = (size=None))]
    fn read<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        self.take_py(py, size_arg(size), false)
    }

    /// readline(size=-1)
    #[pyo3(signature = (size=None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        self.take_py(py, size_arg(size), true)
    }

    /// readlines(hint=-1)
    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<isize>) -> PyResult<Bound<'py, PyList>> {
        let hint = size_arg(hint).filter(|h| *h > 0);
        let list = PyList::empty(py);
        let mut total = 0;
        loop {
            let line = self.take_py(py, None, true)?;
            if line.as_bytes().is_empty() {
                break;
            }
            total += line.as_bytes().len();
            list.append(line)?;
            if hint.is_some_and(|h| total >= h) {
                break;
            }
        }
        Ok(list)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = self.take_py(py, None, true)?;
        Ok((!line.as_bytes().is_empty()).then_some(line))
    }
}

/// `wsgi.file_wrapper(filelike, blksize=8192)`: iterates the file in blocks; when the app
/// returns it, the worker reads the file itself in large blocks without holding the GIL.
#[pyclass(module = "wsgiscale", frozen)]
pub struct FileWrapper {
    filelike: Py<PyAny>,
    blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize=8192))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> Self {
        FileWrapper {
            filelike,
            blksize: blksize.max(1),
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1(intern!(py, "read"), (self.blksize,))?;
        if data.len()? == 0 {
            return Err(PyStopIteration::new_err(()));
        }
        Ok(data)
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr(intern!(py, "close"))? {
            f.call_method0(intern!(py, "close"))?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct ResponseState {
    status: Option<(u16, Vec<u8>)>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    head_sent: bool,
    /// Body bytes sent, the head's included (against the stream's credit).
    sent: u64,
    /// Body bytes the app's Content-Length still promises (none without one).
    remaining: Option<u64>,
    /// The whole response went to the master: the stream is no longer ours, and anything
    /// the app still yields or raises is only drained or logged.
    complete: bool,
}

/// The app's Content-Length, if it gave exactly one valid one.
fn declared_length(headers: &[(Vec<u8>, Vec<u8>)]) -> Option<u64> {
    let mut found = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(b"content-length"));
    let (_, v) = found.next()?;
    if found.next().is_some() {
        return None;
    }
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// The `start_response` callable for one request; `write` is its `write()` callable.
#[pyclass(module = "wsgiscale", frozen)]
pub struct StartResponse {
    stream: u32,
    ctx: Arc<CtxRef>,
    state: Mutex<ResponseState>,
}

/// A `Send + Sync` pointer to the worker context for the duration of a request.
pub struct CtxRef(pub Arc<Ctx>);

const HOP_BY_HOP: [&[u8]; 5] = [
    b"transfer-encoding",
    b"keep-alive",
    b"upgrade",
    b"proxy-connection",
    b"te",
];

fn parse_status(status: &Bound<'_, PyAny>) -> PyResult<(u16, Vec<u8>)> {
    let s = status
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err("status must be a str such as '200 OK'"))?;
    let bytes = to_latin1(s, "status")?;
    let valid = bytes.len() >= 4
        && bytes[..3].iter().all(u8::is_ascii_digit)
        && bytes[3] == b' '
        && bytes[0] != b'0'
        && !bytes.iter().any(|b| b.is_ascii_control());
    if !valid {
        return Err(PyValueError::new_err(format!(
            "status {:?} is not 'NNN reason'",
            String::from_utf8_lossy(&bytes)
        )));
    }
    let code =
        (bytes[0] - b'0') as u16 * 100 + (bytes[1] - b'0') as u16 * 10 + (bytes[2] - b'0') as u16;
    Ok((code, bytes[4..].to_vec()))
}

fn is_token(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse_headers(headers: &Bound<'_, PyAny>) -> PyResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let list = headers.cast::<PyList>().map_err(|_| {
        PyTypeError::new_err("response headers must be a list of (name, value) tuples")
    })?;
    let mut out = Vec::with_capacity(list.len());
    for item in list.iter() {
        let pair = item.cast::<PyTuple>().map_err(|_| {
            PyTypeError::new_err("each response header must be a (name, value) tuple")
        })?;
        if pair.len() != 2 {
            return Err(PyTypeError::new_err(
                "each response header must be a (name, value) tuple",
            ));
        }
        let name = pair.get_item(0)?;
        let value = pair.get_item(1)?;
        let name = name
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err("header names must be str"))?;
        let value = value
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err("header values must be str"))?;
        let name = to_latin1(name, "header name")?;
        let value = to_latin1(value, "header value")?;
        if !is_token(&name) {
            return Err(PyValueError::new_err(format!(
                "invalid header name {:?}",
                String::from_utf8_lossy(&name)
            )));
        }
        if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(PyValueError::new_err(format!(
                "header {:?} has a control character in its value",
                String::from_utf8_lossy(&name)
            )));
        }
        if HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            tracing::debug!(header = %String::from_utf8_lossy(&name), "dropped hop-by-hop header set by the app");
            continue;
        }
        out.push((name, value));
    }
    Ok(out)
}

impl StartResponse {
    fn ctx(&self) -> &Ctx {
        &self.ctx.0
    }

    fn head_sent(&self) -> bool {
        lock(&self.state).head_sent
    }

    /// Sends body bytes `parts` (in order) and, with `last`, ends the response: the head
    /// first while it is unsent, then `Body` frames, in pieces of at most `ctx.piece` bytes and
    /// never past the stream's credit (waiting for more, without the GIL, when it runs out).
    /// If the client leaves meanwhile, the rest of `parts` is dropped (the response still
    /// ends when `last`; the caller stops the app's iterable when it sees the cancel). Fails
    /// if start_response was not called.
    fn emit(&self, py: Python<'_>, parts: &[&[u8]], last: bool) -> PyResult<()> {
        let ctx = self.ctx();
        let mut pieces = Pieces::new(parts);
        loop {
            let (sent, head_sent) = {
                let st = lock(&self.state);
                (st.sent, st.head_sent)
            };
            let mut n = pieces.left().min(ctx.piece);
            if n > 0 {
                let wait = match ctx.flow.check(self.stream, sent) {
                    Some(w) => w,
                    None => py.detach(|| ctx.wait_credit(self.stream, sent)),
                };
                match wait {
                    Wait::Go(allowed) => n = n.min(usize::try_from(allowed).unwrap_or(n)),
                    Wait::Cancelled => {
                        pieces.drop_rest();
                        n = 0;
                    }
                    Wait::Broken => return Err(master_lost(&"the master is gone")),
                }
            }
            let piece = pieces.take(n);
            let end = last && pieces.left() == 0;
            let mut frame = BytesMut::with_capacity(2 * proto::HEADER_LEN + 256 + n);
            if !head_sent {
                self.encode_head(&mut frame, &piece, end)?;
            } else {
                if n > 0 {
                    let mut f = proto::FrameBuf::begin(&mut frame, Kind::Body, self.stream);
                    for part in &piece {
                        f.put(part);
                    }
                    f.finish()
                        .map_err(|e| PyValueError::new_err(e.to_string()))?;
                }
                if end {
                    proto::encode_simple(&mut frame, Kind::End, self.stream, b"");
                }
            }
            lock(&self.state).sent += n as u64;
            if !frame.is_empty() {
                ctx.send(py, &frame)?;
            }
            if pieces.left() == 0 {
                return Ok(());
            }
        }
    }

    /// Writes the response head with `body` into `frame`.
    fn encode_head(&self, frame: &mut BytesMut, body: &[&[u8]], end: bool) -> PyResult<()> {
        let mut st = lock(&self.state);
        let (code, reason) = st.status.as_ref().ok_or_else(|| {
            PyAssertionError::new_err("the app returned a body before calling start_response")
        })?;
        proto::encode_head(
            frame,
            self.stream,
            end,
            *code,
            reason,
            st.headers
                .iter()
                .map(|(k, v)| (&k[..], &v[..]))
                .collect::<Vec<_>>()
                .into_iter(),
            body,
        )
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
        st.head_sent = true;
        Ok(())
    }

    /// Sends body bytes. When they complete the app's Content-Length, the response ends
    /// with them, in the same frame as the head if it is still unsent (PEP 3333: a server
    /// should stop sending once Content-Length bytes went out); the iterable is still run to
    /// its end, and what it yields after that is dropped.
    fn send_chunk(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        let last = {
            let mut st = lock(&self.state);
            if st.complete {
                return Ok(());
            }
            match st.remaining {
                Some(left) if data.len() as u64 >= left => Some(left as usize),
                Some(left) => {
                    st.remaining = Some(left - data.len() as u64);
                    None
                }
                None => None,
            }
        };
        match last {
            Some(n) => {
                self.emit(py, &[&data[..n]], true)?;
                lock(&self.state).complete = true;
                Ok(())
            }
            None => self.emit(py, &[data], false),
        }
    }

    fn is_complete(&self) -> bool {
        lock(&self.state).complete
    }

    /// Ends the response (sending the head first if the body was empty).
    fn finish(&self, py: Python<'_>) -> PyResult<()> {
        if self.is_complete() {
            return Ok(());
        }
        self.emit(py, &[], true)?;
        lock(&self.state).complete = true;
        Ok(())
    }
}

/// A cursor over body parts, handing out the next bytes as slices of them (no copy).
struct Pieces<'a> {
    parts: &'a [&'a [u8]],
    /// The part the cursor is in, and the offset in it.
    at: (usize, usize),
    left: usize,
}

impl<'a> Pieces<'a> {
    fn new(parts: &'a [&'a [u8]]) -> Self {
        Pieces {
            parts,
            at: (0, 0),
            left: parts.iter().map(|p| p.len()).sum(),
        }
    }

    fn left(&self) -> usize {
        self.left
    }

    /// The next `n` bytes (at most what is left).
    fn take(&mut self, mut n: usize) -> Vec<&'a [u8]> {
        n = n.min(self.left);
        self.left -= n;
        let mut out = Vec::new();
        while n > 0 {
            let (i, off) = self.at;
            let part = &self.parts[i][off..];
            let k = part.len().min(n);
            if k > 0 {
                out.push(&part[..k]);
            }
            n -= k;
            self.at = if k == part.len() {
                (i + 1, 0)
            } else {
                (i, off + k)
            };
        }
        out
    }

    /// Drops what is left.
    fn drop_rest(&mut self) {
        self.left = 0;
    }
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        status: &Bound<'py, PyAny>,
        headers: &Bound<'py, PyAny>,
        exc_info: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let me = slf.get();
        let exc_info = exc_info.filter(|e| !e.is_none());
        {
            let st = lock(&me.state);
            match exc_info {
                Some(info) if st.head_sent => {
                    // PEP 3333: too late to change the response; re-raise the app's error.
                    drop(st);
                    let value = info.get_item(1)?;
                    return Err(PyErr::from_value(value));
                }
                None if st.status.is_some() => {
                    return Err(PyAssertionError::new_err(
                        "start_response called a second time without exc_info",
                    ));
                }
                _ => {}
            }
        }
        let parsed_status = parse_status(status)?;
        let parsed_headers = parse_headers(headers)?;
        let mut st = lock(&me.state);
        st.status = Some(parsed_status);
        st.remaining = declared_length(&parsed_headers);
        st.headers = parsed_headers;
        drop(st);
        slf.getattr(intern!(py, "write"))
    }

    /// The `write()` callable returned by start_response: sends `data` at once.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let b = data
            .cast::<PyBytes>()
            .map_err(|_| PyTypeError::new_err("write() takes bytes"))?;
        if b.as_bytes().is_empty() && self.head_sent() {
            return Ok(());
        }
        self.send_chunk(py, b.as_bytes())
    }
}

/// Outcome of one request, for the worker loop.
pub enum Outcome {
    /// Served (whatever the status).
    Done,
    /// The link to the master failed (or the master is gone): exit.
    Broken,
}

/// Runs one request through the app and sends its response.
pub fn handle(py: Python<'_>, ctx: &Arc<Ctx>, job: Job) -> Outcome {
    let Job { stream, env, body } = job;
    let env = &env[..];
    let result = run(py, ctx, stream, env, body);
    if ctx.is_broken() {
        return Outcome::Broken;
    }
    if let Err(e) = result {
        let var = |name: &[u8]| {
            env.iter()
                .find(|(k, _)| k.as_ref() == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        tracing::error!(
            method = %var(b"REQUEST_METHOD"),
            path = %var(b"PATH_INFO"),
            traceback = %format_traceback(py, &e),
            "request failed inside the app"
        );
    }
    if ctx.is_broken() {
        Outcome::Broken
    } else {
        Outcome::Done
    }
}

fn run(
    py: Python<'_>,
    ctx: &Arc<Ctx>,
    stream: u32,
    env: &[(Bytes, Bytes)],
    body: Body,
) -> PyResult<()> {
    let environ = PyDict::new(py);
    for (k, v) in env {
        environ.set_item(ctx.key(py, k), latin1(py, v))?;
    }
    environ.set_item(intern!(py, "wsgi.version"), ctx.version.bind(py))?;
    environ.set_item(intern!(py, "wsgi.input"), Bound::new(py, Input::new(body))?)?;
    environ.set_item(intern!(py, "wsgi.errors"), ctx.errors.bind(py))?;
    environ.set_item(intern!(py, "wsgi.multithread"), ctx.multithread)?;
    environ.set_item(intern!(py, "wsgi.multiprocess"), true)?;
    environ.set_item(intern!(py, "wsgi.run_once"), false)?;
    environ.set_item(intern!(py, "wsgi.input_terminated"), true)?;
    environ.set_item(intern!(py, "wsgi.file_wrapper"), ctx.file_wrapper.bind(py))?;

    let sr = Bound::new(
        py,
        StartResponse {
            stream,
            ctx: Arc::new(CtxRef(ctx.clone())),
            state: Mutex::new(ResponseState::default()),
        },
    )?;
    let Some(hooks) = &ctx.hooks else {
        return call_app(py, ctx, &environ, &sr);
    };
    let req = hooks.before(py, &environ);
    let result = call_app(py, ctx, &environ, &sr);
    if let Some(req) = req {
        let st = lock(&sr.get().state);
        let (code, reason) = st
            .status
            .clone()
            .unwrap_or_else(|| (500, b"Internal Server Error".to_vec()));
        let headers = st.headers.clone();
        drop(st);
        hooks.after(py, &req, &environ, (code, &reason), &headers);
    }
    result
}

/// Calls the app with `environ` and `sr` and sends its response.
fn call_app(
    py: Python<'_>,
    ctx: &Arc<Ctx>,
    environ: &Bound<'_, PyDict>,
    sr: &Bound<'_, StartResponse>,
) -> PyResult<()> {
    let app = ctx.app.bind(py);
    let result = match app.call1((environ, sr.clone())) {
        Ok(r) => r,
        Err(e) => return fail(py, sr.get(), e),
    };
    let sent = send_body(py, ctx, sr.get(), &result);
    let closed = close_iterable(py, &result);
    match (sent, closed) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), _) => fail(py, sr.get(), e),
        (Ok(()), Err(e)) => {
            // The response is complete; a failing close() is only logged.
            Err(e)
        }
    }
}

fn close_iterable(py: Python<'_>, result: &Bound<'_, PyAny>) -> PyResult<()> {
    if result.is_exact_instance_of::<PyList>() || result.is_exact_instance_of::<PyTuple>() {
        return Ok(());
    }
    match result.getattr(intern!(py, "close")) {
        Ok(close) => close.call0().map(|_| ()),
        Err(_) => Ok(()),
    }
}

/// Reports an app error: a 500 if nothing was sent yet, else an aborted response.
fn fail(py: Python<'_>, sr: &StartResponse, err: PyErr) -> PyResult<()> {
    if sr.ctx().is_broken() || sr.is_complete() {
        // After the whole response went out the stream is not ours to abort: the error
        // is only logged.
        return Err(err);
    }
    let mut frame = BytesMut::new();
    if sr.head_sent() {
        proto::encode_simple(
            &mut frame,
            Kind::Abort,
            sr.stream,
            b"exception after the response head was sent",
        );
    } else {
        let body: &[u8] = b"Internal Server Error\n";
        let len = body.len().to_string();
        let headers: [(&[u8], &[u8]); 2] = [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", len.as_bytes()),
        ];
        proto::encode_head(
            &mut frame,
            sr.stream,
            true,
            500,
            b"Internal Server Error",
            headers.into_iter(),
            &[body],
        )
        .expect("a fixed small head encodes");
        let mut st = lock(&sr.state);
        st.head_sent = true;
        // What was sent, for the post-request hook.
        st.status = Some((500, b"Internal Server Error".to_vec()));
        st.headers = headers
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
    }
    let _ = sr.ctx().send(py, &frame);
    Err(err)
}

fn as_bytes<'a, 'py>(item: &'a Bound<'py, PyAny>) -> PyResult<&'a [u8]> {
    item.cast::<PyBytes>().map(|b| b.as_bytes()).map_err(|_| {
        let ty = item
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        PyTypeError::new_err(format!("response body items must be bytes, not {ty}"))
    })
}

fn send_body(
    py: Python<'_>,
    ctx: &Arc<Ctx>,
    sr: &StartResponse,
    result: &Bound<'_, PyAny>,
) -> PyResult<()> {
    // Fast path: a list or tuple, nothing written yet: one frame with the whole response.
    if !sr.head_sent() {
        let items: Option<Vec<Bound<'_, PyAny>>> = if let Ok(l) = result.cast_exact::<PyList>() {
            Some(l.iter().collect())
        } else if let Ok(t) = result.cast_exact::<PyTuple>() {
            Some(t.iter().collect())
        } else {
            None
        };
        if let Some(items) = items {
            let parts = items
                .iter()
                .map(as_bytes)
                .collect::<PyResult<Vec<&[u8]>>>()?;
            return sr.emit(py, &parts, true);
        }
        if let Ok(fw) = result.cast_exact::<FileWrapper>() {
            if let Some(file) = open_wrapped_file(py, fw.get())? {
                return send_file(py, ctx, sr, file);
            }
        }
    }
    for item in result.try_iter()? {
        let item = item?;
        let data = as_bytes(&item)?;
        if data.is_empty() {
            continue;
        }
        sr.send_chunk(py, data)?;
        if ctx.cancelled(sr.stream) {
            tracing::debug!("client went away; stopping the response iterator");
            break;
        }
    }
    sr.finish(py)
}

/// For a file wrapper around a real file, a duplicate of its descriptor positioned where the
/// Python file object is.
fn open_wrapped_file(py: Python<'_>, fw: &FileWrapper) -> PyResult<Option<std::fs::File>> {
    let f = fw.filelike.bind(py);
    let fileno = match f.call_method0(intern!(py, "fileno")) {
        Ok(n) => n.extract::<i32>()?,
        Err(_) => return Ok(None),
    };
    let pos: u64 = match f.call_method0(intern!(py, "tell")) {
        Ok(p) => p.extract()?,
        Err(_) => return Ok(None),
    };
    let dup = match crate::sys::dup_python_fd(fileno) {
        Ok(fd) => std::fs::File::from(fd),
        Err(_) => return Ok(None),
    };
    if !dup.metadata().map(|m| m.is_file()).unwrap_or(false) {
        return Ok(None);
    }
    use std::io::Seek;
    let mut dup = dup;
    dup.seek(std::io::SeekFrom::Start(pos))
        .map_err(|e| PyOSError::new_err(e.to_string()))?;
    Ok(Some(dup))
}

fn send_file(
    py: Python<'_>,
    ctx: &Arc<Ctx>,
    sr: &StartResponse,
    mut file: std::fs::File,
) -> PyResult<()> {
    let mut buf = vec![0u8; FILE_BLOCK];
    loop {
        let n = py
            .detach(|| file.read(&mut buf))
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        if n == 0 {
            break;
        }
        sr.send_chunk(py, &buf[..n])?;
        if ctx.cancelled(sr.stream) {
            break;
        }
    }
    sr.finish(py)
}
