"""The training package's structure: no function grows past 80 lines of code."""

import ast
import io
import tokenize
from pathlib import Path

from tests.testing import REPO_ROOT

TRAINING = Path(REPO_ROOT) / "jaxloss" / "training"
MAX_LINES = 80


def _docstring_lines(node: ast.AST) -> set[int]:
    """The lines of the docstrings of ``node`` and of every function and class inside it."""
    lines = set()
    for inner in ast.walk(node):
        if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module):
            body = inner.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def lines_of_code(source: str, node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """The lines of ``node`` (its decorators and signature included) that hold code: not blank, not
    only a comment, not part of a docstring."""
    code = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in (
            tokenize.COMMENT,
            tokenize.NL,
            tokenize.NEWLINE,
            tokenize.INDENT,
            tokenize.DEDENT,
            tokenize.ENDMARKER,
        ):
            code.update(range(token.start[0], token.end[0] + 1))
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    return len(code.intersection(range(first, node.end_lineno + 1)) - _docstring_lines(node))


def _functions():
    for path in sorted(TRAINING.glob("*.py")):
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield f"{path.name}:{node.name}", lines_of_code(source, node)


def test_lines_of_code_leave_out_blanks_comments_and_docstrings():
    source = '''
@decorator
def f(
    x,
):
    """A docstring

    over lines.
    """
    # a comment

    y = x  # code with a comment
    s = """a string
    that is code"""

    def g():
        """Inner docstring."""
        return y

    return g
'''
    node = ast.parse(source).body[0]
    # decorator, 3 signature lines, y =, 2 lines of s, def g, return y, return g
    assert lines_of_code(source, node) == 10


def test_no_training_function_is_over_80_lines_of_code():
    counts = dict(_functions())
    assert "train_and_evaluate" in " ".join(counts)  # the walk sees the package
    too_long = {name: count for name, count in counts.items() if count > MAX_LINES}
    assert not too_long, (
        f"functions over {MAX_LINES} lines of code (split them into named steps): {too_long}"
    )
