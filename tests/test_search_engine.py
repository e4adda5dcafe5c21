"""HammingIndex: exact top-k, equal to a brute-force scan on codes with heavy ties, and to FAISS."""

import numpy as np
import pytest

from cmhash.errors import CmhashError
from cmhash.search import HammingIndex


def brute_force(database: np.ndarray, queries: np.ndarray, k: int):
    """Distances by comparing every bit; order by (distance, id)."""
    distances = (database[None, :, :] != queries[:, None, :]).sum(-1)
    ids = np.broadcast_to(np.arange(len(database)), distances.shape)
    order = np.lexsort((ids, distances), axis=-1)[:, :k]
    return np.take_along_axis(distances, order, 1), order


def _codes(rng, n, bits):
    return rng.choice(np.array([-1, 1], np.int8), (n, bits))


@pytest.mark.parametrize("bits, n, k", [
    (4, 500, 1), (4, 500, 37), (8, 2000, 2000), (16, 3000, 100), (64, 1000, 10), (128, 700, 50), (200, 300, 299),
    (16, 5000, 4500),  # (bits + 1) x k above KEPT_IDS: the two-pass kernels
])
def test_search_equals_brute_force_with_heavy_ties(bits, n, k):
    rng = np.random.default_rng(bits)
    database, queries = _codes(rng, n, bits), _codes(rng, 9, bits)
    database[: n // 4] = database[0]  # a quarter of the items share one code: ties at every k
    expected_distances, expected_ids = brute_force(database, queries, k)
    index = HammingIndex(database)
    distances, ids = index.search(queries, k)  # a batch: one query per thread
    assert np.array_equal(distances, expected_distances) and np.array_equal(ids, expected_ids)
    for q in range(len(queries)):  # one query: the database split between threads
        single_distances, single_ids = index.search(queries[q], k)
        assert np.array_equal(single_distances[0], expected_distances[q]) and np.array_equal(single_ids[0], expected_ids[q])


def test_one_query_over_chunks_keeps_ties_in_id_order():
    """Above 2 x 65,536 items a single query is scanned in chunks by several threads."""
    rng = np.random.default_rng(0)
    database, query = _codes(rng, 140_000, 8), _codes(rng, 1, 8)
    for k in (1, 500, 140_000):
        expected = brute_force(database, query, k)
        got = HammingIndex(database).search(query[0], k, threads=3)
        assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])


def test_packed_codes_add_save_and_load(tmp_path):
    rng = np.random.default_rng(1)
    codes, more, queries = _codes(rng, 500, 64), _codes(rng, 300, 64), _codes(rng, 5, 64)
    packed = np.packbits(codes > 0, axis=1)
    assert np.array_equal(HammingIndex(packed).search(queries, 20)[1], HammingIndex(codes).search(queries, 20)[1])
    index = HammingIndex(codes)
    index.add(np.packbits(more > 0, axis=1))
    assert len(index) == 800
    everything = np.concatenate([codes, more])
    assert np.array_equal(index.search(queries, 800)[1], brute_force(everything, queries, 800)[1])
    index.save(tmp_path / "codes.hidx")
    loaded = HammingIndex.load(tmp_path / "codes.hidx")
    assert isinstance(loaded.words, np.memmap) and loaded.bits == 64 and len(loaded) == 800
    assert np.array_equal(loaded.search(queries, 33)[1], index.search(queries, 33)[1])
    empty = HammingIndex(bits=12)
    empty.add(_codes(rng, 10, 12))
    assert len(empty) == 10


def test_k_beyond_the_index_returns_every_item():
    codes = _codes(np.random.default_rng(2), 7, 16)
    distances, ids = HammingIndex(codes).search(codes[:2], 100)
    assert distances.shape == (2, 7) and sorted(ids[0]) == list(range(7)) and ids[0, 0] == 0 and distances[0, 0] == 0


