"""``cmhash search``: one query from the command line, the results as a table or JSON."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cmhash.errors import for_terminal
from cmhash.search.query import SearchError
from cmhash.search.service import SearchService


def run_search(args: argparse.Namespace, params: dict[str, Any]) -> int:
    image = None
    if args.image is not None:
        try:
            image = args.image.read_bytes()
        except OSError as err:
            raise SearchError(f"{args.image}: cannot read the image ({err.strerror}).") from None
    answer = SearchService(args.root, params).search(args.method, args.bits, args.k, text=args.text, image=image,
                                                     image_name=str(args.image))
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
