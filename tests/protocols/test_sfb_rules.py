"""Path checks and service recognition rule by rule (issue 14): every refusal of
``split_target`` with its exact status and reason code, the look-alikes of issue 13 one class
at a time, what is accepted next to each rule, and ``recognise`` / ``with_overrides`` at their
boundaries."""

from __future__ import annotations

import pytest

from ucgate.protocols.http1 import HttpError
from ucgate.protocols.sfb import (
    DEFAULT_METHODS,
    DEFAULT_SERVICES,
    EAS_METHODS,
    UCWA_METHODS,
    Service,
    ServiceMap,
    split_target,
)

M = ServiceMap()


def refusal(target: str) -> tuple[int, str]:
    with pytest.raises(HttpError) as e:
        split_target(target)
    return e.value.status, e.value.reason


# --- refusals, one table per rule -----------------------------------------------------------


@pytest.mark.parametrize("target", ["http://gw/ucwa", "https://gw/", "*", "", "ucwa/x", " /ucwa", "?a=1", "#x"])
def test_only_origin_form(target):
    assert refusal(target) == (400, "bad-request-target")


@pytest.mark.parametrize("target", ["/a#b", "/#", "/a?b#c", "/a?b=%zz#c", "/a\\b#c"])
def test_fragment_anywhere(target):
    assert refusal(target) == (400, "fragment-in-target")


@pytest.mark.parametrize("target", ["/a\\b", "/\\", "/ucwa\\..\\x", "/a\\b%zz", "/a\\b?c"])
def test_backslash_in_path(target):
    assert refusal(target) == (400, "backslash-in-path")


@pytest.mark.parametrize("target", ["/a%", "/a%4", "/a%zz", "/a%g0", "/a%0g", "/%%41", "/a%2", "/a%41%", "/a%2f%zz"])
def test_malformed_escape(target):
    assert refusal(target) == (400, "bad-percent-escape")


@pytest.mark.parametrize(
    "escape",
    [
        "%2e",
        "%2E",
        "%2f",
        "%2F",
        "%25",
        "%5c",
        "%5C",
        "%00",
        "%01",
        "%09",
        "%0a",
        "%0A",
        "%0d",
        "%0D",
        "%10",
        "%1f",
        "%1F",
        "%7f",
        "%7F",
    ],
)
def test_dangerous_escape(escape):
    assert refusal(f"/ucwa/a{escape}b") == (400, "encoded-separator-or-dot")
    assert refusal(f"/ucwa/{escape}") == (400, "encoded-separator-or-dot")


@pytest.mark.parametrize(
    "target",
    [
        "/a%c0%ae",
        "/a%c0%af",
        "/a%e0%80%ae",
        "/a%ff",
        "/a%80",
        "/a%c3",
        "/a%ed%a0%80",
        "/a%f8%80%80%80%80",
        "/a%c3%28",
    ],
)
def test_escapes_that_are_not_utf8(target):
    assert refusal(target) == (400, "bad-utf8-in-path")


# every class: listed look-alikes (_LOOKALIKES), NFKC to a listed one, NFKC to ". / \ %"
LOOKALIKES = {
    "ideographic full stop U+3002": "%e3%80%82",
    "halfwidth ideographic full stop U+FF61": "%ef%bd%a1",
    "division slash U+2215": "%e2%88%95",
    "fraction slash U+2044": "%e2%81%84",
    "big solidus U+29F8": "%e2%a7%b8",
    "set minus U+2216": "%e2%88%96",
    "reverse solidus operator U+29F5": "%e2%a7%b5",
    "big reverse solidus U+29F9": "%e2%a7%b9",
    "vertical ideographic full stop U+FE12 (NFKC U+3002)": "%ef%b8%92",
    "fullwidth full stop U+FF0E": "%ef%bc%8e",
    "fullwidth solidus U+FF0F": "%ef%bc%8f",
    "fullwidth reverse solidus U+FF3C": "%ef%bc%bc",
    "fullwidth percent U+FF05": "%ef%bc%85",
    "one dot leader U+2024": "%e2%80%a4",
    "two dot leader U+2025": "%e2%80%a5",
    "horizontal ellipsis U+2026": "%e2%80%a6",
    "small full stop U+FE52": "%ef%b9%92",
    "small percent U+FE6A": "%ef%b9%aa",
    "small reverse solidus U+FE68": "%ef%b9%a8",
    "account of U+2100 (NFKC a/c)": "%e2%84%80",
    "digit one full stop U+2488 (NFKC 1.)": "%e2%92%88",
}


