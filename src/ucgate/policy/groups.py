"""Per-group policy (pure): which settings apply to a user, from the groups they are in.

Administrators list policies in priority order, each naming a directory group; the first
policy whose group the user belongs to (nested membership counts — the caller's ``is_member``
decides) applies, and keys it does not set come from the default policy. This is how Lync /
SfB client policies and Exchange mobile device mailbox policies are assigned, minus the
per-user override.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class GroupPolicy:
    """One entry of the policy list: ``group`` (a DN or a group name) and its settings."""

    name: str
    group: str | None  # None: the default policy
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EffectivePolicy:
    name: str  # which policy applied ("default" when none matched)
    settings: Mapping[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)


def effective_policy(
    policies: Sequence[GroupPolicy],
    is_member: Callable[[str], bool],
    defaults: Mapping[str, Any],
) -> EffectivePolicy:
    """The first policy whose group the user is in, merged over ``defaults``.

    Args:
        policies: in priority order; entries with ``group=None`` are skipped (the default
            policy is ``defaults``).
        is_member: group (DN or name) -> is the user a member (nested)?
        defaults: settings every user gets unless their policy overrides them.
    """
    for p in policies:
        if p.group is not None and is_member(p.group):
            merged = dict(defaults)
            merged.update(p.settings)
            return EffectivePolicy(p.name, MappingProxyType(merged))
    return EffectivePolicy("default", MappingProxyType(dict(defaults)))
