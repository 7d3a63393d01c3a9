//! Compiles the .proto sources with protox (pure Rust, so no system `protoc`)
//! and writes the descriptor set that server reflection serves.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "ssak3/reservation/v1/reservation.proto",
    "ssak3/payment/v1/payment.proto",
    "ssak3/notify/v1/notify.proto",
    "ssak3/mypage/v1/mypage.proto",
    "ssak3/events/v1/events.proto",
    "ssak3/bench/v1/echo.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;
    fs::write(
        out_dir.join("ssak3_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure().compile_fds(compiler.file_descriptor_set())?;

    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
