"""README claims that can drift from the code, checked against the code."""

from __future__ import annotations

import re
from pathlib import Path

from fakes import config, step

from aegis.api.routes import ERROR_CODES
from aegis.config.render import config_to_dict

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = README.index(f"\n{title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def test_the_error_table_pairs_each_status_with_its_code() -> None:
    table = section("## HTTP API").split("**Errors**")[1].split("\n\n")[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`" in line]
    named = {}
    for row in rows:
        first = row.split("|")[1]
        statuses = re.findall(r"\b([1-5][0-9][0-9])\b", first)
        codes = re.findall(r"`([a-z_]+)`", first)
        assert len(statuses) == 1 and len(codes) == 1, f"one status and its code per row: {row}"
        named[int(statuses[0])] = codes[0]
    assert {status: ERROR_CODES.get(status) for status in named} == named
    assert set(ERROR_CODES) - {403} <= set(named)  # 403 has no use yet


def test_what_ci_run_does_is_what_the_readme_says() -> None:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [
        line.strip().removeprefix("exec ")
        for line in script.splitlines()
        if line.strip().startswith(("python3 ", "exec python3 "))
    ]
    intro = README.split("\n## ")[0]
    assert commands == ["python3 tests/run.py", "python3 bench/run.py --quick --no-write"]
    said = intro.split("`.ci/run`")[1].split("\n\n")[0]
    assert "chromium" in script and "`chromium`" in said
    assert "runs that second command" in said and "bench/run.py --quick --no-write" in said


def test_the_workflow_answer_says_which_settings_come_back_null() -> None:
    shown = config_to_dict(config(step("discover", service="svc")))
    nulls = sorted(k for k, v in shown["workflows"]["wf"]["steps"][0].items() if v is None)
    row = next(line for line in README.splitlines() if "`GET /api/workflows/{key}`" in line)
    said = row.split("`null` for ")[1]
    assert sorted(re.findall(r"`([a-z_]+)`", said)) == nulls
