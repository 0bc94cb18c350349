//! Logging: `tracing` with a human format for terminals and JSON for
//! clusters (where logs are collected and parsed). The filter comes from
//! `--log` / `PUSHMESH_LOG` in `RUST_LOG` syntax. Colours only when stderr
//! is a terminal: a log redirected to a file (`make run`, tests, systemd)
//! stays plain text that grep and editors read.

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?}; expected \"text\" or \"json\"")),
        }
    }
}

/// Install the global subscriber. Safe to call more than once (later calls
/// are ignored), so tests that start services in-process can call it too.
pub fn init(filter: &str, format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Log flags every service takes (`#[command(flatten)]` into its `Config`).
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter, in RUST_LOG syntax (e.g. "info,pushmesh_hub=debug").
    #[arg(long = "log", env = "PUSHMESH_LOG", default_value = "info")]
    pub filter: String,
    /// Log line format: "text" for terminals, "json" for log collectors.
    #[arg(long = "log-format", env = "PUSHMESH_LOG_FORMAT", default_value = "text")]
    pub format: LogFormat,
}

impl LogArgs {
    pub fn init(&self) {
        init(&self.filter, self.format);
    }
}
