"""Concurrent requests answered in batches: how ``cmhash serve`` keeps up with many clients.

Encoding one text costs nearly as much as encoding twenty (the encoder's fixed cost per call
dominates on a CPU), so the server does not encode each request on its own. Requests wait in a
queue; one batch at a time is taken from it (whatever is there, and what arrives within a short
window after the first, up to ``max_batch``) and answered with one call of
:meth:`~cmhash.service.search_service.SearchService.search_many` in a worker thread, each request getting
its own answer or error. While a batch is being answered the next one gathers, so under load the
batches grow by themselves, and a lone request waits only the window. Batches are answered in one
thread of their own: spread over a pool's threads, each with its own malloc arena, the server's
memory grew from run to run (measured: 1,148 to 1,245 MB between two identical runs).

Both are bounded: at most ``max_waiting`` requests wait (beyond, 503 with ``Retry-After``), and a
batch holds at most ``max_batch_bytes`` of prepared images (a request's ``size``); what does not fit
goes in the next batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cmhash.search.query import SearchError
from cmhash.service.search_service import Request, SearchService

WINDOW_SECONDS = 0.002
MAX_BATCH = 64
MAX_BATCH_BYTES = 32 * 1024 * 1024  # the prepared images of one batch (64 of CLIP's 224 x 224 inputs: 38 MB)
MAX_WAITING = 256


@dataclass
class _Waiting:
    request: Request
    size: int
    answer: asyncio.Future


class Batcher:
    def __init__(self, service: SearchService, window: float = WINDOW_SECONDS, max_batch: int = MAX_BATCH,
                 max_batch_bytes: int = MAX_BATCH_BYTES, max_waiting: int = MAX_WAITING):
        self.service, self.window, self.max_batch = service, window, max_batch
        self.max_batch_bytes, self.max_waiting = max_batch_bytes, max_waiting
        self._waiting: deque[_Waiting] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cmhash-search-batch")

    async def search(self, request: Request, size: int = 0) -> dict:
        """The answer to ``request`` (raises its :class:`SearchError`); ``size``: the bytes of its
        prepared image, counted against the batch's limit."""
        if len(self._waiting) >= self.max_waiting:
            raise SearchError(f"the server is busy: {len(self._waiting)} searches are waiting; retry in a moment.", 503,
                              retry_after=1)
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._answer_batches())
        waiting = _Waiting(request, size, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        self._arrived.set()
        return await waiting.answer

    def _full(self) -> bool:
        return len(self._waiting) >= self.max_batch or sum(w.size for w in self._waiting) >= self.max_batch_bytes

    def _take_batch(self) -> list[_Waiting]:
        """The first waiting requests, up to ``max_batch`` of them and ``max_batch_bytes`` (at least one)."""
        first = self._waiting.popleft()
        batch, size = [first], first.size
        while self._waiting and len(batch) < self.max_batch and size + self._waiting[0].size <= self.max_batch_bytes:
            size += self._waiting[0].size
            batch.append(self._waiting.popleft())
        return batch

    async def _answer_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + self.window  # what arrives within the window joins the batch
            while not self._full() and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = self._take_batch()
            try:
                answers = await loop.run_in_executor(self._thread, self.service.search_many,
                                                     [waiting.request for waiting in batch])
            except Exception as err:  # a fault of the batch (not of one request): every request gets it
                answers = [err] * len(batch)
            for waiting, answer in zip(batch, answers):
                if waiting.answer.done():  # its client went away
                    continue
                if isinstance(answer, BaseException):
                    waiting.answer.set_exception(answer)
                else:
                    waiting.answer.set_result(answer)
