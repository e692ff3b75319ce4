"""Picking one host of a host group for a run: the policies, as pure functions.

The registry says which members are usable (and why the others are not) and how
busy each is; `pick` decides. The round-robin cursor is the caller's state.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from apsis_server.agents.settings import HostGroup


@dataclass(frozen=True)
class Pick:
    """The host chosen, notes for the run log about members skipped, the next cursor."""

    host: str
    notes: tuple[str, ...]
    cursor: int


class NoHost(LookupError):
    """No member of the group can take the run."""


def pick(
    group: HostGroup,
    unusable: Mapping[str, str],
    busy: Mapping[str, int],
    cursor: int,
    rng: random.Random,
) -> Pick:
    """One usable host of `group` by its policy.

    `unusable` maps hosts that cannot be reached to the reason; `busy` gives the
    running count per host; `cursor` is where round-robin continues.
    """
    hosts = group.hosts
    usable = [h for h in hosts if h not in unusable]
    if not usable:
        reasons = "; ".join(f"{h}: {unusable[h]}" for h in hosts)
        raise NoHost(f"no usable host in group {group.name}: {reasons}")
    if group.policy == "random":
        host = rng.choice(usable)
    elif group.policy == "first-available":
        host = usable[0]
    elif group.policy == "least-busy":
        # Ties go round-robin, so an idle group still spreads its runs.
        order = _rotated(hosts, cursor)
        host = min((h for h in order if h in usable), key=lambda h: busy.get(h, 0))
    else:
        host = next(h for h in _rotated(hosts, cursor) if h in usable)
    skipped = _skipped(group, unusable, host)
    return Pick(host, skipped, (hosts.index(host) + 1) % len(hosts))


def _rotated(hosts: Sequence[str], cursor: int) -> list[str]:
    start = cursor % len(hosts)
    return [*hosts[start:], *hosts[:start]]


def _skipped(group: HostGroup, unusable: Mapping[str, str], chosen: str) -> tuple[str, ...]:
    """Notes for the members a first-available or round-robin pick passed over."""
    return tuple(
        f"host group {group.name}: skipped {h}: {unusable[h]}"
        for h in group.hosts
        if h in unusable and h != chosen
    )
