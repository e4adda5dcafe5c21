"""Search with the codes: an exact Hamming top-k engine (:class:`HammingIndex`) and the index files
the ``index`` stage writes. The service that answers queries over them is :mod:`cmhash.service`;
the multi-index variant, which no stage uses, is :mod:`cmhash.search.multi_index`."""

from cmhash.search.engine import HammingIndex

__all__ = ["HammingIndex"]
