"""The conditions of a statement that names only the filters it is given."""

from __future__ import annotations


class Where:
    """Conditions joined by AND, each with the arguments it numbers after those so far.

    A list with optional filters or a cursor builds its statement from the ones given
    rather than one statement with `($n IS NULL OR ...)` for each: PostgreSQL's generic
    plan (which asyncpg's prepared statements settle on) cannot bound an index scan by a
    parameter that may be NULL, so it filtered every row of the table, or of the user,
    instead of seeking (tests/gallery/test_page_plans.py). Each combination is a statement
    of its own, prepared once by asyncpg's statement cache."""

    def __init__(self, *args: object) -> None:
        self.args: list[object] = list(args)  # the statement's $1, $2, … as given first
        self._conditions: list[str] = []

    def add(self, condition: str, *values: object) -> None:
        """`condition` with a `{}` for each of `values`, which become its parameters."""
        first = len(self.args) + 1
        self.args.extend(values)
        self._conditions.append(condition.format(*(f"${first + i}" for i in range(len(values)))))

    def __str__(self) -> str:
        return " AND ".join(self._conditions)
