"""Pins: decisions from outside the policy, set on a node before painting.

A pin is one typed thing — the precision a node must run in, who decided it (``source``)
and why — stored in ``node.meta["pin"]``. Sources: ``user`` (an override), ``runtime``
(the target runtime has no kernel for the node in the low-precision type), ``tuning`` (a
fallback accuracy tuning or the error budget chose), ``profile`` (objective="performance"
measured the node's region no faster in low precision; the numbers are in the reason),
``policy-rule`` (a rule of the policy data, e.g. a normalization of a raw graph input). The painter reads pins and
never parses reason text: a pin to the low-precision type paints as an allow node, a pin
to FP32 as a deny node, so the neighbours follow it.

When several pins meet on one node, ``stronger`` decides: FP32 from the user, then
from the runtime (it cannot run the node low), then from tuning; then the user's own
request for low precision; then a measurement (profile); a policy rule last (it is the
default a user can override)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from mixprec.ir.graph import Node

logger = logging.getLogger(__name__)

FP32 = "f32"
SOURCES = ("user", "runtime", "tuning", "profile", "policy-rule")


@dataclass(frozen=True)
class Pin:
    """``precision``: ``f32`` or the low-precision type's short name (``bf16``/``f16``)."""
    precision: str
    source: str
    reason: str

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown pin source {self.source!r}; one of {SOURCES}")

    @property
    def rank(self) -> int:
        """Lower wins (see the module docstring)."""
        if self.precision == FP32:
            return {"user": 0, "runtime": 1, "tuning": 2, "profile": 4, "policy-rule": 5}[self.source]
        return 3 if self.source == "user" else 6


def pin_of(node: Node) -> Pin | None:
    pin = node.meta.get("pin")
    return pin if isinstance(pin, Pin) else None


def set_pin(node: Node, pin: Pin) -> bool:
    """Pin ``node`` unless a stronger pin is already there; True when the pin changed."""
    current = pin_of(node)
    if current is not None and (current == pin or current.rank < pin.rank):
        return False
    node.meta["pin"] = pin
    return True


def clear_pins(node: Node, sources: tuple[str, ...]) -> bool:
    """Remove the node's pin if it came from one of ``sources``; True when removed."""
    current = pin_of(node)
    if current is None or current.source not in sources:
        return False
    del node.meta["pin"]
    return True
