//! `wsgiscale`, the standalone binary: embeds the CPython it was built against and hands over
//! to the library's entry point (the Python package's console script calls the same one).

use std::process::ExitCode;

use wsgiscale_sidecar::entry;
use wsgiscale_sidecar::launch::Launch;

fn main() -> ExitCode {
    let code = entry::main(std::env::args_os().collect(), Launch::Binary);
    ExitCode::from(code.clamp(0, 255) as u8)
}
