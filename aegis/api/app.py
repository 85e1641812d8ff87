"""``aegis serve``: the API server with everything behind it, started and stopped in order.

``ApiApp`` assembles one config's server: the history store (the CLI's file, so both see
the same runs), the event bus and its log, the loop thread with the run manager and the
health cache on it, and the HTTP server in front. ``serve`` runs one until SIGTERM,
SIGHUP or Ctrl-C; ``serve_demo`` does the same in front of the built-in reference services.

Schedules fire on the loop (``aegis.schedules.Scheduler``) through the run manager, as
API runs do; with a history file, only the server holding its schedule lock fires them.

With PostgreSQL (``history.url``) the run manager is ``SharedRunManager``: runs go into the
database's queue, and a ``Worker`` on the loop claims them as any ``aegis worker`` does;
each schedule tick is claimed in the store, so replicas fire it once between them.

Stopping goes in the order that loses nothing: stop firing schedules, refuse new
connections (requests on open ones get 503), cancel queued and running runs (recorded
``cancelled``; a ``?wait=`` still inside gets its cancelled run), close the open
connections, then the loop, the webhooks (pending deliveries get up to the stop
timeout; with PostgreSQL, the events still queued for the database) and the history store.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any, TextIO

from aegis import __version__
from aegis.config.model import Config
from aegis.errors import UsageError
from aegis.events import EventBus, EventLog
from aegis.history import HistoryStore, open_recording_history
from aegis.metrics import Metrics
from aegis.steps.base import StepType

from .handlers import DEFAULT_HEARTBEAT, ROUTES, ApiContext, load_landing
from .health import DEFAULT_HEALTH_TTL
from .routes import Router, dump_json
from .server import IDLE_TIMEOUT, AccessLog, ApiServer

__all__ = ["ApiApp", "serve", "serve_demo"]

STOP_TIMEOUT = 5.0  # seconds running runs get to record their cancellation at shutdown


def _ignore(message: str) -> None:
    pass


class ApiApp:
    """One config's API server and what it needs; a context manager.

    ``host`` and ``port`` default to the config's ``server:`` section (port 0 picks a free
    one; ``url`` tells which). ``history`` is a store to use instead of opening the
    config's; it is closed at ``stop`` either way. ``progress`` gets every event (the
    demo prints them); ``heartbeat`` and ``idle_timeout`` are seconds (tests shorten them).
    """

    def __init__(
        self,
        config: Config,
        *,
        environ: Mapping[str, str],
        host: str | None = None,
        port: int | None = None,
        step_types: Mapping[str, StepType] | None = None,
        history: HistoryStore | None = None,
        warn: Callable[[str], None] = _ignore,
        access_log: Callable[[str], None] | None = None,
        progress: Callable[[Any], None] | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        idle_timeout: float = IDLE_TIMEOUT,
        health_ttl: float = DEFAULT_HEALTH_TTL,
        open_client: Any = None,
        clock: Any = None,
    ) -> None:
        self.config = config
        self.environ = environ
        self.host = config.server.host if host is None else host
        self.port = config.server.port if port is None else port
        self.step_types = step_types
        self.history = history
        self.warn = warn
        self.access_log = access_log
        self.progress = progress
        self.heartbeat = heartbeat
        self.idle_timeout = idle_timeout
        self.health_ttl = health_ttl
        self.open_client = open_client
        self.clock = clock  # an aegis.engine.clock.Clock for the runs and schedules (tests)
        self._parts: dict[str, Any] = {}

    # the parts, once started

    @property
    def server(self) -> ApiServer:
        return self._part("server")  # type: ignore[no-any-return]

    @property
    def ctx(self) -> ApiContext:
        return self.server.ctx

    @property
    def url(self) -> str:
        return self.server.url

    def _part(self, name: str) -> Any:
        try:
            return self._parts[name]
        except KeyError:
            raise RuntimeError("the API app is not started") from None

    # lifecycle

    def start(self) -> ApiApp:
        """Open history, start the loop thread and listen. Raises ``UsageError`` when the
        address cannot be listened on; nothing is left running then."""
        if self._parts:
            raise RuntimeError("the API app is already started")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from .health import HealthCache
        from .loop import LoopThread
        from .manager import RunManager

        config = self.config
        step_types = self._step_types()
        metrics = Metrics(config.workflows, step_types)
        store = self.history or self._open_history(metrics)
        self._parts["history"] = store
        bus = EventBus()
        events = EventLog(config.event_log_size, max_age=config.history.max_age)
        if config.history.url:  # every replica's log fed from the database; an outbox
            from aegis.history.pg_events import share_events

            shared = share_events(config, bus, environ=self.environ, warn=self.warn, log=events)
            self._parts["webhooks"] = metrics.webhooks = shared
        else:
            bus.subscribe(events.append)
        bus.subscribe(metrics)
        if self.progress is not None:
            bus.subscribe(self.progress)
        if config.webhooks and "webhooks" not in self._parts:
            from aegis.webhooks import WebhookDispatcher

            hooks = WebhookDispatcher(config.webhooks).attach(bus)
            self._parts["webhooks"] = metrics.webhooks = hooks
        loop = LoopThread()
        loop.start()
        self._parts["loop"] = loop
        if config.history.url is not None:
            runs: Any = self._shared_runs(loop, step_types, store, bus)
        else:
            runs = RunManager(
                config,
                step_types,
                store,
                bus=bus,
                max_concurrent=config.server.max_concurrent_runs,
                max_queued=config.server.max_queued_runs,
                environ=self.environ,
                open_client=self.open_client,
                clock=self.clock,
            )
        self._parts["runs"] = runs
        self._start_schedules(loop, runs, store)
        metrics.runs = runs
        health = HealthCache(config.services, environ=self.environ, ttl=self.health_ttl)
        self._parts["health"] = health

        def document() -> bytes:
            from .openapi import build_openapi

            built = build_openapi(
                ROUTES,
                title=f"{config.identity.name} API",
                version=__version__,
                description=config.identity.tagline,
                workflows=config.workflows,
                protect_all=config.auth.protect == "all",
            )
            return dump_json(built)

        ctx = ApiContext(
            config,
            loop=loop,
            runs=runs,
            health=health,
            events=events,
            landing=load_landing(),
            openapi=document,
            heartbeat=self.heartbeat,
            history=store,
            metrics=metrics,
        )
        self._parts["server"] = self._listen(ctx).start()

    def _shared_runs(
        self, loop: Any, step_types: Mapping[str, StepType], store: HistoryStore, bus: EventBus
    ) -> Any:
        """With PostgreSQL: the shared queue, the worker this process embeds (claiming on
        the loop) and the run manager over both."""
        from aegis.worker import Worker

        from .shared_runs import SharedRunManager, open_queue

        config = self.config
        queue, target = open_queue(config.history, self.environ)
        self._parts["queue"] = queue
        worker = Worker(
            config,
            step_types,
            store,
            queue,
            bus=bus,
            environ=self.environ,
            slots=config.server.max_concurrent_runs,
            lease=config.history.lease,
            kind="serve",
            target=target,
            clock=self.clock,
            open_client=self.open_client,
        )

        async def start() -> Any:
            return asyncio.ensure_future(worker.run())

        self._parts["worker"] = loop.call(start())
        return SharedRunManager(
            config,
            step_types,
            store,
            queue,
            bus=bus,
            worker=worker,
            clock=self.clock,
            max_queued=config.server.max_queued_runs,
        )

    def _start_schedules(self, loop: Any, runs: Any, store: HistoryStore) -> None:
        """Fire the config's schedules on the loop, if it has any."""
        if not any(w.schedules for w in self.config.workflows.values()):
            return
        from aegis.engine.clock import SystemClock
        from aegis.history import MEMORY_PATH
        from aegis.schedules import ScheduleLock, Scheduler, lock_path

        async def fire(workflow: str, spec: Any) -> object:
            params = dict(spec.params)
            return await runs.submit(
                workflow, trigger="schedule", params=params, overlap=spec.overlap
            )

        # with PostgreSQL, claim_fire in the shared store fires each tick once: no lock
        path = self.config.history.path
        shared = self.config.history.url is not None
        lock = None if path == MEMORY_PATH or shared else ScheduleLock(lock_path(path))
        scheduler = Scheduler(
            self.config.workflows.values(),
            fire,
            clock=self.clock or SystemClock(),
            fires=store,
            may_fire=lock.held if lock is not None else lambda: True,
        )

        async def start() -> Any:
            return asyncio.ensure_future(scheduler.run())

        self._parts["schedules"] = (loop.call(start()), lock)

    def _open_history(self, metrics: Metrics) -> HistoryStore:
        """The history store, opened when first used unless a problem shows now (then it
        is opened at once, so its warning comes at start-up); written by a thread. Each of
        its warnings counts as a history error in the metrics."""

        def warn(message: str) -> None:
            metrics.history_error()
            self.warn(message)

        return open_recording_history(self.config.history, warn=warn, environ=self.environ)

    def _listen(self, ctx: ApiContext) -> ApiServer:
        from .connections import connection_budget, raise_file_limit

        descriptors = raise_file_limit()
        try:
            return ApiServer(
                (self.host, self.port),
                ctx,
                Router(ROUTES),
                api_key=self.config.auth.api_key,
                protect_all=self.config.auth.protect == "all",
                cors_origins=self.config.server.cors_origins,
                idle_timeout=self.idle_timeout,
                access_log=self.access_log,
                max_connections=connection_budget(self.config.server.max_connections, descriptors),
            )
        except OSError as exc:
            reason = exc.strerror or exc
            raise UsageError(f"cannot listen on {self.host}:{self.port}: {reason}") from None

    def _step_types(self) -> Mapping[str, StepType]:
        if self.step_types is not None:
            return self.step_types
        from aegis.steps.registry import default_step_types

        return default_step_types()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop in the order the module docstring gives; stopping twice does nothing."""
        parts, self._parts = self._parts, {}
        server, loop = parts.get("server"), parts.get("loop")
        if "schedules" in parts:  # no tick fires after this; another server may take over
            task, lock = parts["schedules"]
            self._on_loop(loop, _cancelled(task), timeout)
            if lock is not None:
                lock.release()
        if server is not None:
            server.stop_accepting()
        if loop is not None and "runs" in parts:
            # Recording queued runs cancelled takes about a second per 20,000 on top.
            queued = parts["runs"].queued()
            self._on_loop(loop, parts["runs"].shutdown(timeout), timeout + 1 + queued / 10_000)
        if "worker" in parts:  # it has handed its runs back: let it say goodbye
            self._on_loop(loop, _finished(parts["worker"]), timeout)
        if server is not None:
            server.close_connections(grace=timeout)
        if loop is not None:
            if "health" in parts:
                self._on_loop(loop, parts["health"].close(), timeout)
            loop.stop()
        if "webhooks" in parts:  # after the runs, whose last events it still delivers
            parts["webhooks"].close(timeout)
        if "history" in parts:
            parts["history"].close()
        if "queue" in parts:
            parts["queue"].close()

    @staticmethod
    def _on_loop(loop: Any, coro: Any, timeout: float) -> None:
        try:
            loop.call(coro, timeout)
        except Exception:  # stopping goes on: the history store must still be closed
            import logging

            logging.getLogger(__name__).exception("stopping the API server")

    def __enter__(self) -> ApiApp:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _cancelled(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _finished(task: asyncio.Task[Any]) -> None:
    await asyncio.gather(task, return_exceptions=True)


# ------------------------------------------------------------------------ serving


@contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP raise ``KeyboardInterrupt`` once; later ones (while
    stopping) are ignored. Outside the main thread, where signals cannot be caught,
    nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        if not received:
            received.append(signum)
            raise KeyboardInterrupt

    from aegis.runs import STOP_SIGNALS

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def serve(
    config: Config,
    *,
    environ: Mapping[str, str],
    stderr: TextIO,
    host: str | None = None,
    port: int | None = None,
    warn: Callable[[str], None] = _ignore,
    stop: threading.Event | None = None,
    first_run: str | None = None,
    **options: Any,
) -> None:
    """Serve ``config``'s API until SIGTERM or Ctrl-C (or ``stop``, when given, is set).

    Prints the URL on ``stderr`` once listening, and one access line per request.
    ``first_run`` names a workflow to start at once (the demo's). Raises ``UsageError``
    when the address cannot be listened on.
    """
    stop = stop or threading.Event()
    with _stop_signals():
        app = ApiApp(
            config,
            environ=environ,
            host=host,
            port=port,
            warn=warn,
            access_log=AccessLog(stderr),
            **options,
        ).start()
        try:
            # what start-up left behind (the config's YAML, argparse) need not stay resident
            import gc

            gc.collect()
            print(f"aegis: serving on {app.url} (Ctrl-C to stop)", file=stderr, flush=True)
            if first_run is not None:
                run, _ = app.ctx.call(app.ctx.runs.submit(first_run, trigger="demo"))
                print(f"aegis: started run {run.run_id}: {app.url}/api/runs/{run.run_id}",
                      file=stderr, flush=True)  # fmt: skip
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            print("aegis: stopping", file=stderr, flush=True)
            app.stop()


def serve_demo(
    *,
    stderr: TextIO,
    host: str | None = None,
    port: int | None = None,
    warn: Callable[[str], None] = _ignore,
    stop: threading.Event | None = None,
) -> None:
    """The demo pipeline's config on the built-in reference services, served as ``serve``
    does, with a first run of it started at once. Nothing is kept after it stops."""
    from aegis.console import Console, ProgressPrinter
    from aegis.demo_pipeline import demo_setup

    with demo_setup() as demo:
        serve(
            demo.config,
            environ=demo.environ,
            stderr=stderr,
            host=host,
            port=port,
            warn=warn,
            stop=stop,
            first_run="demo",
            step_types=demo.step_types,
            progress=ProgressPrinter(Console(stderr, demo.environ)),
        )
