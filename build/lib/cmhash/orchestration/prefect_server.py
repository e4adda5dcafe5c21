"""The Prefect API a one-off run of the flow talks to.

``python flows/pipeline.py`` uses the server of ``PREFECT_API_URL`` (or of the active profile) when
one is configured. Otherwise it starts a temporary server on a free port of 127.0.0.1, as Prefect's
own ephemeral mode would, but under a :mod:`~cmhash.orchestration.lifeline`: Prefect's ephemeral
server outlives a flow process that is killed, this one does not.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cmhash.errors import CmhashError
from cmhash.orchestration import lifeline


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def temporary_server(startup_timeout: float = 120) -> Iterator[str]:
    """A Prefect server on 127.0.0.1 for the duration of the block (API only: no UI, no background
    services); yields its API URL. It is stopped when the block ends, and dies with this process."""
    import httpx

    port = _free_port()
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services", "--no-ui"]
    log = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser() / "cmhash-temporary-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as output:
        server = subprocess.Popen(lifeline.command(os.getpid(), command), stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise CmhashError(f"the temporary Prefect server did not start within {startup_timeout:.0f} s; its log: {log}")
            time.sleep(0.5)
        yield url
    finally:
        server.send_signal(signal.SIGTERM)  # the lifeline ends the server's whole process group
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


@contextmanager
def api_for_this_process() -> Iterator[None]:
    """Point this process's Prefect client at the configured server, or at a temporary one."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    if get_current_settings().api.url:
        yield
        return
    with temporary_server() as url, temporary_settings({PREFECT_API_URL: url}):
        try:
            yield
        finally:  # send the run's last logs and events while the server is still up
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)
