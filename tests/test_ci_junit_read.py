"""Reading JUnit XML from the runners people use, safely, as common test results."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aegis.ci import junit_read
from aegis.ci.junit_read import JUnitError, read_junit

PYTEST_XUNIT2 = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">
<testsuite name="pytest" errors="1" failures="2" skipped="1" tests="5">
<testcase classname="tests.test_a.TestK" name="test_in"><failure message="AssertionError: boom">
long trace</failure></testcase>
<testcase classname="tests.test_a" name="test_p[a/b]"><failure message="">line one
E   assert 'a/b' == 'c d'
</failure></testcase>
<testcase classname="tests.test_a" name="test_p[c d]" />
<testcase classname="tests.test_a" name="test_skip"><skipped message="nope" /></testcase>
<testcase classname="tests.test_a" name="test_err"><error message="failed on setup" /></testcase>
</testsuite></testsuites>"""

PLAYWRIGHT = """<testsuites id="" name="" tests="3" failures="1" skipped="1" errors="0">
<testsuite name="example.spec.ts" tests="3">
<testcase name="has title" classname="example.spec.ts" time="1.2"></testcase>
<testcase name="get started link" classname="example.spec.ts" time="3.1">
<failure message="example.spec.ts:12:3 get started link" type="FAILURE">
Error: expect(locator).toBeVisible()</failure>
</testcase>
<testcase name="later" classname="example.spec.ts"><skipped/></testcase>
</testsuite></testsuites>"""

JEST = """<testsuites name="jest tests" tests="2" failures="1">
<testsuite name="cart" tests="2">
<testcase classname="cart adds an item" name="cart adds an item" time="0.01"/>
<testcase classname="cart applies a code" name="cart applies a code">
<failure>Error: expect(received).toBe(expected)

Expected: 90
Received: 100</failure></testcase>
</testsuite></testsuites>"""

SUREFIRE = """<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="com.shop.CartTest" tests="3" failures="1" errors="1" skipped="0">
<properties><property name="java.version" value="21"/></properties>
<testcase name="addsItem" classname="com.shop.CartTest" time="0.01"/>
<testcase name="appliesCode" classname="com.shop.CartTest">
<failure message="expected:&lt;90&gt; but was:&lt;100&gt;"
 type="org.opentest4j.AssertionFailedError"/>
</testcase>
<testcase name="checksOut" classname="com.shop.CartTest">
<error message="NullPointerException" type="java.lang.NullPointerException"/></testcase>
</testsuite>"""

GOTESTSUM = """<testsuites tests="2" failures="1" errors="0">
<testsuite tests="2" failures="1" name="example.com/shop/cart" timestamp="2026-01-01T00:00:00Z">
<properties><property name="go.version" value="go1.23"/></properties>
<testcase classname="example.com/shop/cart" name="TestAdd" time="0.00"/>
<testcase classname="example.com/shop/cart" name="TestCode" time="0.00">
<failure message="Failed" type="">cart_test.go:12: got 100, want 90</failure></testcase>
</testsuite></testsuites>"""


