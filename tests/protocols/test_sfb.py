"""Service recognition from the path, and refusal of ambiguous paths."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from ucgate.protocols.http1 import HttpError
from ucgate.protocols.sfb import ServiceMap, split_target

M = ServiceMap()


@pytest.mark.parametrize(
    "path,name,anonymous",
    [
        ("/Autodiscover/AutodiscoverService.svc/root", "autodiscover", True),
        ("/autodiscover/autodiscoverservice.svc/root/", "autodiscover", True),
        ("/Autodiscover/AutodiscoverService.svc/root/oauth/user", "autodiscover", False),
        ("/Autodiscover/AutodiscoverService.svc/root/user", "autodiscover", False),
        ("/Autodiscover/XFrame/XFrame.html", "autodiscover-xframe", True),
        ("/WebTicket/oauthtoken", "oauth", False),
        ("/WebTicket/WebTicketService.svc", "webticket", False),
        ("/WebTicket/WebTicketService.svc/mex", "webticket", False),
        ("/ucwa/oauth/v1/applications", "ucwa", False),
        ("/Mcx/McxService.svc", "mcx", False),
        ("/CertProv/CertProvisioningService.svc", "certprov", False),
        ("/meet/alice/ABC123", "meet", True),
        ("/dialin/", "dialin", True),
        ("/lwa/Webpages/LwaClient.aspx", "lwa", True),
        ("/Reach/Client/WebPages/ReachJoin.aspx", "reach", False),
        ("/abs/handler/x.lsabs", "abs", False),
        ("/GroupExpansion/service.svc", "groupexpansion", False),
        ("/RgsClients/Tab.aspx", "rgs", False),
        ("/PersistentChat/RM/", "persistentchat", False),
        ("/Scheduler/", "scheduler", False),
        ("/passiveauth/", "passiveauth", False),
        ("/Microsoft-Server-ActiveSync", "eas", False),
        ("/Microsoft-Server-ActiveSync/default.eas", "eas", False),
    ],
)
def test_recognise(path, name, anonymous):
    s = M.recognise(path)
    assert s is not None and (s.name, s.anonymous) == (name, anonymous)


@pytest.mark.parametrize("path", ["/", "/owa/", "/ucwax", "/Microsoft-Server-ActiveSyncX", "/meetx"])
def test_unknown(path):
    assert M.recognise(path) is None


def test_overrides():
    m = ServiceMap.with_overrides({"meet": {"anonymous": False}, "eas": {"enabled": False}})
    assert not m.recognise("/meet/x").anonymous
    assert not m.recognise("/Microsoft-Server-ActiveSync").enabled
    with pytest.raises(ValueError):
        ServiceMap.with_overrides({"nope": {}})


@pytest.mark.parametrize(
    "target",
    ["http://x/ucwa", "*", "/a/../ucwa", "/a/./b", "/a//b", "/a%2fb", "/a%2E%2E/b", "/a%5cb", "/a\\b",
     "/a%00", "/a%25", "/a%zz", "/a%0d%0a"],
)
def test_split_target_refuses(target):
    with pytest.raises(HttpError):
        split_target(target)


def test_split_target_ok():
    assert split_target("/ucwa/x%20y?a=/../b") == ("/ucwa/x%20y", "a=/../b")


@settings(max_examples=int(os.environ.get("UCGATE_FUZZ_EXAMPLES", "300")), deadline=None)
@given(st.lists(st.sampled_from(["/", ".", "..", "a", "B", "%2e", "%2F", "%", "%4", "%41", "\\", "?", "#", ";"]),
                min_size=1, max_size=10))
def test_split_target_accepts_only_canonical_paths(pieces):
    """Whatever split_target accepts has no dot segment, no empty segment but the last, and
    no escape of a separator, dot or control — checked here segment by segment."""
    target = "/" + "".join(pieces)
    try:
        path, query = split_target(target)
    except HttpError:
        return
    assert target == path + ("?" + query if "?" in target else "")
    segments = path.split("/")[1:]
    for i, seg in enumerate(segments):
        assert seg not in (".", "..")
        assert seg != "" or i == len(segments) - 1
    assert "\\" not in path and "#" not in target
    for esc in ("%2e", "%2f", "%25", "%5c"):
        assert esc not in path.lower()
