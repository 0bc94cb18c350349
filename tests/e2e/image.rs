//! `make image` (deploy/build-image.sh) without a container daemon: the OCI
//! archive it writes is inspected with skopeo (config, labels, layers),
//! unpacked, and every binary in it runs from the unpacked root filesystem
//! (chroot, as the image's user 65532) with nothing but what the image holds.
//!
//! It packs the debug binaries cargo already built (PUSHMESH_IMAGE_BIN; the
//! script strips their debug info as it does for release ones): a release
//! build would take minutes of this test's budget and prove nothing more
//! about the packing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use pushmesh_tests::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const BINARIES: [&str; 4] = ["hub", "ws-gateway", "http-ingress", "pushmesh"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Run a command to completion; its stdout, or an error with its stderr.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Every file (not directory) under `root`, as absolute image paths.
fn files(root: &Path, dir: &Path, out: &mut BTreeSet<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            files(root, &path, out)?;
        } else {
            out.insert(format!("/{}", path.strip_prefix(root)?.display()));
        }
    }
    Ok(())
}

#[tokio::test]
async fn make_image_writes_an_oci_archive_whose_binaries_run() -> Result<()> {
    let work = bin_dir().parent().expect("target").join("test-logs").join(format!("image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let archive = work.join("pushmesh.oci.tar");
    let tag = format!("test-{}", std::process::id());

    let said = output(
        Command::new(repo().join("deploy/build-image.sh"))
            .env("PUSHMESH_IMAGE_BIN", bin_dir())
            .env("IMAGE_OUT", &archive)
            .env("IMAGE_TAG", &tag)
            .env("IMAGE_REPOSITORY", "registry.example.com/pushmesh/pushmesh"),
    )?;
    // It says how to push it and how to install the chart with it.
    let oci = format!("oci-archive:{}", archive.display());
    assert!(said.contains(&format!("skopeo copy {oci} docker://")), "{said}");
    assert!(said.contains(&format!("--set image.tag={tag}")), "{said}");

    // The config: user, entrypoint convention, labels, ports, env.
    let config: Value = serde_json::from_str(&output(Command::new("skopeo").args(["inspect", "--config", &oci]))?)?;
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532", "{config}");
    assert!(c["Entrypoint"].is_null() || c["Entrypoint"] == serde_json::json!([]), "no entrypoint: {config}");
    assert_eq!(c["Cmd"], serde_json::json!(["/usr/local/bin/hub", "--help"]), "{config}");
    assert_eq!(c["Env"], serde_json::json!(["PUSHMESH_LOG_FORMAT=json"]), "{config}");
    let labels = &c["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], tag.as_str());
    assert_eq!(labels["org.opencontainers.image.title"], "pushmesh");
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    let head = output(Command::new("git").arg("-C").arg(repo()).args(["rev-parse", "HEAD"]))?;
    assert_eq!(labels["org.opencontainers.image.revision"], head.trim());
    for l in ["created", "description", "source", "documentation"] {
        assert!(labels[format!("org.opencontainers.image.{l}")].is_string(), "label {l}: {config}");
    }
    let ports: BTreeSet<&str> = c["ExposedPorts"].as_object().context("ports")?.keys().map(String::as_str).collect();
    assert_eq!(ports, BTreeSet::from(["50051/tcp", "9090/tcp", "8080/tcp", "8081/tcp", "8082/tcp"]));

    // The manifest: one compressed layer.
    let manifest: Value = serde_json::from_str(&output(Command::new("skopeo").args(["inspect", "--raw", &oci]))?)?;
    let layers = manifest["layers"].as_array().context("layers")?;
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");

    // Unpack: the archive is an OCI layout; the layer is a blob in it.
    let layout = work.join("layout");
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(&layout)?;
    std::fs::create_dir_all(&rootfs)?;
    output(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&layout))?;
    let digest = layers[0]["digest"].as_str().context("digest")?.trim_start_matches("sha256:");
    output(
        Command::new("tar")
            .arg("-xzf")
            .arg(layout.join("blobs/sha256").join(digest))
            .arg("-C")
            .arg(&rootfs)
            .arg("--numeric-owner"),
    )?;

    // Exactly the binaries, the libraries ldd names for them, CA
    // certificates and the user database; no shell.
    let mut want: BTreeSet<String> = BINARIES.iter().map(|b| format!("/usr/local/bin/{b}")).collect();
    for b in BINARIES {
        let ldd = output(Command::new("ldd").arg(bin_dir().join(b)))?;
        for line in ldd.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [_, "=>", path, ..] if path.starts_with('/') => want.insert(path.to_string()),
                [path, ..] if path.starts_with('/') => want.insert(path.to_string()),
                _ => false,
            };
        }
    }
    want.extend(
        ["/etc/ssl/certs/ca-certificates.crt", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf"].map(String::from),
    );
    let mut have = BTreeSet::new();
    files(&rootfs, &rootfs, &mut have)?;
    assert_eq!(have, want, "the image's files");

    // The chart runs each service by `command:`: those paths are in the image.
    for t in ["hub-statefulset.yaml", "ws-gateway-deployment.yaml", "http-ingress-deployment.yaml"] {
        let yaml = std::fs::read_to_string(repo().join("helm/pushmesh/templates").join(t))?;
        let command = yaml.lines().find_map(|l| l.trim().strip_prefix("command: [\"")).context("command:")?;
        let path = command.split('"').next().unwrap_or_default();
        assert!(have.contains(path), "{t} runs {path}, which the image lacks");
    }

    // Each binary runs in the image's root alone, as its user.
    let chroot = |args: &[&str]| {
        let mut c = Command::new("chroot");
        // No variable of this environment leaks in; PATH only to find chroot.
        c.arg("--userspec=65532:65532")
            .arg(&rootfs)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        c
    };
    for b in BINARIES {
        let v = output(&mut chroot(&[&format!("/usr/local/bin/{b}"), "--version"]))?;
        assert_eq!(v.trim(), format!("{b} 0.1.0"));
    }
    // And a service really serves from it.
    let mut hub = tokio::process::Command::from(chroot(&[
        "/usr/local/bin/hub",
        "--grpc-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ]))
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .kill_on_drop(true)
    .spawn()?;
    let mut lines = BufReader::new(hub.stdout.take().expect("piped")).lines();
    let line =
        tokio::time::timeout(WAIT, lines.next_line()).await??.context("the hub in the image announced nothing")?;
    let announce: Value = serde_json::from_str(&line)?;
    let admin = announce["listening"]["admin"].as_str().context("admin address")?.parse()?;
    let m = metrics(admin).await?;
    assert!(m.contains("pushmesh_hub_"), "{m}");
    hub.kill().await?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}
