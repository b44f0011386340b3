"""Sphinx configuration of the jaxloss documentation: the guide pages (Markdown, docs/guide) and the
API reference generated from the docstrings (docs/api).

Build it (``pip install -e ".[docs]"`` first; no network needed, neither to build nor to read: MathJax
is bundled by ``sphinx-mathjax-offline`` and copied into the site's ``_static/mathjax``)::

    sphinx-build -W --keep-going -b html docs build/docs
"""

import inspect
import re
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

import jaxloss

project = "jaxloss"
author = "the jaxloss authors"
copyright = "the jaxloss authors"
release = version = jaxloss.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    # Serves MathJax from the built site instead of a CDN, so the math renders offline.
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    # The guide pages are Markdown.
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
# Headings get anchors, so that a page links to its own sections ([Multi-host](#multi-host)) and a
# link to a section that does not exist is a warning, as a link to a missing page is.
myst_heading_anchors = 3
html_theme = "furo"
html_title = f"jaxloss {release}"

# The docstrings are Google style (Args, Returns, Raises, Example, References, Attributes).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Attribute types would print JAX's private module path (jax.jaxlib._jax.Array); the Attributes
# sections state shapes and dtypes in words.
napoleon_attr_annotations = False

# Type hints go into the argument descriptions, not the signatures: the signatures stay readable
# (and parseable: dataclass defaults such as ``<factory>`` are not Python), and no .rst page names
# a parameter, so renaming one needs no change here.
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_member_order = "bysource"
add_module_names = False
# Unresolvable cross-references (third-party types such as jax.Array) are not warnings.
nitpicky = False


# The registered losses by the API page their spec names (LossSpec.page), in the registry's order.
_LOSSES_BY_PAGE: dict[str, list[str]] = {}
for _name in jaxloss.losses.available_losses():
    _spec = jaxloss.losses.loss_spec(_name)
    if _spec.page is not None:
        _LOSSES_BY_PAGE.setdefault(_spec.page, []).append(_spec.fn.__name__)

# The names of jaxloss.losses that the family pages document: their registered losses, and the
# helpers a page names itself (``.. autofunction:: jaxloss.losses.x``).
_ON_FAMILY_PAGES = {name for names in _LOSSES_BY_PAGE.values() for name in names} | {
    name
    for page in (Path(__file__).parent / "api").glob("*.rst")
    for name in re.findall(r"^\.\. auto\w+:: jaxloss\.losses\.(\w+)\s*$", page.read_text(), re.M)
}


class _RegisteredLosses(SphinxDirective):
    """``.. registered-losses::`` documents, where it stands, the losses whose spec names this page:
    a new loss module appears on its family's page without an edit to the page."""

    def run(self):
        page = Path(self.env.docname).name
        lines = StringList()
        for name in _LOSSES_BY_PAGE.get(page, ()):
            lines.append(f".. autofunction:: jaxloss.losses.{name}", self.env.docname)
            lines.append("", self.env.docname)
        if not lines:
            raise self.error(f"no registered loss names the page {page!r} (LossSpec.page)")
        container = nodes.Element()
        self.state.nested_parse(lines, self.content_offset, container)
        return container.children


def _skip_member(app, what, name, obj, skip, options):
    """Skips members that are documented elsewhere, so that no object is described twice."""
    doc = getattr(obj, "__doc__", None) or ""
    # NamedTuple fields ("Alias for field number 0"): the class's Attributes section describes them.
    if doc.startswith("Alias for field number"):
        return True
    # ``automodule:: jaxloss.losses`` (registry.rst) lists the public names that no family page
    # documents with its own ``autofunction``.
    if name in _ON_FAMILY_PAGES and obj is getattr(jaxloss.losses, name, None):
        return True
    return skip


def _drop_type_docstring(app, what, name, obj, options, lines):
    """Drops the docstring a constant only has from its type (``tuple``'s for CIFAR10_MEAN)."""
    type_doc = inspect.getdoc(type(obj)) or ""
    if what == "data" and lines and type_doc and lines[0].strip() == type_doc.splitlines()[0]:
        lines.clear()


class _Name:
    """A class default shown by its dotted name (``jax.numpy.float32``), not ``<class '...'>``."""

    def __init__(self, cls):
        self.text = f"{cls.__module__}.{cls.__qualname__}"

    def __repr__(self):
        return self.text


def _is_class_default(parameter):
    return parameter.default is not parameter.empty and isinstance(parameter.default, type)


def _constructor_signature(app, what, name, obj, options, signature, return_annotation):
    """Shows a Flax NNX module's ``__init__`` signature, not its metaclass's ``(*args, **kwargs)``."""
    if what != "class" or signature != "(*args, **kwargs)" or "__init__" not in vars(obj):
        return None
    init = inspect.signature(obj.__init__)
    parameters = [
        p.replace(
            annotation=p.empty,
            default=_Name(p.default) if _is_class_default(p) else p.default,
        )
        for p in list(init.parameters.values())[1:]
    ]
    return str(init.replace(parameters=parameters, return_annotation=init.empty)), None


def setup(app):
    app.add_directive("registered-losses", _RegisteredLosses)
    app.connect("autodoc-skip-member", _skip_member)
    app.connect("autodoc-process-signature", _constructor_signature)
    app.connect("autodoc-process-docstring", _drop_type_docstring)