@pytest.mark.parametrize("escaped", LOOKALIKES.values(), ids=LOOKALIKES.keys())
def test_unicode_lookalikes(escaped):
    # the look-alike among many ASCII characters (the check looks at each distinct character)
    for target in (
        f"/{escaped}",
        f"/meet/alice{escaped}ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
        f"/ucwa/oauth/v1/applications/{escaped}/x-y_z~1",
        f"/meet/%c3%a9t%c3%a9{escaped}",
    ):
        assert refusal(target) == (400, "unicode-lookalike-in-path"), target


def test_lookalike_detail_names_the_code_point():
    with pytest.raises(HttpError) as e:
        split_target("/meet/a%ef%bc%8fb")
    assert "U+FF0F" in e.value.detail


@pytest.mark.parametrize(
    "target",
    [
        "/a/../ucwa",
        "/a/./b",
        "/..",
        "/.",
        "/a/..",
        "/a/.",
        "/a/.../b",
        "/a/....",
        "/a/..;x/b",
        "/a/.;jsessionid=1",
        "/a/..::$DATA/b",
        "/a/..:x",
        "/a/.;",
        "/Autodiscover/AutodiscoverService.svc/root/../../ucwa",
    ],
)
def test_dot_segments_raw(target):
    assert refusal(target) == (400, "dot-segment-in-path")


@pytest.mark.parametrize(
    "target",
    [
        "/a/%20../b",
        "/a/..%20/b",
        "/a/.%20",
        "/a/%20%20.",
        "/a/.%c2%a0/b",
        "/a/..%09x",
        "/a/..%e3%80%80/b",
        "/meet/%20..;x/y",
        "/meet/..%20:stream",
        "/a/..%3bx/b",
        "/a/..%3a$DATA",
        "/a/.%3B",
        "/meet/..%c2%85/x",
    ],
)
def test_dot_segments_after_decoding(target):
    status, reason = refusal(target)
    # %09 is a control escape: refused before decoding
    assert (status, reason) in {(400, "dot-segment-in-path"), (400, "encoded-separator-or-dot")}
    if "%09" not in target:
        assert reason == "dot-segment-in-path"


@pytest.mark.parametrize("target", ["/a//b", "//a", "//", "/a/b//", "/meet//x?y"])
def test_empty_segments(target):
    assert refusal(target) == (400, "empty-path-segment")


def test_the_first_rule_that_applies_names_the_refusal():
    assert refusal("/a\\b#c") == (400, "fragment-in-target")
    assert refusal("/a%zz\\b") == (400, "backslash-in-path")
    assert refusal("/a%2f%zz") == (400, "bad-percent-escape")
    assert refusal("/a%2e%c0%ae") == (400, "encoded-separator-or-dot")
    assert refusal("/..%c0%ae") == (400, "bad-utf8-in-path")
    assert refusal("//..%ef%bc%8e") == (400, "unicode-lookalike-in-path")
    assert refusal("//../x") == (400, "dot-segment-in-path")


@pytest.mark.parametrize(
    "target,detail",
    [
        ("http://gw/", "only origin-form targets are accepted"),
        ("/a%2f", "percent-encoded . / \\ % or control in path"),
        ("/a%ff", "percent-encoded bytes that are not UTF-8"),
        ("/a/%20..", "a segment of dots and whitespace"),
    ],
)
def test_refusal_details_for_the_log(target, detail):
    with pytest.raises(HttpError) as e:
        split_target(target)
    assert e.value.detail == detail


