"""Connecting to PostgreSQL: the ``history.url`` target, connections and a small pool.

``PgTarget.parse`` reads ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?sslmode=...]``.
The password comes from the URL, else the variable ``history.password_env`` names, else
``PGPASSWORD``; ``display`` shows the URL with it replaced by ``***``, and that is the
only form any message, record or log line ever carries.

``sslmode`` follows libpq's words: ``disable``, ``prefer`` (the default: TLS when the
server offers it), ``require`` (TLS, certificate not checked), ``verify-ca`` and
``verify-full`` (checked against ``sslrootcert`` or the system's CAs; ``verify-full``
checks the host name too).

The driver is pg8000, pure Python, imported when the first connection is made, so a
process that never uses PostgreSQL never loads it. Each connection is made on a socket
of our own (pg8000 accepts one), so a listener can wait on it with ``select`` for
``NOTIFY`` messages (``EventFeed`` in ``aegis.history.pg_events``, ``Waker`` in
``aegis.history.pg_queue``) without polling.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONNECT_TIMEOUT",
    "PgConnection",
    "PgPool",
    "PgTarget",
    "connect",
    "describe_error",
    "driver_errors",
    "is_postgres_url",
]

CONNECT_TIMEOUT = 10.0  # seconds to reach the server and log in
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SCHEMES = ("postgresql", "postgres")
DEFAULT_PORT = 5432

PgConnection = Any  # pg8000.native.Connection, typed loosely: the driver is imported late


def is_postgres_url(value: str) -> bool:
    return value.split("://", 1)[0].lower() in SCHEMES and "://" in value


@dataclass(frozen=True)
class PgTarget:
    """Where a PostgreSQL store lives, and how to log in."""

    user: str
    host: str
    port: int
    database: str
    password: str | None = None
    sslmode: str = "prefer"
    sslrootcert: str | None = None
    application_name: str = "aegis"

    @classmethod
    def parse(
        cls,
        url: str,
        *,
        password_env: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> PgTarget:
        """The target ``url`` names. Raises ``ValueError`` saying what is wrong (its text
        never holds the password)."""
        environ = os.environ if environ is None else environ
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in SCHEMES:
            raise ValueError("expected a postgresql://USER@HOST:PORT/DATABASE URL")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise ValueError("its port is not a number from 1 to 65535") from None
        if not parts.hostname:
            raise ValueError("it names no host (postgresql://USER@HOST:PORT/DATABASE)")
        user = urllib.parse.unquote(parts.username or "")
        if not user:
            raise ValueError("it names no user (postgresql://USER@HOST:PORT/DATABASE)")
        database = urllib.parse.unquote(parts.path.lstrip("/"))
        if not database:
            raise ValueError("it names no database (postgresql://USER@HOST:PORT/DATABASE)")
        query = dict(urllib.parse.parse_qsl(parts.query))
        sslmode = query.pop("sslmode", "prefer")
        if sslmode not in SSL_MODES:
            raise ValueError(f"sslmode {sslmode!r} is not one of {', '.join(SSL_MODES)}")
        sslrootcert = query.pop("sslrootcert", None)
        application_name = query.pop("application_name", "aegis")
        if query:
            raise ValueError(
                f"unknown URL parameter(s) {', '.join(sorted(query))}; aegis reads sslmode,"
                " sslrootcert and application_name"
            )
        password = urllib.parse.unquote(parts.password) if parts.password is not None else None
        if password is None and password_env:
            password = environ.get(password_env) or None
        if password is None:
            password = environ.get("PGPASSWORD") or None
        return cls(
            user=user,
            host=parts.hostname,
            port=port,
            database=database,
            password=password,
            sslmode=sslmode,
            sslrootcert=sslrootcert,
            application_name=application_name,
        )

    def display(self) -> str:
        """The URL without its password: what messages show."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = urllib.parse.quote(self.user, safe="")
        secret = ":***" if self.password else ""
        shown = f"postgresql://{user}{secret}@{host}:{self.port}/{self.database}"
        return shown if self.sslmode == "prefer" else f"{shown}?sslmode={self.sslmode}"

    def ssl_context(self) -> Any:
        """pg8000's ``ssl_context``: False (no TLS), None (TLS if offered), True (TLS,
        unchecked) or a context that checks the certificate."""
        if self.sslmode == "disable":
            return False
        if self.sslmode in ("allow", "prefer"):
            return None
        if self.sslmode == "require":
            return True
        import ssl

        context = ssl.create_default_context(cafile=self.sslrootcert)
        context.check_hostname = self.sslmode == "verify-full"
        return context


def driver_errors() -> tuple[type[BaseException], ...]:
    """What the driver raises when the server or the connection fails."""
    import pg8000.exceptions

    return (pg8000.exceptions.InterfaceError, pg8000.exceptions.DatabaseError, OSError)


