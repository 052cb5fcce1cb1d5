//! Running the server hooks ([`wsgiscale_core::config::hooks`]): the fork server imports every
//! configured function once, after the app (so the workers inherit them with it), runs
//! `post-load` and, in the fork server of a reload, `on-reload`; a worker runs `post-fork`,
//! `post-worker-init`, `worker-exit` and, around each request, `pre-request` and
//! `post-request`. The master never runs Python, so no hook can stop it.
//!
//! A hook gets the arguments of the gunicorn hook of the same name (`server`, `worker`, `req`,
//! `environ`, `resp`: small objects with the attributes hooks use, see [`SUPPORT`]), or the
//! first of them it accepts, so gunicorn hooks run unchanged and `def post_fork():` works too.
//! A hook that raises has its traceback logged; what happens then is
//! [`Hook::on_failure`]. `server.log` and `worker.log` are Python loggers whose records go
//! to the server's own log.

use std::ffi::CString;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use wsgiscale_core::config::hooks::{Hook, HookSpec, HookTarget, Hooks};

use crate::python::format_traceback;

/// The Python half: loading the functions, and the objects hooks are given.
const SUPPORT: &str = r#"
import importlib, importlib.machinery, importlib.util, inspect, logging, os, re, sys

_files = {}


def _load_file(path):
    mod = _files.get(path)
    if mod is None:
        stem = os.path.basename(path)
        if stem.endswith(".py"):
            stem = stem[:-3]
        name = "wsgiscale_hooks_" + re.sub(r"\W", "_", stem)
        # By path whatever the file's suffix, as gunicorn loads its config file.
        loader = importlib.machinery.SourceFileLoader(name, path)
        spec = importlib.util.spec_from_loader(name, loader, origin=path)
        mod = importlib.util.module_from_spec(spec)
        mod.__file__ = path
        sys.modules[name] = mod
        try:
            loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        _files[path] = mod
    return mod


def load(kind, target, function, setting, nargs):
    mod = _load_file(target) if kind == "file" else importlib.import_module(target)
    try:
        fn = getattr(mod, function)
    except AttributeError:
        raise AttributeError(f"{target} has no attribute {function!r}") from None
    if not callable(fn):
        raise TypeError(f"{target}:{function} is not callable")
    return _adapt(fn, nargs, setting)


def _adapt(fn, n, setting):
    """fn, called with the first of n positional arguments it accepts."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return fn
    for k in range(n, -1, -1):
        try:
            sig.bind(*range(k))
        except TypeError:
            continue
        if k == n:
            return fn
        return lambda *args: fn(*args[:k])
    raise TypeError(
        f"the {setting} hook {getattr(fn, '__qualname__', fn)!r} cannot be called with "
        f"{n} or fewer positional arguments"
    )


class _Handler(logging.Handler):
    def emit(self, record):
        try:
            _emit(record.levelno, record.name, self.format(record))
        except Exception:
            self.handleError(record)


def logger(name):
    log = logging.getLogger(name)
    if not any(isinstance(h, _Handler) for h in log.handlers):
        log.addHandler(_Handler())
        log.propagate = False
        if log.level == logging.NOTSET:
            log.setLevel(logging.DEBUG)
    return log


class Server:
    """`server`: the parts of gunicorn's arbiter that hooks use."""

    def __init__(self, app, reloading):
        self.pid = os.getppid()  # the master, which started this fork server
        self.app = app
        self.reloading = reloading
        self.proc_name = "wsgiscale"
        self.log = logger("wsgiscale.hooks")

    def __repr__(self):
        return f"<wsgiscale server pid={self.pid} app={self.app}>"


class Worker:
    """`worker`: the parts of a gunicorn worker that hooks use."""

    def __init__(self, server, id, wsgi):
        self.id = self.age = id
        self.pid = os.getpid()
        self.ppid = server.pid
        self.wsgi = wsgi
        self.alive = True
        self.log = server.log

    def __repr__(self):
        return f"<wsgiscale worker id={self.id} pid={self.pid}>"


class Request:
    """`req`: the request as gunicorn's pre_request/post_request hooks see it."""

    __slots__ = ("method", "path", "query", "uri", "version", "scheme", "headers", "remote_addr")

    def __init__(self, environ):
        self.method = environ.get("REQUEST_METHOD", "")
        self.path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        self.query = environ.get("QUERY_STRING", "")
        self.uri = self.path + ("?" + self.query if self.query else "")
        self.scheme = environ.get("wsgi.url_scheme", "http")
        self.remote_addr = environ.get("REMOTE_ADDR", "")
        try:
            major, _, minor = environ.get("SERVER_PROTOCOL", "").partition("/")[2].partition(".")
            self.version = (int(major), int(minor or 0))
        except ValueError:
            self.version = (1, 1)
        headers = []
        for k, v in environ.items():
            if k.startswith("HTTP_"):
                headers.append((k[5:].replace("_", "-"), v))
            elif k in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                headers.append((k.replace("_", "-"), v))
        self.headers = headers

    def __repr__(self):
        return f"<wsgiscale request {self.method} {self.uri}>"


