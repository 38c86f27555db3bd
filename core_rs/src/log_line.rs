//! The JSON log line of a call the door served, made here rather than by
//! the app's accounting (`telemetry/requests.py`, `_log_line`), whose line
//! it is byte for byte: the same fields in the same order, floats as
//! msgspec writes them, the timestamp as `Timestamps` makes it.
//!
//! The line's strings are masked in Python (`telemetry/pii.py`); this side
//! writes only those that masking leaves as they are for certain (`plain`),
//! and leaves the line of any other call to Python.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::engine::civil_from_days;
use crate::failover::Outcome;
use crate::routed::{CallRecord, ROUTE};

/// The logger that writes routed requests' lines (`model_router.requests`).
const LOGGER: &str = "model_router.requests";
const SERVICE: &str = "model-router";

/// Whether masking leaves `text` as it is, for certain: a word of
/// lowercase hex with a letter in it (the router's request ids: no pattern
/// matches within one word, as `pii._mask_short` says), or letters, digits,
/// `.`, `_` and `-` only with fewer than the nine digits a card or phone
/// number needs and none of the prefixes of the keys `pii.py` knows (in any
/// case). Without `@`, a space, `:` or `=`, no email, bearer token or
/// `secret=...` can be in it, and nothing needs escaping. An id, a model's
/// name or an agent type is plain; a property test holds `pii.py`'s
/// masking to it (tests/test_pii.py).
pub fn plain(text: &str) -> bool {
    const KEY_PREFIXES: [&str; 7] = ["mr_", "k-", "k_", "akia", "gh", "aiza", "eyj"];
    let bytes = text.as_bytes();
    let hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
    if !bytes.is_empty() && bytes.iter().all(hex) && !bytes.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        || bytes.iter().filter(|b| b.is_ascii_digit()).count() >= 9
    {
        return false;
    }
    let lower = text.to_ascii_lowercase();
    !KEY_PREFIXES.iter().any(|p| lower.contains(p))
}

/// Whether every string of the call, its attempts' too, is `plain`: what
/// the door needs to write its line and record itself, with no masking and
/// nothing to escape.
pub fn plain_call(call: &CallRecord) -> bool {
    let call_strings = [
        Some(&call.request_id),
        call.workspace_id.as_ref(),
        Some(&call.agent_type),
        call.user_id.as_ref(),
        call.model_id.as_ref(),
        call.endpoint_id.as_ref(),
    ];
    let attempt_strings = call
        .attempts
        .iter()
        .flat_map(|a| [&a.model_id, &a.endpoint_id]);
    call_strings
        .into_iter()
        .flatten()
        .chain(attempt_strings)
        .all(|s| plain(s))
}

/// `seconds` since the epoch as `Timestamps` writes it:
/// `2026-11-29T18:26:38.672Z`, the fraction rounded to the microsecond
/// (as `datetime.fromtimestamp`) and then cut to the millisecond.
pub fn timestamp(since_epoch: std::time::Duration) -> String {
    let mut second = since_epoch.as_secs() as i64;
    let mut micros = (since_epoch.subsec_nanos() as i64 + 500) / 1000;
    if micros >= 1_000_000 {
        second += 1;
        micros -= 1_000_000;
    }
    let (days, in_day) = (second.div_euclid(86_400), second.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60,
        micros / 1000
    )
}

/// `value` as msgspec writes a float: the shortest digits that read back
/// as it, positional from 1e-5 up to below 1e16 (`1.0`, `0.000072`),
/// else scientific (`1e-6`, `1.5e16`). None for a NaN or an infinity.
pub fn float(value: f64, out: &mut String) -> Option<()> {
    if !value.is_finite() {
        return None;
    }
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e')?;
    let exponent: i32 = exponent.parse().ok()?;
    if !(-5..16).contains(&exponent) {
        out.push_str(&scientific);
        return Some(());
    }
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    out.push_str(sign);
    if exponent < 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-exponent - 1) as usize));
        out.push_str(&digits);
    } else {
        let whole = exponent as usize + 1;
        if digits.len() > whole {
            out.push_str(&digits[..whole]);
            out.push('.');
            out.push_str(&digits[whole..]);
        } else {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', whole - digits.len()));
            out.push_str(".0");
        }
    }
    Some(())
}

