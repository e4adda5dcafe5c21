"""The ``train`` stage: one hashing method fitted at one code length on the train split; the model
and the codes of the query and retrieval sets written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmhash.atomic import write_json
from cmhash.codes import collapse_warnings, write_codes
from cmhash.datasets.prepared import PreparedData
from cmhash.features import check_made_from, read_features
from cmhash.methods import build_method, check_method_and_bits, save_model
from cmhash.methods.fitting import fit_end_to_end, fit_on_features
from cmhash.pipeline.layout import Layout
from cmhash.pipeline.params import encoder_spec, method_params

# methods.<name> and its dataset_overrides entry are checked by method_params, for this method only
SECTIONS = ("dataset", "encode", "train")


def run(params: dict[str, Any], layout: Layout, method: str, bits: int, progress: bool = True) -> Path:
    check_method_and_bits(method, bits)  # before reading anything
    name = params["dataset"]["name"]
    seed = params["train"]["seed"]
    settings = method_params(params, method)
    model = build_method(method, bits, settings, seed, params["train"]["device"], progress=progress)
    features = read_features(layout.features(name))
    prepared_md5 = check_made_from(features, layout.features(name), layout.prepared(name))
    with PreparedData(layout.prepared(name)) as data:
        splits, labels = data.splits, data.labels
    train_idx = splits["train"]
    out_dir = layout.model_dir(method, bits)
    if model.end_to_end:  # trains the encoder towers too: reads pixels and captions
        codes, seconds = fit_end_to_end(model, layout.prepared(name), encoder_spec(params["encode"], params["train"]["device"]),
                                        seed, splits, labels)
    else:
        codes, seconds = fit_on_features(model, features, splits, labels)
    save_model(out_dir / "model.pt", method, model, settings, seed)
    write_codes(out_dir / "codes.h5", method, bits, codes, prepared_md5)
    # The fit time is printed, not written: the model folder is a DVC output, and its hash must
    # not change when the same fit runs again.
    warnings = collapse_warnings(codes)
    write_json(out_dir / "train.json", {"method": method, "bits": bits, "seed": seed, "settings": settings,
                                        "encoder": features.encoder, "train_items": int(len(train_idx)),
                                        "warnings": warnings})
    for warning in warnings:
        print(f"warning: {method} {bits} bits: {warning}")
    print(f"{method} {bits} bits: fitted on {len(train_idx):,} items in {seconds:.1f} s")
    return out_dir
