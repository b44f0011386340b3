"""Every Python block of the README and of the guide pages (docs/guide) runs as written, each in a
fresh interpreter outside the repo; the README's links into docs/ point to pages and sections that exist."""

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The pages whose Python blocks run: the README and the guide pages it points to.
PAGES = [README, *sorted((ROOT / "docs" / "guide").glob("*.md"))]
# A fence may be indented (a block inside a list item); its closing fence has the same indent.
_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)```python\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.M | re.S
)
# A Markdown link or image into docs/: [text](docs/guide/x.md#section).
_DOCS_LINK = re.compile(r"\]\((?P<path>docs/[^)#\s]+)(?:#(?P<anchor>[^)\s]+))?\)")


def _blocks() -> list[tuple[str, int, str]]:
    blocks = []
    for page in PAGES:
        text = page.read_text()
        blocks += [
            (
                str(page.relative_to(ROOT)),
                text.count("\n", 0, match.start()) + 1,
                textwrap.dedent(match.group("code")),
            )
            for match in _BLOCK.finditer(text)
        ]
    return blocks


BLOCKS = _blocks()


def _anchor(heading: str) -> str:
    """The anchor GitHub and myst-parser give a heading: lower case, punctuation dropped, spaces -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_and_the_guide_have_python_blocks_to_run():
    files = {file for file, _, _ in BLOCKS}
    assert "README.md" in files, "the block pattern found no Python blocks in README.md"
    assert any(file.startswith("docs/guide/") for file in files), "no Python block in docs/guide"


@pytest.mark.parametrize(
    "file, line, code", BLOCKS, ids=[f"{file}:line{line}" for file, line, _ in BLOCKS]
)
def test_python_block_runs(file, line, code, tmp_path):
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
        f"{file}'s Python block at line {line} failed:\n{result.stdout}\n{result.stderr}"
    )


def test_the_readmes_links_into_docs_point_to_pages_and_sections_that_exist():
    links = [m.group("path", "anchor") for m in _DOCS_LINK.finditer(README.read_text())]
    assert any(path.startswith("docs/guide/") for path, _ in links), "no link to docs/guide"
    broken = [path for path, _ in links if not (ROOT / path).is_file()]
    assert not broken, f"README.md links to files that do not exist: {broken}"
    missing = [
        f"{path}#{anchor}"
        for path, anchor in links
        if anchor
        and anchor
        not in {
            _anchor(line.lstrip("#"))
            for line in (ROOT / path).read_text().splitlines()
            if line.startswith("#")
        }
    ]
    assert not missing, f"README.md links to sections that do not exist: {missing}"
