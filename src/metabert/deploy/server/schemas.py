"""The request and response bodies of the HTTP API, and the request's JSON schema with this server's
limits in it (what ``/openapi.json`` publishes, and schemathesis fuzzes)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from metabert.deploy.server.config import ServerConfig


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[str] | None = Field(None, description="single texts to classify")
    pairs: list[tuple[str, str]] | None = Field(None, description="text pairs, for pair tasks")
    # strict: JSON true/false or "0.5" are not thresholds (lax float took false as γ=0, found by fuzzing)
    threshold: float | None = Field(None, strict=True,
                                    description="override the exit policy's threshold γ for this request")


class ItemResult(BaseModel):
    label: str
    probabilities: dict[str, float]
    exit_layer: int
    latency_ms: float
    truncated: bool
    replaced_characters: int = Field(0, description="lone UTF-16 surrogates replaced by U+FFFD before tokenising")


class PredictResponse(BaseModel):
    results: list[ItemResult]
    policy: str


class Health(BaseModel):
    status: str
    num_layers: int
    labels: list[str]
    policy: str
    queued: int = Field(description="items waiting for the model")
    in_flight: int = Field(description="requests accepted and not yet answered")
    worker: int = Field(description="process id of the worker that answered")


class ErrorBody(BaseModel):
    error: str


ERRORS = {code: {"model": ErrorBody, "description": what} for code, what in (
    (400, "invalid request"), (401, "missing or wrong API key"), (413, "too many items or characters"),
    (422, "the input kind this model does not take"), (500, "the model failed on this input"),
    (503, "overloaded: queue full (see Retry-After)"), (504, "not answered within the request timeout"))}


# a character that is not whitespace by Python's str.isspace (the handler's rule), as a JSON-schema
# pattern: ECMA's \S differs from it (U+001C-U+001F, U+0085, U+FEFF)
NOT_BLANK = "[^" + "".join(f"\\u{i:04x}" for i in range(0x3001) if chr(i).isspace()) + "]"


def request_schema(config: ServerConfig, field: str, thresholds: tuple[float, float] | None) -> dict:
    """The JSON schema of a request this server accepts, limits included: only the input kind its
    model takes (``texts`` or ``pairs``), non-blank texts, and ``threshold`` only where a request
    may set it. (Pydantic's model accepts more and the handler refuses it with a message.)"""
    text = {"type": "string", "minLength": 1, "maxLength": config.max_chars, "pattern": NOT_BLANK}
    item = text if field == "texts" else {"type": "array", "prefixItems": [text, text], "minItems": 2, "maxItems": 2}
    properties = {field: {"type": "array", "items": item, "minItems": 1, "maxItems": config.max_items,
                          "description": "single texts to classify" if field == "texts" else "text pairs to classify"}}
    if thresholds is not None:
        properties["threshold"] = {"anyOf": [{"type": "number", "minimum": thresholds[0], "maximum": thresholds[1]},
                                             {"type": "null"}],
                                   "description": "the exit policy's threshold γ for this request (null: the server's)"}
    return {"title": "PredictRequest", "type": "object", "properties": properties, "required": [field],
            "additionalProperties": False}


