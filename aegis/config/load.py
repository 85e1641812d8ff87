"""Finding, reading and parsing the config file, and ``${VAR}`` interpolation.

``yaml`` is imported inside the functions that parse: importing ``aegis.config`` must stay
cheap, because every CLI command starts by doing it.

Parsing is strict: only safe YAML, a duplicate key is a problem (PyYAML would silently keep
the last one), and a syntax error becomes one ``ConfigProblem`` with line and column
instead of a traceback. Timestamps are not resolved: no config key holds a date, and a
``datetime`` in ``with:`` could not be sent as JSON.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aegis.config.model import Config
from aegis.config.schema import (
    UNRESOLVED,
    EnvText,
    build_config,
    describe,
    join_index,
    join_key,
)
from aegis.errors import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from aegis.steps.base import StepType

__all__ = [
    "CONFIG_ENV",
    "CONFIG_NAMES",
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_VALUES",
    "find_config",
    "load_config",
    "parse_config",
]

CONFIG_NAMES = (".aegis.yaml", "aegis.yaml")  # looked for in this order in each directory
CONFIG_ENV = "AEGIS_CONFIG"
# Aliases can make a small file expand into a huge tree ("billion laughs"), and deep
# nesting would overflow the recursive passes after parsing; nothing real comes near these.
MAX_VALUES = 100_000
MAX_DEPTH = 64
# A file is refused by its size before it is parsed: parsing 50 MB of YAML took over a
# minute and 1.6 GB. A config this large would already hold far more than MAX_VALUES.
MAX_BYTES = 4 * 1024 * 1024

_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"

# A run-time template's start (`${{`, or `$${{` for a literal one: aegis.templates reads
# both, so they are kept as written), `$$`, or the start of a `${...}` (whose end is found
# by counting nested ones).
_TOKEN = re.compile(r"\$?\$\{\{|\$\$|\$\{")
_EXPRESSION = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)
# What matters inside a `${...}` when looking for its end.
_BRACES = re.compile(r"\$\$|\$\{|\}")
# How deep `${A:-${B:-${C}}}` may nest.
MAX_NESTING = 8


class _PlainText(str):
    """A string written as a plain (unquoted) YAML scalar (see ``EnvText.plain``)."""


# -- discovery -----------------------------------------------------------------------------


def find_config(
    explicit: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Path:
    """The config file to use: ``explicit``, else ``$AEGIS_CONFIG``, else the first
    ``.aegis.yaml`` or ``aegis.yaml`` in ``cwd`` or its nearest parent.

    Raises ``ConfigError`` when a named file is not there, or when none is found (naming
    where it looked).
    """
    if explicit is not None:
        return _named_file(explicit, "")
    environ = os.environ if environ is None else environ
    from_env = environ.get(CONFIG_ENV)
    if from_env:
        return _named_file(from_env, f" (named by ${CONFIG_ENV})")
    start = Path(os.path.abspath(Path.cwd() if cwd is None else cwd))
    for directory in (start, *start.parents):
        for name in CONFIG_NAMES:
            candidate = directory / name
            if _is_file(candidate):
                return candidate
    raise ConfigError.single(
        str(start),
        "",
        f"no {' or '.join(CONFIG_NAMES)} here or in any parent directory"
        f" (pass --config PATH or set {CONFIG_ENV})",
    )


def _named_file(name: str, origin: str) -> Path:
    path = Path(name)
    problem = _not_a_file(path)
    if problem:
        raise ConfigError.single(name, "", problem + origin)
    return path


# What a path names when it is not a regular file, by the type bits of its mode.
_KINDS = (
    (stat.S_ISDIR, "is a directory, not a config file"),
    (stat.S_ISFIFO, "is a FIFO (named pipe), not a config file"),
    (stat.S_ISSOCK, "is a socket, not a config file"),
    (stat.S_ISCHR, "is a device, not a config file"),
    (stat.S_ISBLK, "is a device, not a config file"),
)


def _not_a_file(path: Path) -> str:
    """Why ``path`` cannot be read as a config file ('' when it is a regular file)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except NotADirectoryError:
        return "no such file (a part of the path is not a directory)"
    except PermissionError:
        return "cannot be reached: permission denied on a directory of the path"
    except OSError as exc:
        return f"cannot be reached: {(exc.strerror or str(exc)).lower()}"
    if stat.S_ISREG(mode):
        return ""
    return next((what for test, what in _KINDS if test(mode)), "is not a regular file")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a parent directory we may not search
        return False


