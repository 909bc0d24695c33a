"""Device rules and group policies in the store (ucgate.id.rules, ucgate.store.rules): order,
validation, audit, the rules-changed event in the change's transaction, the configuration
file's entries first, and another process's DeviceService reloading within a second."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from tests.store.backends import postgres_database, postgres_url, store_url  # noqa: F401
from ucgate.id.audit import AuditLog
from ucgate.id.devices import DeviceService
from ucgate.id.events import RULES_CHANGED, EventBus, EventFollower, event_of
from ucgate.id.rules import RuleError, RuleNotFound, RuleService
from ucgate.policy.devices import DeviceRule
from ucgate.policy.groups import GroupPolicy
from ucgate.protocols.devices import DeviceFacts
from ucgate.store import PartnershipStore, open_repository
from ucgate.store.outbox import Outbox
from ucgate.store.rules import RuleStore

T0 = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)


def facts(device_id: str, device_type: str | None, model: str | None = None) -> DeviceFacts:
    return DeviceFacts(
        device_id=device_id,
        device_type=device_type,
        model=model,
        os=None,
        user_agent=None,
        client_kind="eas",
        source="eas-query",
        problem=None,
    )


class Node:
    """One process's view of a shared SQLite store: its own engine, bus and follower."""

    def __init__(self, url: str, *, file_rules=(), file_policies=(), groups=None, follow=False):
        self.repo = open_repository(url)
        self.bus = EventBus(Outbox(self.repo.engine))
        self.audit = AuditLog(self.repo, None)
        self.rules = RuleService(RuleStore(self.repo.engine), self.audit, self.bus)
        self.groups = groups or {}
        self.devices = DeviceService(
            PartnershipStore(self.repo.engine),
            self.audit,
            self.bus,
            rules=file_rules,
            defaults={"default_action": "allowed", "require_second_factor": False},
            group_policies=file_policies,
            is_member=lambda u, g: g in self.groups.get(u, ()),
            clock=lambda: T0,
            rule_store=RuleStore(self.repo.engine),
        )
        self.bus.subscribe_rows(self.devices.on_event_row)
        self.follower = EventFollower(self.bus, self.bus.outbox, fallback_poll=0.2) if follow else None
        if self.follower:
            self.follower.start()

    def decide(self, device_id: str, device_type: str | None, user: str = "alice", model: str | None = None) -> str:
        return self.devices.check(user, facts(device_id, device_type, model), service="eas").reason

    def close(self) -> None:
        if self.follower:
            self.follower.stop()
        self.audit.close()
        self.repo.close()


@pytest.fixture
def url(store_url):
    return store_url


@pytest.fixture
def node(url):
    n = Node(url)
    yield n
    n.close()


