//! Links the binary to the Python it was built against with an rpath, so `wsgiscale` starts
//! without LD_LIBRARY_PATH even when libpython lives outside the system library path.

fn main() {
    let cfg = pyo3_build_config::get();
    if let Some(dir) = cfg.lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
