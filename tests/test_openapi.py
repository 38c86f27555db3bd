"""/openapi.json describes every route; /docs renders it without the network."""

from __future__ import annotations

import re

import httpx
from openapi_spec_validator import validate

from model_router.api import ROUTES


def test_document_is_valid_openapi_31_and_covers_every_route(server):
    doc = httpx.get(f"{server.url}/openapi.json").json()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        assert op["summary"] == route.summary
        if route.permission:
            assert op["security"] == [{"bearerAuth": []}, {"apiKey": []}]
        if route.body is not None:
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.split("/")[-1] in doc["components"]["schemas"]
    model = doc["components"]["schemas"]["ModelCreate"]
    assert set(model["required"]) == {"name", "version", "provider", "modelType"}
    assert set(model["properties"]["status"]["enum"]) == {
        "active",
        "inactive",
        "deprecated",
        "maintenance",
    }
    listing = doc["paths"]["/api/models"]["get"]["parameters"]
    assert {p["name"] for p in listing} == {
        "provider",
        "status",
        "modelType",
        "tag",
        "limit",
        "offset",
    }


def test_docs_page_needs_no_network(server):
    page = httpx.get(f"{server.url}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    external = re.findall(r"""(?:src|href)=["'](https?:)?//""", page.text)
    assert external == [] and "/openapi.json" in page.text


def test_each_front_door_documents_its_own_error_shape_and_statuses(server):
    doc = httpx.get(f"{server.url}/openapi.json").json()
    paths = doc["paths"]

    def error_refs(path: str, method: str, status: str) -> set[str]:
        schema = paths[path][method]["responses"][status]["content"]["application/json"]
        options = schema["schema"].get("anyOf", [schema["schema"]])
        return {option["$ref"].split("/")[-1] for option in options}

    assert error_refs("/api/models", "post", "400") == {"ErrorBody"}
    assert error_refs("/v1/chat/completions", "post", "400") == {
        "OpenAIErrorBody",
        "AnthropicErrorBody",  # to a caller sending anthropic-version
    }
    assert error_refs("/v1/messages", "post", "400") == {"AnthropicErrorBody"}
    chat = paths["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "401", "402", "403", "404", "413", "415", "429", "502", "503", "504"} <= set(
        chat
    )
    assert "4XX" in chat  # a provider's refusal, relayed
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    assert chat["200"]["headers"]["X-Request-Id"] == {"$ref": "#/components/headers/X-Request-Id"}
    (model_id,) = paths["/api/models/{modelId}"]["get"]["parameters"]
    assert model_id["schema"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
    prefs = paths["/api/agents/{agentType}/preferences"]["post"]["responses"]
    assert {"200", "201"} <= set(prefs)  # replaced, or created
    ready = paths["/health/ready"]["get"]["responses"]["503"]["content"]["application/json"]
    assert ready["schema"] == {"$ref": "#/components/schemas/ReadinessCheck"}  # not ready
    listed = paths["/api/models"]["get"]["responses"]["200"]["content"]["application/json"]
    assert listed["schema"] == {"$ref": "#/components/schemas/Page_Model_"}
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
