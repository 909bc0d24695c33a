"""Service recognition from the path, and refusal of ambiguous paths."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


_SEGMENTS = sorted(
    {seg for svc in M.services for seg in svc.prefix.split("/") if seg}
    | {"", "x", "Ucwa", "MEET", "ucwax", "root", "oauth"}
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_SEGMENTS), min_size=1, max_size=4), st.booleans())
def test_recognise_by_first_segment_is_the_scan_in_order(segments, slash):
    """recognise() looks a path's candidates up by its first segment: the same service as
    trying every rule in order would give."""
    path = "/" + "/".join(segments) + ("/" if slash else "")
    lpath = path.lower()
    expected = None
    for svc in M.services:
        if (
            (lpath == svc.prefix or lpath == svc.prefix + "/")
            if svc.exact
            else (
                (lpath.startswith(svc.prefix) or lpath == svc.prefix[:-1])
                if svc.prefix.endswith("/")
                else (lpath == svc.prefix or lpath.startswith(svc.prefix + "/"))
            )
        ):
            expected = svc
            break
    assert M.recognise(path) is expected


def test_overrides():
    m = ServiceMap.with_overrides({"meet": {"anonymous": False}, "eas": {"enabled": False}})
    assert not m.recognise("/meet/x").anonymous
    assert not m.recognise("/Microsoft-Server-ActiveSync").enabled
    with pytest.raises(ValueError):
        ServiceMap.with_overrides({"nope": {}})


@pytest.mark.parametrize(
    "target",
    [
        "http://x/ucwa",
        "*",
        "/a/../ucwa",
        "/a/./b",
        "/a//b",
        "/a%2fb",
        "/a%2E%2E/b",
        "/a%5cb",
        "/a\\b",
        "/a%00",
        "/a%25",
        "/a%zz",
        "/a%0d%0a",
    ],
)
def test_split_target_refuses(target):
    with pytest.raises(HttpError):
        split_target(target)


def test_split_target_ok():
    assert split_target("/ucwa/x%20y?a=/../b") == ("/ucwa/x%20y", "a=/../b")


@settings(max_examples=int(os.environ.get("UCGATE_FUZZ_EXAMPLES", "300")), deadline=None)
@given(
    st.lists(
        st.sampled_from(["/", ".", "..", "a", "B", "%2e", "%2F", "%", "%4", "%41", "\\", "?", "#", ";"]),
        min_size=1,
        max_size=10,
    )
)
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


_lenient_piece = st.sampled_from(
    [
        "/",
        ".",
        "..",
        "a",
        "%20",
        "%c2%a0",
        ";",
        ";x",
        ":",
        "::$DATA",
        "%c0%ae",
        "%c0%af",
        "%e0%80%ae",
        "%ef%bc%8e",
        "%e2%80%a4",
        "%e2%80%a5",
        "%e2%80%a6",
        "%e3%80%82",
        "%ef%bc%8f",
        "%e2%88%95",
        "%ef%bc%bc",
        "%ef%bc%85",
        "%c3%a9",
        "%ff",
        "%80",
        "%e4%bc%9a",
    ]
)


@settings(max_examples=int(os.environ.get("UCGATE_FUZZ_EXAMPLES", "300")) * 2, deadline=None)
@given(st.lists(_lenient_piece, min_size=1, max_size=10))
def test_split_target_accepts_nothing_a_lenient_server_reads_as_a_dot_segment(pieces):
    """Issue 13: whatever split_target accepts decodes as UTF-8 and, read as IIS/Windows, Tomcat
    or a Unicode-normalising (NFKC) framework would read it — path parameters and NTFS stream
    names cut off, trailing dots and whitespace stripped — has no "." or ".." segment and no
    separator but its own "/"."""
    import unicodedata
    from urllib.parse import unquote_to_bytes

    target = "/meet/" + "".join(pieces)
    try:
        path, _ = split_target(target)
    except HttpError:
        return
    text = unquote_to_bytes(path).decode("utf-8")  # must not raise
    normalised = unicodedata.normalize("NFKC", text).replace("\u3002", ".")
    assert normalised.count("/") == path.count("/") and "\\" not in normalised and "%" not in normalised
    for seg in normalised.split("/")[1:]:
        for read in (seg, seg.split(";")[0], seg.split(":")[0], seg.rstrip(". \t\u00a0"), seg.strip()):
            assert read not in (".", "..") and not ("." in read and set(read) <= set(". \u00a0")), (target, seg)


# --- route: split_target + recognise, remembered ------------------------------------------------
def _route_or_error(m: ServiceMap, target: bytes):
    try:
        return m.route(target)
    except (HttpError, UnicodeDecodeError) as e:
        return type(e), getattr(e, "reason", None)


def _split_recognise_or_error(target: bytes):
    try:
        path, query = split_target(target.decode("ascii"))
    except (HttpError, UnicodeDecodeError) as e:
        return type(e), getattr(e, "reason", None)
    return path, query, M.recognise(path)


@settings(max_examples=int(os.environ.get("UCGATE_FUZZ_EXAMPLES", "300")), deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["/", ".", "..", "ucwa", "Autodiscover", "meet", "%2e", "%2F", "%", "%41", "\\", "?", "#", "a=1", "\xe9"]
        ),
        min_size=1,
        max_size=8,
    )
)
def test_route_is_split_target_then_recognise_first_time_and_again(parts):
    """route() gives what split_target and recognise give — the same service object, the same
    refusal — for a target it has not seen and for one it remembers."""
    target = "".join(parts).encode("latin-1")
    m = ServiceMap()
    expected = _split_recognise_or_error(target)
    assert _route_or_error(m, target) == expected
    assert _route_or_error(m, target) == expected  # remembered (or refused again: never kept)


def test_route_refusals_are_not_remembered_and_the_memo_is_bounded():
    from ucgate.protocols import sfb

    m = ServiceMap()
    with pytest.raises(HttpError):
        m.route(b"/ucwa/../x")
    with pytest.raises(UnicodeDecodeError):
        m.route(b"/ucwa/\xe9")
    assert m._routes == {}
    for i in range(sfb.ROUTE_MEMO_ENTRIES * 2 + 5):
        assert m.route(b"/ucwa/x?n=%d" % i)[2] is not None
        assert len(m._routes) <= sfb.ROUTE_MEMO_ENTRIES
    long = b"/ucwa/" + b"a" * sfb.ROUTE_MEMO_TARGET_BYTES
    assert m.route(long)[0] == long.decode()
    assert long not in m._routes  # too long to keep
    assert m.route(b"/meet/x")[2] is m.recognise("/meet/x")
