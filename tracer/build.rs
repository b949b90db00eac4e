//! Builds the eBPF object (tracer-ebpf, with nightly and bpf-linker) so that `tracer` embeds
//! it and one binary is all a user copies. `cargo xtask setup` installs the toolchain pieces.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    // aya-build turns every line the inner cargo prints into a `cargo:warning`, and cargo
    // replays a build script's warnings on every later no-op build: without this, each
    // build repeats a stale "Compiling tracer-ebpf … Finished" as warnings. Quiet keeps
    // compiler diagnostics and errors (a failed build still shows why) and drops the status
    // lines; verbose would clash with quiet in the inner cargo.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    std::env::remove_var("CARGO_TERM_VERBOSE");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer-ebpf");
    let package = aya_build::Package {
        name: "tracer-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Nightly).context(
        "building the eBPF object failed: run `cargo xtask setup` (nightly rust-src, bpf-linker on PATH)",
    )
}
