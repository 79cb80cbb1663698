//! Logs: to stderr, as text for people or as one JSON object per line for log pipelines, filtered
//! by `MESH_PROXY_LOG` (or `RUST_LOG`), `info` by default.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The environment variables the filter is read from, first match wins.
pub const LOG_FILTER_VARS: [&str; 2] = ["MESH_PROXY_LOG", "RUST_LOG"];

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event.
    #[default]
    Plain,
    /// One JSON object per event: timestamp, level, target, message, fields, spans.
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoggingError {
    #[error(
        "{var} is not a valid log filter ({source}); write it like info or mesh_proxy=debug,info"
    )]
    Filter {
        var: &'static str,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("a global logger is already installed: {0}")]
    AlreadyInstalled(String),
}

/// Installs the process's logger.
pub fn init(format: LogFormat) -> Result<(), LoggingError> {
    let filter = filter_from_env()?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let installed = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.event_format(JsonFormat).try_init(),
    };
    installed.map_err(|e| LoggingError::AlreadyInstalled(e.to_string()))
}

fn filter_from_env() -> Result<EnvFilter, LoggingError> {
    for var in LOG_FILTER_VARS {
        if let Ok(directives) = std::env::var(var)
            && !directives.trim().is_empty()
        {
            return EnvFilter::try_new(&directives)
                .map_err(|source| LoggingError::Filter { var, source });
        }
    }
    Ok(EnvFilter::new("info"))
}

/// Formats each event as one JSON object on one line.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonFormat;

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;

        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::String(timestamp));
        line.insert("level".into(), Value::String(meta.level().to_string()));
        line.insert("target".into(), Value::String(meta.target().to_owned()));
        if let Some(message) = fields.remove("message") {
            line.insert("message".into(), message);
        }
        if !fields.is_empty() {
            line.insert("fields".into(), Value::Object(fields));
        }
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let mut entry = Map::new();
                    entry.insert("name".into(), Value::String(span.name().to_owned()));
                    // Span fields were recorded by the text formatter when the span was made.
                    let extensions = span.extensions();
                    if let Some(recorded) = extensions.get::<FormattedFields<N>>()
                        && !recorded.is_empty()
                    {
                        entry.insert("fields".into(), Value::String(recorded.to_string()));
                    }
                    Value::Object(entry)
                })
                .collect();
            if !spans.is_empty() {
                line.insert("spans".into(), Value::Array(spans));
            }
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Collects an event's fields as JSON values.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::Bool(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::String(value.to_string()));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_message_fields_and_spans() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .event_format(JsonFormat)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("inbound", client = "10.0.0.1:5000");
            let _entered = span.enter();
            tracing::warn!(port = 4143u64, ready = false, "listener \"up\"");
        });
        let out = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "listener \"up\"");
        assert_eq!(line["fields"]["port"], 4143);
        assert_eq!(line["fields"]["ready"], false);
        assert_eq!(line["spans"][0]["name"], "inbound");
        assert!(
            line["spans"][0]["fields"]
                .as_str()
                .unwrap()
                .contains("10.0.0.1:5000")
        );
        assert!(line["timestamp"].as_str().unwrap().contains('T'));
    }
}