# -- loading -------------------------------------------------------------------------------


def load_config(
    path: str | Path,
    *,
    environ: Mapping[str, str] | None = None,
    step_types: Mapping[str, StepType] | None = None,
) -> Config:
    """Read, interpolate and validate the config file at ``path``.

    Problems name the file as ``path`` was given. ``environ`` defaults to ``os.environ``,
    ``step_types`` to the built-in step types. Raises ``ConfigError`` with every problem.
    """
    display = str(path)
    absolute = os.path.abspath(path)
    text = _read_text(Path(path), display)
    return _parse(
        text,
        file=display,
        base_dir=Path(absolute).parent,
        environ=environ,
        step_types=step_types,
        source=absolute,
    )


def parse_config(
    text: str,
    *,
    file: str,
    base_dir: Path,
    environ: Mapping[str, str] | None = None,
    step_types: Mapping[str, StepType] | None = None,
) -> Config:
    """Like ``load_config`` for a config held in memory: ``file`` names it in problems,
    relative paths are resolved against ``base_dir``."""
    if len(text) > MAX_BYTES:  # characters: at least as many bytes
        raise ConfigError.single(file, "", _too_large(f"{len(text):,} characters"))
    return _parse(
        text, file=file, base_dir=base_dir, environ=environ, step_types=step_types, source=None
    )


def _parse(
    text: str,
    *,
    file: str,
    base_dir: Path,
    environ: Mapping[str, str] | None,
    step_types: Mapping[str, StepType] | None,
    source: str | None,
) -> Config:
    tree, check = _parse_yaml(text, file)
    if tree is None:
        raise ConfigError.single(file, "", "the file is empty; expected a mapping of sections")
    problems = list(check.problems)
    tree = _interpolate(tree, "", os.environ if environ is None else environ, file, problems)
    try:
        return build_config(
            tree,
            file=file,
            base_dir=base_dir,
            step_types=_default_step_types() if step_types is None else step_types,
            source=source,
            problems=problems,
        )
    except ConfigError as exc:
        # The passes find problems in their own order; the user reads the file top-down.
        in_file_order = sorted(exc.problems, key=lambda problem: check.line_of(problem.path))
        raise ConfigError(in_file_order) from None


def _default_step_types() -> Mapping[str, StepType]:
    # Imported here: the step modules import the config model, and are not needed to read
    # a config when the caller brings its own step types.
    from aegis.steps.registry import default_step_types

    return default_step_types()


