"""Source rules for the @triton.jit kernels that CI's triton (3.8) does not enforce but older ones
do, so a GPU user on an older torch/triton would hit them as compile errors.

- triton 3.3 rejects a chain of three or more boolean operands (``A or B or C``, "chained boolean
  operators are not supported"); it takes ``(A or B) or C``. The conv1x1 kernel had one.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

KERNEL_DIR = Path(__file__).resolve().parents[1] / "fastconv" / "ops" / "triton"


def _is_jit(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    if isinstance(target, ast.Attribute):
        return target.attr == "jit"
    return isinstance(target, ast.Name) and target.id == "jit"


def _jit_functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(_is_jit(d) for d in node.decorator_list):
            yield node


def chained_bool_ops(source: str):
    """(function, line) of every boolean operation with more than two operands in a jit function."""
    found = []
    for fn in _jit_functions(ast.parse(source)):
        for node in ast.walk(fn):
            if isinstance(node, ast.BoolOp) and len(node.values) > 2:
                found.append((fn.name, node.lineno))
    return found


def test_the_rule_sees_a_chain():
    src = "import triton\n@triton.jit\ndef k(A, B, C):\n    if A or B or C:\n        pass\n    if (A or B) or C:\n        pass\n"
    assert chained_bool_ops(src) == [("k", 4)]


@pytest.mark.parametrize("path", sorted(KERNEL_DIR.glob("*.py")), ids=lambda p: p.name)
def test_no_chained_boolean_operators_in_kernels(path):
    assert not chained_bool_ops(path.read_text()), f"{path.name}: split these for triton 3.3"
