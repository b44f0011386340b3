"""What the experiment scripts share on the command line: help, flag errors and quiet logs."""

from __future__ import annotations

import difflib
import inspect
import logging as python_logging
import os
import runpy
import sys
from typing import NoReturn

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

import jaxloss
from jaxloss.training import CheckpointError, ConfigError, checks, distributed
from jaxloss.training import configs as training_configs
from jaxloss.training.lock import WorkdirInUseError

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
_INITIALIZATION_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout",
    distributed.INITIALIZATION_TIMEOUT,
    "Seconds for every process of a multi-process run to connect to the coordinator; past them "
    "each process stops with one line saying what to check (address, port, process ids).",
)
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout",
    distributed.HEARTBEAT_TIMEOUT,
    "Seconds after which a process that stopped sending heartbeats (killed, crashed, host lost) "
    "stops every process of a multi-process run, each naming it.",
)
_STALL_TIMEOUT = flags.DEFINE_integer(
    "stall_timeout",
    distributed.STALL_TIMEOUT,
    "Seconds that every process of a multi-process run may wait without computing in one place "
    "before the run counts as hung: each process prints where it waits and stops.",
)


def available_configs() -> list[str]:
    """The configs beside this script (also without an editable install of jaxloss)."""
    return training_configs.available_configs(CONFIGS)


def help_epilogue() -> str:
    """The configs and losses a user can pick, for ``--help``."""
    return (
        f"\nConfigs (experiments/configs/<name>.py): {', '.join(available_configs())}."
        f"\nLosses (the text after ':' in --config): {', '.join(jaxloss.available_losses())}.\n"
    )


def fatal(message: str, hint: str | None = None) -> NoReturn:
    """Ends the script with one ``FATAL`` line (and at most one ``Hint:`` line), exit status 1.

    For mistakes on the command line: the message names the flag, the value and what is allowed.
    """
    print(f"FATAL {message}", file=sys.stderr)
    if hint:
        print(f"Hint: {hint}", file=sys.stderr)
    sys.exit(1)


def _flag_index(argv: list[str], name: str) -> int | None:
    """The index in ``argv`` of ``--name=value`` or ``--name value`` (the last one wins)."""
    found = None
    for i, arg in enumerate(argv):
        if arg.startswith(name + "=") or (arg == name and i + 1 < len(argv)):
            found = i
    return found


def _flag_value(argv: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in ``argv``."""
    i = _flag_index(argv, name)
    if i is None:
        return None
    return argv[i].split("=", 1)[1] if "=" in argv[i] else argv[i + 1]


def _set_flag(argv: list[str], name: str, value: str | None) -> list[str]:
    """``argv`` with ``--name`` set to ``value`` first (before any ``--name.<field>`` override
    that applies to it), or left out for None."""
    argv = list(argv)
    while (i := _flag_index(argv, name)) is not None:
        del argv[i : i + (1 if "=" in argv[i] else 2)]
    return argv if value is None else [argv[0], f"{name}={value}", *argv[1:]]


def _fields(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every field of ``config`` as a dotted path, nested configs and their fields included."""
    paths = []
    for key, value in config.items():
        paths.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            paths.extend(_fields(value, prefix + key + "."))
    return paths


def _config_flag_names() -> list[str]:
    """The flags that load a config file (``config_flags.DEFINE_config_file``)."""
    return [
        name for name in flags.FLAGS if isinstance(flags.FLAGS[name].parser, ConfigFileFlagParser)
    ]


def _help_requested(argv: list[str]) -> bool:
    return any(arg in ("--help", "-h", "--helpshort", "-?") for arg in argv[1:])


def check_config_arguments(argv: list[str], name: str, default: str) -> list[str]:
    """Names the command line's mistakes about config flag ``--name`` (default file ``default``)
    with :func:`fatal`; returns ``argv`` with ``--name.loss.name=X`` turned into
    ``--name=<file>:X``, which builds the config as that loss's own (its hyperparameters, head,
    schedule and optimizer recipe) instead of renaming the loss of another's config. A config
    file whose ``get_config`` takes no loss cannot do that: ``--name.loss.name`` is refused.

    The mistakes: a config file that does not exist, an unknown loss after ``:``, a
    ``get_config`` that fails, a ``--name.<field>`` that the config does not have (with the
    closest field, the underscore spelling of a dashed name, or the fields it has). absl and
    ml_collections would end each in a traceback.
    """
    given = _flag_value(argv, f"--{name}") or default
    file, colon, option = given.partition(":")
    if not os.path.isfile(file):
        fatal(
            f"--{name}={given}: there is no config file {file!r}.",
            f"the configs are experiments/configs/<name>.py: {', '.join(available_configs())}.",
        )
    get_config = runpy.run_path(file)["get_config"]
    takes_loss = "loss" in inspect.signature(get_config).parameters
    loss_name = _flag_value(argv, f"--{name}.loss.name")
    if loss_name is not None and not takes_loss:
        fatal(
            f"--{name}.loss.name={loss_name} would rename the loss alone, without its "
            f"hyperparameters, head, schedule and optimizer recipe ({file}'s get_config takes no "
            "loss).",
            f"build the config for the loss: --{name}=<config file>:{loss_name}, with a "
            "get_config(loss) such as experiments/configs/digits.py's.",
        )
    if loss_name is not None:
        option, colon, given = loss_name, ":", f"{file}:{loss_name}"
        argv = _set_flag(_set_flag(argv, f"--{name}.loss.name", None), f"--{name}", given)
    losses = jaxloss.available_losses()
    if takes_loss and colon and option not in losses:
        fatal(
            f"--{name}={given}: unknown loss {option!r}{checks.did_you_mean(option, losses)}.",
            f"the losses: {', '.join(losses)}.",
        )
    try:
        config = get_config(*([option] if colon else []))
    except Exception as error:  # noqa: BLE001 - any failure of the user's config file
        fatal(f"--{name}={given}: get_config failed: {type(error).__name__}: {error}")
    known = _fields(config)
    for arg in argv[1:]:
        flag = arg.split("=", 1)[0]
        if not flag.startswith(f"--{name}."):
            continue
        path = flag[len(f"--{name}.") :]
        if path in known:
            continue
        if path.replace("-", "_") in known:
            fatal(
                f"{flag}: config fields are named with underscores.",
                f"--{name}.{path.replace('-', '_')}",
            )
        parent, _, field = path.rpartition(".")
        siblings = sorted(k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent)
        where = f"'{parent}'" if parent else "the config"
        fatal(
            f"{flag}: {where} has no field {field!r}{checks.did_you_mean(field, siblings)}.",
            f"its fields: {', '.join(siblings)}.",
        )
    return argv


def define_config_file(name: str, default: str, help_string: str) -> flags.FlagHolder:
    """``config_flags.DEFINE_config_file`` (a locked config) after :func:`check_config_arguments`
    on ``sys.argv``: call it instead of the former, since ml_collections reads ``sys.argv`` and
    builds the config when the flag is defined."""
    if not _help_requested(sys.argv):
        sys.argv[:] = check_config_arguments(sys.argv, name, default)
    return config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)


