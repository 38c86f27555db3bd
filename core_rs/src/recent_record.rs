//! The store's record of a call the door served (the app's
//! `RecentRequest`, as `msgspec.json.encode` writes it: camelCase fields in
//! the Struct's order), made here for a `log_line::plain_call`, whose
//! strings need no escaping. Python makes the record of any other call
//! (`door_calls.summary_of`); a property test holds the two to the same
//! bytes (tests/test_door_accounting.py).

use std::fmt::Write;
use std::time::Duration;

use crate::log_line::{float, string, timestamp};
use crate::routed::{CallRecord, ROUTE};

/// The record of a `plain_call` under the id `id`; None for a float JSON
/// cannot hold. Its attempts name no provider's message, as the app's.
pub fn recent_request(call: &CallRecord, id: &str) -> Option<Vec<u8>> {
    debug_assert!(
        crate::log_line::plain_call(call),
        "a string to escape is Python's to write"
    );
    let mut out = String::with_capacity(512 + 160 * call.attempts.len());
    write!(out, r#"{{"id":"{id}","requestId":"{}","#, call.request_id).ok()?;
    let stamp = timestamp(Duration::from_millis(call.ended_ms));
    write!(
        out,
        r#""timestamp":"{stamp}","route":"{ROUTE}","workspaceId":"#
    )
    .ok()?;
    string(call.workspace_id.as_deref(), &mut out);
    write!(out, r#","agentType":"{}","modelId":"#, call.agent_type).ok()?;
    string(call.model_id.as_deref(), &mut out);
    out.push_str(r#","endpointId":"#);
    string(call.endpoint_id.as_deref(), &mut out);
    let outcome = call.outcome.label();
    write!(
        out,
        r#","status":{},"outcome":"{outcome}","latencyMs":"#,
        call.status
    )
    .ok()?;
    float(call.latency_ms, &mut out)?;
    out.push_str(r#","upstreamMs":"#);
    float(call.upstream_ms, &mut out)?;
    let (prompt, completion) = (call.tokens.prompt, call.tokens.completion);
    write!(
        out,
        r#","promptTokens":{prompt},"completionTokens":{completion},"cost":"#
    )
    .ok()?;
    float(call.cost as f64 / 1e9, &mut out)?;
    write!(
        out,
        r#","estimated":{},"attempts":{},"stream":{},"userId":"#,
        call.estimated,
        call.attempts.len(),
        call.stream
    )
    .ok()?;
    string(call.user_id.as_deref(), &mut out);
    out.push_str(r#","experimentId":null,"canaryId":null,"variant":null,"attemptDetails":["#);
    for (i, a) in call.attempts.iter().enumerate() {
        let comma = if i == 0 { "" } else { "," };
        let outcome = a.outcome.label();
        write!(
            out,
            r#"{comma}{{"modelId":"{}","endpointId":"{}","outcome":"{outcome}","status":"#,
            a.model_id, a.endpoint_id
        )
        .ok()?;
        number(a.status, &mut out);
        out.push_str(r#","latencyMs":"#);
        float(a.latency_ms, &mut out)?;
        out.push_str(r#","error":null,"retryAfterMs":"#);
        number(a.retry_after_ms, &mut out);
        out.push('}');
    }
    out.push_str("]}");
    Some(out.into_bytes())
}

fn number(value: Option<impl std::fmt::Display>, out: &mut String) {
    match value {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::Tokens;
    use crate::failover::Outcome;
    use crate::routed::Attempt;

    #[test]
    fn a_record_holds_the_apps_fields_in_its_order() {
        let attempt = |endpoint: &str, outcome, status, retry| Attempt {
            model_id: "m1".into(),
            endpoint_id: endpoint.into(),
            outcome,
            status,
            latency_ms: 0.25,
            error: Some("the provider's message stays out".into()),
            retry_after_ms: retry,
        };
        let call = CallRecord {
            request_id: "5e1f00000000000a".into(),
            workspace_id: Some("ws-1".into()),
            agent_type: "creative".into(),
            user_id: None,
            model_id: Some("m1".into()),
            endpoint_id: Some("m1-ep1".into()),
            status: 200,
            outcome: Outcome::Success,
            latency_ms: 2.5,
            upstream_ms: 1.0,
            tokens: Tokens {
                prompt: 12,
                completion: 30,
                ..Default::default()
            },
            cost: 72_000,
            estimated: true,
            attempts: vec![
                attempt("m1-ep0", Outcome::RateLimited, Some(429), Some(1000)),
                attempt("m1-ep1", Outcome::Success, Some(200), None),
            ],
            reply: None,
            ended_ms: 1_796_063_198_672,
            stream: true,
        };
        let record = recent_request(&call, "0a0b").unwrap();
        assert_eq!(
            String::from_utf8(record).unwrap(),
            concat!(
                r#"{"id":"0a0b","requestId":"5e1f00000000000a","timestamp":"2026-11-30T18:26:38.672Z","#,
                r#""route":"/v1/chat/completions","workspaceId":"ws-1","agentType":"creative","#,
                r#""modelId":"m1","endpointId":"m1-ep1","status":200,"outcome":"success","#,
                r#""latencyMs":2.5,"upstreamMs":1.0,"promptTokens":12,"completionTokens":30,"#,
                r#""cost":0.000072,"estimated":true,"attempts":2,"stream":true,"userId":null,"#,
                r#""experimentId":null,"canaryId":null,"variant":null,"attemptDetails":["#,
                r#"{"modelId":"m1","endpointId":"m1-ep0","outcome":"rate_limited","status":429,"#,
                r#""latencyMs":0.25,"error":null,"retryAfterMs":1000},"#,
                r#"{"modelId":"m1","endpointId":"m1-ep1","outcome":"success","status":200,"#,
                r#""latencyMs":0.25,"error":null,"retryAfterMs":null}]}"#,
            )
        );
    }
}
