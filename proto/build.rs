//! Compiles the .proto sources with protox (pure Rust, so no system `protoc`)
//! and writes the descriptor set that server reflection serves: the public
//! API in this directory and the internal protos in `../proto-internal`.

use std::{env, fs, path::PathBuf};

/// Where the protos live: the public module, then the internal one.
const INCLUDES: &[&str] = &[".", "../proto-internal"];

/// The files to compile, as paths from this directory.
const PROTOS: &[&str] = &[
    "ssak3/type/v1/money.proto",
    "ssak3/reservation/v1/reservation.proto",
    "ssak3/payment/v1/payment.proto",
    "ssak3/notify/v1/notify.proto",
    "ssak3/mypage/v1/mypage.proto",
    "../proto-internal/ssak3/payment/internal/v1/payment_internal.proto",
    "../proto-internal/ssak3/events/v1/events.proto",
    "../proto-internal/ssak3/bench/v1/echo.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(INCLUDES)?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;
    fs::write(
        out_dir.join("ssak3_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    // Requests that do not decode are INVALID_ARGUMENT, not INTERNAL (src/codec.rs).
    tonic_prost_build::configure()
        .codec_path("crate::codec::StrictCodec")
        .compile_fds(compiler.file_descriptor_set())?;

    for include in INCLUDES {
        println!("cargo:rerun-if-changed={include}/ssak3");
    }
    Ok(())
}
