"""What the Prefect flow (``flows/pipeline.py``) needs to drive the DVC pipeline, one concept a module:

- :mod:`.graph`: the stages of ``dvc.yaml`` and their order, as DVC itself reads them;
- :mod:`.stage_process`: one stage run by ``dvc repro --single-item`` in its own process, and what
  DVC did (ran, skipped, restored from the run-cache);
- :mod:`.devices`: one GPU per GPU stage, never two stages on one;
- :mod:`.workspace`: the checks and locks that make a clone safe to run in, and the run's overrides
  of params.yaml;
- :mod:`.experiments`: every run saved as a DVC experiment, pushed on request, and the baseline it
  is compared with;
- :mod:`.tasks`: the Prefect task that runs one stage, with its retries.

DVC decides what runs and records it in ``dvc.lock``; Prefect schedules, runs independent stages at
the same time, retries, logs and reports. Nothing here knows the stages of this project by name.
"""
