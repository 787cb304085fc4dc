"""What each config field accepts, declared with its type (``hidden: Count = 64``) and checked when its
dataclass is built: a bad value is refused at load, naming the dotted field, instead of failing minutes later
inside torch or numpy, or silently (a slice by -1)."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable
from typing import Annotated, Any

from ..errors import ConfigError


class Rule:
    """What one field accepts (``test``) and how an error describes it (``expected``: text, or a function of none)."""

    def __init__(self, test: Callable[[Any], bool], expected: str | Callable[[], str]):
        self.test, self._expected = test, expected

    @property
    def expected(self) -> str:
        return self._expected() if callable(self._expected) else self._expected

    def check(self, value: Any, where: str) -> None:
        if not self.test(value):
            raise ConfigError(f"{where}: expected {self.expected}, got {value!r}")

    def accepts(self, value: Any) -> bool:
        try:
            self.check(value, "")
        except ConfigError:
            return False
        return True


class Satisfies(Rule):
    """A value ``test`` accepts (for names with a grammar, such as variants)."""


def parsed_by(parse: Callable[[str], Any], expected: str) -> Satisfies:
    """A name ``parse`` accepts (it raises ConfigError on any other)."""

    def parses(name: Any) -> bool:
        try:
            return isinstance(name, str) and parse(name) is not None
        except ConfigError:
            return False

    return Satisfies(parses, expected)


class Num(Rule):
    """A finite number in a range; ``open_lo``/``open_hi`` exclude the bound."""

    noun = "a number"

    def __init__(self, lo: float, hi: float | None = None, *, open_lo: bool = False, open_hi: bool = False):
        self.lo, self.hi, self.open_lo, self.open_hi = lo, hi, open_lo, open_hi
        if hi is None:
            span = f"{'>' if open_lo else '>='} {lo}"
        else:
            span = f"in {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"
        super().__init__(self.in_range, f"{self.noun} {span}")

    def in_range(self, v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
            return False
        above = v > self.lo if self.open_lo else v >= self.lo
        return above and (self.hi is None or (v < self.hi if self.open_hi else v <= self.hi))


class Int(Num):
    noun = "an integer"

    def __init__(self, lo: int, hi: int | None = None):
        super().__init__(lo, hi)

    def in_range(self, v: Any) -> bool:
        return isinstance(v, int) and super().in_range(v)


class OneOf(Rule):
    """Membership; ``values`` may be a function, for sets defined later or in a heavier module."""

    def __init__(self, values: tuple[Any, ...] | Callable[[], typing.Iterable[Any]]):
        self._values = values
        super().__init__(
            lambda v: isinstance(v, typing.Hashable) and v in self.values, lambda: "one of " + ", ".join(map(repr, self.values))
        )

    @property
    def values(self) -> tuple[Any, ...]:
        return tuple(self._values() if callable(self._values) else self._values)


class Text(Rule):
    """A non-empty string, optionally matching ``pattern`` (described by ``expected``)."""

    def __init__(self, pattern: str | None = None, expected: str = "a non-empty string"):
        self.pattern = pattern
        super().__init__(
            lambda v: isinstance(v, str) and v.strip() != "" and (pattern is None or re.fullmatch(pattern, v) is not None), expected
        )


class Flag(Rule):
    def __init__(self):
        super().__init__(lambda v: isinstance(v, bool), "true or false")


class Section(Rule):
    """A nested config dataclass: its own rules were checked when it was built."""

    def __init__(self, cls: type):
        self.cls = cls
        super().__init__(lambda v: isinstance(v, cls), f"a {cls.__name__}")


class Maybe(Rule):
    """None, or a value ``rule`` accepts."""

    def __init__(self, rule: Rule):
        self.rule = rule
        super().__init__(self.accepts, lambda: f"{rule.expected} (or none)")

    def check(self, value: Any, where: str) -> None:
        if value is not None:
            self.rule.check(value, where)


class Items(Rule):
    """A tuple (a list in a file) of values ``item`` accepts, each once unless ``unique`` is False."""

    def __init__(self, item: Rule, *, min_len: int = 0, length: int | None = None, unique: bool = True):
        self.item, self.min_len, self.length, self.unique = item, min_len, length, unique
        size = f"{length} " if length is not None else ("at least one " if min_len == 1 else "")
        super().__init__(self.accepts, lambda: f"a list of {size}items, each {item.expected}{', each once' if unique else ''}")

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, tuple) or len(value) < self.min_len or self.length not in (None, len(value)):
            raise ConfigError(f"{where}: expected {self.expected}, got {value!r}")
        for i, v in enumerate(value):
            self.item.check(v, f"{where}[{i}]")
        if self.unique and len(set(value)) != len(value):
            raise ConfigError(f"{where}: expected {self.expected}, got {list(value)} (an item twice)")


SEED = Int(0, 2**32 - 1)  # numpy's seeds are 32-bit
COUNT = Int(1)  # a size, a number of steps or users: zero or a negative would silently do nothing
COUNT_OR_NONE = Maybe(COUNT)
RATE = Num(0, open_lo=True)
DROPOUT = Num(0, 1, open_hi=True)
MODULE_NAMES = Items(Text(r"[A-Za-z0-9_.]+", "a module name"), min_len=1)

# The usual field types, each with its rule; ``Annotated[type, rule]`` declares any other.
Count = Annotated[int, COUNT]
Count0 = Annotated[int, Int(0)]  # a count that may be zero
MaybeCount = Annotated[int | None, COUNT_OR_NONE]  # None: no limit
Seed = Annotated[int, SEED]
Seeds = Annotated[tuple[int, ...], Items(SEED)]
Rate = Annotated[float, RATE]  # a learning rate
Dropout = Annotated[float, DROPOUT]
Weight = Annotated[float, Num(0)]
NonEmpty = Annotated[str, Text()]
ModuleNames = Annotated[tuple[str, ...], MODULE_NAMES]

FIELD_RULES: dict[type, dict[str, Rule]] = {}  # every config dataclass's rules, by field
SECTION_PATHS: dict[type, str] = {}  # where each config dataclass sits under RunConfig ("teachers.sasrec")


def rule_of(hint: Any) -> Rule | None:
    """A field's rule: the one its ``Annotated`` type declares, else the one a bool, Literal or section type implies."""
    if typing.get_origin(hint) is Annotated:
        return next((m for m in hint.__metadata__ if isinstance(m, Rule)), None)
    if hint is bool:
        return Flag()
    if typing.get_origin(hint) is typing.Literal:
        return OneOf(typing.get_args(hint))
    return Section(hint) if dataclasses.is_dataclass(hint) else None


class Checked:
    """Base of the config dataclasses: collects each field's rule, and checks them all when an instance is built."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        rules = {name: rule_of(hint) for name, hint in typing.get_type_hints(cls, include_extras=True).items()}
        missing = [name for name, rule in rules.items() if rule is None]
        if missing:
            raise TypeError(f"{cls.__name__}: fields {missing} declare no rule; give each one, Annotated[type, rule]")
        FIELD_RULES[cls] = rules

    def __post_init__(self) -> None:
        check_fields(self)


def check_fields(config: Any) -> None:
    """Check every field of ``config`` against its rule; ConfigError names the dotted field."""
    section = SECTION_PATHS.get(type(config), type(config).__name__)
    for name, rule in FIELD_RULES[type(config)].items():
        rule.check(getattr(config, name), f"{section}.{name}" if section else name)


def register_sections(cls: type, prefix: str = "") -> None:
    """Record where ``cls`` and the sections nested in it sit, for the dotted names in errors."""
    SECTION_PATHS[cls] = prefix
    for name, rule in FIELD_RULES[cls].items():
        if isinstance(rule, Section):
            register_sections(rule.cls, f"{prefix}.{name}" if prefix else name)
