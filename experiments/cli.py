"""What the experiment scripts share on the command line: help, flag errors and quiet logs."""

from __future__ import annotations

import glob
import logging as python_logging
import os
import re
import runpy
import sys

import jax
from absl import app, flags, logging

import jaxloss
from jaxloss.training import ConfigError

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "HOST:PORT of process 0's coordinator: starts JAX's multi-process runtime "
    "(jax.distributed.initialize) with --num_processes and --process_id.",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes of a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 .. N-1.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Start JAX's multi-process runtime with no arguments: JAX detects the cluster (SLURM, Cloud "
    "TPU, Open MPI).",
)


def available_configs() -> list[str]:
    return sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(CONFIGS, "*.py")))


def help_epilogue() -> str:
    """The configs and losses a user can pick, for ``--help``."""
    return (
        f"\nConfigs (experiments/configs/<name>.py): {', '.join(available_configs())}."
        f"\nLosses (the text after ':' in --config): {', '.join(jaxloss.available_losses())}.\n"
    )


def _flag_value(argv: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in ``argv``."""
    for i, arg in enumerate(argv):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _unknown_field_message(argv: list[str], error: Exception) -> str | None:
    """Names the ``--config.<path>=...`` argument that sets a field the config does not have."""
    match = re.search(r"'([^']+)'", str(error))
    if match is None:
        return None
    name = match.group(1)
    for arg in argv[1:]:
        path = arg.split("=", 1)[0]
        if not path.startswith("--config.") or path.split(".")[-1] != name:
            continue
        field = path[len("--config.") :]
        parent = field.rpartition(".")[0]
        config_arg = _flag_value(argv, "--config")
        known = ""
        if config_arg is not None:
            file, _, loss = config_arg.partition(":")
            if os.path.exists(file):
                config = runpy.run_path(file)["get_config"](*([loss] if loss else []))
                for part in parent.split(".") if parent else ():
                    config = config[part]
                known = f" Its fields: {', '.join(sorted(config.keys()))}."
        where = f"'{parent}'" if parent else "the config"
        return f"{path}: {where} has no field {name!r}.{known}"
    return None


def parse_flags(argv: list[str], *, epilogue: str = "") -> list[str]:
    """absl's flag parsing, with ``--help`` that exits 0 (absl's exits 1) followed by
    ``epilogue``, and a message naming the argument when ``--config.<field>`` names no field
    (instead of a bare ``AttributeError``)."""
    if any(arg in ("--help", "-h", "--helpshort", "-?") for arg in argv[1:]):
        print((sys.modules["__main__"].__doc__ or "") + "\n" + flags.FLAGS.main_module_help())
        print(epilogue)
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as error:
        message = _unknown_field_message(argv, error)
        if message is None:
            raise
        print(f"FATAL Flags parsing error: {message}", file=sys.stderr)
        sys.exit(1)


class _OwnInfoOnly(python_logging.Filter):
    """Lets warnings through from everyone, INFO lines only from jaxloss and the scripts (Orbax
    logs ~30 INFO lines per checkpoint)."""

    def filter(self, record: python_logging.LogRecord) -> bool:
        if record.levelno >= python_logging.WARNING:
            return True
        return f"{os.sep}jaxloss{os.sep}" in record.pathname or record.pathname.startswith(
            os.path.dirname(CONFIGS)
        )


def quiet_library_logs() -> None:
    logging.get_absl_handler().addFilter(_OwnInfoOnly())


def start_distributed() -> None:
    """``jax.distributed.initialize`` as the flags ask, before anything else uses JAX."""
    if _COORDINATOR.value is not None:
        if _NUM_PROCESSES.value is None or _PROCESS_ID.value is None:
            raise app.UsageError("--coordinator_address needs --num_processes and --process_id.")
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()


def is_reporting_process() -> bool:
    """Whether this process prints and writes reports (process 0 of a multi-process run)."""
    return jax.process_index() == 0


def run(main, *, epilogue: str | None = None) -> None:
    """``app.run`` with :func:`parse_flags` (``--help`` ends with ``epilogue``, by default the
    configs and losses), quiet library logs, and config mistakes and missing data reported in a
    few lines (the run stops before writing anything) instead of a traceback."""
    quiet_library_logs()
    epilogue = help_epilogue() if epilogue is None else epilogue

    def checked_main(argv):
        start_distributed()
        try:
            return main(argv)
        except (ConfigError, FileNotFoundError) as error:
            print(f"FATAL {error}", file=sys.stderr)
            sys.exit(1)

    app.run(checked_main, flags_parser=lambda argv: parse_flags(argv, epilogue=epilogue))
