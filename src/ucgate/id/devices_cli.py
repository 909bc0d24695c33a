"""``ucgate device list | approve | block | unblock | wipe | delete`` (admin commands).

Run on the id service's host (the store is read directly). A block, wipe or delete made here
is recorded in the store at once; a gateway running in another process refuses the device's
next request (nothing is cached for refused devices) and, in the same process, closes its live
connections through the event bus.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ..store.partnerships import PartnershipStore
from .admin_cli import OK, Components, _actor, _default_settings, _emit, _Runner, _table, _when
from .devices import DeviceError, DeviceService


def _service(c: Components) -> DeviceService:
    return DeviceService(PartnershipStore(c.repo.engine), c.audit)


def _state(rec) -> str:
    """What the device gets now: a pending wipe overrides the stored state (every request is
    refused, EAS gets the wipe directive), so say it first."""
    return f"wipe pending ({rec.state})" if rec.wipe_pending else rec.state


def _list(args, c: Components) -> int:
    rows = _service(c).list(user=args.user, state=args.state)
    _emit(args, [r.as_dict() for r in rows], _table(
        [(r.id, r.username, r.device_id, _state(r),
          r.client_kind, r.device_type, _when(r.last_seen), _when(r.trusted_until)) for r in rows],
        ["ID", "USER", "DEVICE", "STATE", "KIND", "TYPE", "LAST SEEN", "TRUSTED UNTIL"]))
    return OK


def _op(name: str) -> Callable[[argparse.Namespace, Components], int]:
    def run(args, c: Components) -> int:
        svc = _service(c)
        rec = getattr(svc, name)(args.id, actor=_actor())
        _emit(args, rec.as_dict(), f"{name}: device {rec.id} ({rec.username} {rec.device_id}) is "
                                   f"{'deleted' if name == 'delete' else _state(rec)}")
        return OK
    return run



def _Run(handler) -> _Runner:
    return _Runner(handler, _default_settings, refused=(DeviceError,))


def register(subparsers: argparse._SubParsersAction, common_parent: argparse.ArgumentParser) -> None:
    """Add ``device`` to the ``ucgate`` command line."""
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="machine-readable output")
    g = subparsers.add_parser("device", help="user/device partnerships",
                              description="user/device partnerships")
    sub = g.add_subparsers(dest="device_command", metavar="COMMAND", required=True)
    p = sub.add_parser("list", parents=[common_parent, out], help="list partnerships")
    p.add_argument("--user")
    p.add_argument("--state", choices=["allowed", "quarantined", "blocked"])
    p.set_defaults(func=_Run(_list))
    for name, help in (("approve", "allow a quarantined device (trusted for the trust lifetime)"),
                       ("block", "block a device and close its live connections"),
                       ("unblock", "allow a blocked device again (untrusted until 2FA)"),
                       ("wipe", "flag a remote wipe (ActiveSync) and refuse the device"),
                       ("delete", "forget the partnership (the device is new next time)")):
        p = sub.add_parser(name, parents=[common_parent, out], help=help, description=help)
        p.add_argument("id", type=int, help="the partnership id (see device list)")
        p.set_defaults(func=_Run(_op(name)))