def test_add_move_delete_keep_positions_audit_and_write_the_event_in_the_transaction(node):
    svc = node.rules
    before = node.bus.outbox.last_id()
    a = svc.add_rule({"name": "a", "action": "blocked", "device_type": "Android*"}, actor="cli:root")
    b = svc.add_rule({"name": "b", "action": "quarantined", "model": "iPad*"}, actor="web:alice")
    c = svc.add_rule({"name": "c", "action": "allowed", "groups": ["Sales"], "position": 1}, actor="api:t1")
    assert [(r.name, r.position) for r in svc.rules()] == [("c", 1), ("a", 2), ("b", 3)]
    assert svc.move_rule(c.id, 3, actor="cli:root").position == 3
    assert svc.move_rule(b.id, 99, actor="cli:root").position == 3  # past the end: last
    assert [r.name for r in svc.rules()] == ["a", "c", "b"]
    svc.delete_rule(a.id, actor="cli:root")
    assert [(r.name, r.position) for r in svc.rules()] == [("c", 1), ("b", 2)]
    assert svc.rules()[0].groups == ("Sales",) and svc.rules()[0].created_by == "api:t1"
    rows = node.bus.outbox.since(before)
    assert len(rows) == 6 and {r.kind for r in rows} == {RULES_CHANGED}
    assert all(r.username == "*" and event_of(r) is None for r in rows)  # known: no "unknown kind" warning
    assert rows[0].actor == "cli:root" and rows[0].reason == "device rule added: a"
    audit = [e for e in node.audit.tail(20) if e.action.startswith("rules.")]
    assert [e.action for e in audit] == ["rules.add"] * 3 + ["rules.move"] * 2 + ["rules.delete"]
    assert audit[0].details["rule_action"] == "blocked" and audit[2].actor == "api:t1"
    with pytest.raises(RuleNotFound):
        svc.delete_rule(a.id, actor="cli:root")
    with pytest.raises(RuleNotFound):
        svc.move_rule(2**70, 1, actor="cli:root")

    p = svc.add_policy({"group": "Executives", "settings": {"max_devices": 2, "certprov": "deny"}}, actor="cli:root")
    q = svc.add_policy(
        {"group": "Sales", "name": "sales", "settings": {"trust_lifetime_hours": 8}, "position": 1}, actor="cli:root"
    )
    assert [(x.name, x.position) for x in svc.policies()] == [("sales", 1), ("Executives", 2)]
    assert svc.policies()[1].settings == {"max_devices": 2, "certprov": "deny"}
    svc.move_policy(p.id, 1, actor="cli:root")
    svc.delete_policy(q.id, actor="cli:root")
    assert [x.name for x in svc.policies()] == ["Executives"]
    assert [e.action for e in node.audit.tail(4)] == ["policy.add", "policy.add", "policy.move", "policy.delete"]


@pytest.mark.parametrize(
    "data, field",
    [
        ({"action": "blocked"}, "name"),
        ({"name": "x"}, "action"),
        ({"name": "x", "action": "maybe"}, "action"),
        ({"name": "x", "action": "blocked", "client_kind": "toaster"}, "client_kind"),
        ({"name": "x", "action": "blocked", "os": "a" * 257}, "os"),
        ({"name": "x", "action": "blocked", "model": 3}, "model"),
        ({"name": "x\n", "action": "blocked"}, "name"),
        ({"name": "x", "action": "blocked", "groups": "Sales"}, "groups"),
        ({"name": "x", "action": "blocked", "groups": [""]}, "groups"),
        ({"name": "x", "action": "blocked", "position": 0}, "position"),
        ({"name": "x", "action": "blocked", "position": "1"}, "position"),
        ({"name": "x", "action": "blocked", "colour": "red"}, "colour"),
    ],
)
def test_a_bad_rule_is_refused_naming_the_field_and_nothing_changes(node, data, field):
    before = node.bus.outbox.last_id()
    with pytest.raises(RuleError) as e:
        node.rules.add_rule(data, actor="cli:root")
    assert e.value.field == field
    assert node.rules.rules() == [] and node.bus.outbox.last_id() == before


@pytest.mark.parametrize(
    "data, field",
    [
        ({"settings": {"max_devices": 1}}, "group"),
        ({"group": "G"}, "settings"),
        ({"group": "G", "settings": {"max_devices": -1}}, "settings.max_devices"),
        ({"group": "G", "settings": {"max_devices": True}}, "settings.max_devices"),
        ({"group": "G", "settings": {"trust_lifetime_hours": 0}}, "settings.trust_lifetime_hours"),
        ({"group": "G", "settings": {"certprov": "maybe"}}, "settings.certprov"),
        ({"group": "G", "settings": {"default_action": "x"}}, "settings.default_action"),
        ({"group": "G", "settings": {"require_second_factor": "yes"}}, "settings.require_second_factor"),
        ({"group": "G", "settings": {"colour": 1}}, "settings.colour"),
        ({"group": "G", "settings": []}, "settings"),
    ],
)
def test_a_bad_group_policy_is_refused_naming_the_field(node, data, field):
    with pytest.raises(RuleError) as e:
        node.rules.add_policy(data, actor="cli:root")
    assert e.value.field == field
    assert node.rules.policies() == []


