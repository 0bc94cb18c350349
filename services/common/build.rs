//! Compiles `proto/` with protox (pure Rust), so a clean clone builds with
//! no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let files = [
        format!("{root}/pushmesh/v1/hub.proto"),
        format!("{root}/pushmesh/v1/api.proto"),
        format!("{root}/pushmesh/v1/proxy.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(&files, [root])?;
    tonic_prost_build::configure()
        .bytes(".pushmesh.v1.Delivery.data")
        .bytes(".pushmesh.v1.PublishRequest.data")
        .compile_fds(fds)?;
    Ok(())
}
