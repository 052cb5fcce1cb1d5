//! Setting up the interpreter: sys.path, importing the app, the hooks a worker needs (stack dumps on SIGUSR1, atexit on exit), and the one way Python errors are told with their traceback.

use std::ffi::CString;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::control::ZygoteInit;

const SETUP: &str = r#"
import os, sys
sys.argv = ["wsgiscale"]
cwd = os.getcwd()
for p in [cwd] + list(reversed(pythonpath)):
    p = os.path.abspath(p)
    if p in sys.path:
        sys.path.remove(p)
    sys.path.insert(0, p)
"#;

/// Applies chdir (done by the caller) and pythonpath to `sys` (the virtualenv was entered when
/// the interpreter started: [`crate::sys::initialize_python`], [`crate::launch`]).
pub fn setup(py: Python<'_>, init: &ZygoteInit) -> Result<(), String> {
    let run = || -> PyResult<()> {
        let locals = PyDict::new(py);
        let paths: Vec<String> = init
            .pythonpath
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        locals.set_item("pythonpath", paths)?;
        let code = CString::new(SETUP).expect("the setup script has no NUL byte");
        py.run(&code, Some(&locals), None)
    };
    run().map_err(|e| format!("python setup failed:\n{}", format_traceback(py, &e)))
}

/// Imports MODULE and returns MODULE.CALLABLE, or a message with the traceback.
pub fn import_app(py: Python<'_>, init: &ZygoteInit) -> Result<Py<PyAny>, String> {
    let module = py.import(init.module.as_str()).map_err(|e| {
        format!(
            "cannot import module {:?}:\n{}",
            init.module,
            format_traceback(py, &e)
        )
    })?;
    let app = module.getattr(init.callable.as_str()).map_err(|_| {
        format!(
            "module {:?} has no attribute {:?}",
            init.module, init.callable
        )
    })?;
    if !app.is_callable() {
        return Err(format!(
            "{}:{} is not callable (a WSGI application must be)",
            init.module, init.callable
        ));
    }
    Ok(app.unbind())
}

/// Dumps every thread's Python stack to stderr when the process gets SIGUSR1 (used before a
/// stuck worker is killed at `--timeout`).
pub fn enable_stack_dumps(py: Python<'_>) {
    let result = (|| -> PyResult<()> {
        // faulthandler is built in; the signal number comes from libc rather than from
        // Python's `signal` module, whose import (it builds its enums) cost a new worker
        // about 5 ms of its start.
        let fh = py.import("faulthandler")?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("all_threads", true)?;
        fh.call_method("register", (libc::SIGUSR1,), Some(&kwargs))?;
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot enable stack dumps on SIGUSR1");
    }
}

/// Runs atexit handlers and flushes stdio before the worker exits.
pub fn run_exit_hooks(py: Python<'_>) {
    let _ = py
        .import("atexit")
        .and_then(|m| m.call_method0("_run_exitfuncs"));
    if let Ok(sys) = py.import("sys") {
        for name in ["stdout", "stderr"] {
            let _ = sys.getattr(name).and_then(|s| s.call_method0("flush"));
        }
    }
}

/// Readies the fork server's interpreter for forking: imports the modules every worker
/// would import after its fork, then moves every object that exists now into the GC's
/// permanent generation, so that garbage collections in the forked workers do not write to
/// (and so copy) the pages they share with the fork server.
pub fn freeze_for_fork(py: Python<'_>) {
    // Modules every worker would otherwise import after its fork, each paying for it in its
    // start-up: faulthandler (the stack dumps) and the IDNA codec, which werkzeug (Flask)
    // imports on a worker's first request (about 3 ms on the benchmark machine). Both are
    // standard library; a failure only costs that time back.
    for name in ["faulthandler", "encodings.idna"] {
        if let Err(e) = py.import(name) {
            tracing::debug!(module = name, error = %e, "not imported before the fork");
        }
    }
    if let Err(e) = py.import("gc").and_then(|gc| gc.call_method0("freeze")) {
        tracing::warn!(error = %e, "gc.freeze() failed; workers will share less memory");
    }
}

/// Formats an exception with its traceback, as Python would print it.
pub fn format_traceback(py: Python<'_>, err: &PyErr) -> String {
    let formatted = (|| -> PyResult<String> {
        let tb = py.import("traceback")?;
        let lines = tb.call_method1(
            "format_exception",
            (err.get_type(py), err.value(py), err.traceback(py)),
        )?;
        let joined = PyString::new(py, "").call_method1("join", (lines,))?;
        Ok(joined.extract::<String>()?.trim_end().to_string())
    })();
    formatted.unwrap_or_else(|_| err.to_string())
}
