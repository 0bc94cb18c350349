//! The `pushmesh` command line: one binary whose subcommands cover what a
//! developer does with pushmesh (run it, publish, listen, mint a token,
//! look at stats and presence). Each subcommand is one module; `cli` holds
//! every flag and help text; failures carry an exit code and a hint.

pub mod api;
pub mod cli;
pub mod dev;
pub mod duration;
pub mod failure;
pub mod inspect;
pub mod listen;
pub mod publish;
pub mod table;
pub mod token;

use cli::{Cli, Command};
use failure::Result;

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Dev(a) => dev::run(a).await,
        Command::Publish(a) => publish::run(a).await,
        Command::Listen(a) => listen::run(a).await,
        Command::Token(a) => token::run(a),
        Command::Stats(a) => inspect::stats(a).await,
        Command::Presence(a) => inspect::presence(a).await,
        Command::History(a) => inspect::history(a).await,
    }
}

/// At most `max` bytes of `s`, cut at a character boundary, with "…" when cut.
pub fn truncate(s: &str, max: usize) -> String {
    pushmesh_common::ids::truncate(s, max)
}
