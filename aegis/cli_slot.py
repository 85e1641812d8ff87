"""``CliSlot``: the place an ``aegis run`` takes among its workflow's runs, with PostgreSQL.

A CLI run is run by its own process, never by a worker, so it never waits in the shared
queue. Yet a workflow's ``concurrency`` rule is about every run of it, and with a
PostgreSQL history the replicas, the workers and the other CI hosts can all see what
this process runs. So, for a workflow with a rule, the CLI takes a row of the queue
claimed by itself (``PgQueue.take``, under the workflow's advisory lock, as a replica's
admission is decided) and holds it as a worker holds its runs:

* **skip**: past the limit (runs queued or going anywhere) the run does not start:
  ``Conflict`` names the run in the way, and ``aegis run`` exits 4.
* **queue**: it waits, looking again every ``POLL`` seconds, until fewer than the limit
  of the workflow's runs are going; a line on stderr says what it waits for.
* **cancel_running**: the oldest runs going are asked to cancel (a worker or replica
  running one cancels it; another CLI's run does not watch for cancels and is waited
  for), then it waits for their slots.

While it waits, one warning says for which run.

The row is a lease renewed every third of ``history.lease`` by a thread; a CLI that is
killed leaves a lease that runs out, and the next worker or replica to look records the
run ``interrupted``, as for a worker's run. The row goes when the run's record is
complete (``release``). A database that cannot be reached costs the rule, not the run:
one warning, and the run goes on as if the workflow had none.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from aegis.config.model import Config
from aegis.errors import Conflict, UsageError

__all__ = ["POLL", "CliSlot"]

POLL = 1.0  # seconds between looks for a free slot (``on_conflict: queue``)


class CliSlot:
    """A claimed queue row for one CLI run; ``release`` gives it back."""

    def __init__(self, queue: Any, worker: str, run_id: str, lease: float) -> None:
        self.queue = queue
        self.worker = worker
        self.run_id = run_id
        self.lease = lease
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name="aegis-cli-lease", daemon=True)
        self._renewer.start()

    @classmethod
    def take(
        cls,
        config: Config,
        workflow: str,
        run_id: str,
        params: Mapping[str, object],
        *,
        environ: Mapping[str, str],
        warn: Callable[[str], None],
        poll: float = POLL,
    ) -> CliSlot | None:
        """The slot of run ``run_id`` of ``workflow``, once its rule lets it start; None
        when no rule applies (no PostgreSQL history, no rule, no database). Raises
        ``Conflict`` when ``skip`` refuses the run."""
        spec = config.workflows.get(workflow)
        rule = None if spec is None else spec.concurrency
        if config.history.url is None or rule is None:
            return None
        from aegis.api.shared_runs import open_queue

        try:
            queue, _ = open_queue(config.history, environ)
        except UsageError as exc:
            warn(f"{exc}; the concurrency rule of '{workflow}' is not applied to this run")
            return None
        worker = f"cli:{socket.gethostname()}:{os.getpid()}:{run_id}"
        lease = config.history.lease
        waiting_said = False
        asked: set[str] = set()
        try:
            while True:
                blocking, going = queue.take(
                    run_id,
                    workflow,
                    worker=worker,
                    lease=lease,
                    params=dict(params),
                    limit=rule.limit,
                    count_waiting=rule.on_conflict == "skip",
                )
                if blocking is None:
                    return cls(queue, worker, run_id, lease)
                reason = (
                    f"workflow '{workflow}' has {going} run(s) going (its concurrency limit"
                    f" is {rule.limit}); run {blocking} is one"
                )
                if rule.on_conflict == "skip":
                    raise Conflict(f"not started: {reason}", run_id=blocking)
                if rule.on_conflict == "cancel_running" and blocking not in asked:
                    asked.add(blocking)
                    queue.request_cancel(blocking)
                if not waiting_said:
                    warn(f"waiting to start: {reason}")
                    waiting_said = True
                time.sleep(poll)
        except BaseException:
            queue.close()
            raise

    def _renew(self) -> None:
        while not self._stop.wait(self.lease / 3):
            # the database away: the lease may run out, the run goes on
            with contextlib.suppress(Exception):
                self.queue.renew(self.worker, self.lease)

    def release(self) -> None:
        """Give the row back (the run's record is complete) and close the queue."""
        self._stop.set()
        self._renewer.join(5)
        try:
            self.queue.finish(self.run_id, self.worker)
        except Exception:  # its lease runs out instead; a reaper records nothing new
            pass
        finally:
            self.queue.close()
