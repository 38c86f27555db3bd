"""Masking in process: every form of personal data and secret that a log line
might carry, and ordinary text that must stay as it is."""

from __future__ import annotations

import random
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from model_router import _core, auth
from model_router.telemetry import pii
from model_router.telemetry.pii import _mask, mask


@pytest.mark.parametrize(
    ("text", "gone", "placeholder"),
    [
        ("mail jane.doe@example.com", "jane.doe@example.com", "[EMAIL]"),
        ("call +1 415-555-0132", "415-555-0132", "[PHONE]"),
        ("call (555) 123-4567 now", "123-4567", "[PHONE]"),
        ("Paris: +33 1 42 68 53 00", "42 68 53", "[PHONE]"),
        ("card 4111 1111 1111 1111", "4111 1111", "[CARD]"),
        ("card 4111.1111.1111.1111", "4111.1111", "[CARD]"),
        ("card 4111-1111-1111-1111", "4111-1111", "[CARD]"),
        ("key sk-abcdefghijklmnopqrstuv", "sk-abcdefghij", "[API_KEY]"),
        ("stripe sk_live_abcdefghij1234", "sk_live_", "[API_KEY]"),
        ("github ghp_abcdefghijklmnopqrstuvwxyz123456", "ghp_", "[API_KEY]"),
        ("google AIzaSyA1234567890abcdefghijklmnopqrstuv", "AIzaSy", "[API_KEY]"),
        ("aws AKIAABCDEFGHIJKLMNOP", "AKIAABCD", "[API_KEY]"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_abcdef", "eyJhbGci", "[API_KEY]"),
        ("Authorization: Bearer abcdefghijklmnop", "abcdefghijklmnop", "[REDACTED]"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpw", "[REDACTED]"),
        ('{"password": "hunter2hunter2"}', "hunter2", "[REDACTED]"),
        ("ours mr_0123abcd_s3cr3tS3cr3tS3cr3t", "s3cr3t", "[API_KEY]"),
    ],
)
def test_each_form_is_masked(text, gone, placeholder):
    masked = mask(text)
    assert gone not in masked and placeholder in masked, masked


@pytest.mark.parametrize(
    "text",
    [
        "version 1.2.3 at 12:30 on 2026-11-29, order 12345, took 250 ms",
        "model gpt-4-1106-preview routed to endpoint ep-1 in 412.5 ms",
        "basic routing rule for the creative agent",
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert mask(text) == text


def test_the_fast_paths_mask_as_the_patterns_do():
    """Short strings are remembered and hex words (the router's request ids)
    skip the patterns: both give what the patterns in full give."""
    rng = random.Random(3)
    texts = ["a1b2c3d4e5f60000000001", "0" * 22, "4111111111111111", "415555013212", "abc"]
    for _ in range(5000):
        alphabet = rng.choice(["0123456789abcdef", "0123456789", "0123456789abcdef -.()+@"])
        texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 70))))
    for text in texts * 2:  # the second time from memory
        assert mask(text) == _mask(text), text


@settings(max_examples=3000, deadline=None)
@given(
    st.text(alphabet=string.ascii_letters + string.digits + "._- @+()/:=", max_size=40)
    | st.from_regex(r"[0-9a-f]{1,40}", fullmatch=True)
    | st.text(max_size=12)
)
@example("3f9a1c2b7d4e0000000001")  # a request id as the router makes it
@example("gpt-4o-mini")
@example("4111111111111111")
@example("sk-abcdefghijklmnopqrstuv")
@example("sk_live_abcdefghij1234")
@example("ghp_abcdefghijklmnopqrstuvwxyz123456")
@example("AIzaSyA1234567890abcdefghijklmnopqrstuv")
@example("AKIAABCDEFGHIJKLMNOP")
@example("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_abcdef")
@example("mr_0123456789ab_abcdefghijkl")
@example("123456789")  # nine digits: a phone number
@example("415-555-0132")
@example("u-123456789")
@example("bearer abcdefghijkl")
@example("api_key=abcdefghijkl")
@example("0123456789abcdef" * 6 + "0123456789")  # a long hex word
@example("a" * 70 + "4111111111111111")
def test_what_the_door_writes_unmasked_no_pattern_would_mask(text):
    """The door writes a call's line itself only when every string in it is
    `pii_plain` (core_rs/src/log_line.rs): masking, every pattern run,
    must leave such strings as they are, whatever patterns pii.py gains."""
    if _core.pii_plain(text):
        assert mask(text) == _mask(text) == text


def test_key_ids_are_never_masked_in_the_lines_that_name_them(monkeypatch):
    """A key id is 12 hex digits; one drawn all digits would read as a phone
    number (1 draw in 280), and the audit line naming its writer would lose it.
    Rules, endpoints, canaries and experiments draw theirs the same way."""
    draws = iter(["817634880756", "81763488075a", "ffffffffffff"])
    monkeypatch.setattr(pii.secrets, "token_hex", lambda n: next(draws))
    assert mask("817634880756") == "[PHONE]"
    key, record = auth.mint_key("operator", None, None, "2026-11-30T00:00:00Z")
    assert record.id == "81763488075a" and key.startswith("mr_81763488075a_")
    assert mask(f"admin write by {record.id}") == f"admin write by {record.id}"
