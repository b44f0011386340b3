"""Experiment configs from Python, by name or by path, as the command line's ``--config`` loads them.

``python experiments/main.py --config=experiments/configs/digits.py:exact`` runs the config that
:func:`jaxloss.training.load_config` returns for ``"experiments/configs/digits.py:exact"``, or for
``"digits:exact"`` from any directory: the names are the files of ``experiments/configs`` in the
source checkout that jaxloss is installed from (``pip install -e .``). The file is loaded by
ml_collections' own loader, the one behind ``config_flags.DEFINE_config_file``, so Python and the
command line cannot differ.
"""

from __future__ import annotations

import os
from pathlib import Path

import ml_collections
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from jaxloss.training.checks import ConfigError, did_you_mean

__all__ = ["CONFIGS_DIR", "available_configs", "load_config"]

# experiments/ is not part of the installed package: its configs are found beside the package's
# source (an editable install or a checkout on the path), or not at all.
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "experiments" / "configs"


def available_configs(directory: str | os.PathLike = CONFIGS_DIR) -> list[str]:
    """The names :func:`load_config` takes: the files of ``directory`` (default ``CONFIGS_DIR``,
    ``experiments/configs``) without ``.py`` (none when jaxloss is not installed from a source
    checkout; the scripts in ``experiments/`` pass the directory beside them).

    Example:
      >>> {"digits", "cifar10", "mnist"} <= set(available_configs())
      True
    """
    return sorted(path.stem for path in Path(directory).glob("*.py") if path.stem != "__init__")


def load_config(config: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config of ``"FILE[:ARGUMENT]"`` or ``"NAME[:ARGUMENT]"``: ``get_config(ARGUMENT)``
    (``get_config()`` without one) of the config file, locked as the command line's.

    Args:
      config: the path of a config file, or the name of one in ``experiments/configs``
        (:func:`available_configs`), optionally followed by ``:`` and the argument of its
        ``get_config``: the loss for most configs, e.g. ``"digits:exact"`` or
        ``"experiments/configs/cifar10.py:smooth_topk_svm"``.

    Returns:
      The locked ``ConfigDict`` (fields can be changed, not added), ready for
      :func:`jaxloss.training.train_and_evaluate`.

    Raises:
      ConfigError: ``config`` names neither a file nor a config of :func:`available_configs`.

    Example:
      >>> config = load_config("digits:label_relaxation")
      >>> config.data.name, config.loss.name, config.loss.hyperparameters.alpha
      ('digits', 'label_relaxation', 0.1)
      >>> config.num_epochs = 1  # fields change as from the command line (--config.num_epochs=1)
      >>> load_config(CONFIGS_DIR / "digits.py").loss.name  # a path; without ':', get_config()
      'cross_entropy'
      >>> load_config("digit:exact")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
        ...
      jaxloss.training.checks.ConfigError: config 'digit:exact': no config file 'digit' (did you mean 'digits'?); ...
    """
    given = os.fspath(config)
    file, colon, argument = given.partition(":")
    if not os.path.isfile(file):
        names = available_configs()
        if file not in names:
            where = (
                f"the names: {', '.join(names)}"
                if names
                else f"no named configs: {CONFIGS_DIR} is missing (jaxloss is not installed from "
                "a source checkout)"
            )
            raise ConfigError(
                f"config {given!r}: no config file {file!r}{did_you_mean(file, names)}; give the "
                f"path of a config file or the name of one in experiments/configs ({where})."
            )
        file = os.fspath(CONFIGS_DIR / f"{file}.py")
    return ConfigFileFlagParser(name="config").parse(file + colon + argument)
