"""The pipeline's stages and their order, read from ``dvc.yaml`` by DVC itself.

The flow keeps no list of stages of its own: a stage added to ``dvc.yaml`` (or a method or a code
length added to params.yaml, which DVC expands through ``matrix``) is a task of the next run with no
edit here. A stage whose ``meta`` says ``gpu: true`` gets a GPU of its own when GPUs are visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PipelineStage:
    name: str                   # DVC's name for it, e.g. ``train@djsrh-64``
    upstream: tuple[str, ...]   # the stages whose outputs it reads
    gpu: bool = False           # ``meta: {gpu: true}`` in dvc.yaml


def read_pipeline(root: str | Path) -> list[PipelineStage]:
    """Every stage DVC would reproduce in ``root``, upstream stages first.

    Stages come in waves (``networkx.topological_generations``): all stages whose upstream is done
    come before any that waits for them, in dvc.yaml's order within a wave. Submitted in this order,
    a pool of N workers keeps N independent stages busy (all trains before any evaluate)."""
    import networkx as nx
    from dvc.repo import Repo

    root = Path(root).resolve()
    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        position = {stage: i for i, stage in enumerate(repo.index.stages)}
        ordered = []
        for wave in nx.topological_generations(graph.reverse(copy=True)):
            ordered.extend(sorted(wave, key=lambda stage: position.get(stage, len(position))))
        return [PipelineStage(_address(stage, root), tuple(sorted(_address(dep, root) for dep in graph.successors(stage))),
                              bool((getattr(stage, "meta", None) or {}).get("gpu", False)))
                for stage in ordered]


def _address(stage, root: Path) -> str:
    """The stage's name as ``dvc repro`` takes it in ``root`` (DVC's own ``addressing`` is relative
    to the current folder): ``train@djsrh-64``, ``sub/dvc.yaml:name`` or ``data.dvc``."""
    path = Path(stage.path).resolve().relative_to(root).as_posix()
    name = getattr(stage, "name", None)
    if name is None:  # a .dvc file
        return path
    return name if path == "dvc.yaml" else f"{path}:{name}"
