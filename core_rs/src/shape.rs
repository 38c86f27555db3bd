//! Same-format shaping: the upstream body of a request the provider reads in
//! the caller's own format. It is the caller's body as sent, with `model` set
//! to the model's version and the parameters the model drops taken out; every
//! other member reaches the provider byte for byte (numbers as written,
//! strings with their escapes), which a decode and re-encode would not keep.
//! Only the whitespace between the top level's members goes.
//!
//! A member sent twice is kept once, its last value in the place of its
//! first: the value the router read (a JSON decoder keeps the last), so a
//! provider that would keep the first cannot be told something else.

use hashbrown::HashMap;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// The top level's members in the order sent: names decoded, values as sent.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(member) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// One member after `{` and those before it.
fn put(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    if out.len() > 1 {
        out.push(b',');
    }
    serde_json::to_writer(&mut *out, name).expect("a str encodes");
    out.push(b':');
    out.extend_from_slice(value);
}

/// The upstream body: `body` (a JSON object) with `model` set and `drop`
/// removed. Errs when `body` is not one JSON object.
pub fn same_format(body: &[u8], model: &str, drop: &[&str]) -> serde_json::Result<Vec<u8>> {
    let Members(members) = serde_json::from_slice(body)?;
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(members.len());
    let mut last: HashMap<&str, usize> = HashMap::with_capacity(members.len());
    for (i, (name, _)) in members.iter().enumerate() {
        first.entry(name).or_insert(i);
        last.insert(name, i);
    }
    let mut out = Vec::with_capacity(body.len() + model.len());
    out.push(b'{');
    let model_json = serde_json::to_vec(model).expect("a str encodes");
    for (i, (name, _)) in members.iter().enumerate() {
        let name: &str = name;
        if first[name] != i || (name != "model" && drop.contains(&name)) {
            continue;
        }
        let value = if name == "model" {
            &model_json[..]
        } else {
            members[last[name]].1.get().as_bytes()
        };
        put(&mut out, name, value);
    }
    if !first.contains_key("model") {
        put(&mut out, "model", &model_json);
    }
    out.push(b'}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shaped(body: &str, drop: &[&str]) -> String {
        String::from_utf8(same_format(body.as_bytes(), "v-2", drop).unwrap()).unwrap()
    }

    #[test]
    fn the_model_is_set_in_its_place_and_the_rest_is_kept_as_sent() {
        let body =
            r#"{ "a" : 1.50e2, "model":"auto", "s":"\u00e9\/x", "n": [ 1 , {"b" : null} ] }"#;
        assert_eq!(
            shaped(body, &[]),
            r#"{"a":1.50e2,"model":"v-2","s":"\u00e9\/x","n":[ 1 , {"b" : null} ]}"#
        );
    }

    #[test]
    fn a_body_without_a_model_gets_one_at_its_end() {
        assert_eq!(shaped(r#"{"a":true}"#, &[]), r#"{"a":true,"model":"v-2"}"#);
        assert_eq!(shaped("{}", &[]), r#"{"model":"v-2"}"#);
    }

    #[test]
    fn dropped_parameters_go_and_the_model_cannot_be_dropped() {
        let body = r#"{"model":"m","temperature":0.7,"seed":3,"top_p":1}"#;
        assert_eq!(
            shaped(body, &["temperature", "top_p", "model"]),
            r#"{"model":"v-2","seed":3}"#
        );
    }

    #[test]
    fn a_member_sent_twice_keeps_its_last_value_in_its_first_place() {
        let body = r#"{"max_tokens":1,"model":"a","x":0,"max_tokens":99,"model":"b"}"#;
        assert_eq!(
            shaped(body, &[]),
            r#"{"max_tokens":99,"model":"v-2","x":0}"#
        );
    }

    #[test]
    fn names_with_escapes_are_read_as_what_they_say() {
        // "\u006dodel" is "model": a provider would read it so.
        assert_eq!(
            shaped(r#"{"\u006dodel":"x","q\"":1}"#, &[]),
            r#"{"model":"v-2","q\"":1}"#
        );
    }

    #[test]
    fn a_model_name_is_encoded_as_json() {
        let out = same_format(b"{}", "a\"b\\c\n", &[]).unwrap();
        assert_eq!(out, br#"{"model":"a\"b\\c\n"}"#);
    }

    #[test]
    fn deep_values_pass_as_sent() {
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let body = format!(r#"{{"model":"m","x":{deep}}}"#);
        assert_eq!(
            shaped(&body, &[]),
            format!(r#"{{"model":"v-2","x":{deep}}}"#)
        );
    }

    #[test]
    fn what_is_not_one_json_object_is_refused() {
        let bodies: [&[u8]; 7] = [
            b"[]",
            b"1",
            b"",
            b"{",
            br#"{"a":1}x"#,
            br#"{"a":tru}"#,
            b"{\"a\":\"\xff\"}",
        ];
        for body in bodies {
            assert!(same_format(body, "m", &[]).is_err(), "{body:?}");
        }
    }
}
