"""``aegis.metrics``: counting bus events with bounded labels, rendered as Prometheus text
that prometheus_client's own parser reads."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from aegis.events import EventBus
from aegis.metrics import MAX_TRIGGERS, Metrics


def parsed(metrics: Metrics) -> dict[str, list[Any]]:
    text = metrics.render().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def labels_of(samples: list[Any], name: str) -> list[dict[str, str]]:
    return [s.labels for s in samples if s.name == name]


def test_labels_stay_bounded_and_escaped() -> None:
    metrics = Metrics(["known", 'we"ird\\\n'], ["test"])
    bus = EventBus()
    bus.subscribe(metrics)
    for n in range(MAX_TRIGGERS + 5):
        bus.emit("workflow.started", f"run-{n}", "known", trigger=f"t{n}")
    bus.emit("workflow.started", "run-x", "made-up", trigger="t0")
    bus.emit("workflow.completed", "run-y", 'we"ird\\\n', status="failed")  # no trigger
    bus.emit("step.completed", "run-y", "known", type="plugin", status="skipped", attempts=0)
    bus.emit("step.completed", "run-y", "known", type="test", status="failed",
             duration_ms=1500.0, attempts=3)  # fmt: skip
    bus.emit("step.retrying", "run-y", "known", type="test")

    found = parsed(metrics)

    started = labels_of(found["aegis_runs_started"], "aegis_runs_started_total")
    triggers = {s["trigger"] for s in started}
    assert len(triggers) == MAX_TRIGGERS + 1 and "other" in triggers
    assert {"workflow": "other", "trigger": "t0"} in started
    assert labels_of(found["aegis_runs_finished"], "aegis_runs_finished_total") == [
        {"workflow": 'we"ird\\\n', "status": "failed", "trigger": "other"}
    ]
    durations = found["aegis_step_duration_seconds"]
    counts = {s.labels["type"]: s.value for s in durations
              if s.name == "aegis_step_duration_seconds_count"}  # fmt: skip
    assert counts == {"test": 1}  # the skipped step is not observed
    buckets = {s.labels["le"]: s.value for s in durations
               if s.name == "aegis_step_duration_seconds_bucket"}  # fmt: skip
    assert buckets["1.0"] == 0 and buckets["2.5"] == 1 and buckets["+Inf"] == 1
    attempts = {s.labels["type"]: s.value for s in found["aegis_step_attempts"]}
    assert attempts == {"other": 0, "test": 3}
    assert [s.value for s in found["aegis_step_retries"]] == [1]
    assert "run-" not in metrics.render().decode()


def test_gauges_and_history_errors() -> None:
    class Runs:
        def queued(self) -> int:
            return 4

        def active(self) -> int:
            return 2

    class Hooks:
        def counts(self) -> tuple[int, int]:
            return 7, 1

    metrics = Metrics([], [], runs=Runs(), webhooks=Hooks())
    metrics.history_error()

    found = parsed(metrics)

    values = {name: samples[0].value for name, samples in found.items() if len(samples) == 1}
    assert values["aegis_runs_queued"] == 4 and values["aegis_runs_in_flight"] == 2
    assert values["aegis_webhook_deliveries"] == 7 and values["aegis_webhook_failures"] == 1
    assert values["aegis_history_errors"] == 1


def test_schedule_ticks_count_scheduled_starts_and_refused_schedule_triggers() -> None:
    metrics = Metrics(["nightly"], [])
    bus = EventBus()
    bus.subscribe(metrics)
    bus.emit("workflow.started", "r1", "nightly", trigger="schedule")
    bus.emit("workflow.started", "r2", "nightly", trigger="api")
    bus.emit("run.skipped", "", "nightly", trigger="schedule", rule="overlap")
    bus.emit("run.skipped", "", "nightly", trigger="api", rule="concurrency")

    ticks = {s.labels["outcome"]: s.value for s in parsed(metrics)["aegis_schedule_ticks"]}

    assert ticks == {"fired": 1, "skipped": 1}
