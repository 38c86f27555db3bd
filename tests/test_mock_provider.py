"""The mock provider speaks each flavor well enough for the official SDKs,
plain and streaming: proof that testing the router against it means something."""

from __future__ import annotations

import subprocess

import anthropic
import httpx
import openai
import pytest

from conftest import ROUTER


def test_openai_sdk_reads_the_openai_flavor(make_mock):
    mock = make_mock("openai")
    client = openai.OpenAI(base_url=f"{mock.url}/v1", api_key="sk-test")
    reply = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hello there"}]
    )
    assert reply.choices[0].message.content == "Mock reply to: hello there"
    assert reply.usage.prompt_tokens == 3 and reply.usage.total_tokens > 3
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hello there"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Mock reply to: hello there"
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert [m.id for m in client.models.list()] == ["mock-model"]


def test_openai_sdk_reads_the_azure_flavor(make_mock):
    mock = make_mock("azure")
    client = openai.AzureOpenAI(
        azure_endpoint=mock.url, api_key="azure-key", api_version="2024-06-01"
    )
    reply = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi azure"}]
    )
    assert reply.choices[0].message.content == "Mock reply to: hi azure"
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi azure"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
        "Mock reply to: hi azure"
    )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{mock.url}/openai/deployments/x", api_key="k"
        ).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "no api-key header"}]
        )


def test_anthropic_sdk_reads_the_anthropic_flavor(make_mock):
    mock = make_mock("anthropic", stream_chunks=5)
    client = anthropic.Anthropic(base_url=mock.url, api_key="sk-ant-test")
    message = client.messages.create(
        model="claude-3-5-sonnet",
        max_tokens=100,
        system="be brief",
        messages=[{"role": "user", "content": "hello claude"}],
    )
    assert message.content[0].text == "Mock reply to: hello claude"
    assert message.stop_reason == "end_turn" and message.usage.input_tokens > 0
    with client.messages.stream(
        model="claude-3-5-sonnet",
        max_tokens=100,
        messages=[{"role": "user", "content": "hello claude"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Mock reply to: hello claude"
    assert final.usage.output_tokens == message.usage.output_tokens
    missing = httpx.post(
        f"{mock.url}/v1/messages",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
    )
    assert missing.status_code == 400 and "max_tokens" in missing.text


def test_over_https_with_its_certificate_and_key_together(make_mock, pki):
    mock = make_mock("openai", pki)
    assert mock.url.startswith("https://") and mock.requests() == 0
    alone = subprocess.run(
        [str(ROUTER), "mock-provider", "--port", "1", "--tls-cert", str(pki["server.crt"])],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert alone.returncode == 1
    assert "--tls-cert and --tls-key go together" in alone.stderr