def describe_error(exc: BaseException) -> str:
    """One line for a driver error: the server's message (and SQLSTATE) when it sent one."""
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], dict):
        fields = args[0]
        message = str(fields.get("M", "")) or type(exc).__name__
        code = fields.get("C")
        return f"{message} ({code})" if code else message
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return f"{exc}: {cause.strerror}" if str(exc) else cause.strerror
    return str(exc) or type(exc).__name__


def connect(
    target: PgTarget, *, timeout: float = CONNECT_TIMEOUT
) -> tuple[PgConnection, socket.socket]:
    """A new autocommitting connection to ``target`` and the socket under it (for
    ``select``). Raises the driver's errors or ``OSError``."""
    import pg8000.native

    sock = socket.create_connection((target.host, target.port), timeout)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        connection = pg8000.native.Connection(
            target.user,
            host=target.host,
            database=target.database,
            port=target.port,
            password=target.password,
            ssl_context=target.ssl_context(),
            timeout=timeout,
            application_name=target.application_name,
            sock=sock,
        )
    except (AttributeError, TypeError) as exc:  # pg8000 on a password request it lacks
        sock.close()
        if target.password is None:
            raise PermissionError(
                "the server asks for a password and none was given (in the URL, the"
                " variable history.password_env names, or PGPASSWORD)"
            ) from exc
        raise
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)  # queries may wait on locks; statement_timeout bounds them
    return connection, sock


class PgSession:
    """A pooled connection whose statements are prepared once and reused.

    pg8000 turns a statement's ``:name`` parameters into ``$n`` ones in Python, character
    by character, on every ``run``: for the queue's and the store's statements that was
    most of a worker's CPU per run (bench/README.md). Here each distinct statement is
    prepared on first use (the server keeps its plan too) and run by name after that; at
    most ``MAX_PREPARED`` are kept per connection, the least recently used closed first.
    Transaction control and statements without parameters that are run once (DDL) go
    through unprepared: ``run_once``.
    """

    MAX_PREPARED = 128

    def __init__(self, connection: PgConnection) -> None:
        self.connection = connection
        self._prepared: collections.OrderedDict[str, Any] = collections.OrderedDict()

    def run(self, sql: str, **params: Any) -> Any:
        if sql in _UNPREPARED:
            return self.connection.run(sql)
        prepared = self._prepared.get(sql)
        if prepared is None:
            prepared = self._prepared[sql] = self.connection.prepare(sql)
            if len(self._prepared) > self.MAX_PREPARED:
                _, oldest = self._prepared.popitem(last=False)
                oldest.close()
        else:
            self._prepared.move_to_end(sql)
        return prepared.run(**params)

    def run_once(self, sql: str, **params: Any) -> Any:
        """``sql`` run without preparing it (DDL, statements built from values)."""
        return self.connection.run(sql, **params)

    def close(self) -> None:
        _close_quietly(self.connection)


_UNPREPARED = frozenset(("START TRANSACTION", "BEGIN", "COMMIT", "ROLLBACK"))


class PgPool:
    """Up to ``size`` connections to ``target``, each used by one thread at a time.

    ``connection()`` lends one (making it when none is idle); a connection that failed
    while lent is closed instead of returned, so the next borrower gets a fresh one.
    """

    def __init__(self, target: PgTarget, size: int = 4, *, setup: tuple[str, ...] = ()) -> None:
        self.target = target
        self.size = max(1, size)
        self._setup = setup  # statements run on every new connection
        self._idle: list[PgSession] = []
        self._made = 0
        self._closed = False
        self._free = threading.Condition()

    @contextlib.contextmanager
    def connection(self) -> Iterator[PgSession]:
        connection = self._borrow()
        ok = False
        try:
            yield connection
            ok = True
        finally:
            self._give_back(connection, ok)

    def _borrow(self) -> PgSession:
        with self._free:
            while True:
                if self._closed:
                    raise OSError("the PostgreSQL pool is closed")
                if self._idle:
                    return self._idle.pop()
                if self._made < self.size:
                    self._made += 1
                    break
                self._free.wait()
        try:
            connection, _ = connect(self.target)
            for statement in self._setup:
                connection.run(statement)
        except BaseException:
            with self._free:
                self._made -= 1
                self._free.notify()
            raise
        return PgSession(connection)

    def _give_back(self, connection: PgSession, ok: bool) -> None:
        if ok and not self._closed:
            with self._free:
                self._idle.append(connection)
                self._free.notify()
            return
        _close_quietly(connection)
        with self._free:
            self._made -= 1
            self._free.notify()

    def close(self) -> None:
        with self._free:
            self._closed = True
            idle, self._idle = self._idle, []
            self._free.notify_all()
        for connection in idle:
            _close_quietly(connection)


def _close_quietly(connection: PgConnection) -> None:
    with contextlib.suppress(Exception):
        connection.close()
