//! Static files served by the front (`--static URL_PREFIX=DIR`), never entering Python.
//!
//! tower-http's `ServeDir` does the HTTP part: `ETag` and `Last-Modified` with their 304s and
//! 412s, `Range` with 206 (one range; 416 for several), HEAD, the content type, and the
//! precompressed `.br`/`.gz` file next to the requested one when the client accepts it (with
//! `Vary: Accept-Encoding`). This module adds what a server needs around it:
//! - the mount table ([`StaticMounts::find`], pure): the longest prefix that matches the raw
//!   request path on a segment boundary;
//! - confinement, in the file system backend ([`Confined`]): a path with `..` never reaches
//!   it (ServeDir refuses it, percent-encoded or not), a path with a component starting with `.`
//!   (dotfiles, `.git`, `.env`) is not found, and a file whose real path (symlinks resolved)
//!   leaves the mount's directory is not found; the file is then opened by its resolved path
//!   with `O_NOFOLLOW`, so only someone who can write to the directory could race the check;
//! - `If-Range` (ServeDir ignores it: a 206 whose validator no longer matches is replaced by
//!   the whole file), `Cache-Control: public, max-age` from `--static-max-age`, and plain-text
//!   bodies for 404/405;
//! - fewer trips to tokio's blocking pool: a file up to [`INLINE_MAX`] is opened, described
//!   and read in the one trip that resolves it, while the memory such files hold at once stays
//!   under [`INLINE_BUDGET`] (beyond it, and for larger files, the file is streamed from disk
//!   in [`CHUNK`] reads).

use std::future::Future;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use tower_http::services::fs::{Backend, ServeDir};
use wsgiscale_core::config::{StaticConfig, UrlPrefix};

/// A static mount's directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    /// The directory is missing or unreadable.
    #[error("static mount {prefix}: cannot use {dir}: {source}")]
    Dir {
        /// The URL prefix.
        prefix: String,
        /// The directory as given.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// It is not a directory.
    #[error("static mount {prefix}: {dir} is not a directory")]
    NotDir {
        /// The URL prefix.
        prefix: String,
        /// The directory as given.
        dir: PathBuf,
    },
}

/// The file system as a static mount may see it: its directory and what is below, no dotfile,
/// nothing a symlink leads out to.
#[derive(Debug, Clone)]
pub struct Confined {
    root: Arc<PathBuf>,
}

