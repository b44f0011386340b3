"""Every notebook in notebooks/ executes top to bottom without error (they are documentation)."""

import os
import pathlib

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
kernelspec = pytest.importorskip("ipykernel.kernelspec")

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


@pytest.fixture()
def this_interpreters_kernel(tmp_path, monkeypatch):
    """A 'python3' kernel running this interpreter, ahead of any user-wide kernel of that name."""
    kernelspec.install(kernel_name="python3", prefix=str(tmp_path))
    monkeypatch.setenv("JUPYTER_PATH", os.path.join(tmp_path, "share", "jupyter"))
    return "python3"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, this_interpreters_kernel):
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name=this_interpreters_kernel,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()
