"""``cmhash search``: one query from the command line, the results as a table or JSON."""

from __future__ import annotations

import argparse
import json
import os
import stat
from typing import Any

from cmhash.errors import for_terminal
from cmhash.search.query import SearchError
from cmhash.service.search_service import MAX_UPLOAD_BYTES, SearchService


def read_image_file(path) -> bytes:
    """The bytes of the image file at ``path``: a regular file (not a device such as /dev/zero, a
    pipe or a folder) of at most MAX_UPLOAD_BYTES, checked before anything is read."""
    try:
        status = os.stat(path)
    except OSError as err:
        raise SearchError(f"{path}: cannot read the image ({err.strerror}).") from None
    if not stat.S_ISREG(status.st_mode):
        raise SearchError(f"{path}: not a regular file; --image takes an image file.")
    if status.st_size > MAX_UPLOAD_BYTES:
        raise SearchError(f"{path} is {status.st_size:,} bytes; images up to {MAX_UPLOAD_BYTES:,} bytes are accepted.", 413)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_UPLOAD_BYTES + 1)  # the file may have grown since
    except OSError as err:
        raise SearchError(f"{path}: cannot read the image ({err.strerror}).") from None
    if len(data) > MAX_UPLOAD_BYTES:
        raise SearchError(f"{path} is larger than {MAX_UPLOAD_BYTES:,} bytes, the limit for images.", 413)
    return data


def run_search(args: argparse.Namespace, service: SearchService) -> int:
    image = read_image_file(args.image) if args.image is not None else None
    answer = service.search(args.method, args.bits, args.k, text=args.text, image=image, image_name=str(args.image))
    if args.json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
        return 0
    print(for_terminal(render(answer)))
    return 0


def render(answer: dict[str, Any]) -> str:
    """A table: rank, item id, distance, labels, first caption, image path (user data escaped by the caller)."""
    query = f'"{answer["text"]}"' if answer["text"] is not None else "an image"
    timing = answer["milliseconds"]
    lines = [f"{answer['method']} {answer['bits']} bits, {answer['direction']}: {query} "
             f"(encode {timing['encode']:.1f} ms, search {timing['search']:.2f} ms)"]
    lines += [f"note: {note}" for note in answer["notes"]]
    rows = [("rank", "id", "distance", "labels", "caption", "image")]
    rows += [(str(r["rank"]), str(r["id"]), str(r["distance"]), ", ".join(r["labels"]),
              (r["captions"][0] if r["captions"] else "") + (f" (+{len(r['captions']) - 1})" if len(r["captions"]) > 1 else ""),
              r["image_path"]) for r in answer["results"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines += ["  ".join([cell.ljust(width) for cell, width in zip(row[:-1], widths)] + [row[-1]]) for row in rows]
    return "\n".join(lines)
