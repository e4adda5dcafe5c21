"""The registry of hashing methods: name -> ``module:Class`` (a :class:`cmhash.registry.Registry`).

The module of method ``name`` is always ``cmhash.methods.<name>`` (dvc.yaml relies on it, and a test
checks it). This file is not a dependency of the train stages: adding a method here does not rerun
the others.
"""

from cmhash.registry import Registry

METHODS = Registry("hashing method", {
    # baselines
    "lsh": "cmhash.methods.lsh:LSH",
    "itq": "cmhash.methods.itq:ITQ",
    "cca_itq": "cmhash.methods.cca_itq:CCAITQ",
    # unsupervised, on frozen features
    "djsrh": "cmhash.methods.djsrh:DJSRH",
    "jdsh": "cmhash.methods.jdsh:JDSH",
    "cfrh": "cmhash.methods.cfrh:CFRH",
    "ucmfh": "cmhash.methods.ucmfh:UCMFH",
    # supervised
    "dcmht": "cmhash.methods.dcmht:DCMHT",
    "mesdch": "cmhash.methods.mesdch:MESDCH",
    # supervised, fused (one code per image-text pair)
    "clipmh": "cmhash.methods.clipmh:CLIPMH",
})
