"""What the isolation conformance check found: the report and the failure that carries it.

Kept apart so that both the row builders (which note models they cannot check) and the
scenarios (which record every finding) can write to the report without importing each other,
and so :mod:`sa_tenancy.conformance` re-exports the two public classes from one small place.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field


class IsolationFailure(AssertionError):
    """The conformance check found a leak; the message lists every finding.

    :attr:`report` is the :class:`ConformanceReport`: scenarios run, failures, notes.
    """

    def __init__(self, message: str, report: ConformanceReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ConformanceReport:
    """What :func:`check_isolation` ran and found."""

    scenarios: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fail(self, scenario: str, message: str) -> None:
        self.failures.append(f"{scenario}: {message}")
