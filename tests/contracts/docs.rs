//! docs/operations.md's configuration tables are generated from the same
//! clap definitions that print each binary's `--help`, so the docs cannot
//! drift from the flags. When a flag changes, regenerate them with
//!
//!     PUSHMESH_UPDATE_DOCS=1 cargo test -p pushmesh-tests --test contracts docs
//!
//! and commit docs/operations.md.

use std::path::PathBuf;

use clap::CommandFactory;

const OPS: &str = "docs/operations.md";

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(OPS)
}

/// One markdown table: every flag with its env var, default and help.
fn table(cmd: clap::Command) -> String {
    let mut out = String::from("| Flag | Environment | Default | What it does |\n|---|---|---|---|\n");
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version") || arg.is_hide_set() {
            continue;
        }
        let Some(long) = arg.get_long() else { continue };
        let takes_value = arg.get_num_args().is_none_or(|n| n.takes_values())
            && !matches!(arg.get_action(), clap::ArgAction::SetTrue);
        let flag = if takes_value {
            let value =
                arg.get_value_names().and_then(|v| v.first()).map_or_else(|| id.to_uppercase(), |v| v.to_string());
            format!("`--{long} <{value}>`")
        } else {
            format!("`--{long}`")
        };
        let env = arg.get_env().map_or_else(|| "–".to_owned(), |e| format!("`{}`", e.to_string_lossy()));
        let defaults: Vec<String> = arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        let default = if defaults.is_empty() { "–".to_owned() } else { format!("`{}`", defaults.join(",")) };
        let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ").replace('|', "\\|");
        out.push_str(&format!("| {flag} | {env} | {default} | {help} |\n"));
    }
    out
}

fn tables() -> Vec<(&'static str, String)> {
    let dev = pushmesh_cli::cli::Cli::command().find_subcommand("dev").cloned().expect("the dev subcommand");
    vec![
        ("hub", table(pushmesh_hub::Config::command())),
        ("ws-gateway", table(pushmesh_ws_gateway::Config::command())),
        ("http-ingress", table(pushmesh_http_ingress::Config::command())),
        ("pushmesh-dev", table(dev)),
    ]
}

fn begin(name: &str) -> String {
    format!("<!-- flags:{name}:begin (generated from --help by tests/contracts/docs.rs; do not edit) -->\n")
}

fn end(name: &str) -> String {
    format!("<!-- flags:{name}:end -->")
}

#[test]
fn flag_tables_match_the_binaries() {
    let text = std::fs::read_to_string(path()).expect("docs/operations.md");
    let mut updated = text.clone();
    let mut stale = Vec::new();
    for (name, table) in tables() {
        let (b, e) = (begin(name), end(name));
        let start = updated.find(&b).unwrap_or_else(|| panic!("{OPS} has no `{}` marker", b.trim_end())) + b.len();
        let stop = start + updated[start..].find(&e).unwrap_or_else(|| panic!("{OPS} has no `{e}` marker"));
        if updated[start..stop] != table {
            stale.push(name);
            updated.replace_range(start..stop, &table);
        }
    }
    if stale.is_empty() {
        return;
    }
    if std::env::var_os("PUSHMESH_UPDATE_DOCS").is_some() {
        std::fs::write(path(), updated).expect("write docs/operations.md");
        return;
    }
    panic!(
        "the flag tables of {stale:?} in {OPS} differ from the binaries' --help; regenerate them with\n  \
         PUSHMESH_UPDATE_DOCS=1 cargo test -p pushmesh-tests --test contracts docs\nand commit {OPS}"
    );
}

#[test]
fn a_table_row_says_flag_env_default_and_help() {
    let t = table(pushmesh_hub::Config::command());
    assert!(
        t.contains(
            "| `--grpc-addr <GRPC_ADDR>` | `PUSHMESH_GRPC_ADDR` | `127.0.0.1:50051` | Address of the gRPC server"
        ),
        "{t}"
    );
    assert!(!t.contains("--help"), "{t}");
}

/// Every flag of every service (and of `pushmesh dev`) can also be set by a
/// `PUSHMESH_…` environment variable: containers are configured that way.
#[test]
fn every_flag_has_an_environment_variable() {
    let dev = pushmesh_cli::cli::Cli::command().find_subcommand("dev").cloned().expect("the dev subcommand");
    let commands = [
        ("hub", pushmesh_hub::Config::command()),
        ("ws-gateway", pushmesh_ws_gateway::Config::command()),
        ("http-ingress", pushmesh_http_ingress::Config::command()),
        ("pushmesh dev", dev),
    ];
    let mut missing = Vec::new();
    for (name, cmd) in commands {
        for arg in cmd.get_arguments() {
            let (Some(long), false) = (arg.get_long(), matches!(arg.get_id().as_str(), "help" | "version")) else {
                continue;
            };
            match arg.get_env().map(|e| e.to_string_lossy().into_owned()) {
                Some(env) if env.starts_with("PUSHMESH_") => {}
                other => missing.push(format!("{name} --{long} (env: {other:?})")),
            }
        }
    }
    assert!(missing.is_empty(), "flags without a PUSHMESH_ environment variable: {missing:#?}");
}
