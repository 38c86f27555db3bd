//! What the router reads of a provider's whole answer in its caller's own
//! format: the token counts, the text and why it ended. The reading is the
//! one `router_py/model_router/engine/translate/wire.py` declares for the
//! same answers (a differential test holds the two together, in
//! `tests/test_core_readings.py`): an answer of another shape — a count that is
//! a string, negative or over `MAX_COUNT`, `choices: [1]` — is `Malformed`,
//! the provider's failure, never a crash. Members the router does not read
//! are not looked at, except that their types are checked where wire.py
//! declares them.

use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// A token count a provider may report for one call; more is a broken provider.
pub const MAX_COUNT: u64 = 100_000_000;

/// The token counts a provider reported (`Tokens` in Python). `prompt`
/// counts every prompt token, cached ones included (OpenAI's meaning); None:
/// the provider did not say.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt: Option<u64>,
    pub completion: Option<u64>,
    pub cache_read: u64,
    pub cache_write: u64,
}

/// What accounting reads of a whole answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Reading {
    pub tokens: Usage,
    /// The answer's text (the first choice's content; Anthropic's text blocks).
    pub text: String,
    pub finish_reason: Option<String>,
}

/// Why an answer is not of the shape its format promises: what was expected
/// and where (`$.usage.prompt_tokens`), as msgspec says it in wire.py.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Read<T> = Result<T, Malformed>;

/// Where a value sits in its answer, as msgspec says it (`$.choices[0].delta`):
/// written out only for a `Malformed`, never while an answer reads well.
#[derive(Clone, Copy)]
enum At<'a> {
    Root,
    Member(&'a At<'a>, &'a str),
    Index(&'a At<'a>, usize),
}

impl<'a> At<'a> {
    fn member(&'a self, name: &'a str) -> At<'a> {
        At::Member(self, name)
    }

    fn index(&'a self, i: usize) -> At<'a> {
        At::Index(self, i)
    }
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            At::Root => f.write_str("$"),
            At::Member(at, name) => write!(f, "{at}.{name}"),
            At::Index(at, i) => write!(f, "{at}[{i}]"),
        }
    }
}

/// A JSON value's type, as msgspec names it, from its first character.
fn kind(value: &RawValue) -> &'static str {
    let text = value.get();
    match text.as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "bool",
        Some(b'"') => "str",
        Some(b'[') => "array",
        Some(b'{') => "object",
        _ if text.contains(['.', 'e', 'E']) => "float",
        _ => "int",
    }
}

fn expected(what: &str, got: &RawValue, at: &At) -> Malformed {
    Malformed(format!(
        "Expected `{what}`, got `{}` - at `{at}`",
        kind(got)
    ))
}

/// A JSON string as sent, copied only when it has escapes to undo.
struct Text<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }

            fn visit_str<E>(self, text: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// An object's members, their values as sent: members the router does not
/// read are only skipped (any depth, any number). A name sent twice: the
/// last value, as a decoder keeps it. Objects are small: a list searched
/// from its end costs less than a map of owned names.
struct Members<'a>(Vec<(Text<'a>, &'a RawValue)>);

impl<'a> Members<'a> {
    fn get(&self, name: &str) -> Option<&'a RawValue> {
        let mut members = self.0.iter().rev();
        members.find(|(n, _)| n.0 == name).map(|(_, value)| *value)
    }
}

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Members<'de>, M::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

fn object<'a>(value: &'a RawValue, at: &At) -> Read<Members<'a>> {
    typed(value, "object", at)
}

fn array<'a>(value: &'a RawValue, at: &At) -> Read<Vec<&'a RawValue>> {
    typed(value, "array", at)
}

fn string<'a>(value: &'a RawValue, at: &At) -> Read<Cow<'a, str>> {
    typed(value, "str", at).map(|text: Text| text.0)
}

/// `value` read as a `T`, once its JSON type is `what`.
fn typed<'a, T: serde::Deserialize<'a>>(value: &'a RawValue, what: &str, at: &At) -> Read<T> {
    if kind(value) != what {
        return Err(expected(what, value, at));
    }
    serde_json::from_str(value.get()).map_err(|e| Malformed(format!("{e} - at `{at}`")))
}

