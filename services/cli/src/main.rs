use std::process::ExitCode;

use clap::Parser;
use pushmesh_cli::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match pushmesh_cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("{f}");
            ExitCode::from(f.code())
        }
    }
}
