"""Errors raised by medgen.data. Messages name the file (or key) and say what was expected."""

from __future__ import annotations


class DataError(ValueError):
    """Input data that cannot be used as given (unreadable file, wrong shape, bad geometry)."""


class CacheError(DataError):
    """A slice cache that is missing, incomplete, or does not match its manifest."""


class CacheWarning(UserWarning):
    """A cache that builds but may train badly (e.g. a z-bin or class with no training item)."""


class DatasetError(DataError):
    """A dataset folder that disagrees with its own description: every problem found, not only
    the first. ``str()`` is a summary line, then one line per problem naming its file."""

    def __init__(self, summary: str, problems: list[str]) -> None:
        self.summary = summary
        self.problems = list(problems)
        super().__init__("\n".join([summary, *(f"  {p}" for p in self.problems)]))