impl Confined {
    /// The real path of `path` if it is below the root without a dot component; NotFound
    /// otherwise.
    fn resolve(root: &Path, path: &Path) -> io::Result<PathBuf> {
        let not_found = || io::Error::from(io::ErrorKind::NotFound);
        let hidden = |p: &Path| {
            p.components().any(|c| match c {
                Component::Normal(n) => n.as_encoded_bytes().first() == Some(&b'.'),
                Component::ParentDir => true,
                _ => false,
            })
        };
        let asked = path.strip_prefix(root).map_err(|_| not_found())?;
        if hidden(asked) {
            return Err(not_found());
        }
        let real = std::fs::canonicalize(path)?;
        match real.strip_prefix(root) {
            Ok(rel) if !hidden(rel) => Ok(real),
            _ => Err(not_found()),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send>>;

/// Largest file read whole when it is opened.
pub const INLINE_MAX: u64 = 256 << 10;
/// Most bytes of such files held at once by all responses together.
pub const INLINE_BUDGET: u64 = 32 << 20;
/// Read size of a file streamed from disk.
pub const CHUNK: usize = 128 << 10;

/// Bytes of inline files in memory now.
static INLINE_HELD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A share of [`INLINE_BUDGET`], given back when dropped.
#[derive(Debug)]
struct Held(u64);

impl Held {
    fn take(n: u64) -> Option<Held> {
        use std::sync::atomic::Ordering;
        INLINE_HELD
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held + n <= INLINE_BUDGET).then_some(held + n)
            })
            .ok()
            .map(|_| Held(n))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        INLINE_HELD.fetch_sub(self.0, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A file [`Confined`] opened: read whole already, or to be streamed from disk.
#[derive(Debug)]
pub struct ConfinedFile(Opened);

#[derive(Debug)]
enum Opened {
    /// Its bytes, with a read position, what fstat said of it, and its share of the budget.
    Inline {
        data: std::io::Cursor<Vec<u8>>,
        meta: std::fs::Metadata,
        _held: Held,
    },
    /// An open file.
    Disk(tokio::fs::File),
}

impl tokio::io::AsyncRead for ConfinedFile {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Opened::Inline { data, .. } => Pin::new(data).poll_read(cx, buf),
            Opened::Disk(f) => Pin::new(f).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncSeek for ConfinedFile {
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        match &mut self.get_mut().0 {
            Opened::Inline { data, .. } => Pin::new(data).start_seek(position),
            Opened::Disk(f) => Pin::new(f).start_seek(position),
        }
    }

    fn poll_complete(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<u64>> {
        match &mut self.get_mut().0 {
            Opened::Inline { data, .. } => Pin::new(data).poll_complete(cx),
            Opened::Disk(f) => Pin::new(f).poll_complete(cx),
        }
    }
}

impl tower_http::services::fs::File for ConfinedFile {
    type Metadata = std::fs::Metadata;
    type MetadataFuture<'a> =
        Pin<Box<dyn Future<Output = io::Result<std::fs::Metadata>> + Send + 'a>>;

    fn metadata(&self) -> Self::MetadataFuture<'_> {
        // The open file's own (fstat), not the path's: what is described is what was opened.
        match &self.0 {
            Opened::Inline { meta, .. } => {
                let meta = meta.clone();
                Box::pin(async move { Ok(meta) })
            }
            Opened::Disk(f) => Box::pin(f.metadata()),
        }
    }
}

/// Opens the file at the real path `real`, reading it whole when it is small and the budget
/// allows.
fn open_real(real: &Path) -> io::Result<ConfinedFile> {
    use std::io::Read;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(real)?;
    let meta = file.metadata()?;
    if meta.is_file() && meta.len() <= INLINE_MAX {
        if let Some(held) = Held::take(meta.len()) {
            let mut data = Vec::with_capacity(meta.len() as usize);
            file.read_to_end(&mut data)?;
            return Ok(ConfinedFile(Opened::Inline {
                data: std::io::Cursor::new(data),
                meta,
                _held: held,
            }));
        }
    }
    Ok(ConfinedFile(Opened::Disk(tokio::fs::File::from_std(file))))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

impl Backend for Confined {
    type File = ConfinedFile;
    type Metadata = std::fs::Metadata;
    type OpenFuture = BoxFuture<ConfinedFile>;
    type MetadataFuture = BoxFuture<std::fs::Metadata>;

    fn open(&self, path: PathBuf) -> Self::OpenFuture {
        let root = self.root.clone();
        Box::pin(blocking(move || {
            open_real(&Confined::resolve(&root, &path)?)
        }))
    }

    fn metadata(&self, path: PathBuf) -> Self::MetadataFuture {
        let root = self.root.clone();
        Box::pin(blocking(move || {
            std::fs::metadata(Confined::resolve(&root, &path)?)
        }))
    }
}

/// One mount.
struct Mount {
    prefix: UrlPrefix,
    serve: ServeDir<tower_http::services::fs::DefaultServeDirFallback, Confined>,
}

/// The static mounts, in the order given (the longest matching prefix serves a request).
pub struct StaticMounts {
    mounts: Vec<Mount>,
    cache_control: Option<HeaderValue>,
}

/// The body of a static response.
pub type StaticBody = UnsyncBoxBody<Bytes, io::Error>;

impl StaticMounts {
    /// Opens the mounts of `cfg`: each directory must exist (a relative one is taken from the
    /// current directory).
    pub fn open(cfg: &StaticConfig) -> Result<StaticMounts, StaticError> {
        let mut mounts = Vec::new();
        for m in &cfg.mounts {
            let err = |source| StaticError::Dir {
                prefix: m.prefix.to_string(),
                dir: m.dir.clone(),
                source,
            };
            let root = std::fs::canonicalize(&m.dir).map_err(err)?;
            if !std::fs::metadata(&root).map_err(err)?.is_dir() {
                return Err(StaticError::NotDir {
                    prefix: m.prefix.to_string(),
                    dir: m.dir.clone(),
                });
            }
            let backend = Confined {
                root: Arc::new(root.clone()),
            };
            let serve = ServeDir::with_backend(&root, backend)
                .append_index_html_on_directories(false)
                .with_buf_chunk_size(CHUNK)
                .precompressed_br()
                .precompressed_gzip();
            mounts.push(Mount {
                prefix: m.prefix.clone(),
                serve,
            });
        }
        let cache_control = cfg.max_age.and_then(|age| {
            HeaderValue::from_str(&format!("public, max-age={}", age.as_secs())).ok()
        });
        Ok(StaticMounts {
            mounts,
            cache_control,
        })
    }

    /// Whether there is any mount.
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty()
    }

    /// The mount serving the raw request `path`, and the rest of the path below it.
    pub fn find<'p>(&self, path: &'p str) -> Option<(usize, &'p str)> {
        find(self.mounts.iter().map(|m| &m.prefix), path)
    }

    /// Serves `rest` (the raw path below mount `index`) for a request with `method` and
    /// `headers`.
    pub async fn serve(
        &self,
        index: usize,
        rest: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Response<StaticBody> {
        let Some(mount) = self.mounts.get(index) else {
            return text(StatusCode::NOT_FOUND, "Not Found\n");
        };
        let uri: Uri = match (if rest.is_empty() { "/" } else { rest }).parse() {
            Ok(u) => u,
            Err(_) => return text(StatusCode::NOT_FOUND, "Not Found\n"),
        };
        let mut resp = call(&mount.serve, method, &uri, headers).await;
        if resp.status() == StatusCode::PARTIAL_CONTENT
            && !if_range_holds(headers.get(header::IF_RANGE), resp.headers())
        {
            let mut whole = headers.clone();
            whole.remove(header::RANGE);
            resp = call(&mount.serve, method, &uri, &whole).await;
        }
        match resp.status() {
            StatusCode::NOT_FOUND => return text(StatusCode::NOT_FOUND, "Not Found\n"),
            StatusCode::METHOD_NOT_ALLOWED => {
                let mut r = text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "Method Not Allowed: static files answer GET and HEAD\n",
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                return r;
            }
            StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED => {
                if let Some(cc) = &self.cache_control {
                    resp.headers_mut().insert(header::CACHE_CONTROL, cc.clone());
                }
            }
            _ => {}
        }
        resp
    }
}

/// The index of the longest of `prefixes` under which `path` lies, and the rest of `path`.
fn find<'a, 'p>(
    prefixes: impl Iterator<Item = &'a UrlPrefix>,
    path: &'p str,
) -> Option<(usize, &'p str)> {
    let mut best: Option<(usize, usize, &'p str)> = None;
    for (i, prefix) in prefixes.enumerate() {
        if let Some(rest) = prefix.strip(path.as_bytes()) {
            let len = prefix.as_str().len();
            if best.is_none_or(|(_, l, _)| len > l) {
                best = Some((i, len, &path[path.len() - rest.len()..]));
            }
        }
    }
    best.map(|(i, _, rest)| (i, rest))
}

async fn call(
    serve: &ServeDir<tower_http::services::fs::DefaultServeDirFallback, Confined>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response<StaticBody> {
    let mut req = Request::new(http_body_util::Empty::<Bytes>::new());
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = headers.clone();
    match serve.clone().try_call(req).await {
        Ok(resp) => resp.map(|b| b.boxed_unsync()),
        Err(e) => {
            let not_found = matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ) || e.raw_os_error() == Some(libc::ENOTDIR)
                || e.raw_os_error() == Some(libc::ELOOP);
            if not_found {
                text(StatusCode::NOT_FOUND, "Not Found\n")
            } else {
                tracing::error!(error = %e, path = %uri, "cannot read a static file");
                text(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error\n")
            }
        }
    }
}

/// Whether a 206 may stand: no `If-Range`, or one equal to the response's strong `ETag` or
/// its `Last-Modified` (RFC 9110 13.1.5).
fn if_range_holds(if_range: Option<&HeaderValue>, resp: &HeaderMap) -> bool {
    let Some(want) = if_range else {
        return true;
    };
    let want = want.as_bytes();
    if want.starts_with(b"W/") {
        return false;
    }
    let same = |name| resp.get(name).is_some_and(|v| v.as_bytes() == want);
    if want.starts_with(b"\"") {
        same(header::ETAG)
    } else {
        same(header::LAST_MODIFIED)
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<StaticBody> {
    let mut r = Response::new(
        http_body_util::Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_matching_prefix_wins_on_a_segment_boundary() {
        let prefixes: Vec<UrlPrefix> = ["/static", "/static/admin", "/media"]
            .iter()
            .map(|p| p.parse().expect("prefix"))
            .collect();
        let cases = [
            ("/static/app.css", Some((0, "/app.css"))),
            ("/static/admin/base.css", Some((1, "/base.css"))),
            ("/static/administrator", Some((0, "/administrator"))),
            ("/static", Some((0, ""))),
            ("/staticfiles/x", None),
            ("/media/a%20b.png", Some((2, "/a%20b.png"))),
            ("/", None),
            ("/app/static/x", None),
        ];
        for (path, want) in cases {
            assert_eq!(find(prefixes.iter(), path), want, "{path}");
        }
    }

    #[test]
    fn confinement_refuses_dotfiles_parents_and_escaping_symlinks() {
        let dir = std::env::temp_dir().join(format!("wsgiscale-static-{}", std::process::id()));
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::fs::create_dir_all(root.join(".git")).expect("mkdir");
        std::fs::write(root.join("sub/a.css"), "a").expect("write");
        std::fs::write(root.join(".env"), "secret").expect("write");
        std::fs::write(root.join(".git/config"), "secret").expect("write");
        std::fs::write(dir.join("outside.txt"), "secret").expect("write");
        std::os::unix::fs::symlink(dir.join("outside.txt"), root.join("out.txt")).expect("ln");
        std::os::unix::fs::symlink(root.join("sub/a.css"), root.join("in.css")).expect("ln");
        std::os::unix::fs::symlink(root.join(".env"), root.join("env.txt")).expect("ln");
        let root = std::fs::canonicalize(&root).expect("canonical");
        let ok = |p: &str| Confined::resolve(&root, &root.join(p)).is_ok();
        let result = [
            ("sub/a.css", true),
            ("in.css", true),
            (".env", false),
            (".git/config", false),
            ("out.txt", false),
            ("env.txt", false),
            ("sub/../sub/a.css", false),
            ("missing.css", false),
        ]
        .map(|(p, want)| (p, ok(p), want));
        let _ = std::fs::remove_dir_all(&dir);
        for (p, got, want) in result {
            assert_eq!(got, want, "{p}");
        }
    }

    #[test]
    fn inline_files_stay_within_their_budget() {
        let a = Held::take(INLINE_BUDGET / 2).expect("room");
        let b = Held::take(INLINE_BUDGET / 2).expect("room");
        assert!(Held::take(1).is_none(), "over the budget");
        drop(a);
        let c = Held::take(INLINE_BUDGET / 4).expect("room again");
        drop((b, c));
        assert_eq!(INLINE_HELD.load(std::sync::atomic::Ordering::Acquire), 0);
    }

    #[test]
    fn if_range_needs_the_same_strong_validator() {
        let mut resp = HeaderMap::new();
        resp.insert(header::ETAG, HeaderValue::from_static("\"abc\""));
        resp.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_static("Tue, 01 Dec 2026 10:00:00 GMT"),
        );
        let v = HeaderValue::from_static;
        assert!(if_range_holds(None, &resp));
        assert!(if_range_holds(Some(&v("\"abc\"")), &resp));
        assert!(!if_range_holds(Some(&v("\"old\"")), &resp));
        assert!(!if_range_holds(Some(&v("W/\"abc\"")), &resp));
        assert!(if_range_holds(
            Some(&v("Tue, 01 Dec 2026 10:00:00 GMT")),
            &resp
        ));
        assert!(!if_range_holds(
            Some(&v("Mon, 30 Nov 2026 10:00:00 GMT")),
            &resp
        ));
    }
}