/// A member wire.py requires.
fn required<'a>(doc: &Members<'a>, name: &str, at: &At) -> Read<&'a RawValue> {
    doc.get(name).ok_or_else(|| {
        Malformed(format!(
            "Object missing required field `{name}` - at `{at}`"
        ))
    })
}

/// A member that may be absent or null.
fn member<'a>(doc: &Members<'a>, name: &str) -> Option<&'a RawValue> {
    doc.get(name).filter(|v| kind(v) != "null")
}

/// An optional string member: absent, null or a string.
fn optional_string<'a>(doc: &Members<'a>, name: &str, at: &At) -> Read<Option<Cow<'a, str>>> {
    member(doc, name)
        .map(|v| string(v, &at.member(name)))
        .transpose()
}

/// A member wire.py declares `str` with a default: absent, or a string.
fn defaulted_string(doc: &Members, name: &str, at: &At) -> Read<()> {
    doc.get(name)
        .map_or(Ok(()), |v| string(v, &at.member(name)).map(drop))
}

/// A token count: a JSON integer (`-0` is 0) in 0..=MAX_COUNT.
fn count(value: &RawValue, at: &At) -> Read<u64> {
    if kind(value) != "int" {
        return Err(expected("int", value, at));
    }
    let text = value.get();
    if let Some(magnitude) = text.strip_prefix('-') {
        return match magnitude.bytes().all(|b| b == b'0') {
            true => Ok(0),
            false => Err(Malformed(format!("Expected `int` >= 0 - at `{at}`"))),
        };
    }
    match text.parse::<u64>() {
        Ok(c) if c <= MAX_COUNT => Ok(c),
        _ => Err(Malformed(format!(
            "Expected `int` <= {MAX_COUNT} - at `{at}`"
        ))),
    }
}

/// A count wire.py declares with a default of 0: absent, or a count (null is not one).
fn defaulted_count(doc: &Members, name: &str, at: &At) -> Read<u64> {
    doc.get(name).map_or(Ok(0), |v| count(v, &at.member(name)))
}

/// A count that may be absent or null.
fn optional_count(doc: &Members, name: &str, at: &At) -> Read<Option<u64>> {
    member(doc, name)
        .map(|v| count(v, &at.member(name)))
        .transpose()
}

/// How a `Malformed` that is not JSON at all begins.
pub const NOT_JSON: &str = "JSON is malformed";

fn parse(body: &[u8]) -> Read<&RawValue> {
    serde_json::from_slice(body).map_err(|e| Malformed(format!("{NOT_JSON}: {e}")))
}

/// An OpenAI chat completion (`OpenAICompletion` in wire.py).
pub fn openai_chat(body: &[u8]) -> Read<Reading> {
    let root = At::Root;
    let doc = object(parse(body)?, &root)?;
    defaulted_string(&doc, "id", &root)?;
    let at_choices = root.member("choices");
    let choices = array(required(&doc, "choices", &root)?, &at_choices)?;
    if choices.is_empty() {
        return Err(Malformed(
            "Expected `array` of length >= 1 - at `$.choices`".into(),
        ));
    }
    let mut first = None;
    for (i, choice) in choices.iter().enumerate() {
        let at = at_choices.index(i);
        let choice = object(choice, &at)?;
        let message = required(&choice, "message", &at)?;
        let at_message = at.member("message");
        let message = object(message, &at_message)?;
        let content = optional_string(&message, "content", &at_message)?;
        optional_string(&message, "refusal", &at_message)?;
        if let Some(calls) = member(&message, "tool_calls") {
            tool_calls(calls, &at_message.member("tool_calls"))?;
        }
        let finish_reason = optional_string(&choice, "finish_reason", &at)?;
        first.get_or_insert((content, finish_reason));
    }
    let (content, finish_reason) = first.expect("one choice at least");
    let mut tokens = Usage::default();
    if let Some(usage) = member(&doc, "usage") {
        openai_usage(&mut tokens, usage, &root.member("usage"))?;
    }
    Ok(Reading {
        tokens,
        text: content.unwrap_or_default().into_owned(),
        finish_reason: finish_reason.map(Cow::into_owned),
    })
}

/// What accounting reads of one event of an OpenAI chat stream (a chunk).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ChunkReading {
    /// The chunk is the provider's error (`error` is set).
    pub error: bool,
    /// Content has come, or the answer's end (a finish reason).
    pub started: bool,
    /// Characters of content.
    pub text_chars: u64,
}

