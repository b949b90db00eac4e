//! bpf-linker makes every function internal but the programs and the symbols it is told to
//! export. The kernel verifies a global function once, apart from its callers, where it
//! verifies an internal one anew in every path that calls it: `snapshot::copy_request` and
//! `snapshot::build_record` are exported for that.
fn main() {
    println!("cargo:rustc-link-arg-bins=--export=copy_request,build_record");
}
