//! Builds the eBPF object (tracer-ebpf, with nightly and bpf-linker) so that `tracer` embeds
//! it and one binary is all a user copies. `cargo xtask setup` installs the toolchain pieces.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
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
