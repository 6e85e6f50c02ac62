//! Log set-up from the flags every binary has: a filter (`--log-level`,
//! e.g. `info` or `outrigger_proxy=debug,info`) and, where offered, a
//! format (`--log-format plain|json`). Logs are `tracing` events written
//! as lines, plain text or one JSON object per line.

use std::io::IsTerminal;

/// How each event is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per event, its fields at the top level.
    Json,
}

/// Where the lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Stderr,
    Stdout,
}

/// When lines are coloured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Color {
    /// Only when the output is a terminal.
    OnTerminal,
    /// Unless `NO_COLOR` is set (`tracing-subscriber`'s default).
    UnlessNoColor,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid log filter {filter:?}")]
pub struct FilterError {
    pub filter: String,
    #[source]
    pub source: tracing_subscriber::filter::ParseError,
}

/// Installs the process's subscriber: events that pass `filter`, in
/// `format`, to `output`.
pub fn init(filter: &str, format: Format, output: Output, color: Color) -> Result<(), FilterError> {
    let env_filter =
        tracing_subscriber::EnvFilter::try_new(filter).map_err(|source| FilterError {
            filter: filter.to_string(),
            source,
        })?;
    let builder = tracing_subscriber::fmt().with_env_filter(env_filter);
    match output {
        Output::Stderr => finish(builder.with_writer(std::io::stderr), format, color, || {
            std::io::stderr().is_terminal()
        }),
        Output::Stdout => finish(builder.with_writer(std::io::stdout), format, color, || {
            std::io::stdout().is_terminal()
        }),
    }
    Ok(())
}

fn finish<W>(
    builder: tracing_subscriber::fmt::SubscriberBuilder<
        tracing_subscriber::fmt::format::DefaultFields,
        tracing_subscriber::fmt::format::Format,
        tracing_subscriber::EnvFilter,
        W,
    >,
    format: Format,
    color: Color,
    is_terminal: impl FnOnce() -> bool,
) where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = match color {
        Color::OnTerminal => builder.with_ansi(is_terminal()),
        Color::UnlessNoColor => builder,
    };
    match format {
        Format::Plain => builder.init(),
        Format::Json => builder.json().flatten_event(true).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_is_refused_by_name_before_anything_is_installed() {
        let e = init(
            "outrigger=[[",
            Format::Json,
            Output::Stderr,
            Color::OnTerminal,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "invalid log filter \"outrigger=[[\"");
        assert!(std::error::Error::source(&e).is_some());
    }
}
