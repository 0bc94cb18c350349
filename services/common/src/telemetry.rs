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

/// Libraries whose trace output carries message contents and headers (a
/// client's auth frame with its JWT, an `authorization` header with an API
/// key): capped at `debug` unless the filter names them itself, so
/// `--log trace` never writes a secret to the log.
const SECRET_BEARING: &[&str] = &["tungstenite", "tokio_tungstenite", "h2", "hyper", "hyper_util", "tonic", "warp"];

/// Targets that log every malformed request a client sends at ERROR
/// (warp's server loop: `server connection error: hyper::Error(Parse…)`):
/// anyone can write a line per connection into the log, at the level that
/// pages someone. Silenced unless the filter names them itself; a client's
/// bad HTTP is the client's problem (answered 400 where one can be).
const CLIENT_NOISE: &[&str] = &["warp::server"];

/// `filter` with the caps on `SECRET_BEARING` crates it does not name,
/// when its default level is `trace` (a cap never makes a crate louder),
/// and `CLIENT_NOISE` off unless named.
pub fn with_secret_caps(filter: &str) -> String {
    let mut out = filter.to_owned();
    for target in CLIENT_NOISE {
        let named = filter.split(',').any(|d| {
            let t = d.trim().split('=').next().unwrap_or("");
            *target == t || target.starts_with(&format!("{t}::"))
        });
        if !named {
            out.push_str(&format!(",{target}=off"));
        }
    }
    let default_trace = filter.split(',').any(|d| d.trim().eq_ignore_ascii_case("trace"));
    if !default_trace {
        return out;
    }
    for krate in SECRET_BEARING {
        let named = filter.split(',').any(|d| d.trim().split(['=', ':']).next() == Some(krate));
        if !named {
            out.push_str(&format!(",{krate}=debug"));
        }
    }
    out
}

/// Install the global subscriber. Safe to call more than once (later calls
/// are ignored), so tests that start services in-process can call it too.
pub fn init(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(with_secret_caps(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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

#[cfg(test)]
mod tests {
    #[test]
    fn trace_never_reaches_the_crates_that_log_contents_unless_named() {
        let f = super::with_secret_caps("trace");
        assert!(f.starts_with("trace,") && f.contains(",tungstenite=debug") && f.contains(",h2=debug"), "{f}");
        let named = super::with_secret_caps("trace,h2=trace");
        assert!(named.contains("h2=trace") && !named.contains("h2=debug"), "{named}");
        assert_eq!(super::with_secret_caps("warn"), "warn,warp::server=off", "never louder than asked");
        assert_eq!(super::with_secret_caps("info,pushmesh_hub=debug"), "info,pushmesh_hub=debug,warp::server=off");
        // Named: the user's own choice stands.
        assert_eq!(super::with_secret_caps("info,warp=debug"), "info,warp=debug");
        assert_eq!(super::with_secret_caps("info,warp::server=debug"), "info,warp::server=debug");
    }
}
