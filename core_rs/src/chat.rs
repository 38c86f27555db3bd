//! The door's reading of an OpenAI chat completions body (docs/data-plane.md,
//! step 3): the facts routing needs, for a body the door may serve itself.
//! The API's definition of the body is Python's (`ChatCompletionRequest` in
//! types.py: its checks, its OpenAPI schema, its error messages). This
//! reading accepts only bodies that definition accepts, with the same facts
//! (a differential test holds it so, `tests/test_core_readings.py`); any
//! other body, and any it is unsure of (an integer past 64 bits, nesting past
//! serde_json's limit), is left to Python, which reads it and answers any
//! error in the API's words.

use serde_json::{Map, Value};

/// What routing reads of a chat call.
#[derive(Debug, PartialEq, Eq)]
pub struct ChatFacts {
    /// A model id or version, `auto`, or an agent type.
    pub model: String,
    pub stream: bool,
    /// The end user the body names (`user`).
    pub user: Option<String>,
    /// Characters of the messages' text (`content_length` in Python): string
    /// contents, and the `text` of content parts.
    pub content_chars: u64,
}

const MAX_MODEL_CHARS: usize = 256;
const MAX_MESSAGES: usize = 10_000;
const MAX_USER_CHARS: usize = 256;
const MAX_STOP: usize = 16;

/// The facts, or None: the body is Python's to read.
pub fn read(body: &[u8]) -> Option<ChatFacts> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    let doc = doc.as_object()?;
    let model = doc.get("model")?.as_str()?;
    let chars = model.chars().count();
    if chars == 0 || chars > MAX_MODEL_CHARS {
        return None;
    }
    let messages = doc.get("messages")?.as_array()?;
    if messages.is_empty() || messages.len() > MAX_MESSAGES {
        return None;
    }
    let mut content_chars = 0;
    for message in messages {
        content_chars += text_chars(message.as_object()?);
    }
    let stream = match doc.get("stream") {
        None => false,
        Some(v) => v.as_bool()?,
    };
    let user = optional(doc, "user", |v| {
        let user = v.as_str()?;
        (user.chars().count() <= MAX_USER_CHARS).then(|| user.to_owned())
    })?;
    optional(doc, "max_tokens", |v| integer_from(v, 1))?;
    optional(doc, "max_completion_tokens", |v| integer_from(v, 1))?;
    optional(doc, "n", |v| integer_from(v, 1).filter(|n| *n <= 128))?;
    optional(doc, "temperature", |v| number_within(v, 2.0))?;
    optional(doc, "top_p", |v| number_within(v, 1.0))?;
    optional(doc, "stop", |v| match v {
        Value::String(_) => Some(()),
        Value::Array(stops) if stops.len() <= MAX_STOP => {
            stops.iter().all(Value::is_string).then_some(())
        }
        _ => None,
    })?;
    Some(ChatFacts {
        model: model.to_owned(),
        stream,
        user,
        content_chars,
    })
}

/// A member that may be absent or null, else must pass `check`: Some(None)
/// when absent or null, None when it fails.
fn optional<T>(
    doc: &Map<String, Value>,
    name: &str,
    check: impl Fn(&Value) -> Option<T>,
) -> Option<Option<T>> {
    match doc.get(name) {
        None | Some(Value::Null) => Some(None),
        Some(v) => check(v).map(Some),
    }
}

/// A JSON integer (not `1.0`) of at least `min`, within 64 bits.
fn integer_from(v: &Value, min: i64) -> Option<i64> {
    v.as_i64().filter(|n| *n >= min)
}

/// A JSON number (integer or not) in [0, max].
fn number_within(v: &Value, max: f64) -> Option<()> {
    let n = v.as_number()?.as_f64()?;
    (0.0..=max).contains(&n).then_some(())
}

/// `content_length` of one message: its string content, or the `text` of
/// each part of a content array.
fn text_chars(message: &Map<String, Value>) -> u64 {
    let chars = |s: &str| s.chars().count() as u64;
    match message.get("content") {
        Some(Value::String(text)) => chars(text),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.as_object()?.get("text")?.as_str())
            .map(chars)
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(body: &str) -> Option<ChatFacts> {
        read(body.as_bytes())
    }

    #[test]
    fn an_sdk_body_gives_its_routing_facts() {
        let body = r#"{"model":"gpt-x","messages":[{"role":"system","content":"héllo"},
            {"role":"user","content":[{"type":"text","text":"abc"},{"type":"image_url","image_url":{"url":"u"}}]},
            {"role":"assistant","content":null,"tool_calls":[]}],
            "temperature":0.2,"top_p":1,"max_tokens":64,"n":1,"stop":["x"],"user":"u-1","seed":3,"stream":false}"#;
        let expected = ChatFacts {
            model: "gpt-x".into(),
            stream: false,
            user: Some("u-1".into()),
            content_chars: 8,
        };
        assert_eq!(facts(body), Some(expected));
        let streamed =
            facts(r#"{"model":"auto","messages":[{}],"stream":true,"user":null}"#).unwrap();
        assert!(streamed.stream && streamed.user.is_none() && streamed.content_chars == 0);
    }

    #[test]
    fn bodies_python_refuses_or_may_refuse_are_left_to_it() {
        for body in [
            r#"{"messages":[{}]}"#,
            r#"{"model":"","messages":[{}]}"#,
            r#"{"model":"m","messages":[]}"#,
            r#"{"model":"m","messages":[1]}"#,
            r#"{"model":"m","messages":{}}"#,
            r#"{"model":"m","messages":[{}],"stream":null}"#,
            r#"{"model":"m","messages":[{}],"stream":1}"#,
            r#"{"model":"m","messages":[{}],"temperature":2.5}"#,
            r#"{"model":"m","messages":[{}],"temperature":true}"#,
            r#"{"model":"m","messages":[{}],"top_p":-0.1}"#,
            r#"{"model":"m","messages":[{}],"max_tokens":0}"#,
            r#"{"model":"m","messages":[{}],"max_tokens":1.0}"#,
            r#"{"model":"m","messages":[{}],"max_tokens":99999999999999999999999}"#,
            r#"{"model":"m","messages":[{}],"n":129}"#,
            r#"{"model":"m","messages":[{}],"stop":[1]}"#,
            r#"{"model":"m","messages":[{}],"stop":["a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a","a"]}"#,
            r#"{"model":"m","messages":[{}],"user":5}"#,
            r#"[{"model":"m"}]"#,
            "{oops",
        ] {
            assert_eq!(facts(body), None, "{body}");
        }
        let long_user = format!(
            r#"{{"model":"m","messages":[{{}}],"user":"{}"}}"#,
            "é".repeat(257)
        );
        assert_eq!(facts(&long_user), None);
        let long_model = format!(r#"{{"model":"{}","messages":[{{}}]}}"#, "m".repeat(257));
        assert_eq!(facts(&long_model), None);
    }
}