/// A chunk of an OpenAI chat stream (`OpenAIChunk` in wire.py, as
/// `OpenAIChunks.feed` in exchanges.py reads it); its usage, if it has one,
/// onto the stream's `tokens` (a malformed chunk leaves them as they were).
pub fn openai_chunk(data: &[u8], tokens: &mut Usage) -> Read<ChunkReading> {
    let root = At::Root;
    let doc = object(parse(data)?, &root)?;
    defaulted_string(&doc, "id", &root)?;
    let mut reading = ChunkReading::default();
    if let Some(choices) = doc.get("choices") {
        let at_choices = root.member("choices");
        for (i, choice) in array(choices, &at_choices)?.into_iter().enumerate() {
            let at = at_choices.index(i);
            let choice = object(choice, &at)?;
            if let Some(delta) = member(&choice, "delta") {
                let at = at.member("delta");
                let delta = object(delta, &at)?;
                let content = optional_string(&delta, "content", &at)?.unwrap_or_default();
                let refusal = optional_string(&delta, "refusal", &at)?.unwrap_or_default();
                let calls = match member(&delta, "tool_calls") {
                    Some(calls) => tool_calls(calls, &at.member("tool_calls"))?,
                    None => 0,
                };
                if !content.is_empty() || calls > 0 || !refusal.is_empty() {
                    reading.started = true;
                    reading.text_chars += content.chars().count() as u64;
                }
            }
            if optional_string(&choice, "finish_reason", &at)?.is_some_and(|r| !r.is_empty()) {
                reading.started = true;
            }
            if let Some(index) = choice.get("index") {
                if kind(index) != "int" {
                    return Err(expected("int", index, &at.member("index")));
                }
            }
        }
    }
    let mut counted = *tokens;
    if let Some(usage) = member(&doc, "usage") {
        openai_usage(&mut counted, usage, &root.member("usage"))?;
    }
    reading.error = member(&doc, "error").is_some();
    if !reading.error {
        *tokens = counted;
    }
    Ok(reading)
}

/// The tool calls' count, once each is of its shape.
fn tool_calls(value: &RawValue, at: &At) -> Read<usize> {
    let calls = array(value, at)?;
    for (i, call) in calls.iter().enumerate() {
        let at = at.index(i);
        let call = object(call, &at)?;
        optional_string(&call, "id", &at)?;
        optional_string(&call, "type", &at)?;
        if let Some(index) = member(&call, "index") {
            if kind(index) != "int" {
                return Err(expected("int", index, &at.member("index")));
            }
        }
        if let Some(function) = member(&call, "function") {
            let at = at.member("function");
            let function = object(function, &at)?;
            optional_string(&function, "name", &at)?;
            optional_string(&function, "arguments", &at)?;
        }
    }
    Ok(calls.len())
}

/// OpenAI's usage (`Tokens.add_openai` in Python).
fn openai_usage(tokens: &mut Usage, usage: &RawValue, at: &At) -> Read<()> {
    let usage = object(usage, at)?;
    tokens.prompt = Some(defaulted_count(&usage, "prompt_tokens", at)?);
    tokens.completion = Some(defaulted_count(&usage, "completion_tokens", at)?);
    if let Some(details) = member(&usage, "prompt_tokens_details") {
        let at = at.member("prompt_tokens_details");
        let details = object(details, &at)?;
        tokens.cache_read = optional_count(&details, "cached_tokens", &at)?.unwrap_or(0);
        tokens.cache_write = optional_count(&details, "cache_creation_tokens", &at)?.unwrap_or(0);
    }
    Ok(())
}

