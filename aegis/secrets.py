r"""Which values of a config are secret, and hiding them in text that leaves Aegis.

The secrets are ``auth.api_key``, each webhook's ``secret``, the password of any URL in
the config (``http://user:PASSWORD@host``), and the values of the environment variables
that services' ``api_key_env`` name; the engine adds the values of a run's ``secret``
params (``aegis.config.params``) to that run's redactor. A service may echo what it was
sent back in its error answer, and an error message may carry a URL with its password,
so the engine
passes every step error (and step data) through a ``Redactor`` before anything records
or announces it; health checks hide URL passwords the same way.

Values shorter than ``MIN_SECRET`` characters are not looked for: hiding every "ab" in
a message would make it unreadable and protect nothing.

A service may echo a key encoded: percent-encoded in a redirect's ``Location``
(``sk%2Flive%2B…``, with ``+`` for a space in a form), or JSON-escaped (``sk\/live…``,
PHP's default, or ``\u0073k…``). Each character of a secret is matched in any of those
forms, in any mix, so an echo is hidden however a service chose to write it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from aegis.config.model import Config
    from aegis.errors import StepError

__all__ = ["MIN_SECRET", "REDACTED", "Redactor", "hide_url_passwords", "secret_values"]

REDACTED = "***"
MIN_SECRET = 4

# scheme://user:password@ -- the password part, up to the '@' that ends the userinfo
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:]*:)[^\s/?#@]*@")


def hide_url_passwords(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it as ``***``."""
    if "@" not in text:
        return text
    return _URL_PASSWORD.sub(rf"\g<1>{REDACTED}@", text)


def _url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def secret_values(config: Config, environ: Mapping[str, str]) -> frozenset[str]:
    """The secret values of ``config``, with services' keys read from ``environ``."""
    found = {config.auth.api_key}
    for service in config.services.values():
        found.add(_url_password(service.url) or "")
        if service.api_key_env:
            found.add(environ.get(service.api_key_env, ""))
    for hook in config.webhooks:
        found.add(hook.secret)
        found.add(_url_password(hook.url) or "")
    if config.history.url:  # the PostgreSQL password, wherever it is read from
        found.add(_url_password(config.history.url) or "")
        if config.history.password_env:
            found.add(environ.get(config.history.password_env, ""))
        found.add(environ.get("PGPASSWORD", ""))
    return frozenset(value for value in found if len(value) >= MIN_SECRET)


# What an encoded echo needs: without any of these, only the raw form can be in a text.
_ENCODING_MARKS = ("%", "\\", "+")


def _hex_pattern(digits: str) -> str:
    """``digits`` (hex) matched in either case: ``2F`` gives ``2[fF]``."""
    return "".join(f"[{d.lower()}{d.upper()}]" if d.isalpha() else d for d in digits)


def _char_pattern(char: str) -> str:
    """A pattern for ``char`` raw, percent-encoded, ``+`` for a space, or JSON-escaped."""
    forms = {re.escape(char)}
    forms.add("".join("%" + _hex_pattern(f"{byte:02X}") for byte in char.encode("utf-8")))
    units = char.encode("utf-16-be")  # JSON's \uXXXX counts UTF-16 units (a pair for emoji)
    forms.add(
        "".join(
            r"\\u" + _hex_pattern(units[i : i + 2].hex().upper()) for i in range(0, len(units), 2)
        )
    )
    escaped = json.dumps(char)[1:-1]  # \" \\ \n …
    if escaped != char:
        forms.add(re.escape(escaped))
    if char == "/":
        forms.add(r"\\/")
    if char == " ":
        forms.add(r"\+")
    return "(?:" + "|".join(sorted(forms)) + ")"


def _secret_pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    """One pattern matching each of ``secrets`` (longest first) in any mix of encodings."""
    parts = ["".join(_char_pattern(char) for char in secret) for secret in secrets]
    return re.compile("|".join(parts)) if parts else None


class Redactor:
    """Replaces known secret values (raw or encoded), and URL passwords, with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is hidden whole.
        self.secrets = tuple(sorted(set(secrets), key=len, reverse=True))
        self._encoded = _secret_pattern(self.secrets)

    def text(self, text: str) -> str:
        if self._encoded is not None and any(mark in text for mark in _ENCODING_MARKS):
            text = self._encoded.sub(REDACTED, text)
        else:
            for secret in self.secrets:
                if secret in text:
                    text = text.replace(secret, REDACTED)
        return hide_url_passwords(text)

    def data(self, value: Any) -> Any:
        """``value`` (JSON-like data) with the known secrets hidden in every string."""
        if not self.secrets:
            return value
        return self._data(value)

    def _data(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self._data(k): self._data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._data(item) for item in value)
        return value

    def error(self, error: StepError) -> StepError:
        """``error`` itself when it shows no secret, else a copy with them hidden."""
        message = self.text(error.message)
        if message == error.message:
            return error
        from aegis.errors import StepError

        return StepError(
            error.kind, message, status_code=error.status_code, retry_after=error.retry_after
        )
