"""An expected refusal ends a flow run Failed with its one-line message, and no traceback.

A busy clone, an edited params.yaml, a bad override, a failed stage or a regression is an answer,
not a crash: the traceback of where it was raised says nothing more and buries the message, on
the terminal and in the worker's log. Two things of Prefect's stand in the way:

- a flow that raises is logged with its traceback, so the flow returns a ``Failed`` state with the
  message instead (:func:`refused`);
- a deployment's run, when its flow ends Failed, is re-raised by Prefect's engine as ``FailedRun``
  (the run's own final state, as an exception) and logged by the engine's top level, "Engine
  execution exited with unexpected exception", with a traceback that lies wholly inside Prefect.
  :func:`quiet_failed_run_tracebacks` drops that traceback from the record, keeping the line; the
  run's message is already in the log ("Finished in state Failed('...')"). Any other exception,
  an unexpected error of the flow's own included, keeps its traceback.
"""

from __future__ import annotations

import logging

from cmhash.errors import CmhashError

FLOW_RUN_LOGGER = "prefect.flow_runs"  # the logger of Prefect's flow-run engine (flow_engine.flow_run_logger)


class _WithoutFailedRunTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from prefect.exceptions import FailedRun

        if record.exc_info and isinstance(record.exc_info[1], FailedRun):
            record.msg = "the flow run ended Failed (its message is above)"
            record.args = None
            record.exc_info, record.exc_text = None, None
        return True


def quiet_failed_run_tracebacks() -> None:
    """Log the engine's re-raise of a Failed run as one line, from now on in this process (once)."""
    logger = logging.getLogger(FLOW_RUN_LOGGER)
    if not any(isinstance(installed, _WithoutFailedRunTraceback) for installed in logger.filters):
        logger.addFilter(_WithoutFailedRunTraceback())


def refused(error: CmhashError):
    """The state a flow returns for an expected refusal: Failed, with the message alone."""
    from prefect.states import Failed

    quiet_failed_run_tracebacks()
    return Failed(message=str(error))
