"""The constraint language: what it accepts and computes as Python would, and that anything that
could run code or reach an object (calls, attributes of values, subscripts, lambdas, names with
underscores) is refused when the text is parsed, before any value is looked at."""

from __future__ import annotations

import re

import pytest

from opchain.constraints import MAX_DEPTH, ConstraintError, parse

VALUES = {"fold": 3, "folds": 5, "method": "exact", "ratio": 0.5, "pca.components": 10, "k": 20}


@pytest.mark.parametrize(
    "text",
    [
        "fold < folds",
        "0 <= fold < folds",  # chained
        "fold < folds and not method == 'randomized'",
        "fold >= folds or method != 'exact'",
        "(fold + 1) * 2 <= folds * 2",
        "folds % 2 == 1 and folds // 2 == 2 and folds / 2 == 2.5",
        "-fold < +folds",
        "k >= pca.components",
        'ratio == 0.5 and method == "exact"',
        "True and not False and method != None",
        "k - pca.components == 2 * pca.components - 10",
    ],
)
def test_accepted_constraints_compute_as_python_does(text: str) -> None:
    namespace = {k: v for k, v in VALUES.items() if "." not in k}
    python = text.replace("pca.components", "pca_components")
    namespace["pca_components"] = VALUES["pca.components"]
    expected = bool(eval(python, {"__builtins__": {}}, namespace))  # the reference, on our values
    assert parse(text).holds(VALUES) == expected


def test_names_are_collected_in_order_and_dotted_names_whole() -> None:
    assert parse("k >= pca.components and fold < folds and k > 1").names == (
        "k",
        "pca.components",
        "fold",
        "folds",
    )


@pytest.mark.parametrize(
    ("text", "refused"),
    [
        ("__import__('os').system('true')", "is not allowed"),  # a call
        ("len(method) > 2", "'len(method)' is not allowed"),
        ("fold.__class__ == int", "a name may not start with '_'"),  # dunder attribute
        ("__builtins__ == 1", "a name may not start with '_'"),  # dunder name
        ("_private < 1", "a name may not start with '_'"),
        ("method.upper == 1", None),  # a dotted name (looked up whole), never an attribute
        ("'abc'.upper() == 'ABC'", "is not allowed"),  # a method of a value
        ("(1).real == 1", "is not allowed"),  # an attribute of a value
        ("method[0] == 'e'", "'method[0]' is not allowed"),  # subscript
        ("(lambda: 1)() == 1", "is not allowed"),  # lambda
        ("[x for x in folds]", "is not allowed"),  # comprehension
        ("fold if folds else 0", "is not allowed"),  # conditional
        ("(k := 3) > 1", "is not allowed"),  # assignment
        ("f'{fold}' == '3'", "is not allowed"),  # f-string
        ("folds ** 99999999 > 1", "uses an operator that is not allowed"),  # power: unbounded
        ("fold in [1, 2]", "uses an operator that is not allowed"),
        ("fold is None", "uses an operator that is not allowed"),
        ("fold & 1", "uses an operator that is not allowed"),
        ("b'x' == 1", "is not allowed"),  # bytes
        ("fold <", "is not a valid expression"),
        ("fold = 1", "is not a valid expression"),
        ("import os", "is not a valid expression"),
        ("fold < 1; folds", "is not a valid expression"),
        ("", "must be a non-empty string"),
        ("-" * (MAX_DEPTH + 5) + "1", f"nested deeper than {MAX_DEPTH} levels"),
        ("fold < 1 " * 200, "longer than 1000 characters"),
    ],
)
def test_anything_that_could_run_code_is_refused_at_parse_time(
    text: str, refused: str | None
) -> None:
    if refused is None:
        assert parse(text).names == ("method.upper",)
        return
    with pytest.raises(ConstraintError, match=re.escape(refused)):
        parse(text)


def test_a_non_string_is_refused() -> None:
    with pytest.raises(ConstraintError, match="must be a non-empty string, not 3"):
        parse(3)


@pytest.mark.parametrize(
    ("text", "values", "message"),
    [
        ("fold < folds", {"fold": 1}, "no value for 'folds'"),
        ("method < 3", {"method": "exact"}, "cannot compare 'exact' < 3"),
        ("fold / folds > 0", {"fold": 1, "folds": 0}, "division by zero"),
        ("fold % folds > 0", {"fold": 1, "folds": 0}, "modulo by zero"),
        # arithmetic on strings could build a string of any size
        ("method * 1000000000 == ''", {"method": "x"}, r"\* needs numbers"),
        ("method + 'x' == 'ax'", {"method": "a"}, r"\+ needs numbers"),
        ("-method == 1", {"method": "a"}, "- needs numbers"),
        ("fold * 1.0 > 0", {"fold": 10**400}, "too large"),
    ],
)
def test_evaluation_errors_say_what_failed(text: str, values: dict, message: str) -> None:
    with pytest.raises(ConstraintError, match=message):
        parse(text).holds(values)


def test_and_or_short_circuit_as_in_python() -> None:
    """``folds > 0 and fold / folds < 1`` guards the division, as it would in Python."""
    constraint = parse("folds > 0 and fold / folds < 1")
    assert not constraint.holds({"fold": 1, "folds": 0})
    assert parse("folds == 0 or fold / folds < 1").holds({"fold": 1, "folds": 0})
