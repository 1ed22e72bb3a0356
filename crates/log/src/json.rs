//! `log_format = json`: one JSON object per line, with the keys log
//! shippers index on top level.
//!
//! ```json
//! {"timestamp":"2026-12-07T15:36:25.123456Z","level":"INFO","target":"navigator_server::context",
//!  "message":"request","request_id":"req-…","global_request_id":"req-…","project":"…",
//!  "fields":{"method":"GET","path":"/v1/forwards","status":200}}
//! ```
//!
//! The fields of the enclosing spans (outermost first) are merged under
//! `fields`, except [`TOP_LEVEL`], which are keys of their own; the event's
//! own fields win over its spans'.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Span fields written as top-level keys: what identifies the request.
pub const TOP_LEVEL: [&str; 3] = ["request_id", "global_request_id", "project"];

/// The JSON-lines event format.
pub struct JsonLines;

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("target".into(), metadata.target().into());
        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(recorded) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                // JsonFields keeps a span's fields as the text of one object.
                let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&recorded.fields) else {
                    continue;
                };
                for (key, value) in map {
                    if TOP_LEVEL.contains(&key.as_str()) {
                        line.insert(key, value);
                    } else {
                        fields.insert(key, value);
                    }
                }
            }
        }
        let mut visitor = Collect(Map::new());
        event.record(&mut visitor);
        let mut own = visitor.0;
        let message = own
            .remove("message")
            .unwrap_or(Value::String(String::new()));
        line.insert("message".into(), message);
        fields.extend(own);
        if !fields.is_empty() {
            line.insert("fields".into(), Value::Object(fields));
        }
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// An event's fields as JSON values (numbers and booleans stay so).
struct Collect(Map<String, Value>);

impl Visit for Collect {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), value.to_string().into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    #[test]
    fn one_object_per_line_with_the_request_keys_on_top() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .with_writer(buffer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(count = 3, "outside");
            let span = tracing::info_span!(
                "request",
                request_id = "req-1",
                global_request_id = tracing::field::Empty,
                project = tracing::field::Empty,
                method = "GET",
            );
            span.record("project", "p1");
            span.in_scope(|| tracing::warn!(ok = true, "inside \"quoted\"\nsecond line"));
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "outside");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["fields"]["count"], 3);
        assert!(lines[0].get("request_id").is_none());
        let inside = &lines[1];
        assert_eq!(inside["message"], "inside \"quoted\"\nsecond line");
        assert_eq!(inside["level"], "WARN");
        assert_eq!(inside["request_id"], "req-1");
        assert_eq!(inside["project"], "p1");
        assert!(inside.get("global_request_id").is_none(), "{inside}");
        assert_eq!(inside["fields"]["method"], "GET");
        assert_eq!(inside["fields"]["ok"], true);
        assert!(inside["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(
            inside["target"]
                .as_str()
                .unwrap()
                .starts_with("navigator_log")
        );
    }
}
