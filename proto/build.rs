//! Compiles every `.proto` under `quartet/` with protox, a pure-Rust protobuf compiler, so a
//! fresh machine needs no `protoc` binary (see docs/ARCHITECTURE.md, "Generated code").

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    collect_protos(&root.join("quartet"), &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=quartet");

    let descriptors = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Reflection serves this encoded set; compile_fds does not write it by itself.
    std::fs::write(
        out.join("quartet_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}

fn collect_protos(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
