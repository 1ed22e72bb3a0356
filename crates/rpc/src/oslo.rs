//! oslo.messaging's wire format over RabbitMQ, as its rabbit driver writes it
//! (checked against a capture of oslo.messaging 14.0.3).
//!
//! Every body is the 2.0 envelope `{"oslo.version": "2.0", "oslo.message": "<json>"}`
//! whose `oslo.message` is a JSON *string* holding the real message. Requests
//! carry `method`, `args`, the caller's context flattened into `_context_*` keys,
//! a fresh `_unique_id` per publish, and for calls `_msg_id` and `_reply_q`.
//! Replies carry `result`, `failure` (itself a JSON string, or null), `ending`
//! and the request's `_msg_id`. Nothing here does I/O, so all of it is unit tested.

use serde_json::{Map, Value, json};

use crate::transport::RemoteError;

/// The envelope version this module writes and the only one it reads (besides
/// the bare 1.0 form, which has no envelope at all).
pub const ENVELOPE_VERSION: &str = "2.0";

/// A request as a listener receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub method: String,
    pub args: Value,
    /// Set for calls: where the reply goes (`_msg_id`, `_reply_q`).
    pub reply_to: Option<ReplyTo>,
    /// Set by oslo on every publish; receivers drop repeats of recent ones.
    pub unique_id: Option<String>,
    /// `_context_request_id` and `_context_global_request_id`.
    pub context: crate::context::RequestContext,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    pub msg_id: String,
    pub queue: String,
}

