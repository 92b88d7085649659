"""Counters and gauges as values, written in the Prometheus text exposition format 0.0.4
(prometheus.io/docs/instrumenting/exposition_formats, "Text-based format"), and the changes
between two snapshots of them for the periodic log line. Sans-IO: the processes collect their
counters into :class:`Family` values (``Registrar.metrics()``, ``Daemon.metrics()``) and
:mod:`wgmesh.metricshttp` serves and logs what this module writes.

The text format, as written here:

- per family one ``# HELP NAME TEXT`` line (``\\`` and newline escaped as ``\\\\`` and ``\\n``)
  and one ``# TYPE NAME counter|gauge`` line, then its samples;
- a sample is ``NAME{LABEL="VALUE",...} NUMBER``; in label values ``\\``, ``"`` and newline are
  escaped as ``\\\\``, ``\\"`` and ``\\n``; numbers are integers, Python floats, ``NaN``,
  ``+Inf`` or ``-Inf``;
- a counter's name ends with ``_total`` (added here: :attr:`Family.name` is the name without
  it), in the TYPE and HELP lines too, as the Prometheus client libraries write 0.0.4;
- every line ends with a newline, the last one too.

Names are checked (``[a-zA-Z_:][a-zA-Z0-9_:]*``, labels ``[a-zA-Z_][a-zA-Z0-9_]*`` and not
``__``-prefixed), as are duplicate families and label sets: a bad one is our bug
(:class:`LocalProtocolError`), found when the family is built.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from wgmesh.errors import LocalProtocolError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The media type of :func:`render`'s text."""

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Labels = tuple[tuple[str, str], ...]
"""A sample's labels, (name, value) in the order written."""


class Kind(StrEnum):
    """The metric types used (0.0.4 also has summary, histogram and untyped)."""

    COUNTER = "counter"
    """Only ever goes up (from 0 at the process's start)."""
    GAUGE = "gauge"
    """A value now, up or down."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of a family."""

    value: float
    """The number (an ``int`` is written as an integer)."""
    labels: Labels = ()
    """Its labels; none for a family of one sample."""


@dataclass(frozen=True, slots=True)
class Family:
    """One metric: its name, type, help text and samples."""

    name: str
    """The name, without ``_total`` for a counter (``wgmesh_registrar_rejected``)."""
    kind: Kind
    """Counter or gauge."""
    help: str
    """One line saying what it counts."""
    samples: tuple[Sample, ...]
    """Its values, each with a different label set."""

    def __post_init__(self) -> None:
        if not METRIC_NAME.fullmatch(self.name) or self.name.endswith("_total"):
            raise LocalProtocolError(f"metric name {self.name!r}")
        seen: set[Labels] = set()
        for s in self.samples:
            _check_sample(self, s)
            key = tuple(sorted(s.labels))
            if key in seen:
                raise LocalProtocolError(f"{self.name}: the labels {s.labels!r} twice")
            seen.add(key)

    @property
    def exposed(self) -> str:
        """The name as written: with ``_total`` for a counter."""
        return self.name + "_total" if self.kind is Kind.COUNTER else self.name


def _check_sample(family: Family, sample: Sample) -> None:
    if isinstance(sample.value, bool) or not isinstance(sample.value, int | float):
        raise LocalProtocolError(f"{family.name}: the value {sample.value!r} is not a number")
    if family.kind is Kind.COUNTER and not sample.value >= 0:  # NaN too
        raise LocalProtocolError(f"{family.name}: a counter at {sample.value!r}")
    names = [name for name, _ in sample.labels]
    if len(set(names)) != len(names):
        raise LocalProtocolError(f"{family.name}: a label twice in {sample.labels!r}")
    for name, value in sample.labels:
        if not LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise LocalProtocolError(f"{family.name}: label name {name!r}")
        if not isinstance(value, str) or not _utf8(value):
            raise LocalProtocolError(f"{family.name}: label {name} value {value!r}")
    if not _utf8(family.help):
        raise LocalProtocolError(f"{family.name}: help text {family.help!r}")


def _utf8(text: str) -> bool:
    """False for text UTF-8 cannot carry (lone surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# -- building families ----------------------------------------------------------------------


def counter(name: str, help: str, value: float) -> Family:
    """A counter of one sample."""
    return Family(name, Kind.COUNTER, help, (Sample(value),))


def gauge(name: str, help: str, value: float) -> Family:
    """A gauge of one sample."""
    return Family(name, Kind.GAUGE, help, (Sample(value),))


def labelled(
    name: str, help: str, label: str, values: Mapping[str, float], kind: Kind = Kind.COUNTER
) -> Family:
    """A family with one sample per ``values`` item, the key as the value of ``label``."""
    samples = tuple(Sample(v, ((label, k),)) for k, v in values.items())
    return Family(name, kind, help, samples)


# -- the text format ------------------------------------------------------------------------


def render(families: Iterable[Family]) -> str:
    """The exposition text of ``families``, in their order; LocalProtocolError when two
    have the same name."""
    out: list[str] = []
    names: set[str] = set()
    for f in families:
        name = f.exposed
        if name in names:
            raise LocalProtocolError(f"metric {name} twice")
        names.add(name)
        out.append(f"# HELP {name} {escape_help(f.help)}\n# TYPE {name} {f.kind}\n")
        out.extend(f"{name}{_labels(s.labels)} {number(s.value)}\n" for s in f.samples)
    return "".join(out)


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels) + "}"


def number(value: float) -> str:
    """A sample value as the format writes it."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


# -- what changed, for the log --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One counter that moved between two snapshots."""

    series: str
    """The counter and its labels, as :func:`counter_values` keys them."""
    before: float
    """Its value in the earlier snapshot (0 when it was not there)."""
    after: float
    """Its value now."""


def counter_values(families: Iterable[Family]) -> dict[str, float]:
    """A snapshot of the counters (gauges left out), keyed ``name`` or
    ``name{label="value",...}`` (the name without ``_total``), in the families' order."""
    return {
        f.name + _labels(s.labels): s.value
        for f in families
        if f.kind is Kind.COUNTER
        for s in f.samples
    }


def changed(before: Mapping[str, float], after: Mapping[str, float]) -> tuple[Change, ...]:
    """The counters of ``after`` whose value differs from ``before`` (a counter missing from
    ``before`` was 0), in ``after``'s order."""
    return tuple(
        Change(series, before.get(series, 0), value)
        for series, value in after.items()
        if value != before.get(series, 0)
    )


def describe_changes(changes: Iterable[Change], prefix: str = "") -> str:
    """``name=12 (+3), rejected{reason="replay"}=1 (+1)``: each counter's value and its
    change, ``prefix`` cut off the names."""
    parts = []
    for c in changes:
        name = c.series.removeprefix(prefix)
        delta = c.after - c.before
        parts.append(f"{name}={number(c.after)} ({'+' if delta >= 0 else ''}{number(delta)})")
    return ", ".join(parts)


def describe_all(families: Iterable[Family], prefix: str = "") -> str:
    """``name=12, rejected{reason="replay"}=1``: every counter that is not 0 (``none`` when
    all are), ``prefix`` cut off the names."""
    values = counter_values(families).items()
    shown = [f"{series.removeprefix(prefix)}={number(v)}" for series, v in values if v]
    return ", ".join(shown) or "none"