def _unknown_flag_hint(argv: list[str], name: str) -> str | None:
    """For ``--name`` that is no flag: the config field it means (or is closest to), as
    ``--config.<field>``."""
    value = _flag_value(argv, f"--{name}")
    for flag in _config_flag_names():
        given = _flag_value(argv, f"--{flag}") or flags.FLAGS[flag].default_as_str.strip("'\"")
        file, colon, option = given.partition(":")
        paths = _fields(runpy.run_path(file)["get_config"](*([option] if colon else [])))
        leaves = {path.rpartition(".")[2]: path for path in paths}
        close = difflib.get_close_matches(name, list(leaves), n=1)
        if close:
            return f"config fields take the --{flag}. prefix: --{flag}.{leaves[close[0]]}" + (
                f"={value}" if value is not None else ""
            )
    return None


def parse_flags(argv: list[str], *, epilogue: str = "") -> list[str]:
    """absl's flag parsing, with ``--help`` that exits 0 (absl's exits 1) followed by
    ``epilogue``, and an unknown or missing flag reported by :func:`fatal` instead of a traceback
    (with the config field that an unknown flag means, if any). The config flags' own mistakes are
    named by :func:`define_config_file`."""
    if _help_requested(argv):
        print((sys.modules["__main__"].__doc__ or "") + "\n" + flags.FLAGS.main_module_help())
        print(epilogue)
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except flags.UnrecognizedFlagError as error:
        name = error.flagname
        field = _unknown_flag_hint(argv, name)
        if field is not None:
            fatal(f"unknown flag --{name}.", field)
        fatal(
            f"unknown flag --{name}{checks.did_you_mean(name, list(flags.FLAGS))}.",
            "--help lists the flags.",
        )
    except flags.Error as error:
        fatal(str(error).splitlines()[0], "--help lists the flags.")


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
    """Starts JAX's multi-process runtime as the flags ask (:func:`jaxloss.training.distributed.
    initialize`), before anything else uses JAX; a launch mistake ends the process with one
    ``FATAL`` line."""
    if _COORDINATOR.value is None and not _DISTRIBUTED.value:
        return
    if _COORDINATOR.value is not None and (
        _NUM_PROCESSES.value is None or _PROCESS_ID.value is None
    ):
        raise app.UsageError("--coordinator_address needs --num_processes and --process_id.")
    try:
        distributed.initialize(
            _COORDINATOR.value,
            _NUM_PROCESSES.value,
            _PROCESS_ID.value,
            initialization_timeout=_INITIALIZATION_TIMEOUT.value,
            heartbeat_timeout=_HEARTBEAT_TIMEOUT.value,
            stall_timeout=_STALL_TIMEOUT.value,
            show_gloo=logging.level_debug(),
        )
    except distributed.LaunchError as error:
        print(f"FATAL {error}", file=sys.stderr)
        sys.exit(1)


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
        except (ConfigError, CheckpointError, WorkdirInUseError, FileNotFoundError) as error:
            fatal(str(error))

    app.run(checked_main, flags_parser=lambda argv: parse_flags(argv, epilogue=epilogue))
