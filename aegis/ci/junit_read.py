"""Reading JUnit XML that test runners wrote, as the test results every step shares.

``read_junit`` turns one or more files into ``total``, ``passed``, ``failed``, ``skipped``
and ``failures`` (each ``{"test", "message", "kind"}``), the shape a ``test`` step
reports, so ``submit_bugs``, ``verify``, the verdict and JUnit out work on it unchanged.

The shapes met in practice differ little: pytest, Playwright, Jest (jest-junit), Maven
Surefire and gotestsum all write ``<testcase classname=… name=…>`` under one or more
(possibly nested) ``<testsuite>``, with ``<failure>`` for a failed assertion, ``<error>``
for a test that could not run as written, and ``<skipped>``. Counts come from the
test cases themselves, never from a suite's own attributes, which some runners omit.

A test's id is what re-runs it where that can be known: pytest's node id
(``tests/test_x.py::TestK::test_y[param]``), from the ``file`` attribute (pytest's
``junit_family=xunit1``) or, failing that, by finding the module under ``root``;
otherwise ``classname::name`` (or ``name`` alone when there is no class name).

The files are parsed safely: a file over ``MAX_JUNIT_BYTES`` is refused, and so is any
DTD (``<!DOCTYPE``, ``<!ENTITY``), so no entity can expand; a file that cannot be read
raises ``JUnitError`` naming it.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["MAX_JUNIT_BYTES", "MAX_MESSAGE_CHARS", "JUnitError", "case_id", "read_junit"]

MAX_JUNIT_BYTES = 32 * 1024 * 1024
# A failure's message and details end up in step data, bug reports and JUnit out.
MAX_MESSAGE_CHARS = 4000
MAX_DETAILS_CHARS = 2000
_OUTCOMES = ("failure", "error")


class JUnitError(Exception):
    """A JUnit file that could not be read; the message names the file and why."""


def read_junit(paths: Iterable[str | os.PathLike[str]], root: str | None = None) -> dict[str, Any]:
    """The test results of every ``<testcase>`` in ``paths``, in file order.

    ``root`` is the directory the runner ran in, used to find a pytest test's module
    when the file does not name it. Raises ``JUnitError`` for a file that is missing,
    too large, not XML, declares a DTD, or is not JUnit.
    """
    total = skipped = 0
    failures: list[dict[str, Any]] = []
    for path in paths:
        for case in _parse(Path(path)).iter("testcase"):
            total += 1
            failure = _failure(case, root)
            if failure is not None:
                failures.append(failure)
            elif case.find("skipped") is not None:
                skipped += 1
    failed = len(failures)
    return {
        "total": total,
        "passed": total - failed - skipped,
        "failed": failed,
        "skipped": skipped,
        "failures": failures,
    }


def _parse(path: Path) -> ET.Element:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_JUNIT_BYTES + 1)
    except OSError as exc:
        raise JUnitError(f"cannot read JUnit file {path}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_JUNIT_BYTES:
        raise JUnitError(f"JUnit file {path} is larger than {MAX_JUNIT_BYTES // 2**20} MiB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise JUnitError(f"JUnit file {path} is not UTF-8 text") from exc
    # Decoded first, so no other encoding can hide a declaration from this check.
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise JUnitError(f"JUnit file {path} declares a DTD, which is not read (entities)")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise JUnitError(f"JUnit file {path} is not well-formed XML: {exc}") from exc
    if root.tag not in ("testsuites", "testsuite"):
        raise JUnitError(f"JUnit file {path} has <{root.tag}> at its root, not <testsuite(s)>")
    return root


def _failure(case: ET.Element, root: str | None) -> dict[str, Any] | None:
    for kind in _OUTCOMES:
        element = case.find(kind)
        if element is not None:
            return {
                "test": case_id(case, root),
                "message": _message(element, kind),
                "kind": kind,
                "details": _bounded(element.text or "", MAX_DETAILS_CHARS),
            }
    return None


def _message(element: ET.Element, kind: str) -> str:
    message = (element.get("message") or "").strip()
    if not message:
        lines = [line for line in (element.text or "").strip().splitlines() if line.strip()]
        message = lines[-1].strip() if lines else ""
    return _bounded(message) or ("The test failed." if kind == "failure" else "The test errored.")


def _bounded(text: str, most: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def case_id(case: ET.Element, root: str | None = None) -> str:
    """The id of one ``<testcase>``: a pytest node id when it can be known (see above)."""
    name = case.get("name") or ""
    classname = case.get("classname") or ""
    file = (case.get("file") or "").replace("\\", "/")
    if file.endswith(".py"):
        module = file[: -len(".py")].replace("/", ".")
        if classname == module or classname.startswith(module + "."):
            inner = classname[len(module) + 1 :].split(".") if classname != module else []
            return "::".join([file, *inner, name])
    if root is not None and classname and not file:
        found = _pytest_module(classname, root)
        if found is not None:
            module_file, inner = found
            return "::".join([module_file, *inner, name])
    if classname and classname != name:
        return f"{classname}::{name}"
    return name


def _pytest_module(classname: str, root: str) -> tuple[str, list[str]] | None:
    """``(relative file, classes)`` when some prefix of ``classname`` is a module file."""
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        candidate = "/".join(parts[:cut]) + ".py"
        if os.path.isfile(os.path.join(root, candidate)):
            return candidate, parts[cut:]
    return None
