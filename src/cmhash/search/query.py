"""A new text or image becomes a code the way the indexed items did: the same encoder (checked
against the index's recipe), the same row normalisation as the features file, then the index's
model; and the error a search request that cannot be served raises.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cmhash.errors import CmhashError


class SearchError(CmhashError):
    """A search request that cannot be served; ``status`` is its HTTP status code, and
    ``retry_after`` (seconds), when set, says that the same request will be served later (the
    server is busy, or the index is being rebuilt): the server sends it as ``Retry-After``."""

    def __init__(self, message: str, status: int = 400, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def check_recipe(index_name: str, recipe: dict[str, Any], encoder) -> None:
    """The encoder that would encode the query must be the one the index's items were encoded
    with: same name, same settings."""
    if encoder.name != recipe["name"] or _jsonable(encoder.settings()) != recipe["settings"]:
        raise SearchError(
            f"index {index_name} was built from features of {recipe['name']} {recipe['settings']}, but params.yaml's "
            f"encode section gives {encoder.name} {_jsonable(encoder.settings())}: a query would be encoded differently "
            "from the indexed items. Use the encode settings the index was built with, or rebuild it (dvc repro).", 409)


def _jsonable(settings: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(settings, sort_keys=True))


def text_notes(encoder, recipe: dict[str, Any], text: str) -> list[str]:
    """Refuse a text when the index's texts are not captions; say when the encoder truncates it."""
    if recipe["text"] != "captions":
        raise SearchError("this index's texts are bags of words (the features were not made from captions), so a "
                          "typed text cannot be encoded like them; search with an image instead.", 422)
    tokens, limit = encoder.count_tokens(text), encoder.context_length
    if tokens > limit:
        return [f"the query has {tokens} tokens; the text encoder reads the first {limit}, the rest was ignored"]
    return []


def query_features(model, images: np.ndarray | None, texts: np.ndarray | None) -> np.ndarray:
    """The codes of queries' encoder features (one row each; fused methods take both), their rows
    normalised as the features file's are."""
    from cmhash.features import normalise_rows

    return model.encode(images=normalise_rows(images) if images is not None else None,
                        texts=normalise_rows(texts) if texts is not None else None)