class Response:
    """`resp`: what was sent for the request."""

    __slots__ = ("status", "status_code", "headers")

    def __init__(self, status_code, reason, headers):
        self.status_code = status_code
        self.status = f"{status_code} {reason}"
        self.headers = headers

    def __repr__(self):
        return f"<wsgiscale response {self.status}>"
"#;

/// Python's logging levels, for records from `server.log` and `worker.log`.
#[pyfunction]
fn emit(level: i32, name: &str, message: &str) {
    match level {
        l if l >= 40 => tracing::error!(target: "hook", logger = name, "{message}"),
        l if l >= 30 => tracing::warn!(target: "hook", logger = name, "{message}"),
        l if l >= 20 => tracing::info!(target: "hook", logger = name, "{message}"),
        _ => tracing::debug!(target: "hook", logger = name, "{message}"),
    }
}

/// The configured hooks, imported: made in the fork server, inherited by its workers.
pub struct Loaded {
    support: Py<PyModule>,
    server: Py<PyAny>,
    /// One per [`Hook::ALL`], with the spec for the log.
    fns: Vec<Option<(HookSpec, Py<PyAny>)>>,
}

fn index(hook: Hook) -> usize {
    Hook::ALL
        .iter()
        .position(|h| *h == hook)
        .expect("every hook is in Hook::ALL")
}

/// Imports the functions of `hooks` (None when none is configured). `app` is
/// `MODULE:CALLABLE` for `server.app`; `reloading` says whether this fork server replaces
/// another (SIGHUP). An import error, a missing function or one that cannot take the
/// hook's arguments is an error naming the setting, with the traceback.
pub fn load(
    py: Python<'_>,
    hooks: &Hooks,
    app: &str,
    reloading: bool,
) -> Result<Option<Loaded>, String> {
    if hooks.is_empty() {
        return Ok(None);
    }
    let support = (|| -> PyResult<Bound<'_, PyModule>> {
        let code = CString::new(SUPPORT).expect("the hook support code has no NUL byte");
        let m = PyModule::from_code(py, &code, c"<wsgiscale hooks>", c"wsgiscale_hook_support")?;
        m.add_function(wrap_pyfunction!(emit, &m)?)?;
        m.setattr("_emit", m.getattr("emit")?)?;
        Ok(m)
    })()
    .map_err(|e| format!("cannot set up the hooks:\n{}", format_traceback(py, &e)))?;
    let server = support
        .getattr("Server")
        .and_then(|s| s.call1((app, reloading)))
        .map_err(|e| format!("cannot set up the hooks:\n{}", format_traceback(py, &e)))?;
    let mut fns: Vec<Option<(HookSpec, Py<PyAny>)>> = Hook::ALL.iter().map(|_| None).collect();
    for (hook, spec) in hooks.configured() {
        let (kind, target) = match &spec.target {
            HookTarget::Module(m) => ("module", m.clone()),
            HookTarget::File(p) => ("file", p.display().to_string()),
        };
        let f = support
            .call_method1(
                "load",
                (
                    kind,
                    target,
                    spec.function.as_str(),
                    hook.setting(),
                    hook.arguments().len(),
                ),
            )
            .map_err(|e| {
                format!(
                    "cannot load the {} hook {spec}:\n{}",
                    hook.setting(),
                    format_traceback(py, &e)
                )
            })?;
        fns[index(hook)] = Some((spec.clone(), f.unbind()));
    }
    Ok(Some(Loaded {
        support: support.unbind(),
        server: server.unbind(),
        fns,
    }))
}

impl Loaded {
    fn get(&self, hook: Hook) -> Option<&(HookSpec, Py<PyAny>)> {
        self.fns[index(hook)].as_ref()
    }

