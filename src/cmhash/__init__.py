"""cmhash: a reproducible, orchestrated pipeline for CLIP-based cross-modal hashing.

The package is in layers; each imports only the layers below it (tests/test_layers.py checks this):

- the library, the packages and modules directly under ``cmhash``: datasets (sources, the prepared
  HDF5 format, splits), encoders (CLIP towers and encoding a prepared file into features), methods
  (the hashing methods and how they are fitted), metrics (exact retrieval evaluation), search (the
  Hamming top-k engine and the index files), and the file formats and helpers they share (codes,
  features, bitcodes, atomic writes, checksums, devices, errors). It takes typed settings and plain
  arguments, and needs neither DVC, Prefect, FastAPI nor Great Expectations.
- :mod:`cmhash.service`: the search API, its web page and the ``cmhash search`` front end.
- :mod:`cmhash.pipeline`: params.yaml, the paths of dvc.yaml, one module per DVC stage, the data
  checks (Great Expectations), the results table, metric diffs, tuning, the plots page, and the
  ``cmhash`` command line.
- :mod:`cmhash.orchestration`: what the Prefect flow needs to drive the DVC pipeline.
"""

__version__ = "0.1.0"
