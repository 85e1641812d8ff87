"""Metrics for ``GET /metrics``: counters and histograms fed from the event bus, rendered
in the Prometheus text format (version 0.0.4).

``Metrics`` is a bus listener (``bus.subscribe(metrics)``); what the bus does not carry is
read when scraped (queue depth and runs in flight from the run manager, webhook
deliveries from the dispatcher) or counted by a call (``history_error``). Labels are
bounded: a workflow or step type the config does not know is counted as ``other``, and
run ids never appear, so a long-running server's scrape stays the same size.

    aegis_runs_started_total{workflow,trigger}
    aegis_runs_finished_total{workflow,status,trigger}
    aegis_step_duration_seconds{workflow,type}      histogram
    aegis_step_attempts_total{workflow,type}
    aegis_step_retries_total{workflow,type}
    aegis_runs_queued, aegis_runs_in_flight         gauges
    aegis_webhook_deliveries_total, aegis_webhook_failures_total
    aegis_history_errors_total
    aegis_schedule_ticks_total{outcome="fired"|"skipped"}   runs started with trigger
                                                    "schedule", and schedule triggers a
                                                    rule refused (``run.skipped``)
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Protocol

from aegis.events import Event

__all__ = ["CONTENT_TYPE", "DURATION_BUCKETS", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: QA steps take from milliseconds (a health probe) to minutes (a test suite).
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
MAX_TRIGGERS = 20  # distinct trigger names kept; more are counted as "other"
OTHER = "other"

Labels = tuple[str, ...]


class RunGauges(Protocol):
    def queued(self) -> int: ...

    def active(self) -> int: ...


class Deliveries(Protocol):
    def counts(self) -> tuple[int, int]: ...


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Labels, values: Labels, extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _Histogram:
    def __init__(self) -> None:
        self.buckets = [0] * len(DURATION_BUCKETS)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for index, bound in enumerate(DURATION_BUCKETS):
            if value <= bound:
                self.buckets[index] += 1


class Metrics:
    """The server's metrics. ``workflows`` and ``step_types`` bound those labels; ``runs``
    (the run manager) and ``webhooks`` (the dispatcher) are read when scraped."""

    def __init__(
        self,
        workflows: Iterable[str],
        step_types: Iterable[str],
        *,
        runs: RunGauges | None = None,
        webhooks: Deliveries | None = None,
    ) -> None:
        self._workflows = frozenset(workflows)
        self._types = frozenset(step_types)
        self._triggers: set[str] = set()
        self.runs = runs
        self.webhooks = webhooks
        self._lock = threading.Lock()
        self._started: defaultdict[Labels, int] = defaultdict(int)
        self._finished: defaultdict[Labels, int] = defaultdict(int)
        self._durations: defaultdict[Labels, _Histogram] = defaultdict(_Histogram)
        self._attempts: defaultdict[Labels, int] = defaultdict(int)
        self._retries: defaultdict[Labels, int] = defaultdict(int)
        self._history_errors = 0
        self._ticks: dict[Labels, int] = {("fired",): 0, ("skipped",): 0}

    # --------------------------------------------------------------- counting

    def __call__(self, event: Event) -> None:
        data = event.data
        workflow = event.workflow if event.workflow in self._workflows else OTHER
        with self._lock:
            if event.type == "workflow.started":
                self._started[workflow, self._trigger(data)] += 1
                if data.get("trigger") == "schedule":
                    self._ticks["fired",] += 1
            elif event.type == "run.skipped":  # a trigger refused by a concurrency rule
                if data.get("trigger") == "schedule":
                    self._ticks["skipped",] += 1
            elif event.type == "workflow.completed":
                status = str(data.get("status", OTHER))
                self._finished[workflow, status, self._trigger(data)] += 1
            elif event.type == "step.completed":
                step = workflow, self._type(data)
                if data.get("status") != "skipped":
                    self._durations[step].observe(float(data.get("duration_ms") or 0.0) / 1000)
                self._attempts[step] += int(data.get("attempts") or 0)
            elif event.type == "step.retrying":
                self._retries[workflow, self._type(data)] += 1

    def _trigger(self, data: dict[str, Any]) -> str:
        trigger = str(data.get("trigger") or OTHER)
        if trigger not in self._triggers and len(self._triggers) >= MAX_TRIGGERS:
            return OTHER
        self._triggers.add(trigger)
        return trigger

    def _type(self, data: dict[str, Any]) -> str:
        kind = str(data.get("type"))
        return kind if kind in self._types else OTHER

    def history_error(self) -> None:
        """Count one failure of the history store (it warned and fell back to memory)."""
        with self._lock:
            self._history_errors += 1

    # -------------------------------------------------------------- rendering

    def render(self) -> bytes:
        """Every metric in the Prometheus text format."""
        runs, webhooks = self.runs, self.webhooks
        queued, in_flight = (runs.queued(), runs.active()) if runs else (0, 0)
        delivered, failed = webhooks.counts() if webhooks else (0, 0)
        out: list[str] = []
        with self._lock:
            self._family(out, "runs_started_total", "counter", "Runs started.",
                         ("workflow", "trigger"), self._started)  # fmt: skip
            self._family(out, "runs_finished_total", "counter", "Runs ended, by final status.",
                         ("workflow", "status", "trigger"), self._finished)  # fmt: skip
            self._histograms(out)
            self._family(out, "step_attempts_total", "counter", "Attempts made by steps.",
                         ("workflow", "type"), self._attempts)  # fmt: skip
            self._family(out, "step_retries_total", "counter", "Steps retried after a failure.",
                         ("workflow", "type"), self._retries)  # fmt: skip
            history_errors = self._history_errors
            ticks = dict(self._ticks)
        self._single(out, "runs_queued", "gauge", "Runs waiting for a slot.", queued)
        self._single(out, "runs_in_flight", "gauge", "Runs running now.", in_flight)
        self._single(out, "webhook_deliveries_total", "counter", "Webhook deliveries made.",
                     delivered)  # fmt: skip
        self._single(out, "webhook_failures_total", "counter",
                     "Webhook deliveries dropped after their attempts.", failed)  # fmt: skip
        self._single(out, "history_errors_total", "counter",
                     "Failures of the history store (it fell back to memory).",
                     history_errors)  # fmt: skip
        self._family(out, "schedule_ticks_total", "counter",
                     "Schedule ticks, fired or skipped.", ("outcome",), ticks)  # fmt: skip
        return ("\n".join(out) + "\n").encode()

    @staticmethod
    def _head(out: list[str], name: str, kind: str, text: str) -> str:
        full = f"aegis_{name}"  # the text format names a counter with its _total
        out.append(f"# HELP {full} {text}")
        out.append(f"# TYPE {full} {kind}")
        return full

    def _family(
        self,
        out: list[str],
        name: str,
        kind: str,
        text: str,
        names: Labels,
        values: dict[Labels, int],
    ) -> None:
        full = self._head(out, name, kind, text)
        for labels, value in sorted(values.items()):
            out.append(f"{full}{_labels(names, labels)} {value}")

    def _single(self, out: list[str], name: str, kind: str, text: str, value: int) -> None:
        full = self._head(out, name, kind, text)
        out.append(f"{full} {value}")

    def _histograms(self, out: list[str]) -> None:
        name = self._head(out, "step_duration_seconds", "histogram", "Step durations.")
        names = ("workflow", "type")
        for labels, histogram in sorted(self._durations.items()):
            for bound, count in zip(DURATION_BUCKETS, histogram.buckets, strict=True):
                le = f'le="{float(bound)!r}"'  # as Prometheus' clients write it: 1.0
                out.append(f"{name}_bucket{_labels(names, labels, le)} {count}")
            inf = _labels(names, labels, 'le="+Inf"')
            out.append(f"{name}_bucket{inf} {histogram.count}")
            out.append(f"{name}_sum{_labels(names, labels)} {_number(histogram.sum)}")
            out.append(f"{name}_count{_labels(names, labels)} {histogram.count}")
