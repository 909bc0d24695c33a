"""Issue 13 item 9: device trust that needs a second factor nobody can give — the check-config
findings, and the id service quarantining (not challenging) users without a second factor."""

from __future__ import annotations

import base64
import time

from ucgate.config import LockoutConfig, from_dict
from ucgate.id.devices import open_device_service
from ucgate.id.factory import open_services
from ucgate.id.otp import OtpService, totp
from ucgate.id.policy_check import device_policy_findings
from ucgate.id.twofactor import TwoFactorSettings
from ucgate.protocols.devices import device_from_request


def _config(tmp_path, auth=None, devices=None, **extra):
    raw = {
        "gateway": {"listen": "127.0.0.1:0", "plain_http": True},
        "upstreams": {"frontend": {"url": "http://127.0.0.1:9"}},
        "auth": auth or {},
        "devices": devices or {},
        **extra,
    }
    return from_dict(raw, path=tmp_path / "u.toml")


def test_findings(tmp_path):
    levels = lambda **kw: [lvl for lvl, _ in device_policy_findings(_config(tmp_path, **kw))]  # noqa: E731
    assert levels(devices={"default_action": "allowed"}) == ["error"]
    assert levels(devices={"default_action": "allowed", "require_second_factor": False}) == []
    assert levels(auth={"two_factor": "otp-appended"}, devices={"default_action": "allowed"}) == []
    assert levels(auth={"two_factor_groups": {"mobile": "otp-appended"}}, devices={"default_action": "allowed"}) == [
        "warning"
    ]
    assert levels() == ["warning"]  # the defaults: approvals that expire
    assert levels(devices={"enabled": False}) == []
    # a [[policy]] that allows for its group is checked as well, and named
    msgs = device_policy_findings(
        _config(
            tmp_path,
            policy=[{"group": "sales", "default_action": "allowed", "require_second_factor": True}],
            devices={"require_second_factor": False},
        )
    )
    assert len(msgs) == 1 and '[[policy]] group "sales"' in msgs[0][1] and msgs[0][0] == "error"
    assert 'require_second_factor = false in [[policy]] group "sales"' in msgs[0][1]


def _ids(tmp_path, two_factor=None):
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "keys").mkdir(mode=0o700, exist_ok=True)
    ids = open_services(
        store_url=f"sqlite:///{tmp_path / 'data' / 'u.db'}",
        key_file=tmp_path / "keys" / "k",
        audit_file=None,
        lockout=LockoutConfig(user_failures=5, ip_failures=50, window=900),
        two_factor=two_factor,
    )
    ids.users.add("alice")
    return ids


def _facts(device):
    return device_from_request(
        "eas", "POST", f"/Microsoft-Server-ActiveSync?Cmd=Sync&User=alice&DeviceId={device}&DeviceType=iPhone", {}
    )


def test_the_id_service_quarantines_when_no_second_factor_can_come(tmp_path):
    ids = _ids(tmp_path)
    try:
        svc = open_device_service(_config(tmp_path, devices={"default_action": "allowed"}), ids)
        check = svc.check("alice", _facts("P1"), service="eas", second_factor_ok=False)
        assert (check.outcome, check.reason) == ("quarantine", "new-device-approval-required")
        assert svc.store.get("alice", "p1").state == "quarantined"
    finally:
        ids.close()


def test_the_id_service_still_challenges_an_enrolled_otp_user(tmp_path):
    ids = _ids(tmp_path, TwoFactorSettings("otp-appended", (), 24.0))
    try:
        cfg = _config(tmp_path, auth={"two_factor": "otp-appended"}, devices={"default_action": "allowed"})
        svc = open_device_service(cfg, ids)
        # not enrolled yet: no code can come, so no challenge
        assert svc.check("alice", _facts("P1"), service="eas", second_factor_ok=False).outcome == "quarantine"
        otp = OtpService(ids.components.repo, ids.components.keyring, users=ids.users)
        e = otp.begin_enrolment("alice")
        secret = base64.b32decode(e.secret_b32 + "=" * (-len(e.secret_b32) % 8))
        assert otp.confirm_enrolment("alice", totp(secret, time.time()))
        check = svc.check("alice", _facts("P2"), service="eas", second_factor_ok=False)
        assert (check.outcome, check.reason) == ("challenge", "new-device-second-factor")
    finally:
        ids.close()
