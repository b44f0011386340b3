r"""Trains and evaluates one loss on one setup.

    python experiments/main.py --config experiments/configs/digits.py:exact --workdir /tmp/digits \
        [--config.num_seeds=5 --config.loss.hyperparameters.sample_size=32 ...]

The config file picks the setup (see ``experiments/configs``) and the text after ``:`` the loss, with
its default hyperparameters and the head and optimizer pieces it is designed for
(``--config.loss.name=<loss>`` is read as ``:<loss>``). ``--config.<field>=<value>`` overrides any
field. Every value is checked before anything is written: a mistake ends the run with one ``FATAL``
line (and at most one hint line) naming the flag or field, the value and what is allowed. At the
end it prints the reported epoch's validation and test metrics per seed and, of two or more,
their mean ± std, also written to ``<workdir>/results.json``. Running again with the same workdir
resumes from its latest checkpoint (or, for a finished run, prints the same summary); a second run
started while one holds the workdir stops at once, naming the first (``<workdir>/run.lock``).

Many processes (GPU hosts, TPU pods) run the same command with JAX's runtime: ``--distributed`` (JAX
detects SLURM, Cloud TPU, Open MPI) or ``--coordinator_address=HOST:PORT --num_processes=N
--process_id=I``. The workdir must be storage every process shares; process 0 writes the logs. A
launch mistake, a dead process or a hang ends every process with one ``FATAL`` line:
``--initialization_timeout`` (s to connect, default 120), ``--heartbeat_timeout`` (s of silence
that makes a process dead, 30) and ``--stall_timeout`` (s that every process may wait in one
place, 300) set when (docs/guide/training.md, "Multi-host").
"""

import os

import cli
from absl import app, flags

from jaxloss.training import train_and_evaluate
from jaxloss.training.summary import format_summary

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and config.")
cli.define_config_file("config", os.path.join(cli.CONFIGS, "digits.py"), "Experiment config file.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    out = train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)
    if cli.is_reporting_process():
        print(format_summary(out["summary"]))


if __name__ == "__main__":
    cli.run(main)