/// One reply message, as a caller receives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub msg_id: String,
    pub kind: ReplyKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ReplyKind {
    /// The final answer (`ending: true`, or a failure).
    Done(Result<Value, RemoteError>),
    /// A result sent ahead of a separate `ending` message, as oslo releases
    /// before Rocky did; the caller keeps it until the ending arrives.
    Partial(Value),
    /// A call-monitor heartbeat (`ending: false`, no result): the server is
    /// still working.
    Heartbeat,
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("body is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("body is not an oslo message: {0}")]
    Shape(&'static str),
    #[error("unsupported oslo.version {0:?}")]
    Version(String),
}

/// A fresh id in oslo's spelling (uuid4 as 32 hex digits).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Wraps an inner message in the 2.0 envelope.
fn envelope(inner: &Value) -> Vec<u8> {
    let body = json!({
        "oslo.version": ENVELOPE_VERSION,
        "oslo.message": inner.to_string(),
    });
    body.to_string().into_bytes()
}

/// Unwraps the 2.0 envelope; a body without one is taken as the bare 1.0 form.
fn unwrap_envelope(body: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    let outer: Value = serde_json::from_slice(body)?;
    let Value::Object(outer) = outer else {
        return Err(DecodeError::Shape("not a JSON object"));
    };
    let Some(version) = outer.get("oslo.version") else {
        return Ok(outer);
    };
    if version.as_str() != Some(ENVELOPE_VERSION) {
        return Err(DecodeError::Version(version.to_string()));
    }
    let inner = outer
        .get("oslo.message")
        .and_then(Value::as_str)
        .ok_or(DecodeError::Shape("oslo.message is not a string"))?;
    match serde_json::from_str(inner)? {
        Value::Object(inner) => Ok(inner),
        _ => Err(DecodeError::Shape("oslo.message is not a JSON object")),
    }
}

fn string_field(message: &Map<String, Value>, key: &str) -> Option<String> {
    message.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Encodes a request. Its context is that of the API request being worked
/// on ([`crate::context::current`]), flattened as oslo does: only
/// `_context_request_id` and `_context_global_request_id`, and none outside
/// a request (oslo servers accept that: the context is then empty).
pub fn encode_request(method: &str, args: &Value, reply_to: Option<&ReplyTo>) -> Vec<u8> {
    let mut message = Map::new();
    message.insert("method".into(), method.into());
    message.insert("args".into(), args.clone());
    let context = crate::context::current();
    if let Some(id) = context.request_id {
        message.insert("_context_request_id".into(), id.into());
    }
    if let Some(id) = context.global_request_id {
        message.insert("_context_global_request_id".into(), id.into());
    }
    if let Some(reply_to) = reply_to {
        message.insert("_msg_id".into(), reply_to.msg_id.clone().into());
        message.insert("_reply_q".into(), reply_to.queue.clone().into());
        // No call monitor: the server must not send heartbeats.
        message.insert("_timeout".into(), Value::Null);
    }
    message.insert("_unique_id".into(), new_id().into());
    envelope(&Value::Object(message))
}

/// Decodes a request from any oslo peer. Of the context (`_context_*` keys,
/// or a `_context` object) only the request ids are read; the rest, and
/// `version`/`namespace`, are accepted and ignored: Navigator's methods have
/// one version and need no caller identity.
pub fn decode_request(body: &[u8]) -> Result<Request, DecodeError> {
    let message = unwrap_envelope(body)?;
    let method = string_field(&message, "method").ok_or(DecodeError::Shape("no method"))?;
    let args = match message.get("args") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(args @ Value::Object(_)) => args.clone(),
        Some(_) => return Err(DecodeError::Shape("args is not an object")),
    };
    let reply_to = match (
        string_field(&message, "_msg_id"),
        string_field(&message, "_reply_q"),
    ) {
        (Some(msg_id), Some(queue)) => Some(ReplyTo { msg_id, queue }),
        _ => None,
    };
    // Either flattened (`_context_request_id`, oslo.messaging's own) or a
    // `_context` object; ids that are not `req-<uuid>` are dropped, so a
    // peer cannot put text of its own into the agent's log.
    let nested = message.get("_context").and_then(Value::as_object);
    let context_id = |key: &str| {
        string_field(&message, &format!("_context_{key}"))
            .or_else(|| nested.and_then(|c| string_field(c, key)))
            .filter(|id| crate::context::is_valid_request_id(id))
    };
    Ok(Request {
        method,
        args,
        reply_to,
        unique_id: string_field(&message, "_unique_id"),
        context: crate::context::RequestContext {
            request_id: context_id("request_id"),
            global_request_id: context_id("global_request_id"),
        },
    })
}

/// A notification as oslo's notifiers publish it (`messagingv2` in the 2.0
/// envelope, `messaging` bare): who sent what, and its payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Notification {
    pub event_type: String,
    pub publisher_id: Option<String>,
    pub message_id: Option<String>,
    /// `INFO`, `ERROR`, ... as the notifier wrote it.
    pub priority: Option<String>,
    pub payload: Value,
}

/// Decodes a notification body of either notifier driver.
pub fn decode_notification(body: &[u8]) -> Result<Notification, DecodeError> {
    let message = unwrap_envelope(body)?;
    let event_type =
        string_field(&message, "event_type").ok_or(DecodeError::Shape("no event_type"))?;
    Ok(Notification {
        event_type,
        publisher_id: string_field(&message, "publisher_id"),
        message_id: string_field(&message, "message_id"),
        priority: string_field(&message, "priority"),
        payload: message.get("payload").cloned().unwrap_or(Value::Null),
    })
}

/// Encodes the one reply oslo 14 sends: the result or failure with `ending: true`.
pub fn encode_reply(msg_id: &str, result: &Result<Value, RemoteError>) -> Vec<u8> {
    let (result, failure) = match result {
        Ok(value) => (value.clone(), Value::Null),
        Err(error) => (Value::Null, Value::String(encode_failure(error))),
    };
    envelope(&json!({
        "result": result,
        "failure": failure,
        "ending": true,
        "_msg_id": msg_id,
        "_unique_id": new_id(),
    }))
}

/// Decodes a reply from any oslo server, old or new.
pub fn decode_reply(body: &[u8]) -> Result<Reply, DecodeError> {
    let message = unwrap_envelope(body)?;
    let msg_id = string_field(&message, "_msg_id").ok_or(DecodeError::Shape("no _msg_id"))?;
    let result = message.get("result").cloned().unwrap_or(Value::Null);
    let kind = match message.get("failure") {
        Some(Value::String(failure)) => ReplyKind::Done(Err(decode_failure(failure))),
        // Some very old servers sent the failure as an object.
        Some(failure @ Value::Object(_)) => {
            ReplyKind::Done(Err(decode_failure(&failure.to_string())))
        }
        _ => match message.get("ending") {
            Some(Value::Bool(true)) => ReplyKind::Done(Ok(result)),
            Some(_) => ReplyKind::Heartbeat,
            None => ReplyKind::Partial(result),
        },
    };
    Ok(Reply { msg_id, kind })
}

/// Python's built-in exception classes that a Python caller can rebuild as
/// themselves (module `builtins`); others are sent under Navigator's module
/// and arrive as `oslo_messaging.RemoteError` naming the class.
const BUILTIN_EXCEPTIONS: &[&str] = &[
    "Exception",
    "ValueError",
    "TypeError",
    "KeyError",
    "LookupError",
    "RuntimeError",
    "NotImplementedError",
    "OSError",
    "TimeoutError",
    "PermissionError",
    "AttributeError",
];

/// The module oslo's own dispatcher errors live in.
const DISPATCHER_MODULE: &str = "oslo_messaging.rpc.dispatcher";

fn module_of(exc_type: &str) -> &'static str {
    if BUILTIN_EXCEPTIONS.contains(&exc_type) {
        "builtins"
    } else if matches!(
        exc_type,
        "NoSuchMethod" | "UnsupportedVersion" | "ExpectedException"
    ) {
        DISPATCHER_MODULE
    } else {
        "navigator.rpc"
    }
}

