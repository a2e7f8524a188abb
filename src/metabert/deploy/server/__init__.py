"""``metabert serve``: the FastAPI app with micro-batched early exit, and the tools that test it
(schema-driven fuzzing, a load generator)."""
