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
            assert op["security"] == [{"bearerAuth": []}]
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
