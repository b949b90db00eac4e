//! bpf-linker makes every function internal but the programs and the symbols it is told to
//! export; the kernel verifies a global function once, apart from its callers
//! (`snapshot::copy_request`), where it verifies an internal one anew in every path that
//! calls it.
fn main() {
    println!("cargo:rustc-link-arg-bins=--export=copy_request,build_record");
}
