"""``ucgate device list | approve | block | unblock | wipe | delete`` (admin commands), and
``ucgate device rules|policy list | add | delete | move``: the store's device rules and group
policies (``ucgate.id.rules``; in force on every running node within a second).

Run on the id service's host (the store is read directly). A block, wipe or delete made here
is recorded in the store at once; a gateway running in another process refuses the device's
next request (nothing is cached for refused devices) and, in the same process, closes its live
connections through the event bus.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..id.components import Components
from ..id.devices import DeviceError, DeviceService
from ..id.rules import RuleError, RuleNotFound, RuleService
from ..store.partnerships import PartnershipStore
from ..store.rules import RuleStore
from .admin import OK, _actor, _default_settings, _emit, _Runner, _table, _Usage, _when
from .options import json_parent


def _service(c: Components) -> DeviceService:
    return DeviceService(PartnershipStore(c.repo.engine), c.audit)


def _state(rec) -> str:
    """What the device gets now: a pending wipe overrides the stored state (every request is
    refused, EAS gets the wipe directive), so say it first."""
    return f"wipe pending ({rec.state})" if rec.wipe_pending else rec.state


def _list(args, c: Components) -> int:
    rows = _service(c).list(user=args.user, state=args.state)
    _emit(
        args,
        [r.as_dict() for r in rows],
        _table(
            [
                (
                    r.id,
                    r.username,
                    r.device_id,
                    _state(r),
                    r.client_kind,
                    r.device_type,
                    _when(r.last_seen),
                    _when(r.trusted_until),
                )
                for r in rows
            ],
            ["ID", "USER", "DEVICE", "STATE", "KIND", "TYPE", "LAST SEEN", "TRUSTED UNTIL"],
        ),
    )
    return OK


def _op(name: str) -> Callable[[argparse.Namespace, Components], int]:
    def run(args, c: Components) -> int:
        svc = _service(c)
        rec = getattr(svc, name)(args.id, actor=_actor())
        _emit(
            args,
            rec.as_dict(),
            f"{name}: device {rec.id} ({rec.username} {rec.device_id}) is "
            f"{'deleted' if name == 'delete' else _state(rec)}",
        )
        return OK

    return run


def _rules(c: Components) -> RuleService:
    return RuleService(RuleStore(c.repo.engine), c.audit, c.bus)


def _criteria(r) -> str:
    return (
        " ".join(
            f"{k}={getattr(r, k)}"
            for k in ("device_type", "model", "os", "user_agent", "client_kind")
            if getattr(r, k, None)
        )
        or "(any device)"
    )


def _rules_list(args, c: Components) -> int:
    devices = getattr(c.settings, "devices", None)
    file_rules = list(getattr(devices, "rules", ()))
    stored = _rules(c).rules()
    rows: list[tuple[object, ...]] = [
        (
            "-",
            i,
            "file",
            r.name,
            getattr(r.action, "value", r.action),
            _criteria(r),
            ",".join(sorted(r.groups)) or "everyone",
        )
        for i, r in enumerate(file_rules, 1)
    ]
    rows += [
        (r.id, len(file_rules) + r.position, "store", r.name, r.action, _criteria(r), ",".join(r.groups) or "everyone")
        for r in stored
    ]
    _emit(
        args,
        {
            "file": [{"name": r.name, "action": getattr(r.action, "value", r.action)} for r in file_rules],
            "store": [r.as_dict() for r in stored],
        },
        _table(rows, ["ID", "#", "SOURCE", "NAME", "ACTION", "MATCHES", "GROUPS"]),
    )
    return OK


def _rules_add(args, c: Components) -> int:
    data = {
        "name": args.name,
        "action": args.action,
        "device_type": args.device_type,
        "model": args.model,
        "os": args.os,
        "user_agent": args.user_agent,
        "client_kind": args.client_kind,
        "groups": args.group or [],
        "position": args.position,
    }
    rec = _rule_call(_rules(c).add_rule, data, actor=_actor())
    _emit(
        args,
        rec.as_dict(),
        f"added device rule {rec.id} ({rec.name}: {rec.action}) at position {rec.position} of the store's rules",
    )
    return OK


def _rules_delete(args, c: Components) -> int:
    rec = _rule_call(_rules(c).delete_rule, args.id, actor=_actor())
    _emit(args, rec.as_dict(), f"deleted device rule {rec.id} ({rec.name})")
    return OK


def _rules_move(args, c: Components) -> int:
    rec = _rule_call(_rules(c).move_rule, args.id, args.position, actor=_actor())
    _emit(args, rec.as_dict(), f"moved device rule {rec.id} ({rec.name}) to position {rec.position}")
    return OK


def _policy_list(args, c: Components) -> int:
    devices = getattr(c.settings, "devices", None)
    file_policies = list(getattr(devices, "policies", ()))
    stored = _rules(c).policies()
    fmt = lambda st: " ".join(f"{k}={v}" for k, v in st.items()) or "-"  # noqa: E731
    rows: list[tuple[object, ...]] = [
        ("-", i, "file", p.name, p.group, fmt(dict(p.settings))) for i, p in enumerate(file_policies, 1)
    ]
    rows += [(p.id, len(file_policies) + p.position, "store", p.name, p.group, fmt(p.settings)) for p in stored]
    _emit(
        args,
        {
            "file": [{"name": p.name, "group": p.group, "settings": dict(p.settings)} for p in file_policies],
            "store": [p.as_dict() for p in stored],
        },
        _table(rows, ["ID", "#", "SOURCE", "NAME", "GROUP", "SETTINGS"]),
    )
    return OK


def _policy_add(args, c: Components) -> int:
    settings = {
        k: v
        for k, v in (
            ("max_devices", args.max_devices),
            ("trust_lifetime_hours", args.trust_lifetime_hours),
            ("certprov", args.certprov),
            ("default_action", args.default_action),
            ("problem_action", args.problem_action),
        )
        if v is not None
    }
    if args.require_second_factor is not None:
        settings["require_second_factor"] = args.require_second_factor == "yes"
    data = {"group": args.group, "name": args.name, "settings": settings, "position": args.position}
    rec = _rule_call(_rules(c).add_policy, data, actor=_actor())
    _emit(
        args,
        rec.as_dict(),
        f"added group policy {rec.id} ({rec.name} for {rec.group}) at position {rec.position} of the store's policies",
    )
    return OK


def _policy_delete(args, c: Components) -> int:
    rec = _rule_call(_rules(c).delete_policy, args.id, actor=_actor())
    _emit(args, rec.as_dict(), f"deleted group policy {rec.id} ({rec.name})")
    return OK


def _policy_move(args, c: Components) -> int:
    rec = _rule_call(_rules(c).move_policy, args.id, args.position, actor=_actor())
    _emit(args, rec.as_dict(), f"moved group policy {rec.id} ({rec.name}) to position {rec.position}")
    return OK


def _rule_call(fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except RuleError as e:
        raise _Usage(f"--{e.field.removeprefix('settings.').replace('_', '-')}: {e.message}") from None


def _Run(handler) -> _Runner:
    return _Runner(handler, _default_settings, refused=(DeviceError, RuleNotFound))


def register(subparsers: argparse._SubParsersAction, common_parent: argparse.ArgumentParser) -> None:
    """Add ``device`` to the ``ucgate`` command line."""
    out = json_parent()
    g = subparsers.add_parser("device", help="user/device partnerships", description="user/device partnerships")
    sub = g.add_subparsers(dest="device_command", metavar="COMMAND", required=True)
    p = sub.add_parser("list", parents=[common_parent, out], help="list partnerships")
    p.add_argument("--user")
    p.add_argument("--state", choices=["allowed", "quarantined", "blocked"])
    p.set_defaults(func=_Run(_list))
    for name, help in (
        ("approve", "allow a quarantined device (trusted for the trust lifetime)"),
        ("block", "block a device and close its live connections"),
        ("unblock", "allow a blocked device again (untrusted until 2FA)"),
        ("wipe", "flag a remote wipe (ActiveSync) and refuse the device"),
        ("delete", "forget the partnership (the device is new next time)"),
    ):
        p = sub.add_parser(name, parents=[common_parent, out], help=help, description=help)
        p.add_argument("id", type=int, help="the partnership id (see device list)")
        p.set_defaults(func=_Run(_op(name)))
    _register_rules(sub, common_parent, out)


ACTIONS = ["allowed", "quarantined", "blocked"]


def _register_rules(sub, common_parent: argparse.ArgumentParser, out: argparse.ArgumentParser) -> None:
    parents = [common_parent, out]
    r = sub.add_parser(
        "rules",
        help="device access rules (the store's, after the configuration file's)",
        description="Device access rules choose the state of a new device; the first match "
        "wins. The configuration file's [[devices.rules]] come first (read-only "
        "here), then the store's, edited here; a change is in force on every "
        "running node within a second.",
    )
    rs = r.add_subparsers(dest="rules_command", metavar="COMMAND", required=True)
    p = rs.add_parser("list", parents=parents, help="the rules in force, in order")
    p.set_defaults(func=_Run(_rules_list))
    p = rs.add_parser("add", parents=parents, help="add a rule to the store's list")
    p.add_argument("--name", required=True)
    p.add_argument("--action", required=True, choices=ACTIONS)
    for opt in ("device-type", "model", "os", "user-agent", "client-kind"):
        p.add_argument(f"--{opt}", metavar="GLOB", help="case-insensitive glob (optional)")
    p.add_argument(
        "--group", action="append", metavar="GROUP", help="only for members of GROUP (name or DN; repeat for several)"
    )
    p.add_argument("--position", type=int, help="1: first of the store's rules (default: last)")
    p.set_defaults(func=_Run(_rules_add))
    p = rs.add_parser("delete", parents=parents, help="delete one of the store's rules")
    p.add_argument("id", type=int, help="the rule's id (rules list)")
    p.set_defaults(func=_Run(_rules_delete))
    p = rs.add_parser("move", parents=parents, help="move one of the store's rules")
    p.add_argument("id", type=int, help="the rule's id (rules list)")
    p.add_argument("position", type=int, help="its new position among the store's rules (1: first)")
    p.set_defaults(func=_Run(_rules_move))

    g = sub.add_parser(
        "policy",
        help="per-group device policy (the store's, after the configuration file's)",
        description="Per-group device settings; the first policy whose group the user is in "
        "wins. The configuration file's [[policy]] come first (read-only here), "
        "then the store's, edited here.",
    )
    gs = g.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    p = gs.add_parser("list", parents=parents, help="the group policies in force, in order")
    p.set_defaults(func=_Run(_policy_list))
    p = gs.add_parser("add", parents=parents, help="add a group policy to the store's list")
    p.add_argument("--group", required=True, help="the directory group (name or DN)")
    p.add_argument("--name")
    p.add_argument("--max-devices", type=int)
    p.add_argument("--trust-lifetime-hours", type=float)
    p.add_argument("--certprov", choices=["allowed-only", "deny"])
    p.add_argument("--default-action", choices=ACTIONS)
    p.add_argument("--problem-action", choices=ACTIONS)
    p.add_argument("--require-second-factor", choices=["yes", "no"])
    p.add_argument("--position", type=int)
    p.set_defaults(func=_Run(_policy_add))
    p = gs.add_parser("delete", parents=parents, help="delete one of the store's group policies")
    p.add_argument("id", type=int)
    p.set_defaults(func=_Run(_policy_delete))
    p = gs.add_parser("move", parents=parents, help="move one of the store's group policies")
    p.add_argument("id", type=int)
    p.add_argument("position", type=int)
    p.set_defaults(func=_Run(_policy_move))