def write(tmp_path: Path, text: str, name: str = "report.xml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_pytest_with_the_module_found_under_the_root(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("")
    results = read_junit([write(tmp_path, PYTEST_XUNIT2)], root=str(tmp_path))
    assert {k: results[k] for k in ("total", "passed", "failed", "skipped")} == {
        "total": 5,
        "passed": 1,
        "failed": 3,
        "skipped": 1,
    }
    assert [(f["test"], f["kind"], f["message"]) for f in results["failures"]] == [
        ("tests/test_a.py::TestK::test_in", "failure", "AssertionError: boom"),
        ("tests/test_a.py::test_p[a/b]", "failure", "E   assert 'a/b' == 'c d'"),
        ("tests/test_a.py::test_err", "error", "failed on setup"),
    ]
    assert results["failures"][0]["details"].strip() == "long trace"


def test_pytest_without_a_root_keeps_class_and_name(tmp_path: Path) -> None:
    results = read_junit([write(tmp_path, PYTEST_XUNIT2)])
    assert results["failures"][0]["test"] == "tests.test_a.TestK::test_in"


def test_real_pytest_ids_rerun_the_same_tests(tmp_path: Path) -> None:
    """The ids read back from pytest's own file (either family) are node ids pytest takes."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_k.py").write_text(
        "import pytest\n"
        "class TestK:\n    def test_in(self):\n        assert 0\n"
        "@pytest.mark.parametrize('x', ['a/b', 'ok'])\ndef test_p(x):\n    assert x == 'ok'\n"
    )
    for family in ("xunit1", "xunit2"):
        out = tmp_path / f"{family}.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        options = ["-o", f"junit_family={family}", f"--junitxml={out}", "tests"]
        subprocess.run(command + options, cwd=tmp_path, capture_output=True, check=False)
        ids = [f["test"] for f in read_junit([out], root=str(tmp_path))["failures"]]
        assert ids == ["tests/test_k.py::TestK::test_in", "tests/test_k.py::test_p[a/b]"]


@pytest.mark.parametrize(
    ("text", "counts", "failures"),
    [
        (
            PLAYWRIGHT,
            (3, 1, 1, 1),
            [("example.spec.ts::get started link", "example.spec.ts:12:3 get started link")],
        ),
        (JEST, (2, 1, 1, 0), [("cart applies a code", "Received: 100")]),
        (
            SUREFIRE,
            (3, 1, 2, 0),
            [
                ("com.shop.CartTest::appliesCode", "expected:<90> but was:<100>"),
                ("com.shop.CartTest::checksOut", "NullPointerException"),
            ],
        ),
        (GOTESTSUM, (2, 1, 1, 0), [("example.com/shop/cart::TestCode", "Failed")]),
    ],
    ids=["playwright", "jest", "surefire", "gotestsum"],
)
def test_other_runners(
    tmp_path: Path, text: str, counts: tuple[int, ...], failures: list[tuple[str, str]]
) -> None:
    results = read_junit([write(tmp_path, text)], root=str(tmp_path))
    assert (results["total"], results["passed"], results["failed"], results["skipped"]) == counts
    assert [(f["test"], f["message"]) for f in results["failures"]] == failures


def test_several_files_add_up(tmp_path: Path) -> None:
    files = [write(tmp_path, JEST, "a.xml"), write(tmp_path, GOTESTSUM, "b.xml")]
    results = read_junit(files)
    assert (results["total"], results["failed"]) == (4, 2)


def test_an_empty_failure_has_a_message(tmp_path: Path) -> None:
    text = (
        '<testsuite><testcase name="t"><failure/></testcase>'
        '<testcase name="u"><error/></testcase></testsuite>'
    )
    failures = read_junit([write(tmp_path, text)])["failures"]
    assert [f["message"] for f in failures] == ["The test failed.", "The test errored."]


def test_long_messages_are_bounded(tmp_path: Path) -> None:
    failure = f'<failure message="{"x" * 9000}">{"y" * 9000}</failure>'
    text = f'<testsuite><testcase name="t">{failure}</testcase></testsuite>'
    (failure,) = read_junit([write(tmp_path, text)])["failures"]
    assert len(failure["message"]) == junit_read.MAX_MESSAGE_CHARS
    assert len(failure["details"]) == junit_read.MAX_DETAILS_CHARS


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<testsuite><testcase name="&lol2;"/></testsuite>"""


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (BILLION_LAUGHS.encode(), "declares a DTD"),
        (b'<!ENTITY x SYSTEM "file:///etc/passwd"><testsuite/>', "declares a DTD"),
        (b"<testsuite><testcase>", "is not well-formed XML"),
        (b"", "is not well-formed XML"),
        (b"\xff\xfe<\x00t\x00", "is not UTF-8 text"),
        (b"<html><body>500</body></html>", "has <html> at its root"),
    ],
    ids=["entities", "external-entity", "truncated", "empty", "utf16", "not-junit"],
)
def test_unsafe_or_malformed_files_are_refused_by_name(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "junit.xml"
    path.write_bytes(content)
    with pytest.raises(JUnitError) as caught:
        read_junit([path])
    assert str(path) in str(caught.value)
    assert problem in str(caught.value)


def test_a_file_too_large_is_refused_before_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(junit_read, "MAX_JUNIT_BYTES", 100)
    path = write(tmp_path, "<testsuite>" + " " * 200 + "</testsuite>")
    with pytest.raises(JUnitError, match="larger than"):
        read_junit([path])


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(JUnitError, match=r"cannot read JUnit file .*gone\.xml"):
        read_junit([tmp_path / "gone.xml"])
