"""Conditions: when does a node need a person? A small, safe expression language.

A node's context may say ``"condition": "amount > 10000 or user_tier == \\"basic\\""``. The
expression is evaluated over the thread's state by simpleeval (never Python ``eval``), after a
check that it uses only what is listed here:

- names: the thread state's fields (``amount``), plus ``True``, ``False``, ``None``
- literals: numbers, strings, lists, tuples
- operators: ``and or not``, ``== != < <= > >= in not in``, ``+ - * / // %``, ``x if c else y``
- field access: ``request["amount"]`` or ``request.amount`` (both read a key of an object)
- functions: ``len abs min max round int float str bool any all sum lower upper``

Anything else (attribute access on objects, imports, lambdas, comprehensions, calls of other
functions) is refused when the workflow is loaded, with the reason.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from simpleeval import EvalWithCompoundTypes, InvalidExpression

CONSTANT_NAMES = frozenset({"True", "False", "None"})


def _lower(value: Any) -> str:
    return str(value).lower()


def _upper(value: Any) -> str:
    return str(value).upper()


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len, "abs": abs, "min": min, "max": max, "round": round, "int": int,
    "float": float, "str": str, "bool": bool, "any": any, "all": all, "sum": sum,
    "lower": _lower, "upper": _upper,
}

_ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
    ast.Compare, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn,
    ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod,
    ast.IfExp, ast.Name, ast.Load, ast.Constant, ast.List, ast.Tuple, ast.Subscript,
    ast.Attribute, ast.Call,
)


class ConditionError(ValueError):
    """A condition that cannot be parsed, or cannot be evaluated over the thread's state."""


@dataclass(frozen=True)
class Evaluation:
    """One evaluation: the expression, the state values it named, and the result."""

    expression: str
    inputs: dict[str, Any]
    result: bool


class _AttributeAsKey(ast.NodeTransformer):
    """``request.amount`` reads the key ``amount`` of the object ``request``."""

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        value = self.visit(node.value)
        return ast.copy_location(
            ast.Subscript(value=value, slice=ast.Constant(node.attr), ctx=ast.Load()), node
        )


@dataclass(frozen=True)
class Condition:
    """A checked expression, ready to evaluate over any thread state."""

    expression: str
    #: State fields the expression reads.
    names: frozenset[str]
    _tree: ast.Expression

    def evaluate(self, state: Mapping[str, Any]) -> Evaluation:
        """The expression's truth over ``state``; raises :class:`ConditionError`."""
        missing = sorted(n for n in self.names if n not in state)
        if missing:
            raise ConditionError(
                f"condition {self.expression!r} reads {', '.join(map(repr, missing))}, which the "
                f"thread state does not have (it has: {', '.join(sorted(state)) or 'nothing'})"
            )
        inputs = {name: state[name] for name in sorted(self.names)}
        evaluator = EvalWithCompoundTypes(names=dict(inputs), functions=dict(FUNCTIONS))
        try:
            value = evaluator.eval(self.expression, previously_parsed=self._tree.body)
        except (InvalidExpression, KeyError, IndexError, TypeError, ValueError,
                ZeroDivisionError, ArithmeticError) as error:
            raise ConditionError(
                f"condition {self.expression!r} failed on {inputs!r}: "
                f"{type(error).__name__}: {error}"
            ) from error
        return Evaluation(self.expression, inputs, bool(value))


def parse(expression: Any) -> Condition:
    """Check an expression and compile it; raises :class:`ConditionError` naming the problem."""
    if not isinstance(expression, str) or not expression.strip():
        raise ConditionError(
            "a condition must be a non-empty string expression, e.g. "
            "\"amount > 10000 or user_tier == 'basic'\""
        )
    text = expression.strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as error:
        at = f" at character {error.offset}" if error.offset else ""
        raise ConditionError(
            f"condition {text!r} is not a valid expression ({error.msg}{at})"
        ) from None
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ConditionError(
                f"condition {text!r} uses {_describe(node)}, which conditions do not allow; "
                "use comparisons, and/or/not, arithmetic, literals, field access and the "
                f"functions {', '.join(sorted(FUNCTIONS))}"
            )
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                called = (repr(node.func.id) if isinstance(node.func, ast.Name) else
                          f"the method .{node.func.attr}()" if isinstance(node.func, ast.Attribute)
                          else "an expression")
                raise ConditionError(
                    f"condition {text!r} calls {called}; only these functions may be called: "
                    f"{', '.join(sorted(FUNCTIONS))}"
                )
            if node.keywords:
                raise ConditionError(f"condition {text!r}: keyword arguments are not allowed")
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            raise ConditionError(f"condition {text!r} reads {node.attr!r}: names starting "
                                 "with '_' are not allowed")
    functions = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Name) and id(node) not in functions
                and node.id not in CONSTANT_NAMES):
            names.add(node.id)
    rewritten = ast.fix_missing_locations(_AttributeAsKey().visit(tree))
    return Condition(text, frozenset(names), rewritten)


def _describe(node: ast.AST) -> str:
    kinds = {
        ast.Lambda: "a lambda", ast.ListComp: "a comprehension", ast.GeneratorExp: "a generator",
        ast.DictComp: "a comprehension", ast.SetComp: "a comprehension", ast.Dict: "a dict",
        ast.Pow: "'**'", ast.NamedExpr: "':='", ast.JoinedStr: "an f-string",
        ast.Starred: "'*'", ast.Is: "'is'", ast.IsNot: "'is not'", ast.BitAnd: "'&'",
        ast.BitOr: "'|'", ast.BitXor: "'^'", ast.LShift: "'<<'", ast.RShift: "'>>'",
        ast.Invert: "'~'", ast.Slice: "a slice", ast.Set: "a set",
    }
    return kinds.get(type(node), type(node).__name__)
