"""aegis.example.yaml is valid and runs, workflow by workflow, against the reference services."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from aegis.cli import main
from aegis.demo import DemoServices
from aegis.demo.suite import install

EXAMPLE = Path(__file__).resolve().parent.parent / "aegis.example.yaml"


def test_the_example_is_valid() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main(["config", "validate", str(EXAMPLE)], stdout=out, stderr=err, environ={}) == 0
    assert "valid (2 services, 4 workflows)" in out.getvalue()


@pytest.mark.parametrize(
    ("workflow", "code"),
    [("full_pipeline", 1), ("smoke", 1), ("pytest_pipeline", 1), ("start_and_poll", 1)],
)
def test_the_example_runs_against_the_reference_services(
    tmp_path: Path, demo: DemoServices, workflow: str, code: int
) -> None:
    config = shutil.copy(EXAMPLE, tmp_path / "aegis.yaml")
    environ = {
        "QAAGENT_URL": demo.qaagent_url,
        "BUGALIZER_URL": demo.bugalizer_url,
        # pytest_pipeline runs the demo's sample suite
        "PYTEST_DIR": str(install(tmp_path / "shop")),
        "PYTHON": sys.executable,
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    out, err = io.StringIO(), io.StringIO()
    result = main(
        ["--config", str(config), "run", workflow, "--json"],
        stdout=out,
        stderr=err,
        environ=environ,
    )
    run = json.loads(out.getvalue())
    # the reference qaagent always has a failing test, so the verdict is "failed" (exit 1)
    assert (result, run["status"]) == (code, "succeeded"), err.getvalue()
    assert all(s["status"] in ("succeeded", "skipped") for s in run["steps"])
    assert (tmp_path / "aegis_history.db").exists()


def test_the_sample_suite_can_be_copied_for_the_example(tmp_path: Path) -> None:
    from aegis.demo.suite.__main__ import main as copy_suite

    assert copy_suite([str(tmp_path / "shop")]) == 0
    assert sorted(p.name for p in (tmp_path / "shop").iterdir()) == ["pytest.ini", "test_shop.py"]
    assert copy_suite([]) == 2
    (tmp_path / "file").write_text("")
    assert copy_suite([str(tmp_path / "file" / "shop")]) == 1
