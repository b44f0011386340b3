"""The documentation (docs: the guide pages and the API reference) builds with warnings as errors,
so a link between pages that points nowhere fails; every guide page is built; the reference renders
math offline, lists every name with its types and no stray links; the data and training names each
show a runnable example."""

import html
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "sphinx", reason="the API reference needs the docs extra: pip install -e '.[docs]'"
)

ROOT = Path(__file__).resolve().parents[1]
FAMILY_PAGES = ("exact", "topk_svm", "noised_topk", "calibration", "long_tail", "registry")
OTHER_PAGES = ("metrics", "data", "training", "checked")
GUIDE_PAGES = sorted(page.stem for page in (ROOT / "docs" / "guide").glob("*.md"))
# The modules whose public names must each be described on some page.
PUBLIC_MODULES = (
    "jaxloss.losses",
    "jaxloss.ops",
    "jaxloss.optim",
    "jaxloss.nn",
    "jaxloss.metrics",
    "jaxloss.data",
    "jaxloss.training",
)


# The modules whose public functions and classes each show a runnable example (a doctest, run by
# pytest --doctest-modules): the harness and data packages and the modules of their API pages.
EXAMPLE_MODULES = (
    "jaxloss.data",
    "jaxloss.data.convert",
    "jaxloss.training",
    "jaxloss.training.checks",
    "jaxloss.training.configs",
    "jaxloss.training.defaults",
    "jaxloss.training.distributed",
    "jaxloss.training.lock",
)
_EXAMPLE = re.compile(r"^\s*Examples?:\s*$\n(?:^\s*$\n|^\s+(?!>>>).*\n)*^\s+>>> ", re.M)


def _public_names(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:  # a package that re-exports its names (``from ._x import f as f``)
        names = [n for n in vars(module) if not n.startswith("_")]
    return [
        f"{module_name}.{n}"
        for n in names
        if not inspect.ismodule(getattr(module, n))
        and getattr(getattr(module, n), "__module__", None) != "__future__"
    ]


def test_docs_build_without_warnings_with_math(tmp_path):
    site = tmp_path / "html"
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
        + [str(ROOT / "docs"), str(site)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert build.returncode == 0, f"sphinx-build failed:\n{build.stdout}\n{build.stderr}"
    # Every guide page is a page of the site (-W already refuses one that no toctree lists).
    assert len(GUIDE_PAGES) >= 10, f"docs/guide holds only {GUIDE_PAGES}"
    unbuilt = [name for name in GUIDE_PAGES if not (site / "guide" / f"{name}.html").is_file()]
    assert not unbuilt, f"guide pages missing from the built site: {unbuilt}"

    out = site / "api"
    pages = {name: (out / f"{name}.html").read_text() for name in FAMILY_PAGES + OTHER_PAGES}
    # MathJax typesets the elements of class "math" holding \( \) (inline) or \[ \] (display).
    exact = pages["exact"]
    assert re.search(r'<span class="math notranslate nohighlight">\\\(', exact), "no inline math"
    assert re.search(r'<div class="math notranslate nohighlight">\s*\\\[', exact), "no display math"
    # MathJax comes from the built site, not a CDN: the math renders without a network.
    scripts = re.findall(r'<script[^>]*src="([^"]*mathjax[^"]*)"', exact, re.I)
    assert scripts, "exact.html does not load MathJax"
    assert all("://" not in src for src in scripts), f"MathJax loaded from the network: {scripts}"
    for src in scripts:
        assert (out / src.split("?")[0]).resolve().is_file(), f"{src} is not in the built site"
    assert (site / "_static" / "mathjax" / "output" / "chtml" / "fonts").is_dir(), (
        "no MathJax fonts"
    )

    # No e-mail link where a name holds an @ (Pl@ntNet-300K), on any page.
    mailto = sorted(
        str(page.relative_to(site))
        for page in site.rglob("*.html")
        if "mailto:" in page.read_text()
    )
    assert not mailto, f"mailto: links in {mailto}: escape the @ (\\@) in the docstring"
    # The harness pages type every parameter: Any only where any value is meant (dict[str, Any]).
    for name in ("data", "training"):
        text = html.unescape(re.sub(r"<[^>]+>", "", pages[name]))
        untyped = re.findall(r"(\w+) \(Any\)", text)
        assert not untyped, f"{name}.html shows parameters typed Any: {untyped}"

    described = set(
        re.findall(r'<dt class="sig sig-object py" id="([\w.]+)"', "".join(pages.values()))
    )
    missing = [
        name for module in PUBLIC_MODULES for name in _public_names(module) if name not in described
    ]
    if "jaxloss.checked" not in described:
        missing.append("jaxloss.checked")
    assert not missing, (
        f"public names missing from the API reference: {missing}; add them to the page of their "
        "family in docs/api/"
    )
    # registry.rst lists every name of jaxloss.losses that no family page documents: a loss there
    # has been added to the package but not to its family's page.
    stray = [
        name
        for name in re.findall(r'id="jaxloss\.losses\.(\w+)"', pages["registry"])
        if name.endswith("_loss") and name != "get_loss"
    ]
    assert not stray, (
        f"losses without a family page: {stray}; name it in their LossSpec (page=...), which "
        "docs/api/<page>.rst lists with `.. registered-losses::`"
    )


def test_every_public_function_and_class_of_data_and_training_has_a_runnable_example():
    missing = []
    for full_name in (n for module in EXAMPLE_MODULES for n in _public_names(module)):
        module_name, _, name = full_name.rpartition(".")
        obj = getattr(importlib.import_module(module_name), name)
        if callable(obj) and not _EXAMPLE.search(inspect.getdoc(obj) or ""):
            missing.append(full_name)
    assert not missing, (
        f"public names without an 'Example:' section holding a doctest (>>>): {missing}; add one "
        "to each docstring (it runs in the tests: keep it to tiny arrays and seconds)"
    )
