//! Rebuild the kernel programs when bpf-linker changes (aya-template does the same):
//! cargo cannot see the linker as an input otherwise.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
