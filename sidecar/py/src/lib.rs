//! `wsgiscale._wsgiscale`, the extension module of the `wsgiscale` Python package. It holds
//! the whole server; `wsgiscale.main()` (the console script and `python -m wsgiscale`) calls
//! [`main`] with the command line and the facts of the interpreter it runs in. Built by
//! maturin, which tells PyO3 not to link libpython, so the module loads into interpreters
//! with and without a shared libpython alike.

use std::ffi::OsString;
use std::path::PathBuf;

use pyo3::prelude::*;
use wsgiscale_sidecar::entry;
use wsgiscale_sidecar::launch::{Launch, PackageLaunch};

/// `(sys.executable, interpreter flags, sys.prefix, package folder, sys.version_info[:2])`.
type Interpreter = (PathBuf, Vec<OsString>, PathBuf, PathBuf, (u32, u32));

/// Runs the `wsgiscale` command line `argv` (program name first) and returns its exit status.
/// The GIL is released while the server runs; the fork server takes it back.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<OsString>, interpreter: Interpreter) -> i32 {
    let (python, flags, prefix, package_dir, version) = interpreter;
    let how = Launch::Package(PackageLaunch {
        python,
        flags,
        prefix,
        package_dir,
        version,
    });
    py.detach(move || entry::main(argv, how))
}

/// The module.
#[pymodule]
fn _wsgiscale(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    Ok(())
}
