"""ucgate.config: the messages of a bad configuration, in the wording the hand-written parser had
(pydantic's errors are turned into '<file>: <dotted.key>: <message>')."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from ucgate.config import ConfigError, from_dict

BASE = {"gateway": {"plain_http": True}, "upstreams": {"frontend": {"url": "http://127.0.0.1:1"}}}


def _with(**tables: dict) -> dict:
    raw = copy.deepcopy(BASE)
    for name, table in tables.items():
        raw[name] = {**raw.get(name, {}), **table} if isinstance(table, dict) else table
    return raw


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        (
            {"gateway": {"limits": {"max_header_bytes": 0}}},
            "gateway.limits.max_header_bytes: must be greater than 0, got 0",
        ),
        (
            {"gateway": {"limits": {"max_header_bytes": True}}},
            "gateway.limits.max_header_bytes: expected int, got a boolean",
        ),
        ({"gateway": {"plain_http": "yes"}}, "gateway.plain_http: expected bool, got str 'yes'"),
        ({"gateway": {"listen": "nope"}}, "gateway.listen: expected host:port, got 'nope'"),
        (
            {"gateway": {"trusted_proxies": ["10.0.0.0/8", "x"]}},
            "gateway.trusted_proxies[1]: not an address or CIDR: 'x'",
        ),
        (
            {"gateway": {"identity_header": "X User"}},
            "gateway.identity_header: must be a header name (letters, digits, '-')",
        ),
        ({"gateway": {"listen_host": "x"}}, "gateway.listen_host: unknown setting (check the spelling; see README)"),
        ({"gateway": 5}, "[gateway] must be a table"),
        ({"nope": 1}, "nope: unknown setting (check the spelling; see README)"),
        (
            {"upstreams": {"frontend": {"url": "ftp://x"}}},
            "upstreams.frontend.url: expected http(s)://host[:port], got 'ftp://x'",
        ),
        (
            {"upstreams": {"frontend": {"url": "http://x/a"}}},
            "upstreams.frontend.url: must not have a path or query; paths are forwarded unchanged",
        ),
        ({"services": {"eas": {"upstream": "mail"}}}, "services.eas.upstream: no [upstreams.mail] is defined"),
        (
            {"services": {"eas": {"backend": "magic"}}},
            "services.eas.backend: must be one of none, passthrough, vault, kcd, got 'magic'",
        ),
        (
            {"services": {"meet": {"methods": ["GET", "get"]}}},
            "services.meet.methods[1]: write methods in upper case: 'get'",
        ),
        ({"auth": {"methods": ["ntlm", "digest"]}}, "auth.methods[1]: expected negotiate, ntlm or basic, got 'digest'"),
        (
            {"auth": {"extended_protection": "maybe"}},
            "auth.extended_protection: expected require, allow or off, got 'maybe'",
        ),
        ({"auth": {"extended_protection": 1}}, "auth.extended_protection: expected str, got int 1"),
        (
            {"auth": {"two_factor_groups": {"g": "sms"}}},
            "auth.two_factor_groups.g: expected off, otp-appended or device-approval, got 'sms'",
        ),
        ({"auth": {"trace": "all"}}, "auth.trace: expected none, low or verbose, got 'all'"),
        (
            {"store": {"url": "mysql://x"}},
            "store.url: expected sqlite:///path or postgresql+psycopg://..., got 'mysql://x'",
        ),
        (
            {"directory": {"url": "ldap://dc", "bind_dn": "cn=x", "base_dn": "dc=x", "bind_password": "pw"}},
            "directory.start_tls: plain ldap:// needs start_tls = true (passwords cross this link)",
        ),
        (
            {"kerberos": {"realm": "contoso.local"}},
            "kerberos.realm: Kerberos realms of AD are upper case: 'CONTOSO.LOCAL', got 'contoso.local'",
        ),
        ({"kerberos": {"front_end_spn": {"nope": "HTTP/x"}}}, "kerberos.front_end_spn.nope: unknown service"),
        (
            {"devices": {"rules": [{"action": "allowed"}, {"action": "maybe"}]}},
            "devices.rules[1].action: required: one of allowed, quarantined, blocked, got 'maybe'",
        ),
        ({"devices": {"services": ["eas", "nope"]}}, "devices.services[1]: unknown service 'nope'"),
        ({"devices": {"max_devices": -1}}, "devices.max_devices: must be at least 0, got -1"),
        (
            {"devices": {"notify": {"smtp_hots": "x"}}},
            "devices.notify.smtp_hots: unknown setting (check the spelling; see README)",
        ),
        (
            {"policy": [{"max_devices": 3}]},
            "policy[0].group: required: the directory group (name or DN) this policy is for",
        ),
        ({"log": {"format": "xml"}}, 'log.format: expected "text" or "json", got \'xml\''),
        ({"metrics": {"allow": ["127.0.0.1", "everyone"]}}, "metrics.allow[1]: not an address or CIDR: 'everyone'"),
        ({"audit": {"syslog": {"address": "siem"}}}, "audit.syslog.address: expected host:port, got 'siem'"),
    ],
)
def test_messages_name_the_file_and_the_key(tmp_path, tables, message):
    path = tmp_path / "ucgate.toml"
    with pytest.raises(ConfigError) as e:
        from_dict(_with(**tables), path=path)
    assert str(e.value) == f"{path}: {message}"


def test_role_dependent_requirements(tmp_path):
    with pytest.raises(ConfigError, match=r"gateway\.tls_cert: required unless plain_http = true"):
        from_dict({"upstreams": BASE["upstreams"]})
    with pytest.raises(ConfigError, match="upstreams: define at least"):
        from_dict({"gateway": {"plain_http": True}})
    with pytest.raises(ConfigError, match=r"id_service: required: \[id_service\]"):
        from_dict({}, role="id-service")


def test_paths_are_relative_to_the_file_and_values_typed(tmp_path):
    (tmp_path / "http.keytab").write_bytes(b"\x05\x02")
    raw = _with(
        data={"dir": "state"},
        store={"key_file": "keys/ucgate.key"},
        auth={"netbios_domain": "contoso", "failure_floor": 0},
        kerberos={"realm": "CONTOSO.LOCAL", "keytab": "http.keytab"},
        gateway={"published_name": "gw.contoso.com"},
    )
    cfg = from_dict(raw, path=tmp_path / "ucgate.toml")
    assert cfg.data_dir == tmp_path / "state"
    assert cfg.store.key_file == tmp_path / "keys" / "ucgate.key"
    assert cfg.store.url == f"sqlite:///{tmp_path / 'state' / 'ucgate.db'}"
    assert cfg.store.audit_file == tmp_path / "state" / "audit.jsonl"
    assert cfg.auth.netbios_domain == "CONTOSO" and cfg.auth.failure_floor == 0.0
    assert isinstance(cfg.auth.failure_floor, float)
    assert cfg.kerberos.service_principal == "HTTP/gw.contoso.com"
    assert cfg.kerberos.published_name == "gw.contoso.com"
    assert cfg.upstreams["frontend"].name == "frontend" and cfg.upstreams["frontend"].port == 1
    assert cfg.gateway.listen_host == "0.0.0.0" and cfg.gateway.listen_port == 443
    # the closed sets are StrEnums: equal to their strings
    assert cfg.auth.extended_protection == "require" and cfg.auth.methods == ("negotiate", "ntlm", "basic")


def test_models_are_frozen():
    cfg = from_dict(copy.deepcopy(BASE))
    with pytest.raises(ValueError):  # a model: pydantic's ValidationError
        cfg.auth.realm = "x"
    with pytest.raises(dataclasses.FrozenInstanceError):  # Limits, Timeouts: pydantic dataclasses
        cfg.gateway.limits.max_body_bytes = 1


@pytest.mark.parametrize(
    "value,listen,expected",
    [
        ("syslog.example:6514", False, ("syslog.example", 6514)),
        ("[2001:db8::1]:514", False, ("2001:db8::1", 514)),
        ("127.0.0.1:1", False, ("127.0.0.1", 1)),
        (":514", False, None),  # a receiver needs a host
        (":514", True, ("", 514)),  # a listener: every address
        ("h:0", False, None),
        ("h:0", True, ("h", 0)),
        ("h:65535", False, ("h", 65535)),
        ("h:65536", True, None),
        ("h:-1", True, None),
        ("h:x", True, None),
        ("h", True, None),
        ("h:", False, None),
    ],
)
def test_host_port_is_one_rule_for_listeners_and_peers(value, listen, expected):
    from ucgate.config import host_port

    assert host_port(value, listen=listen) == expected