def _read_text(path: Path, display: str) -> str:
    try:
        with path.open("rb") as stream:
            # The size on disk refuses a big file unread; reading one byte past the limit
            # catches what has no size (a pipe) or grew meanwhile.
            size = os.fstat(stream.fileno()).st_size
            data = b"" if size > MAX_BYTES else stream.read(MAX_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConfigError.single(display, "", "no such file") from exc
    except IsADirectoryError as exc:
        raise ConfigError.single(display, "", "is a directory, not a config file") from exc
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise ConfigError.single(display, "", f"cannot read the file: {reason}") from exc
    if size > MAX_BYTES or len(data) > MAX_BYTES:
        amount = f"{size:,} bytes" if size > MAX_BYTES else f"over {MAX_BYTES:,} bytes"
        raise ConfigError.single(display, "", _too_large(amount))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError.single(
            display, "", f"line {line}: not UTF-8 text (byte {data[exc.start]:#04x})"
        ) from exc


def _too_large(amount: str) -> str:
    return f"too large: {amount}; a config file may have at most {MAX_BYTES // 2**20} MiB"


# -- YAML ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _loader_class() -> Any:
    import yaml

    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that marks plain strings and leaves dates as text."""

    StrictLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    StrictLoader.add_constructor(_STR_TAG, _construct_str)
    return StrictLoader


def _construct_str(loader: Any, node: Any) -> str:
    value = loader.construct_scalar(node)
    return _PlainText(value) if node.style is None else str(value)


def _parse_yaml(text: str, file: str) -> tuple[object, _NodeCheck]:
    """The YAML document in ``text``, and the node check that found its duplicate keys
    and the line of each key path.

    Raises ``ConfigError`` for a syntax error, an alias that contains itself or a tree
    that expands past ``MAX_VALUES``.
    """
    import yaml

    check = _NodeCheck(file)
    loader = None
    try:
        loader = _loader_class()(text)
        node = loader.get_single_node()
        if node is None:
            return None, check
        check.run(node)
        return loader.construct_document(node), check
    except yaml.MarkedYAMLError as exc:
        raise ConfigError.single(file, "", _marked_message(exc, text)) from exc
    except yaml.reader.ReaderError as exc:
        raise ConfigError.single(file, "", _reader_message(exc, text)) from exc
    except RecursionError as exc:
        raise ConfigError.single(file, "", "the YAML is nested too deeply") from exc
    finally:
        if loader is not None:
            loader.dispose()


def _marked_message(exc: Any, text: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    problem, context = exc.problem, exc.context
    if problem and context and problem.startswith("but "):
        message = f"{context}, {problem}"  # PyYAML words these as one sentence
    elif problem and context:
        where = f" on line {exc.context_mark.line + 1}" if exc.context_mark else ""
        message = f"{problem} ({context}{where})"
    else:
        message = problem or context or "invalid YAML"
    if mark is None:
        return message
    if text.startswith("${", max(mark.index - 1, 0)):
        # `{` and `[` are YAML's own brackets: `[${X}]` is not read as a string.
        message += "; put a value that uses ${...} inside [...] or {...} in quotes"
    return f"line {mark.line + 1}, column {mark.column + 1}: {message}"


def _reader_message(exc: Any, text: str) -> str:
    position = int(exc.position)
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return f"line {line}, column {column}: character U+{exc.character:04X} is not allowed in YAML"


class _NodeCheck:
    """One pass over the composed YAML nodes, before anything is constructed.

    Finds duplicate keys (the constructed dict no longer shows them), notes the line of
    every key path (to report problems in file order) and measures the tree as aliases
    expand it, so that a few lines cannot make the later passes run for ever or recurse
    without end.
    """

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[ConfigProblem] = []
        self.lines: dict[str, int] = {}
        self.sizes: dict[int, int] = {}
        self.active: set[int] = set()

    def run(self, node: Any) -> None:
        self.walk(node, "", 0)

    def line_of(self, path: str) -> int:
        """The line of ``path``, or of its nearest ancestor that is in the file."""
        while path and path not in self.lines:
            path = _parent_path(path)
        return self.lines.get(path, 0)

    def walk(self, node: Any, path: str, depth: int) -> int:
        import yaml

        ident = id(node)
        if ident in self.sizes:
            return self.sizes[ident]
        if depth > MAX_DEPTH:
            line = node.start_mark.line + 1
            raise ConfigError.single(
                self.file, "", f"line {line}: nested too deeply (more than {MAX_DEPTH} levels)"
            )
        if ident in self.active:
            line = node.start_mark.line + 1
            raise ConfigError.single(
                self.file, path, f"line {line}: an alias refers to a value that contains it"
            )
        self.active.add(ident)
        size = 1
        if isinstance(node, yaml.SequenceNode):
            for index, child in enumerate(node.value):
                child_path = join_index(path, index)
                self.lines.setdefault(child_path, child.start_mark.line + 1)
                size += self.walk(child, child_path, depth + 1)
        elif isinstance(node, yaml.MappingNode):
            size += self.walk_mapping(node, path, depth)
        self.active.discard(ident)
        self.sizes[ident] = size
        if size > MAX_VALUES:
            raise ConfigError.single(
                self.file, "", f"too large: more than {MAX_VALUES} values once aliases are expanded"
            )
        return size

    def walk_mapping(self, node: Any, path: str, depth: int) -> int:
        import yaml

        first_lines: dict[tuple[str, str], int] = {}
        size = 0
        for key_node, value_node in node.value:
            child_path = path
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                child_path = join_key(path, key_node.value)
                self.lines.setdefault(child_path, key_node.start_mark.line + 1)
                self.check_duplicate(key_node, child_path, first_lines)
            size += self.walk(key_node, child_path, depth + 1)
            size += self.walk(value_node, child_path, depth + 1)
        return size

    def check_duplicate(
        self, key_node: Any, path: str, first_lines: dict[tuple[str, str], int]
    ) -> None:
        identity = (key_node.tag, key_node.value)
        line = key_node.start_mark.line + 1
        if identity not in first_lines:
            first_lines[identity] = line
            return
        first = first_lines[identity]
        message = f"line {line}: duplicate key {key_node.value!r} (first on line {first})"
        self.problems.append(ConfigProblem(self.file, path, message))


def _parent_path(path: str) -> str:
    """``a.b[2]`` -> ``a.b`` -> ``a`` -> ``''``."""
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""


def _yaml_scalar(text: str) -> object:
    """``text`` read as if it had been written as a plain YAML scalar."""
    import yaml

    loader = _loader_class()("")
    try:
        tag = loader.resolve(yaml.ScalarNode, text, (True, False))
        value = loader.construct_object(yaml.ScalarNode(tag, text))
    finally:
        loader.dispose()
    return str(value) if isinstance(value, str) else value


# -- interpolation ---------------------------------------------------------------------------


def _interpolate(
    value: object, path: str, environ: Mapping[str, str], file: str, problems: list[ConfigProblem]
) -> object:
    """``value`` with ``${...}`` replaced in every string (keys excepted).

    A string that cannot be interpolated becomes ``UNRESOLVED`` and its problem is added.
    Plain strings come out as plain ``str``.
    """
    if isinstance(value, dict):
        return {
            _plain_key(key): _interpolate(item, join_key(path, key), environ, file, problems)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            _interpolate(item, join_index(path, index), environ, file, problems)
            for index, item in enumerate(value)
        ]
    if isinstance(value, str):
        return _interpolate_text(value, path, environ, file, problems)
    return value


def _plain_key(key: object) -> object:
    return str(key) if isinstance(key, str) else key


def _interpolate_text(
    text: str, path: str, environ: Mapping[str, str], file: str, problems: list[ConfigProblem]
) -> object:
    if "$" not in text:
        return str(text)
    errors: list[str] = []
    result = _substitute(text, environ, errors, 0)
    if errors:
        problems.extend(ConfigProblem(file, path, error) for error in errors)
        return UNRESOLVED
    if text.startswith("${") and _closing(text, 2) == len(text) - 1:
        return EnvText(result, _yaml_scalar(result), plain=isinstance(text, _PlainText))
    return result


def _substitute(text: str, environ: Mapping[str, str], errors: list[str], depth: int) -> str:
    """``text`` with every ``$$`` and ``${...}`` replaced; problems go to ``errors``."""
    parts = []
    index = 0
    for match in _TOKEN.finditer(text):
        if match.start() < index:
            continue  # inside a `${...}` already replaced
        parts.append(text[index : match.start()])
        if match.group(0).endswith("{{"):  # resolved before each attempt of a step, not here
            close = text.find("}}", match.end())
            index = len(text) if close < 0 else close + 2
            parts.append(text[match.start() : index])
            continue
        if match.group(0) == "$$":
            parts.append("$")
            index = match.end()
            continue
        end = _closing(text, match.end())
        if end is None:
            errors.append("unclosed '${' (write '$$' for a literal '$')")
            return ""
        parts.append(_expand(text[match.start() : end + 1], environ, errors, depth))
        index = end + 1
    parts.append(text[index:])
    return "".join(parts)


def _closing(text: str, start: int) -> int | None:
    """The index of the ``}`` closing a ``${`` whose body starts at ``start``."""
    depth = 1
    for match in _BRACES.finditer(text, start):
        token = match.group(0)
        if token == "${":
            depth += 1
        elif token == "}":
            depth -= 1
            if depth == 0:
                return match.start()
    return None


def _expand(token: str, environ: Mapping[str, str], errors: list[str], depth: int) -> str:
    """The value of one whole ``${...}`` token; a default may hold ``${...}`` itself."""
    expression = _EXPRESSION.fullmatch(token[2:-1])
    if expression is None:
        expected = "expected ${NAME} or ${NAME:-default}"
        errors.append(f"invalid interpolation {describe(token)}: {expected}")
        return ""
    name, default = expression.group("name"), expression.group("default")
    value = environ.get(name)
    if default is not None:
        if value:  # like the shell's `:-`, an empty variable takes the default
            return value
        if depth >= MAX_NESTING:
            errors.append(f"interpolation {describe(token)} nests deeper than {MAX_NESTING}")
            return ""
        return _substitute(default, environ, errors, depth + 1)
    if value is None:
        errors.append(
            f"environment variable {name!r} is not set (give a default: ${{{name}:-...}})"
        )
        return ""
    return value