    /// Calls `hook` (if configured) with `args`; false when it raised, which is logged with
    /// the traceback.
    fn call<'py>(&self, py: Python<'py>, hook: Hook, args: Bound<'py, PyTuple>) -> bool {
        let Some((spec, f)) = self.get(hook) else {
            return true;
        };
        match f.bind(py).call1(args) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(
                    hook = hook.setting(),
                    function = %spec,
                    traceback = %format_traceback(py, &e),
                    "hook raised; {}",
                    hook.on_failure()
                );
                false
            }
        }
    }

    /// In the fork server, once it is ready to fork: `post-load`, then `on-reload` in the
    /// fork server of a reload. A hook that raises is logged and the fork server goes on.
    pub fn run_fork_server(&self, py: Python<'_>, reloading: bool) {
        let server = self.server.bind(py);
        let args = |py| PyTuple::new(py, [server]).expect("a tuple of one object");
        self.call(py, Hook::PostLoad, args(py));
        if reloading {
            self.call(py, Hook::OnReload, args(py));
        }
    }

    /// In a new worker right after the fork: makes its `worker` object and runs
    /// `post-fork`. None when the hook raised: the worker must not serve.
    pub fn start_worker(
        &self,
        py: Python<'_>,
        id: u64,
        app: Option<&Py<PyAny>>,
    ) -> Option<Py<PyAny>> {
        let worker = match self
            .support
            .bind(py)
            .getattr("Worker")
            .and_then(|w| w.call1((self.server.bind(py), id, app.map(|a| a.bind(py)))))
        {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(traceback = %format_traceback(py, &e), "cannot make the hooks' worker object");
                return None;
            }
        };
        let args = PyTuple::new(py, [self.server.bind(py), &worker]).ok()?;
        self.call(py, Hook::PostFork, args).then(|| worker.unbind())
    }

    /// Once the worker's app is loaded: sets `worker.wsgi` and runs `post-worker-init`;
    /// false when the hook raised (the worker must not serve).
    pub fn worker_ready(&self, py: Python<'_>, worker: &Py<PyAny>, app: &Py<PyAny>) -> bool {
        let w = worker.bind(py);
        if let Err(e) = w.setattr("wsgi", app.bind(py)) {
            tracing::warn!(error = %e, "cannot set worker.wsgi");
        }
        let args = PyTuple::new(py, [w]).expect("a tuple of one object");
        self.call(py, Hook::PostWorkerInit, args)
    }

    /// The worker is stopping normally: `worker.alive` goes false and `worker-exit` runs.
    pub fn worker_exit(&self, py: Python<'_>, worker: &Py<PyAny>) {
        let w = worker.bind(py);
        let _ = w.setattr("alive", false);
        let args = PyTuple::new(py, [self.server.bind(py), w]).expect("a tuple of two objects");
        self.call(py, Hook::WorkerExit, args);
    }

    /// The per-request hooks for a worker's requests, if any is configured.
    pub fn request_hooks(&self, py: Python<'_>, worker: &Py<PyAny>) -> Option<RequestHooks> {
        let per_request = |h: &Hook| matches!(h, Hook::PreRequest | Hook::PostRequest);
        if !Hook::ALL
            .iter()
            .any(|h| per_request(h) && self.get(*h).is_some())
        {
            return None;
        }
        let support = self.support.bind(py);
        Some(RequestHooks {
            loaded: Loaded {
                support: self.support.clone_ref(py),
                server: self.server.clone_ref(py),
                fns: Hook::ALL
                    .iter()
                    .map(|h| {
                        self.get(*h)
                            .filter(|_| per_request(h))
                            .map(|(s, f)| (s.clone(), f.clone_ref(py)))
                    })
                    .collect(),
            },
            worker: worker.clone_ref(py),
            request: support.getattr("Request").ok()?.unbind(),
            response: support.getattr("Response").ok()?.unbind(),
        })
    }
}

/// `pre-request` and `post-request`, with what they are given.
pub struct RequestHooks {
    loaded: Loaded,
    worker: Py<PyAny>,
    request: Py<PyAny>,
    response: Py<PyAny>,
}

impl RequestHooks {
    /// Before the app is called: makes the `req` object and runs `pre-request`. Returns
    /// `req` for [`RequestHooks::after`]; a hook that raises is logged and the request is
    /// served all the same.
    pub fn before(&self, py: Python<'_>, environ: &Bound<'_, PyDict>) -> Option<Py<PyAny>> {
        let req = match self.request.bind(py).call1((environ,)) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(traceback = %format_traceback(py, &e), "cannot make the hooks' request object");
                return None;
            }
        };
        if self.loaded.get(Hook::PreRequest).is_some() {
            let args = PyTuple::new(py, [self.worker.bind(py), &req]).ok()?;
            self.loaded.call(py, Hook::PreRequest, args);
        }
        Some(req.unbind())
    }

    /// After the response: runs `post-request` with the status and headers that were sent.
    pub fn after(
        &self,
        py: Python<'_>,
        req: &Py<PyAny>,
        environ: &Bound<'_, PyDict>,
        status: (u16, &[u8]),
        headers: &[(Vec<u8>, Vec<u8>)],
    ) {
        if self.loaded.get(Hook::PostRequest).is_none() {
            return;
        }
        let latin1 = |b: &[u8]| b.iter().map(|&c| c as char).collect::<String>();
        let made = (|| -> PyResult<Bound<'_, PyAny>> {
            let list = PyList::empty(py);
            for (k, v) in headers {
                list.append((latin1(k), latin1(v)))?;
            }
            self.response
                .bind(py)
                .call1((status.0, latin1(status.1), list))
        })();
        let resp = match made {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(traceback = %format_traceback(py, &e), "cannot make the hooks' response object");
                return;
            }
        };
        let args = PyTuple::new(
            py,
            [self.worker.bind(py), req.bind(py), environ.as_any(), &resp],
        )
        .expect("a tuple of four objects");
        self.loaded.call(py, Hook::PostRequest, args);
    }
}
