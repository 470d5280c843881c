"""`gpucp serve` settings from a TOML file (--config FILE, or $GPUCP_CONFIG) and GPUCP_* variables.

The argparse parser of controlplane/cli.py is the one list of settings: each flag `--max-queue`
is the TOML key `max-queue` and the variable GPUCP_MAX_QUEUE, its type and choices check a value
from any source the same way, and the checks of run_serve see the result whatever its source.
A flag beats a variable, a variable beats the file, the file beats the default: the file's and
the variables' values become the parser's defaults, and the command line is parsed over them.
"""

from __future__ import annotations

import argparse
import difflib
import tomllib
from collections.abc import Callable, Mapping, Sequence

__all__ = ["CONFIG_ENV", "ENV_PREFIX", "MAX_CONFIG_BYTES", "Settings", "env_name", "key", "layer"]

ENV_PREFIX = "GPUCP_"
CONFIG_ENV = "GPUCP_CONFIG"
MAX_CONFIG_BYTES = 1024 * 1024
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
# Settings only the command line gives: the file's own name, and help.
_COMMAND_LINE_ONLY = ("config", "help")


def key(action: argparse.Action) -> str:
    """The TOML key of a flag: its long name without the dashes."""
    return action.option_strings[-1].removeprefix("--")


def env_name(action: argparse.Action) -> str:
    """The environment variable of a flag: GPUCP_ and its name in capitals, dashes as underscores."""
    return ENV_PREFIX + key(action).upper().replace("-", "_")


class Settings:
    """Where each setting that did not come from the command line came from, to name it in errors."""

    def __init__(self) -> None:
        self.origins: dict[str, str] = {}

    def explain(self, message: str) -> str:
        """`message` (which starts with the flag it is about) naming the variable or file key that set it."""
        flag = message.split(" ", 1)[0].rstrip(":")
        origin = self.origins.get(flag)
        return f"{message} (set by {origin})" if origin else message


def layer(parser: argparse.ArgumentParser, argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Make the config file's values and then the GPUCP_* variables the parser's defaults.

    ValueError names the file, key or variable and what it takes; unknown keys in the file are
    errors, unknown GPUCP_* variables are not (clients and agents read others from the same place).
    """
    actions = {key(a): a for a in parser._actions if a.option_strings and key(a) not in _COMMAND_LINE_ONLY}
    settings = Settings()
    values: dict[str, object] = {}
    config, named_by = _config_path(argv), "--config"
    if not config and environ.get(CONFIG_ENV):
        config, named_by = environ[CONFIG_ENV], CONFIG_ENV
    if config:
        for name, value in _read_toml(config, named_by).items():
            action = actions.get(name)
            if action is None:
                raise ValueError(f"{config}: unknown setting {name!r}{_suggest(name, actions)}")
            values[action.dest] = _from_toml(action, value, f"{config}: {name}")
            settings.origins[action.option_strings[-1]] = f"{name} in {config}"
    for action in actions.values():
        variable = env_name(action)
        if variable in environ:
            values[action.dest] = _from_text(action, environ[variable], variable)
            settings.origins[action.option_strings[-1]] = variable
    given, _ = parser.parse_known_args(argv)
    for action in actions.values():
        if _on_command_line(action, given, argv):
            settings.origins.pop(action.option_strings[-1], None)
            if isinstance(action, argparse._AppendAction):
                # The command line's list replaces the lower sources' (argparse would append to them).
                values.pop(action.dest, None)
    parser.set_defaults(**values)
    return settings


def _on_command_line(action: argparse.Action, given: argparse.Namespace, argv: Sequence[str]) -> bool:
    """Whether argv sets this flag: named there, or (abbreviated) its parsed value is not the default."""
    named = any(token == flag or token.startswith(flag + "=") for token in argv for flag in action.option_strings)
    return named or getattr(given, action.dest) != action.default


def _config_path(argv: Sequence[str]) -> str:
    """--config from the command line before the rest is parsed (its values come first)."""
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--config", default="")
    known, _ = early.parse_known_args(argv)
    return str(known.config)


def _read_toml(path: str, named_by: str) -> dict[str, object]:
    where = f"{named_by} {path}" if named_by.startswith("--") else f"{named_by}={path}"
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{where}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(f"{where}: over {MAX_CONFIG_BYTES} bytes; a settings file is a few lines")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{where}: not TOML: {exc}") from None


def _suggest(name: str, actions: Mapping[str, argparse.Action]) -> str:
    close = difflib.get_close_matches(name.replace("_", "-"), actions, n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; the settings are the flags of gpucp serve: {', '.join(actions)}"


def _from_toml(action: argparse.Action, value: object, where: str) -> object:
    """A TOML value checked against the flag: TOML strings for text, numbers for numbers, true or
    false for a switch (true: as if the flag were given), a list of strings for a repeatable flag."""
    if action.nargs == 0:
        if not isinstance(value, bool):
            raise ValueError(f"{where} = {value!r}: give true or false")
        return action.const if value else action.default
    if _takes_a_list(action):
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError(f"{where} = {value!r}: give a list of strings, e.g. [\"{action.metavar or 'VALUE'}\"]")
        return [_convert(action, v, where) for v in value]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if action.type in (int, float):
        if not number:
            raise ValueError(f"{where} = {value!r}: give {_what(action)}")
        return _convert(action, str(value), where)
    if action.type in (None, str):
        if not isinstance(value, str):
            raise ValueError(f"{where} = {value!r}: give a string, {_what(action)}")
        return _convert(action, value, where)
    # A flag with a parser of its own (sizes, durations...) reads its text, given as a string or a number.
    if not (number or isinstance(value, str)):
        raise ValueError(f"{where} = {value!r}: give a string or a number, as its flag takes")
    return _convert(action, str(value), where)


def _from_text(action: argparse.Action, text: str, where: str) -> object:
    """An environment variable's text checked against the flag; a repeatable flag's values are
    separated by commas."""
    if action.nargs == 0:
        lowered = text.strip().lower()
        if lowered not in _TRUE + _FALSE:
            raise ValueError(f"{where}={text!r}: give 1 or 0 (true or false)")
        return action.const if lowered in _TRUE else action.default
    if _takes_a_list(action):
        return [_convert(action, part.strip(), where) for part in text.split(",") if part.strip()]
    return _convert(action, text.strip(), where)


def _takes_a_list(action: argparse.Action) -> bool:
    return isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*")


def _convert(action: argparse.Action, text: str, where: str) -> object:
    convert: Callable[[str], object] = action.type if callable(action.type) else str
    try:
        value = convert(text)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        if action.type in (int, float) or not str(exc):
            raise ValueError(f"{where} = {text!r}: give {_what(action)}") from None
        raise ValueError(f"{where} = {text!r}: {exc}") from None  # a flag's own parser says what it takes
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{where} = {text!r}: give one of {', '.join(map(str, action.choices))}")
    return value


def _what(action: argparse.Action) -> str:
    if action.choices is not None:
        return "one of " + ", ".join(map(str, action.choices))
    kind = {int: "a whole number", float: "a number"}.get(action.type, "text")  # type: ignore[call-overload]
    return f"{kind} ({action.metavar})" if action.metavar else kind