# --- what each rule lets through ------------------------------------------------------------


@pytest.mark.parametrize(
    "target,path,query",
    [
        ("/", "/", ""),
        ("/ucwa/x%20y?a=/../b", "/ucwa/x%20y", "a=/../b"),
        ("/a?b?c", "/a", "b?c"),
        ("/a?", "/a", ""),
        ("/a?x=%zz&y=\\&z=%2f", "/a", "x=%zz&y=\\&z=%2f"),  # the query is the front end's business
        ("/a/", "/a/", ""),  # a last empty segment is a directory
        ("/.well-known/x", "/.well-known/x", ""),
        ("/a/x./b", "/a/x./b", ""),
        ("/a/.x", "/a/.x", ""),
        ("/a/x..y", "/a/x..y", ""),
        ("/a/;x/b", "/a/;x/b", ""),
        ("/a/b;..", "/a/b;..", ""),
        ("/a%20b", "/a%20b", ""),
        ("/a%2d%7e%41%5b%7b%3a", "/a%2d%7e%41%5b%7b%3a", ""),
        ("/meet/caf%c3%a9", "/meet/caf%c3%a9", ""),
        ("/meet/%e4%bc%9a%e8%ad%b0", "/meet/%e4%bc%9a%e8%ad%b0", ""),
        ("/meet/%c2%b7", "/meet/%c2%b7", ""),  # middle dot: NFKC keeps it
        ("/meet/%c2%80x", "/meet/%c2%80x", ""),  # U+0080 is not a look-alike
        ("/meet/x%20.y", "/meet/x%20.y", ""),
        ("/meet/%20x", "/meet/%20x", ""),
    ],
)
def test_accepted(target, path, query):
    assert split_target(target) == (path, query)


# --- recognise ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,name",
    [
        ("/ucwa", "ucwa"),
        ("/ucwa/", "ucwa"),
        ("/UCWA/X", "ucwa"),
        ("/dialin", "dialin"),
        ("/Meet", "meet"),
        ("/autodiscover/xframe", "autodiscover-xframe"),
        ("/webticket/oauthtoken", "oauth"),
        ("/WebTicket/OAuthToken/", "oauth"),
        ("/webticket/oauthtoken/x", "webticket"),
        ("/webticket/oauthtokenx", "webticket"),
        ("/webticket", "webticket"),
        ("/microsoft-server-activesync", "eas"),
        ("/Microsoft-Server-ActiveSync/", "eas"),
        ("/microsoft-server-activesync/x/y", "eas"),
        ("/autodiscover/autodiscoverservice.svc", "autodiscover"),
    ],
)
def test_recognise_boundaries(path, name):
    s = M.recognise(path)
    assert s is not None and s.name == name, path


@pytest.mark.parametrize(
    "path",
    [
        "/ucw",
        "/ucwa2",
        "/diali",
        "/me",
        "/meetings",
        "/webticke",
        "/microsoft-server-activesyn",
        "/microsoft-server-activesyncx",
        "/microsoft-server-activesync.eas",
        "",
        "/autodiscover",
        "/autodiscover/autodiscoverservice.sv",
    ],
)
def test_recognise_nothing(path):
    assert M.recognise(path) is None, path


@pytest.mark.parametrize(
    "path,anonymous",
    [
        ("/autodiscover/autodiscoverservice.svc/root", True),
        ("/autodiscover/autodiscoverservice.svc/root/", True),
        ("/autodiscover/autodiscoverservice.svc/root//", False),  # split_target refuses this first
        ("/autodiscover/autodiscoverservice.svc/root/user", False),
        ("/autodiscover/autodiscoverservice.svc/rootx", False),
        ("/autodiscover/autodiscoverservice.svc/roo", False),
    ],
)
def test_exact_anonymous_root_and_its_protected_parent(path, anonymous):
    s = M.recognise(path)
    assert s is not None and s.name == "autodiscover" and s.anonymous is anonymous


