"""Run records: the timestamp format every record and event uses."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from aegis.records import format_timestamp


def reference(moment: datetime) -> str:
    """The format as first written, with strftime."""
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@pytest.mark.parametrize("offset_hours", [0, 2, -7])
def test_timestamps_match_the_strftime_format_across_second_boundaries(
    offset_hours: int,
) -> None:
    zone = timezone(timedelta(hours=offset_hours))
    start = datetime(2026, 12, 31, 23, 59, 58, 998_500, tzinfo=timezone.utc).astimezone(zone)
    for step in range(3000):  # 3 s in steps of 1 ms: the cached second must roll over
        moment = start + timedelta(microseconds=1000 * step)
        assert format_timestamp(moment) == reference(moment)


def test_timestamps_before_1970_and_in_utc_are_exact() -> None:
    for moment in (
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone.utc),
        datetime(1960, 1, 1, 0, 0, 0, 1000, tzinfo=timezone.utc),
        datetime(2026, 1, 1, 10, 0, 0, tzinfo=timezone.utc),
    ):
        assert format_timestamp(moment) == reference(moment)
    assert format_timestamp(datetime(2026, 1, 1, 10, 0, tzinfo=timezone.utc)) == (
        "2026-01-01T10:00:00.000Z"
    )


def test_current_timestamp_is_now_to_the_millisecond() -> None:
    from aegis.records import current_timestamp

    before = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=1)
    stamps = [current_timestamp() for _ in range(2000)]
    after = datetime.now(timezone.utc) + timedelta(milliseconds=1)
    assert stamps == sorted(stamps)
    for stamp in (stamps[0], stamps[-1]):
        moment = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        assert before <= moment <= after
        assert format_timestamp(moment) == stamp


def test_make_record_gives_what_the_constructor_gives() -> None:
    import dataclasses

    from aegis.records import Attempt, StepResult, StepStatus, make_record

    minimal = {"name": "s", "type": "test", "service": None, "status": StepStatus.SUCCEEDED}
    full = {
        **minimal,
        "duration_ms": 1.5,
        "data": {"total": 1},
        "attempts": (Attempt(1, "2026-01-01T00:00:00.000Z", 1.0, True),),
        "error": "boom",
        "error_kind": "http",
        "skip_reason": None,
    }
    for values in (minimal, full):
        made = make_record(StepResult, **values)
        assert made == StepResult(**values) and hash(made.attempts) == hash(made.attempts)
        assert vars(made) == vars(StepResult(**values))
        assert dataclasses.replace(made, error="x").error == "x"
        with pytest.raises(dataclasses.FrozenInstanceError):
            made.error = "changed"  # type: ignore[misc]
    # a default factory gives each record its own value
    first, second = make_record(StepResult, **minimal), make_record(StepResult, **minimal)
    assert first.data == {} and first.data is not second.data
    attempt = make_record(Attempt, attempt=2, started_at="t", duration_ms=0.1, success=False)
    assert attempt == Attempt(attempt=2, started_at="t", duration_ms=0.1, success=False)
