"""Validation messages in the sender's terms: lengths counted in characters, items or
entries, singular when the limit is one."""

from __future__ import annotations

from app.core.messages import validation_message


def test_lengths_say_what_they_count_in_the_singular_for_one() -> None:
    def too_long(value: object, limit: int) -> str:
        return validation_message(
            {"type": "too_long", "loc": ("body", "x"), "input": value, "ctx": {"max_length": limit}}
        )

    assert too_long("abc", 1) == "at most 1 character (got 3)"
    assert too_long({"a": 1, "b": 2}, 1) == "at most 1 entry (got 2)"
    assert too_long([1, 2, 3], 2) == "at most 2 items (got 3)"
