"""The API's contract as its OpenAPI document states it: every JSON route answers a named model
(a ``…Public`` model or ``Page[…]``), documents the errors it gives in the one error shape, and
declares the bearer scheme unless it is public by design."""

from __future__ import annotations

PUBLIC = {("post", "/api/v1/enroll"), ("get", "/api/v1/root"), ("get", "/api/v1/root/{version}")}
BINARY = {
    ("get", "/api/v1/bundles/{digest}/archive"),
    ("get", "/api/v1/root"),
    ("get", "/api/v1/root/{version}"),
    ("get", "/api/v1/hard-examples/{ident}/content"),
}


def _operations(doc):
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path.startswith("/api/v1/"):
                yield method, path, op


def test_every_json_route_answers_a_named_model_and_lists_page_envelopes(client):
    doc = client.get("/openapi.json").json()
    ops = list(_operations(doc))
    assert len(ops) >= 17
    for method, path, op in ops:
        if (method, path) in BINARY:
            continue
        ok = op["responses"].get("200") or op["responses"].get("201") or op["responses"].get("202")
        schema = ok["content"]["application/json"]["schema"]
        assert "$ref" in schema, f"{method} {path} answers an untyped {schema}"
    listings = [
        p
        for m, p, _ in ops
        if m == "get"
        and p
        in (
            "/api/v1/bundles",
            "/api/v1/devices",
            "/api/v1/rollouts",
            "/api/v1/models",
            "/api/v1/alerts",
            "/api/v1/audit",
        )
    ]
    schemas = doc["components"]["schemas"]
    for p in listings:
        name = doc["paths"][p]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].split("/")[
            -1
        ]
        # a keyset page (devices) is a page with has_more / next_after / counted_at besides
        assert name.startswith(("Page_", "KeysetPage_")), name
        assert {"items", "total", "limit", "offset"} <= set(schemas[name]["required"])


def test_routes_document_their_errors_in_one_shape_and_declare_the_bearer_scheme(client):
    doc = client.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "an API token: viewer, operator or admin",
    }
    for method, path, op in _operations(doc):
        if (method, path) in PUBLIC:
            assert "security" not in op, f"{method} {path} is public by design"
        else:
            assert op["security"] == [{"HTTPBearer": []}], f"{method} {path} declares no scheme"
            assert "401" in op["responses"], f"{method} {path} does not document 401"
        for code, answer in op["responses"].items():
            if code.startswith(("4", "5")):
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorPublic"), f"{method} {path} {code} answers {ref}"


def test_a_listing_answers_its_page_envelope_and_an_unknown_id_the_error_shape(client, bundle_dir):
    from .test_api import push

    push(client, bundle_dir())
    page = client.get("/api/v1/bundles", params={"limit": 1}).json()
    assert set(page) == {"items", "total", "limit", "offset"} and page["limit"] == 1 and page["total"] == 1
    assert set(page["items"][0]) >= {"digest", "name", "version", "revision", "chunks"}
    missing = client.get("/api/v1/rollouts/nope")
    assert missing.status_code == 404 and set(missing.json()) == {"error"}