def test_the_file_rules_come_first_then_the_stores_and_a_reload_of_the_file_keeps_the_stores(url):
    n = Node(
        url,
        file_rules=[DeviceRule(action="blocked", device_type="WP*", name="file-no-wp")],
        file_policies=[GroupPolicy(name="file-sales", group="sales", settings={"max_devices": 1})],
        groups={"alice": {"sales", "staff"}},
    )
    try:
        n.rules.add_rule(
            {"name": "allow-wp", "action": "allowed", "device_type": "WP*", "position": 1}, actor="cli:root"
        )
        n.rules.add_rule({"name": "no-android", "action": "blocked", "device_type": "Android*"}, actor="cli:root")
        assert [r.name for r in n.devices.rules] == ["file-no-wp", "allow-wp", "no-android"]
        assert n.decide("wp1", "WP8") == "new-device-blocked"  # the file's rule wins
        assert n.decide("and1", "Android") == "new-device-blocked"  # the store's applies too
        n.rules.add_policy({"group": "staff", "settings": {"max_devices": 5}}, actor="cli:root")
        assert [p.name for p in n.devices.group_policies] == ["file-sales", "staff"]
        assert n.devices.policy_for("alice")[2] == "file-sales"
        # SIGHUP: the file's lists are replaced; the store's stay after them
        n.devices.set_policy(
            rules=[], defaults={"default_action": "allowed", "require_second_factor": False}, group_policies=[]
        )
        assert [r.name for r in n.devices.rules] == ["allow-wp", "no-android"]
        assert n.decide("wp2", "WP8") == "new-device-allowed"
        assert n.devices.policy_for("alice")[2] == "staff"
        # a rule naming a group limits it to that group's members
        n.rules.add_rule(
            {"name": "staff-ipad", "action": "quarantined", "model": "iPad*", "groups": ["staff"], "position": 1},
            actor="cli:root",
        )
        assert n.decide("ipad1", None, model="iPad8") == "new-device-quarantined"
        assert n.decide("ipad1", None, "bob", model="iPad8") == "new-device-allowed"
    finally:
        n.close()


def test_a_change_made_by_another_process_is_in_force_within_a_second(url):
    gateway = Node(url, follow=True)  # a running node
    admin = Node(url)  # the CLI, the REST API of another node
    try:
        assert gateway.decide("and1", "Android") == "new-device-allowed"
        gateway.follower.caught_up.wait(5)
        t0 = time.monotonic()
        rule = admin.rules.add_rule(
            {"name": "no-android", "action": "blocked", "device_type": "Android*"}, actor="cli:root"
        )
        n = 0
        while gateway.decide(f"and-{n}", "Android") != "new-device-blocked":
            assert time.monotonic() - t0 < 1.0, "not in force within a second"
            n += 1
            time.sleep(0.02)
        admin.rules.delete_rule(rule.id, actor="cli:root")
        while gateway.decide(f"and-x{n}", "Android") != "new-device-allowed":
            assert time.monotonic() - t0 < 3.0
            n += 1
            time.sleep(0.02)
    finally:
        admin.close()
        gateway.close()


def test_the_store_down_keeps_the_rules_in_force_and_retries(node, monkeypatch, caplog):
    node.rules.add_rule({"name": "no-android", "action": "blocked", "device_type": "Android*"}, actor="cli:root")
    store = node.devices.rule_store

    def down():
        raise OSError("store down")

    monkeypatch.setattr(store, "rules", down)
    assert node.devices.reload_store_rules() is False
    assert "cannot read the store's rules" in caplog.text
    assert node.decide("and1", "Android") == "new-device-blocked"  # still in force
    monkeypatch.undo()
    node.devices._reload_after = time.monotonic() - 1  # the retry is due
    node.rules.store.delete_rule(node.rules.rules()[0].id)  # (no event: only the retry can see it)
    assert node.decide("and2", "Android") == "new-device-allowed"
