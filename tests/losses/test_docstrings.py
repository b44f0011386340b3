"""The Args entries every loss shares are written once (jaxloss/losses/_docstrings.py) and reach
each loss's docstring in full: what help(), the API pages and the doctests read."""

import inspect

import pytest

import jaxloss
from jaxloss.losses import _docstrings

SHARED_NAMES = ("axis", "where", "class_axis_name")


@pytest.mark.parametrize("name", jaxloss.available_losses())
def test_every_loss_documents_the_shared_arguments_in_full(name):
    fn = jaxloss.loss_spec(name).fn
    doc = inspect.getdoc(fn)
    assert "(shared" not in doc, f"{fn.__name__}: a shared_args marker left unfilled"
    args = doc[doc.index("Args:") : doc.index("Returns:")]
    flat = " ".join(args.split())
    for arg in SHARED_NAMES:
        assert f"\n  {arg}: " in args, f"{fn.__name__} does not document {arg}"
    # The class axis name means the same in every loss: its text is the shared one, word for word.
    assert f"class_axis_name: {_docstrings.SHARED['class_axis_name']}" in flat


def _loss(logits, labels, *, where=None):
    """A loss.

    Args:
      logits: scores.
      labels: labels.
      where: (shared: softmax) Only here: a note
        on two lines.
    """


def test_shared_args_fills_a_variant_and_keeps_the_loss_s_own_words_after_it():
    doc = _docstrings.shared_args(_loss).__doc__
    lines = doc.splitlines()
    entry = lines.index(next(line for line in lines if line.startswith("      where: ")))
    text = " ".join(" ".join(lines[entry : entry + 5]).split())
    assert text.startswith(f"where: {_docstrings.SHARED['where: softmax']} Only here: a note on")
    assert all(len(line) <= 100 for line in lines)
    assert all(line.startswith("        ") for line in lines[entry + 1 : entry + 3])


@pytest.mark.parametrize(
    "entry, message",
    [
        ("axis: (shared)", "no shared Args entry 'axis'"),  # not an argument of the function
        ("where: (shared: nothing)", "no shared Args entry 'where: nothing'"),
        ("where: a mask of its own.", "found no `name: (shared)` entry"),
    ],
)
def test_shared_args_refuses_a_marker_it_cannot_fill(entry, message):
    def loss(logits, *, where=None):
        pass

    loss.__doc__ = f"A loss.\n\n    Args:\n      {entry}\n    "
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _docstrings.shared_args(loss)