def test_first_match_wins_and_services_keep_their_order():
    mine = (Service("a", "/x/y", exact=True, anonymous=True), Service("b", "/x/"), Service("c", "/x/y/z/"))
    m = ServiceMap(mine)
    assert m.services is mine
    assert m.recognise("/x/y").name == "a"
    assert m.recognise("/x/y/").name == "a"
    assert m.recognise("/x/y/z/w").name == "b"  # the parent prefix comes first
    assert ServiceMap().services == DEFAULT_SERVICES
    assert ServiceMap(()).recognise("/ucwa/") is None


def test_default_methods():
    assert M.recognise("/ucwa/x").methods == UCWA_METHODS
    assert M.recognise("/microsoft-server-activesync").methods == EAS_METHODS
    assert M.recognise("/meet/x").methods == DEFAULT_METHODS
    assert M.recognise("/microsoft-server-activesync").upstream == "exchange"
    assert M.recognise("/ucwa/x").upstream == "frontend"


# --- with_overrides -------------------------------------------------------------------------


def test_overrides_apply_to_every_rule_of_the_name():
    m = ServiceMap.with_overrides({"autodiscover": {"upstream": "edge", "max_body_bytes": 1024}})
    rules = [s for s in m.services if s.name == "autodiscover"]
    assert len(rules) == 2 and all(s.upstream == "edge" and s.max_body_bytes == 1024 for s in rules)
    assert [s.prefix for s in m.services] == [s.prefix for s in DEFAULT_SERVICES]
    untouched = [s for s in m.services if s.name != "autodiscover"]
    assert untouched == [s for s in DEFAULT_SERVICES if s.name != "autodiscover"]


def test_anonymous_override_leaves_the_protected_autodiscover_document_protected():
    m = ServiceMap.with_overrides({"autodiscover": {"anonymous": True, "description": "d"}})
    assert not m.recognise("/autodiscover/autodiscoverservice.svc/root/oauth/user").anonymous
    assert m.recognise("/autodiscover/autodiscoverservice.svc/root/oauth/user").description == "d"
    assert m.recognise("/autodiscover/autodiscoverservice.svc/root").anonymous
    m = ServiceMap.with_overrides({"autodiscover": {"anonymous": False}})
    assert not m.recognise("/autodiscover/autodiscoverservice.svc/root").anonymous  # the root rule takes it
    assert not m.recognise("/autodiscover/autodiscoverservice.svc/root/user").anonymous


def test_anonymous_override_of_other_services():
    m = ServiceMap.with_overrides({"ucwa": {"anonymous": True}, "meet": {"anonymous": False}})
    assert m.recognise("/ucwa/x").anonymous and not m.recognise("/meet/x").anonymous
    assert m.recognise("/lwa/x").anonymous  # not overridden


def test_methods_override_as_configured_names_or_bytes():
    m = ServiceMap.with_overrides({"ucwa": {"methods": ["GET", b"POST", "PATCH"]}, "eas": {"methods": ("POST",)}})
    assert m.recognise("/ucwa/x").methods == (b"GET", b"POST", b"PATCH")
    assert m.recognise("/microsoft-server-activesync").methods == (b"POST",)
    assert m.recognise("/meet/x").methods == DEFAULT_METHODS


def test_empty_overrides_change_nothing():
    assert ServiceMap.with_overrides({}).services == DEFAULT_SERVICES
    assert ServiceMap.with_overrides({"meet": {}}).services == DEFAULT_SERVICES


def test_unknown_service_names_are_listed():
    with pytest.raises(ValueError) as e:
        ServiceMap.with_overrides({"nope": {}, "bogus": {"enabled": False}, "ucwa": {}})
    assert str(e.value) == "unknown service(s): bogus, nope"
