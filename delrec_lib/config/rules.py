"""Field rules: what each config field accepts, checked when its dataclass is built."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Any

from ..errors import ConfigError

# --------------------------------------------------------------------------------------------
# Field rules. Every field of every config dataclass has one in FIELD_RULES (a test walks them
# all), checked when the dataclass is built: a bad value is refused at load, naming the dotted
# field, instead of failing minutes later inside torch or numpy, or silently (a slice by -1).
# --------------------------------------------------------------------------------------------

_SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit


class Rule:
    """What one field accepts. ``check`` raises a ConfigError naming ``where``."""

    expected = "?"

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def check(self, value: Any, where: str) -> None:
        if not self.accepts(value):
            raise ConfigError(f"{where}: expected {self.expected}, got {value!r}")


class Int(Rule):
    def __init__(self, lo: int, hi: int | None = None):
        self.lo, self.hi = lo, hi
        self.expected = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= self.lo and (self.hi is None or value <= self.hi)


class Num(Rule):
    """A finite number in a range; ``open_lo``/``open_hi`` exclude the bound."""

    def __init__(self, lo: float, hi: float | None = None, *, open_lo: bool = False, open_hi: bool = False):
        self.lo, self.hi, self.open_lo, self.open_hi = lo, hi, open_lo, open_hi
        if hi is None:
            self.expected = f"a number {'>' if open_lo else '>='} {lo}"
        else:
            self.expected = f"a number in {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        above = value > self.lo if self.open_lo else value >= self.lo
        below = self.hi is None or (value < self.hi if self.open_hi else value <= self.hi)
        return above and below


class OneOf(Rule):
    """Membership; ``values`` may be a function, for sets defined later or in a heavier module."""

    def __init__(self, values: tuple[Any, ...] | typing.Callable[[], typing.Iterable[Any]]):
        self._values = values

    @property
    def values(self) -> tuple[Any, ...]:
        return tuple(self._values() if callable(self._values) else self._values)

    @property
    def expected(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, typing.Hashable) and value in self.values


class Text(Rule):
    """A non-empty string, optionally matching ``pattern`` (described by ``expected``)."""

    def __init__(self, pattern: str | None = None, expected: str = "a non-empty string"):
        self.pattern, self.expected = pattern, expected

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value.strip() != "" and (self.pattern is None or re.fullmatch(self.pattern, value) is not None)


class Flag(Rule):
    expected = "true or false"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


class Satisfies(Rule):
    """A value ``test`` accepts (for names with a grammar, such as variants)."""

    def __init__(self, test: typing.Callable[[Any], bool], expected: str):
        self.test, self.expected = test, expected

    def accepts(self, value: Any) -> bool:
        return self.test(value)


class Maybe(Rule):
    """None, or a value ``rule`` accepts."""

    def __init__(self, rule: Rule):
        self.rule = rule

    @property
    def expected(self) -> str:
        return f"{self.rule.expected} (or none)"

    def accepts(self, value: Any) -> bool:
        return value is None or self.rule.accepts(value)

    def check(self, value: Any, where: str) -> None:
        if value is not None:
            self.rule.check(value, where)


class Items(Rule):
    """A tuple (a list in a file) of values ``item`` accepts, each once unless ``unique`` is False."""

    def __init__(self, item: Rule, *, min_len: int = 0, length: int | None = None, unique: bool = True):
        self.item, self.min_len, self.length, self.unique = item, min_len, length, unique
        size = f"{length} " if length is not None else ("at least one " if min_len == 1 else "")
        self.expected = f"a list of {size}items, each {item.expected}" + (", each once" if unique else "")

    def accepts(self, value: Any) -> bool:
        try:
            self.check(value, "")
        except ConfigError:
            return False
        return True

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, tuple) or len(value) < self.min_len or (self.length is not None and len(value) != self.length):
            raise ConfigError(f"{where}: expected {self.expected}, got {value!r}")
        for i, v in enumerate(value):
            self.item.check(v, f"{where}[{i}]")
        if self.unique and len(set(value)) != len(value):
            raise ConfigError(f"{where}: expected {self.expected}, got {list(value)} (an item twice)")


class Section(Rule):
    """A nested config dataclass: its own rules checked it when it was built."""

    def __init__(self, cls: type):
        self.cls, self.expected = cls, f"a {cls.__name__}"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, self.cls)


SEED = Int(0, _SEED_MAX)
COUNT = Int(1)  # a size, a number of steps or users: zero or a negative would silently do nothing
COUNT_OR_NONE = Maybe(COUNT)
RATE = Num(0, open_lo=True)  # learning rates
DROPOUT = Num(0, 1, open_hi=True)
MODULE_NAMES = Items(Text(r"[A-Za-z0-9_.]+", "a module name"), min_len=1)
FIELD_RULES: dict[type, dict[str, Rule]] = {}
# Where each config dataclass sits under RunConfig (filled in by sections.py).
SECTION_PATHS: dict[type, str] = {}


def _metric_names() -> tuple[str, ...]:
    from ..metrics import METRICS  # pandas: not at import of the config

    return METRICS


def check_fields(config: Any) -> None:
    """Check every field of ``config`` against its rule; ConfigError names the dotted field."""
    rules = FIELD_RULES[type(config)]
    section = SECTION_PATHS.get(type(config), type(config).__name__)
    for f in dataclasses.fields(config):
        if f.name in rules:  # a field without a rule fails tests/test_config.py, not a user's run
            rules[f.name].check(getattr(config, f.name), f"{section}.{f.name}" if section else f.name)


def section_paths(cls: type, prefix: str) -> dict[type, str]:
    """Where each config dataclass sits under RunConfig ("teachers.sasrec" for SASRecConfig)."""
    out = {cls: prefix}
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            out |= section_paths(hint, f"{prefix}.{name}" if prefix else name)
    return out


def declared(cls: type, name: str) -> OneOf:
    """Membership in the values a field's ``Literal`` annotation declares."""
    return OneOf(typing.get_args(typing.get_type_hints(cls)[name]))
