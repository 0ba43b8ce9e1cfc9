//! Builds the kernel programs (probes/ebpf) for bpfel-unknown-none with the pinned
//! nightly toolchain and bpf-linker, so that `include_bytes_aligned!` can embed the object.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("exporter/ has no parent"))?
        .join("probes/ebpf");
    // aya-build watches probes/ebpf; the shared types live beside it.
    println!("cargo:rerun-if-changed={}", root.with_file_name("abi").display());
    // One dated nightly, the one scripts/setup.sh installs: another nightly's LLVM
    // emits different BPF, and an older kernel's verifier may refuse it.
    let pin = root.join("nightly-toolchain");
    println!("cargo:rerun-if-changed={}", pin.display());
    let nightly = std::fs::read_to_string(&pin).with_context(|| format!("reading {}", pin.display()))?;
    let root = root.to_str().context("non-UTF-8 path to probes/ebpf")?;
    let package = Package { name: "flowtel-probes-ebpf", root_dir: root, ..Package::default() };
    aya_build::build_ebpf([package], Toolchain::Custom(nightly.trim())).with_context(|| {
        format!("building the kernel programs failed; run scripts/setup.sh ({}, rust-src, bpf-linker)", nightly.trim())
    })
}
