//! Builds the kernel programs (probes/ebpf) for bpfel-unknown-none with the nightly
//! toolchain and bpf-linker, so that `include_bytes_aligned!` can embed the object.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("exporter/ has no parent"))?
        .join("probes/ebpf");
    // aya-build watches probes/ebpf; the shared types live beside it.
    println!("cargo:rerun-if-changed={}", root.with_file_name("abi").display());
    let root = root.to_str().context("non-UTF-8 path to probes/ebpf")?;
    let package = Package { name: "flowtel-probes-ebpf", root_dir: root, ..Package::default() };
    aya_build::build_ebpf([package], Toolchain::default())
        .context("building the kernel programs failed; run scripts/setup.sh (nightly, rust-src, bpf-linker)")
}
