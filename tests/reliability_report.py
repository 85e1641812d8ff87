"""The reliability suite: each test in tests/reliability/ is marked and reports rows.

A test takes the ``reliability`` fixture and, once it has checked the behaviour, records
what it tried and what it saw::

    def test_refused(reliability):
        ...  # provoke the fault, assert on the outcome
        reliability.record(
            "connection refused",
            expected="attempt fails as `connection`, retried as configured",
            observed=f"{len(step.attempts)} attempts, kind {step.error_kind}",
        )

When a session ran every reliability test (``pytest -m reliability``, the whole suite, or
``pytest tests/reliability``; not a single file, a ``-k`` selection or a stopped run),
the rows become the table in ``docs/RELIABILITY.md``, with each test's verdict. Observed
texts must be deterministic (no raw timings; say "under 2 s", not "0.43 s"), because
``tests/run.py`` fails when the regenerated file differs from the committed one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# tests/conftest.py imports the hooks and the fixture below by name.
HERE = Path(__file__).resolve().parent / "reliability"
REPORT = HERE.parent.parent / "docs" / "RELIABILITY.md"

# Sections of the report, in order; a module names its own with AREA = "...".
AREAS = (
    "Downstream faults",
    "Hostile HTTP input",
    "Crashes and shared storage",
    "Load",
    "Files and signals",
    "Secrets",
)


@dataclass
class Row:
    area: str
    case: str
    expected: str
    observed: str
    test: str
    order: tuple[int, int, int]
    verdict: str = "pass"


@dataclass
class Recorder:
    """What the tests of this session recorded, keyed by test node id."""

    rows: dict[str, list[Row]] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)
    expected_ids: set[str] = field(default_factory=set)
    partial: bool = False  # some reliability tests were left out of this session


_RECORDER = pytest.StashKey[Recorder]()


def _in_suite(item: pytest.Item) -> bool:
    return Path(str(item.path)).resolve().is_relative_to(HERE)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RECORDER] = Recorder()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _in_suite(item):
            item.add_marker(pytest.mark.reliability)


def pytest_deselected(items: list[pytest.Item]) -> None:
    for item in items:
        if _in_suite(item):
            item.config.stash[_RECORDER].partial = True


def _selects_whole_suite(args: list[str], cwd: Path) -> bool:
    """Whether the command line names the reliability suite whole (a parent directory)."""
    whole = False
    for arg in args:
        path = (cwd / arg.split("::")[0]).resolve()
        inside = path.is_relative_to(HERE)
        if inside and ("::" in arg or path != HERE):
            return False  # a single file or test of the suite
        whole = whole or (HERE.is_relative_to(path) and "::" not in arg)
    return whole


def pytest_collection_finish(session: pytest.Session) -> None:
    recorder = session.config.stash[_RECORDER]
    recorder.expected_ids = {item.nodeid for item in session.items if _in_suite(item)}
    config = session.config
    if not _selects_whole_suite(list(config.args), config.invocation_params.dir):
        recorder.partial = True


class Reliability:
    """The handle a test records its rows through."""

    def __init__(self, item: pytest.Item, recorder: Recorder) -> None:
        self._item = item
        self._recorder = recorder
        module = getattr(item, "module", None)
        self._area = getattr(module, "AREA", "Other")

    def record(self, case: str, *, expected: str, observed: str) -> None:
        rows = self._recorder.rows.setdefault(self._item.nodeid, [])
        position = self._item.session.items.index(self._item)
        area_rank = AREAS.index(self._area) if self._area in AREAS else len(AREAS)
        rows.append(
            Row(
                self._area,
                case,
                expected,
                observed,
                self._item.nodeid,
                (area_rank, position, len(rows)),
            )
        )


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Iterator[Reliability]:
    yield Reliability(request.node, request.config.stash[_RECORDER])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if _in_suite(item):
        recorder = item.config.stash[_RECORDER]
        if report.failed:
            recorder.verdicts[item.nodeid] = "FAILED"
        elif report.when == "call" and item.nodeid not in recorder.verdicts:
            recorder.verdicts[item.nodeid] = "skipped" if report.skipped else "pass"
        elif report.skipped and item.nodeid not in recorder.verdicts:
            recorder.verdicts[item.nodeid] = "skipped"
    return report  # type: ignore[return-value]


def pytest_sessionfinish(session: pytest.Session) -> None:
    recorder = session.config.stash[_RECORDER]
    if (
        recorder.partial
        or not recorder.expected_ids
        or recorder.expected_ids - recorder.verdicts.keys()
    ):
        return  # not the whole suite ran (a file or -k chosen, or stopped early)
    if getattr(session.config.option, "collectonly", False):
        return
    rows = []
    for nodeid, test_rows in recorder.rows.items():
        for row in test_rows:
            row.verdict = recorder.verdicts.get(nodeid, "FAILED")
            rows.append(row)
    missing = sorted(recorder.expected_ids - recorder.rows.keys())
    REPORT.write_text(render(sorted(rows, key=lambda r: r.order), missing))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(rows: list[Row], missing: list[str]) -> str:
    cases = len(rows)
    passed = sum(r.verdict == "pass" for r in rows)
    lines = [
        "# Reliability",
        "",
        "What Aegis does when services misbehave, requests are hostile, processes are killed",
        "and load piles up. Every row is a test in `tests/reliability/`; the table is written",
        "by the tests themselves (`pytest -m reliability`, or `python3 tests/run.py`, which",
        "fails when this file no longer matches what the tests observe). Edit the tests,",
        "not this file.",
        "",
        f"{cases} cases, {passed} passed.",
    ]
    area = None
    for number, row in enumerate(rows, 1):
        if row.area != area:
            area = row.area
            lines += [
                "",
                f"## {area}",
                "",
                "| # | fault or input | expected | observed | verdict |",
                "|---|---|---|---|---|",
            ]
        lines.append(
            f"| {number} | {_cell(row.case)} | {_cell(row.expected)} | "
            f"{_cell(row.observed)} | {row.verdict} |"
        )
    if missing:
        lines += ["", "## Tests that recorded no row", ""]
        lines += [f"- `{nodeid}`" for nodeid in missing]
    return "\n".join(lines) + "\n"