def test_bad_input_is_refused(tmp_path):
    index = HammingIndex(_codes(np.random.default_rng(3), 10, 16))
    for k in (0, -1, 2.5, "3", True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            index.search(_codes(np.random.default_rng(4), 1, 16), k)
    with pytest.raises(ValueError, match="the index holds 16-bit codes; the queries have 32 bits"):
        index.search(_codes(np.random.default_rng(4), 1, 32), 1)
    with pytest.raises(ValueError, match="codes of 1 to 255 bits"):
        HammingIndex(_codes(np.random.default_rng(4), 2, 256))
    index.save(tmp_path / "codes.hidx")
    data = (tmp_path / "codes.hidx").read_bytes()
    (tmp_path / "cut.hidx").write_bytes(data[:-3])
    with pytest.raises(CmhashError, match="truncated or damaged"):
        HammingIndex.load(tmp_path / "cut.hidx")
    (tmp_path / "other.hidx").write_bytes(b"not an index")
    with pytest.raises(CmhashError, match="not a cmhash Hamming index"):
        HammingIndex.load(tmp_path / "other.hidx")


def test_same_results_as_faiss():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(5)
    codes, queries = _codes(rng, 20_000, 64), _codes(rng, 50, 64)
    packed, packed_queries = np.packbits(codes > 0, axis=1), np.packbits(queries > 0, axis=1)
    reference = faiss.IndexBinaryFlat(64)
    reference.add(packed)
    faiss_distances, faiss_ids = reference.search(packed_queries, 10)
    distances, ids = HammingIndex(packed).search(packed_queries, 10)
    assert np.array_equal(distances, faiss_distances)
    for q in range(len(queries)):  # FAISS leaves the order of ties open; below the k-th distance the sets agree
        closer = distances[q] < distances[q, -1]
        assert set(ids[q][closer]) == set(faiss_ids[q][closer])
        assert set(faiss_ids[q][~closer]) <= set(np.flatnonzero((codes != queries[q]).sum(1) == distances[q, -1]))


@pytest.mark.parametrize("bits, n, k, substrings", [
    (64, 20_000, 10, None), (64, 20_000, 100, 4), (128, 5_000, 7, None), (16, 3_000, 50, 2), (32, 4_000, 4_000, None),
    (24, 1_000, 3, 3), (64, 2_000, 1, 3),
])
def test_multi_index_hashing_equals_the_scan(bits, n, k, substrings, tmp_path):
    """Sub-linear search by multi-index hashing gives exactly the scan's answer, ties in id order."""
    from cmhash.search.multi_index import MultiIndexHammingIndex

    rng = np.random.default_rng(bits + n)
    database, queries = _codes(rng, n, bits), _codes(rng, 6, bits)
    database[: n // 4] = database[0]
    queries[0] = database[0]  # a query with n / 4 items at distance 0
    expected = HammingIndex(database).search(queries, k)
    index = MultiIndexHammingIndex(database, substrings=substrings)
    got = index.search(queries, k)
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    HammingIndex(database).save(tmp_path / "codes.hidx")
    loaded = MultiIndexHammingIndex.load(tmp_path / "codes.hidx", substrings=substrings)
    assert np.array_equal(loaded.search(queries, k)[1], expected[1])
    more = _codes(rng, 50, bits)
    index.add(more)
    assert np.array_equal(index.search(queries, k)[1], HammingIndex(np.concatenate([database, more])).search(queries, k)[1])


def test_multi_index_substrings_must_fit_a_table():
    from cmhash.search.multi_index import MultiIndexHammingIndex

    with pytest.raises(ValueError, match="1 substrings of 64-bit codes are longer than 22 bits; use at least 3"):
        MultiIndexHammingIndex(_codes(np.random.default_rng(8), 100, 64), substrings=1)


def test_the_torch_kernel_equals_the_cpu_kernel():
    """The device path (CUDA when asked for) is the same code as here, on torch's CPU device."""
    import torch

    from cmhash.search.torch_kernel import top_k_torch

    rng = np.random.default_rng(6)
    for bits, n, k in [(64, 5_000, 10), (128, 3_000, 100), (16, 2_000, 2_000), (200, 500, 17)]:
        database, queries = _codes(rng, n, bits), _codes(rng, 5, bits)
        database[: n // 4] = database[0]
        index = HammingIndex(database)
        packed, k = index._check_query(queries, k)
        got = top_k_torch(torch.from_numpy(np.ascontiguousarray(index.words).view(np.int64)), packed, k, max_elements=1000)
        expected = index.search(queries, k)
        assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])


@pytest.mark.gpu
def test_cuda_search_equals_the_cpu_kernel():
    rng = np.random.default_rng(7)
    database, queries = _codes(rng, 200_000, 64), _codes(rng, 100, 64)
    index = HammingIndex(database)
    for k in (1, 10, 1000):
        got, expected = index.search(queries, k, device="cuda"), index.search(queries, k)
        assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
