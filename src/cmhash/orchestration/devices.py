"""One GPU per GPU stage: stages that run at the same time never share a device.

The visible GPUs are those of ``CUDA_VISIBLE_DEVICES`` when it is set (so a worker can be given a
subset), else those ``nvidia-smi`` lists. A stage leases one by taking an exclusive ``flock`` on the
device's lock file in this user's private folder in the temporary folder (:func:`lock_folder`), and
its process sees only that device (``CUDA_VISIBLE_DEVICES=<id>``). The locks are per machine and per open file, so they hold between
the threads of one flow run, between Dask workers on one machine, and between two flow runs; the
kernel drops them when a process dies, so none is ever left stale.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cmhash.errors import CmhashError


def visible_gpus() -> list[str]:
    """The device ids a stage may be given (empty on a machine without NVIDIA GPUs)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [device.strip() for device in listed.split(",") if device.strip() and device.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    result = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True)
    return result.stdout.split() if result.returncode == 0 else []


def lock_folder() -> Path:
    """This user's folder of lease files in the temporary folder, private (mode 0700). Its name is
    predictable, so another user could make it first, then hold every lease or read them: a path of
    that name that is not a folder of this user's own (a link, a file, another owner's folder) is
    refused, never used; a folder of this user's own that others may open (made by an older
    cmhash) is made private."""
    folder = Path(tempfile.gettempdir()) / f"cmhash-gpu-locks-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    found = os.lstat(folder)
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
        what = "a folder" if stat.S_ISDIR(found.st_mode) else "not a folder"
        raise CmhashError(f"{folder}: the GPU lease folder must be a private folder of this user's own (uid "
                          f"{os.getuid()}), but it is {what} of uid {found.st_uid}; remove it (or set TMPDIR to a "
                          "private folder) and start again.")
    if found.st_mode & 0o077:
        os.chmod(folder, 0o700)
    return folder


@contextmanager
def gpu_lease(devices: list[str], poll_seconds: float = 0.5) -> Iterator[str | None]:
    """Hold one of ``devices`` for the duration of the block (waiting until one is free); ``None``
    without devices, so CPU-only machines run stages with no waiting."""
    if not devices:
        yield None
        return
    folder = lock_folder()
    while True:
        for device in devices:
            handle = open(folder / f"gpu-{device}.lock", "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield device
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        time.sleep(poll_seconds)
