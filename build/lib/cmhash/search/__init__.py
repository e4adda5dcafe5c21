"""Search with the codes: an exact Hamming top-k engine (:class:`HammingIndex`), the index files the
``index`` stage writes, and the ``cmhash search`` / ``cmhash serve`` front ends (docs/search.md)."""

from cmhash.search.engine import HammingIndex
from cmhash.search.multi_index import MultiIndexHammingIndex

__all__ = ["HammingIndex", "MultiIndexHammingIndex"]