/// An Anthropic message (`AnthropicMessage` in wire.py).
pub fn anthropic_message(body: &[u8]) -> Read<Reading> {
    let root = At::Root;
    let doc = object(parse(body)?, &root)?;
    defaulted_string(&doc, "id", &root)?;
    let at_content = root.member("content");
    let content = array(required(&doc, "content", &root)?, &at_content)?;
    let mut text = String::new();
    for (i, block) in content.into_iter().enumerate() {
        let at = at_content.index(i);
        let block = object(block, &at)?;
        let block_type = string(required(&block, "type", &at)?, &at.member("type"))?;
        let block_text = optional_string(&block, "text", &at)?;
        for name in ["id", "name", "thinking"] {
            optional_string(&block, name, &at)?;
        }
        if block_type == "text" {
            text.push_str(&block_text.unwrap_or_default());
        }
    }
    let stop_reason = optional_string(&doc, "stop_reason", &root)?;
    let mut tokens = Usage::default();
    if let Some(usage) = member(&doc, "usage") {
        anthropic_usage(&mut tokens, usage, &root.member("usage"))?;
    }
    Ok(Reading {
        tokens,
        text,
        finish_reason: stop_reason.map(Cow::into_owned),
    })
}

/// Anthropic's usage (`Tokens.add_anthropic` in Python): input, cache reads
/// and cache writes are counted apart; their sum is the prompt.
fn anthropic_usage(tokens: &mut Usage, usage: &RawValue, at: &At) -> Read<()> {
    let usage = object(usage, at)?;
    let usage = &usage;
    if let Some(read) = optional_count(usage, "cache_read_input_tokens", at)? {
        tokens.cache_read = read;
    }
    if let Some(written) = optional_count(usage, "cache_creation_input_tokens", at)? {
        tokens.cache_write = written;
    }
    if let Some(input) = optional_count(usage, "input_tokens", at)? {
        tokens.prompt = Some(input + tokens.cache_read + tokens.cache_write);
    }
    if let Some(output) = optional_count(usage, "output_tokens", at)? {
        tokens.completion = Some(output);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openai(body: &str) -> Read<Reading> {
        openai_chat(body.as_bytes())
    }

    #[test]
    fn an_openai_answer_gives_its_counts_text_and_finish() {
        let body = r#"{"id":"c1","choices":[{"message":{"role":"assistant","content":"hé"},"finish_reason":"stop"},
            {"message":{"content":"second"}}],
            "usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,
                     "prompt_tokens_details":{"cached_tokens":4,"cache_creation_tokens":null}}}"#;
        let reading = openai(body).unwrap();
        let tokens = Usage {
            prompt: Some(12),
            completion: Some(3),
            cache_read: 4,
            cache_write: 0,
        };
        assert_eq!(
            reading,
            Reading {
                tokens,
                text: "hé".into(),
                finish_reason: Some("stop".into())
            }
        );
    }

    #[test]
    fn an_openai_answer_without_usage_says_nothing_of_tokens() {
        let reading = openai(
            r#"{"choices":[{"message":{"tool_calls":[{"id":"t","index":0}]}}],"usage":null}"#,
        );
        let reading = reading.unwrap();
        assert_eq!(reading.tokens, Usage::default());
        assert_eq!((reading.text.as_str(), reading.finish_reason), ("", None));
        // usage present but empty: wire.py's defaults, 0 and 0
        let reading = openai(r#"{"choices":[{"message":{}}],"usage":{}}"#).unwrap();
        assert_eq!(
            (reading.tokens.prompt, reading.tokens.completion),
            (Some(0), Some(0))
        );
    }

    #[test]
    fn openai_answers_of_the_wrong_shape_are_malformed_and_say_where() {
        for (body, says) in [
            (
                r#"{"choices":[1]}"#,
                "Expected `object`, got `int` - at `$.choices[0]`",
            ),
            (r#"{"choices":[]}"#, "length >= 1 - at `$.choices`"),
            (
                r#"{"choices":[{}]}"#,
                "missing required field `message` - at `$.choices[0]`",
            ),
            (
                r#"{"choices":[{"message":null}]}"#,
                "got `null` - at `$.choices[0].message`",
            ),
            (
                r#"{"choices":[{"message":{"content":1}}]}"#,
                "got `int` - at `$.choices[0].message.content`",
            ),
            (
                r#"{"choices":[{"message":{}}],"usage":{"prompt_tokens":-1}}"#,
                ">= 0 - at `$.usage.prompt_tokens`",
            ),
            (
                r#"{"choices":[{"message":{}}],"usage":{"prompt_tokens":"12"}}"#,
                "got `str` - at `$.usage.prompt_tokens`",
            ),
            (
                r#"{"choices":[{"message":{}}],"usage":{"prompt_tokens":1.0}}"#,
                "got `float`",
            ),
            (
                r#"{"choices":[{"message":{}}],"usage":{"prompt_tokens":null}}"#,
                "got `null`",
            ),
            (
                r#"{"choices":[{"message":{}}],"usage":{"completion_tokens":100000001}}"#,
                "<= 100000000",
            ),
            (
                r#"{"choices":[{"message":{}}],"id":null}"#,
                "got `null` - at `$.id`",
            ),
            (
                r#"{"choices":[{"message":{"tool_calls":[{"function":{"name":2}}]}}]}"#,
                "tool_calls[0].function.name",
            ),
            (r#"[1]"#, "Expected `object`, got `array` - at `$`"),
            ("{oops", "JSON is malformed"),
        ] {
            let err = openai(body).unwrap_err();
            assert!(err.0.contains(says), "{body}: {err}");
        }
    }

    #[test]
    fn an_anthropic_answer_sums_its_prompt_and_joins_its_text() {
        let body = r#"{"id":"m","content":[{"type":"text","text":"a"},{"type":"tool_use","id":"t","name":"f","input":{"x":[1]}},
            {"type":"thinking","thinking":"hm"},{"type":"text","text":"b"}],"stop_reason":"tool_use",
            "usage":{"input_tokens":10,"output_tokens":5,"cache_read_input_tokens":100,"cache_creation_input_tokens":20}}"#;
        let reading = anthropic_message(body.as_bytes()).unwrap();
        let tokens = Usage {
            prompt: Some(130),
            completion: Some(5),
            cache_read: 100,
            cache_write: 20,
        };
        assert_eq!(
            reading,
            Reading {
                tokens,
                text: "ab".into(),
                finish_reason: Some("tool_use".into())
            }
        );
    }

    #[test]
    fn members_not_read_are_skipped_whatever_their_depth_or_numbers() {
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let body = format!(
            r#"{{"content":[{{"type":"tool_use","id":"t","name":"f","input":{deep}}}],"x":1e999,
                "usage":{{"input_tokens":-0,"output_tokens":2}},"stop_reason":"tool_use"}}"#
        );
        let reading = anthropic_message(body.as_bytes()).unwrap();
        assert_eq!(
            (reading.tokens.prompt, reading.tokens.completion),
            (Some(0), Some(2))
        );
        let body = format!(
            r#"{{"choices":[{{"message":{{"content":"a"}},"logprobs":{deep}}}],"n":-1e999}}"#
        );
        assert_eq!(openai(&body).unwrap().text, "a");
    }

    #[test]
    fn anthropic_answers_of_the_wrong_shape_are_malformed() {
        for (body, says) in [
            (
                r#"{"content":"not blocks"}"#,
                "Expected `array`, got `str` - at `$.content`",
            ),
            (
                r#"{"content":[{"text":"x"}]}"#,
                "missing required field `type` - at `$.content[0]`",
            ),
            (
                r#"{"content":[],"usage":{"input_tokens":"12"}}"#,
                "at `$.usage.input_tokens`",
            ),
            (r#"{"content":[],"stop_reason":3}"#, "at `$.stop_reason`"),
            (r#"{}"#, "missing required field `content` - at `$`"),
        ] {
            let err = anthropic_message(body.as_bytes()).unwrap_err();
            assert!(err.0.contains(says), "{body}: {err}");
        }
    }

    #[test]
    fn member_names_with_escapes_are_read_and_a_name_sent_twice_keeps_its_last_value() {
        let mut tokens = Usage::default();
        let chunk = br#"{"choices":[{"delta":{"\u0063ontent":"h\u00e9"}}],"usage":{"prompt_tokens":1,"prompt_tokens":2}}"#;
        let reading = openai_chunk(chunk, &mut tokens).unwrap();
        assert_eq!((reading.started, reading.text_chars), (true, 2));
        assert_eq!(tokens.prompt, Some(2));
        let body = r#"{"choices":[{"message":{"content":1,"content":"b"}}]}"#;
        assert_eq!(openai(body).unwrap().text, "b");
        let body = r#"{"choices":[{"message":{"content":"b","content":1}}]}"#;
        let err = openai(body).unwrap_err();
        assert!(
            err.0.ends_with("at `$.choices[0].message.content`"),
            "{err}"
        );
    }
}