/// oslo's serialized failure: a JSON string with the exception's class, module,
/// message, traceback lines, positional and keyword arguments.
pub fn encode_failure(error: &RemoteError) -> String {
    let module = module_of(&error.exc_type);
    let qualified = if module == "builtins" {
        error.exc_type.clone()
    } else {
        format!("{module}.{}", error.exc_type)
    };
    json!({
        "class": error.exc_type,
        "module": module,
        "message": error.message,
        // There is no Python traceback; the last line has the same shape
        // as one, which is what people read in logs.
        "tb": [format!("{qualified}: {}\n", error.message)],
        "args": [error.message],
        "kwargs": {},
    })
    .to_string()
}

/// Reads oslo's serialized failure; anything unreadable is still a failure,
/// reported with the raw text so nothing is lost.
pub fn decode_failure(failure: &str) -> RemoteError {
    let Ok(Value::Object(failure_obj)) = serde_json::from_str::<Value>(failure) else {
        return RemoteError::new("RemoteError", failure);
    };
    let class = string_field(&failure_obj, "class").unwrap_or_else(|| "RemoteError".into());
    let message = string_field(&failure_obj, "message").unwrap_or_default();
    RemoteError::new(&class, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call as oslo.messaging 14.0.3 published it (from the capture), with
    /// its flattened request context.
    const PYTHON_CALL: &str = r#"{"oslo.message": "{\"method\": \"create_forward\", \"args\": {\"forward\": {\"id\": \"b9f1c6de-8c1a-4f0e-9a59-2b8a7d3a1c11\", \"protocol\": \"tcp\"}}, \"version\": \"1.0\", \"_msg_id\": \"6f66976315444dec8198f3d92c8f20ac\", \"_reply_q\": \"reply_b3d9485eb6504e73a18e1708fa7d3730\", \"_timeout\": null, \"_unique_id\": \"9f17b66da5df46868b260fc633114581\", \"_context_request_id\": \"req-7a277f11\", \"_context_roles\": [\"admin\", \"member\"], \"_context_is_admin\": true}", "oslo.version": "2.0"}"#;

    /// A failure reply as oslo.messaging 14.0.3 published it (traceback shortened).
    const PYTHON_FAILURE: &str = r#"{"oslo.message": "{\"result\": null, \"failure\": \"{\\\"class\\\": \\\"ValueError\\\", \\\"module\\\": \\\"builtins\\\", \\\"message\\\": \\\"forward rejected: port in use\\\", \\\"tb\\\": [\\\"Traceback (most recent call last):\\\\n\\\", \\\"ValueError: forward rejected: port in use\\\\n\\\"], \\\"args\\\": [\\\"forward rejected: port in use\\\"], \\\"kwargs\\\": {}}\", \"ending\": true, \"_msg_id\": \"f47c5cef8fad4f40b503d6574616f0a0\", \"_unique_id\": \"996ee8508bf846da9d664bda5e0be90d\"}", "oslo.version": "2.0"}"#;

    #[tokio::test]
    async fn carries_the_request_ids_of_the_context() {
        use crate::context::{RequestContext, scope};
        let context = RequestContext {
            request_id: Some("req-0a1b2c3d-4e5f-6789-abcd-ef0123456789".into()),
            global_request_id: Some("req-11111111-2222-3333-4444-555555555555".into()),
        };
        let body = scope(context.clone(), async {
            encode_request("create_forward", &json!({}), None)
        })
        .await;
        assert_eq!(decode_request(&body).unwrap().context, context);
        // Outside a request: no context keys at all.
        let body = encode_request("get_state", &json!({}), None);
        assert!(!String::from_utf8_lossy(&body).contains("_context"));
        assert!(decode_request(&body).unwrap().context.is_empty());
        // oslo's nested form is read too; ids not `req-<uuid>` are dropped.
        let nested = envelope(&json!({
            "method": "m",
            "_context": {"request_id": "req-0a1b2c3d-4e5f-6789-abcd-ef0123456789",
                         "global_request_id": "req-x\nFAKE LINE"},
        }));
        let decoded = decode_request(&nested).unwrap().context;
        assert_eq!(
            decoded.request_id.as_deref(),
            Some("req-0a1b2c3d-4e5f-6789-abcd-ef0123456789")
        );
        assert_eq!(decoded.global_request_id, None);
    }

    #[test]
    fn decodes_a_python_call_and_ignores_its_context() {
        let request = decode_request(PYTHON_CALL.as_bytes()).unwrap();
        assert_eq!(request.method, "create_forward");
        assert_eq!(request.args["forward"]["protocol"], "tcp");
        assert_eq!(
            request.reply_to,
            Some(ReplyTo {
                msg_id: "6f66976315444dec8198f3d92c8f20ac".into(),
                queue: "reply_b3d9485eb6504e73a18e1708fa7d3730".into(),
            })
        );
        assert_eq!(
            request.unique_id.as_deref(),
            Some("9f17b66da5df46868b260fc633114581")
        );
    }

    #[test]
    fn decodes_a_python_failure_reply() {
        let reply = decode_reply(PYTHON_FAILURE.as_bytes()).unwrap();
        assert_eq!(reply.msg_id, "f47c5cef8fad4f40b503d6574616f0a0");
        assert_eq!(
            reply.kind,
            ReplyKind::Done(Err(RemoteError::new(
                "ValueError",
                "forward rejected: port in use"
            )))
        );
    }

    #[test]
    fn request_round_trips_with_a_double_encoded_envelope() {
        let reply_to = ReplyTo {
            msg_id: new_id(),
            queue: "reply_x".into(),
        };
        let body = encode_request("get_state", &json!({}), Some(&reply_to));
        let outer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(outer["oslo.version"], "2.0");
        assert!(outer["oslo.message"].is_string());
        let inner: Value = serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
        assert_eq!(inner["_timeout"], Value::Null);
        assert_eq!(inner["_unique_id"].as_str().unwrap().len(), 32);
        let request = decode_request(&body).unwrap();
        assert_eq!(request.method, "get_state");
        assert_eq!(request.reply_to, Some(reply_to));
        let cast = decode_request(&encode_request("m", &Value::Null, None)).unwrap();
        assert_eq!(cast.reply_to, None);
        assert_eq!(cast.args, json!({}));
    }

    #[test]
    fn replies_use_oslos_failure_format() {
        let failed = encode_reply("id1", &Err(RemoteError::new("ValueError", "bad port")));
        let outer: Value = serde_json::from_slice(&failed).unwrap();
        let inner: Value = serde_json::from_str(outer["oslo.message"].as_str().unwrap()).unwrap();
        assert_eq!(inner["result"], Value::Null);
        assert_eq!(inner["ending"], true);
        let failure: Value = serde_json::from_str(inner["failure"].as_str().unwrap()).unwrap();
        assert_eq!(failure["class"], "ValueError");
        assert_eq!(failure["module"], "builtins");
        assert_eq!(failure["message"], "bad port");
        assert_eq!(failure["args"], json!(["bad port"]));
        assert_eq!(failure["kwargs"], json!({}));
        assert!(failure["tb"].is_array());
        let reply = decode_reply(&failed).unwrap();
        assert_eq!(
            reply.kind,
            ReplyKind::Done(Err(RemoteError::new("ValueError", "bad port")))
        );
        let ok = decode_reply(&encode_reply("id2", &Ok(json!({"a": 1})))).unwrap();
        assert_eq!(ok.kind, ReplyKind::Done(Ok(json!({"a": 1}))));
        let custom: Value = serde_json::from_str(&encode_failure(&RemoteError::new(
            "UnsupportedVersion",
            "x",
        )))
        .unwrap();
        assert_eq!(custom["module"], DISPATCHER_MODULE);
    }

    #[test]
    fn old_style_replies_and_heartbeats_are_told_apart() {
        let partial = r#"{"result": {"n": 1}, "failure": null, "_msg_id": "m"}"#;
        assert_eq!(
            decode_reply(partial.as_bytes()).unwrap().kind,
            ReplyKind::Partial(json!({"n": 1}))
        );
        let heartbeat = r#"{"result": null, "failure": null, "ending": false, "_msg_id": "m"}"#;
        assert_eq!(
            decode_reply(heartbeat.as_bytes()).unwrap().kind,
            ReplyKind::Heartbeat
        );
    }

    #[test]
    fn notifications_of_both_drivers_decode() {
        let inner = json!({
            "message_id": "5fa4aa56-6fe3-4c81-8d7e-9625b82c6e60",
            "publisher_id": "nova-compute:compute",
            "event_type": "instance.delete.end",
            "priority": "INFO",
            "payload": {"nova_object.data": {"uuid": "178b0921-8f85-4257-88b6-2e743b5a975c"}},
            "timestamp": "2026-11-25 14:52:33.796793",
            "_unique_id": "6ac0",
        });
        let v2 = decode_notification(&envelope(&inner)).unwrap();
        let bare = decode_notification(inner.to_string().as_bytes()).unwrap();
        assert_eq!(v2, bare);
        assert_eq!(v2.event_type, "instance.delete.end");
        assert_eq!(v2.publisher_id.as_deref(), Some("nova-compute:compute"));
        assert_eq!(
            v2.payload["nova_object.data"]["uuid"],
            "178b0921-8f85-4257-88b6-2e743b5a975c"
        );
        assert!(decode_notification(br#"{"payload": {}}"#).is_err());
        assert!(decode_notification(b"\xff").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_request(b"not json").is_err());
        assert!(decode_request(br#"{"oslo.version": "3.0", "oslo.message": "{}"}"#).is_err());
        assert!(decode_request(br#"{"oslo.version": "2.0", "oslo.message": 5}"#).is_err());
        assert!(decode_request(br#"{"args": {}}"#).is_err());
        assert!(decode_reply(br#"{"result": 1}"#).is_err());
        assert_eq!(
            decode_failure("not json"),
            RemoteError::new("RemoteError", "not json")
        );
    }
}
