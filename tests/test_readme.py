"""Every Python block of the README runs as written, each in a fresh interpreter outside the repo."""

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
# A fence may be indented (a block inside a list item); its closing fence has the same indent.
_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)```python\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.M | re.S
)


def _blocks() -> list[tuple[int, str]]:
    text = README.read_text()
    return [
        (text.count("\n", 0, match.start()) + 1, textwrap.dedent(match.group("code")))
        for match in _BLOCK.finditer(text)
    ]


BLOCKS = _blocks()


def test_the_readme_has_python_blocks_to_run():
    assert len(BLOCKS) >= 2, "the block pattern found no Python blocks in README.md"


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"line{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line, code, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(code)
    # Four host devices, so that the multi-device examples run as written on a CPU.
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"README.md's Python block at line {line} failed:\n{result.stdout}\n{result.stderr}"
    )
