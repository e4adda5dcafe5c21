"""What the Prefect flow (``flows/pipeline.py``) needs to drive the DVC pipeline, one concept a module:

- :mod:`.dvc_state`: what the flow knows of DVC, read as data: the stages of ``dvc.yaml`` and their
  order, what is out of date, what ran, and who holds a stage's files;
- :mod:`.stage_process`: one stage run by ``dvc repro --single-item`` in its own process, and what
  DVC did (ran, skipped, restored from the run-cache);
- :mod:`.lifeline`: a command that dies with the process that started it, children included;
- :mod:`.prefect_server`: the Prefect API a one-off run talks to (a temporary one if none is set);
- :mod:`.devices`: one GPU per GPU stage, never two stages on one;
- :mod:`.workspace`: the checks and locks that make a clone safe to run in, and the run's overrides
  of params.yaml;
- :mod:`.experiments`: every run saved as a DVC experiment, pushed on request, and the baseline it
  is compared with;
- :mod:`.tasks`: the Prefect task that runs one stage, with its retries.

DVC decides what runs and records it in ``dvc.lock``; Prefect schedules, runs independent stages at
the same time, retries, logs and reports. Nothing here knows the stages of this project by name.
"""
