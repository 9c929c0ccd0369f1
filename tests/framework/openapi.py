"""Check real HTTP responses against the OpenAPI documents in docs/openapi/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

DOCS = Path(__file__).resolve().parents[2] / "docs" / "openapi"


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DOCS / name).read_text())
    return document


def validate(document_name: str, schema_name: str, instance: Any) -> None:
    """Validate `instance` against components/schemas/`schema_name`; raise on mismatch."""
    document = load(document_name)
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]}
    jsonschema.validate(instance, schema)