/// A `plain` string in quotes (nothing in it needs escaping), or `null`.
pub fn string(value: Option<&str>, out: &mut String) {
    match value {
        Some(text) => {
            out.push('"');
            out.push_str(text);
            out.push('"');
        }
        None => out.push_str("null"),
    }
}

/// The line of a `plain_call` with its newline, stamped `now`; None for a
/// float JSON cannot hold. Its latencies are written as they come: rounded
/// to the microsecond already (routed.rs), as `_log_line`'s `round(x, 3)`
/// writes them.
pub fn request_line(call: &CallRecord, now: SystemTime) -> Option<Vec<u8>> {
    debug_assert!(plain_call(call), "a string to mask is Python's to write");
    let (level, message) = match (call.status, call.outcome) {
        (200, _) => ("info", "Request routed successfully"),
        (_, Outcome::Cancelled) => ("info", "Request cancelled: the caller left"),
        (status, _) if status < 500 => ("warning", "Request failed"),
        _ => ("error", "Request failed"),
    };
    let stamp = timestamp(now.duration_since(UNIX_EPOCH).ok()?);
    let mut line = String::with_capacity(400);
    let _ = write!(
        line,
        r#"{{"timestamp":"{stamp}","level":"{level}","service":"{SERVICE}","logger":"{LOGGER}","message":"{message}""#
    );
    let named = [
        ("requestId", Some(call.request_id.as_str())),
        ("route", Some(ROUTE)),
        ("workspaceId", call.workspace_id.as_deref()),
        ("agentType", Some(call.agent_type.as_str())),
        ("userId", call.user_id.as_deref()),
        ("modelId", call.model_id.as_deref()),
        ("endpointId", call.endpoint_id.as_deref()),
    ];
    for (name, value) in named {
        write!(line, r#","{name}":"#).ok()?;
        string(value, &mut line);
    }
    let tokens = call.tokens.prompt + call.tokens.completion;
    write!(line, r#","status":{},"latency":"#, call.status).ok()?;
    float(call.latency_ms, &mut line)?;
    line.push_str(r#","upstreamMs":"#);
    float(call.upstream_ms, &mut line)?;
    write!(line, r#","tokens":{tokens},"cost":"#).ok()?;
    float(call.cost as f64 / 1e9, &mut line)?;
    write!(line, r#","attempts":{}}}"#, call.attempts.len()).ok()?;
    line.push('\n');
    Some(line.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn floats_are_written_as_msgspec_writes_them() {
        // msgspec.json.encode's output for each (msgspec 0.19).
        let cases = [
            (1.0, "1.0"),
            (123.0, "123.0"),
            (0.0, "0.0"),
            (0.0001, "0.0001"),
            (1e-5, "0.00001"),
            (7.2e-5, "0.000072"),
            (1.5000000000000002e-5, "0.000015000000000000002"),
            (1e-6, "1e-6"),
            (1.5000000000000002e-9, "1.5000000000000002e-9"),
            (5e-324, "5e-324"),
            (1e15, "1000000000000000.0"),
            (9999999999999998.0, "9999999999999998.0"),
            (1e16, "1e16"),
            (1.2345678901234568e17, "1.2345678901234568e17"),
            (1.7976931348623157e308, "1.7976931348623157e308"),
            (1.235, "1.235"),
            (12.5, "12.5"),
            (0.30000000000000004, "0.30000000000000004"),
            (-0.015, "-0.015"),
        ];
        for (value, written) in cases {
            let mut out = String::new();
            float(value, &mut out).unwrap();
            assert_eq!(out, written, "{value:e}");
        }
        assert!(float(f64::NAN, &mut String::new()).is_none());
    }

    #[test]
    fn timestamps_are_written_as_timestamps_makes_them() {
        let at = |s: u64, nanos: u32| timestamp(Duration::new(s, nanos));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day of a century's leap year), rounded up into the next second.
        assert_eq!(at(951_782_399, 999_999_600), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(951_782_399, 999_999_400), "2000-02-28T23:59:59.999Z");
        assert_eq!(at(1_796_063_198, 672_400_000), "2026-11-30T18:26:38.672Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    }

    fn call(status: u16, outcome: Outcome, user: Option<&str>) -> CallRecord {
        CallRecord {
            request_id: "5e1f00000000000a".into(),
            workspace_id: None,
            agent_type: "creative".into(),
            user_id: user.map(str::to_owned),
            model_id: Some("m1".into()),
            endpoint_id: Some("m1-ep0".into()),
            status,
            outcome,
            latency_ms: 2.5,
            upstream_ms: 1.0,
            tokens: crate::cost::Tokens {
                prompt: 12,
                completion: 30,
                ..Default::default()
            },
            cost: 72_000,
            estimated: false,
            attempts: Vec::new(),
            reply: None,
            ended_ms: 0,
            stream: false,
        }
    }

    #[test]
    fn a_calls_line_holds_the_apps_fields_in_its_order() {
        let at = UNIX_EPOCH + Duration::from_millis(1_796_063_198_672);
        let line = request_line(&call(499, Outcome::Cancelled, Some("u-7")), at).unwrap();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            concat!(
                r#"{"timestamp":"2026-11-30T18:26:38.672Z","level":"info","service":"model-router","#,
                r#""logger":"model_router.requests","message":"Request cancelled: the caller left","#,
                r#""requestId":"5e1f00000000000a","route":"/v1/chat/completions","workspaceId":null,"#,
                r#""agentType":"creative","userId":"u-7","modelId":"m1","endpointId":"m1-ep0","#,
                r#""status":499,"latency":2.5,"upstreamMs":1.0,"tokens":42,"cost":0.000072,"#,
                r#""attempts":0}"#,
                "\n"
            )
        );
        let level = |status, outcome| {
            let line = request_line(&call(status, outcome, None), at).unwrap();
            let line = String::from_utf8(line).unwrap();
            line.split('"').nth(7).unwrap().to_owned()
        };
        assert_eq!(level(200, Outcome::Success), "info");
        assert_eq!(level(400, Outcome::ClientError), "warning");
        assert_eq!(level(502, Outcome::UpstreamError), "error");
    }

    #[test]
    fn a_call_is_plain_when_its_attempts_strings_are_too() {
        let mut plain_one = call(200, Outcome::Success, Some("u-7"));
        assert!(plain_call(&plain_one));
        // Masking would change it: Python writes this call's line.
        assert!(!plain_call(&call(
            200,
            Outcome::Success,
            Some("jane@example.com")
        )));
        plain_one.attempts.push(crate::routed::Attempt {
            model_id: "m1".into(),
            endpoint_id: "jane@example.com".into(),
            outcome: Outcome::Success,
            status: Some(200),
            latency_ms: 1.0,
            error: Some("not in the record: any text".into()),
            retry_after_ms: None,
        });
        assert!(!plain_call(&plain_one));
    }

    #[test]
    fn plain_strings_are_ids_names_and_agent_types() {
        for text in [
            "3f9a1c2b7d4e0000000001",
            "gpt-4o-mini",
            "ws_1",
            "user-123",
            "",
            "a.b",
            "monkey",
            "Secret",
            "tokens",
        ] {
            assert!(plain(text), "{text}");
        }
        for text in [
            "a@b.co",
            "has space",
            "4111111111111111",
            "4111111111111111z",
            "123-456-789",
            "mr_abc",
            "sk-abcdef",
            "AKIA1",
            "ghp_abc",
            "eyJhbGci",
            "u-123456789",
            "quote\"",
            "key=abcdefgh",
            "é",
        ] {
            assert!(!plain(text), "{text}");
        }
    }
}
