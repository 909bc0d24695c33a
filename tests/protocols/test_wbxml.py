"""WBXML encoder/decoder: round trips, the spec's byte layout, malformed input."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ucgate.protocols.wbxml import CODE_PAGES, E, Element, WbxmlError, decode, encode

HEADER = bytes((0x03, 0x01, 0x6A, 0x00))  # WBXML 1.3, unknown public id, UTF-8, no strtbl


def test_folder_sync_request_bytes_match_ms_aswbxml():
    # <FolderSync xmlns="FolderHierarchy:"><SyncKey>0</SyncKey></FolderSync>
    data = encode(E("FolderHierarchy:FolderSync", E("SyncKey", "0")))
    assert data == HEADER + bytes((0x00, 0x07, 0x56, 0x52, 0x03)) + b"0\x00" + bytes((0x01, 0x01))
    root = decode(data)
    assert root.tag == "FolderHierarchy:FolderSync"
    assert root.text("SyncKey") == "0"


def test_round_trip_across_code_pages():
    doc = E(
        "Provision:Provision",
        E("Settings:DeviceInformation", E("Set", E("Model", "iPhone15,2"), E("OS", "iOS 17.1"))),
        E("Policies", E("Policy", E("PolicyType", "MS-EAS-Provisioning-WBXML"))),
    )
    back = decode(encode(doc))
    assert back == doc
    assert back.find("Settings:DeviceInformation").find("Set").text("Model") == "iPhone15,2"
    assert back.find("Policies").find("Policy").text("PolicyType") == "MS-EAS-Provisioning-WBXML"


def test_opaque_unicode_and_empty_elements():
    doc = E(
        "AirSync:Sync",
        E("Collections", E("Collection", E("SyncKey", "0"), E("GetChanges"))),
        E("Settings:UserAgent", "Jürgen’s phone"),
        E("AirSyncBase:Data", b"\x00\xffbin"),
    )
    back = decode(encode(doc))
    assert back.find("AirSyncBase:Data").value == b"\x00\xffbin"
    assert back.find("Settings:UserAgent").value == "Jürgen’s phone"
    assert back.find("Collections").find("Collection").find("GetChanges").value is None


def test_unqualified_children_inherit_the_parent_namespace_when_encoding():
    root = E("Provision:Provision")
    root.children.append(Element("Status", "1"))
    assert decode(encode(root)).text("Status") == "1"


def test_string_table_reference_and_entity_are_read():
    data = bytes((0x03, 0x01, 0x6A, 0x03)) + b"ab\x00" + bytes((0x00, 0x0E, 0x4B, 0x83, 0x00, 0x02, 0x41, 0x01))
    assert decode(data).value == "abA"


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "truncated"),
        (HEADER, "truncated"),
        (bytes((0x04, 0x01, 0x6A, 0x00, 0x05)), "bad-version"),
        (bytes((0x03, 0x01, 0x04, 0x00, 0x05)), "bad-charset"),  # ISO-8859-1
        (HEADER + bytes((0x00, 0x63, 0x05)), "unknown-code-page"),
        (HEADER + bytes((0x3F,)), "unknown-tag"),
        (HEADER + bytes((0x00, 0x0E, 0xC5)), "unsupported-attributes"),
        (HEADER + bytes((0x04, 0x00)), "unsupported-literal"),
        (HEADER + bytes((0x00, 0x0E, 0x45, 0xC0, 0x01)), "unsupported-extension"),
        (HEADER + bytes((0x00, 0x0E, 0x45, 0x43)), "unsupported-pi"),
        (HEADER + bytes((0x01,)), "unbalanced-end"),
        (HEADER + bytes((0x03,)) + b"x\x00", "content-outside-element"),
        (HEADER + bytes((0x00, 0x0E, 0x4B, 0x03)) + b"abc", "truncated"),  # unterminated string
        (HEADER + bytes((0x00, 0x0E, 0x4B, 0xC3, 0x0A)) + b"abc", "truncated"),  # short opaque
        (HEADER + bytes((0x00, 0x0E, 0x4B, 0xC3, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F)), "integer-out-of-range"),
        (HEADER + bytes((0x00, 0x0E, 0x4B, 0xC3, 0x81, 0x81, 0x81, 0x81, 0x81, 0x01)), "integer-too-long"),
        (HEADER + bytes((0x00, 0x0E, 0x4B, 0x03)) + b"\xff\xfe\x00\x01", "bad-utf8"),
        (HEADER + bytes((0x00, 0x0E, 0x45, 0x01, 0x45, 0x01)), "trailing-data"),
        (HEADER + bytes((0x00, 0x0E, 0x4B, 0x03)) + b"a\x00" + bytes((0x4B, 0x01, 0x01)), "mixed-content"),
        (HEADER + bytes((0x00, 0x0E, 0x4B, 0x83, 0x05, 0x01)), "bad-string-reference"),
        (HEADER + bytes((0x00, 0x0E, 0x4B, 0x02, 0x00, 0x01)), "bad-entity"),
    ],
)
def test_malformed_documents_are_refused(data, reason):
    with pytest.raises(WbxmlError) as e:
        decode(data)
    assert e.value.reason == reason


def test_limits():
    deep = HEADER + bytes((0x00, 0x0E)) + bytes((0x46,)) * 40 + bytes((0x01,)) * 40
    with pytest.raises(WbxmlError) as e:
        decode(deep)
    assert e.value.reason == "too-deep"
    with pytest.raises(WbxmlError) as e:
        decode(HEADER + b"\x45" + b"\x00" * 100, max_bytes=50)
    assert e.value.reason == "too-large"
    many = HEADER + bytes((0x00, 0x0E, 0x46)) + bytes((0x45,)) * 20 + bytes((0x01,))
    with pytest.raises(WbxmlError) as e:
        decode(many, max_elements=10)
    assert e.value.reason == "too-many-elements"
    assert decode(deep[:6] + deep[6 : 6 + 20] + bytes((0x01,)) * 20).tag == "Provision:Policies"


def test_encoder_refuses_what_it_cannot_represent():
    for doc, reason in (
        (E("Provision:NoSuchTag"), "unknown-tag"),
        (E("Provision:Status", "a\x00b"), "nul-in-string"),
        (Element("Provision:Policy", "x", [E("Provision:Status", "1")]), "mixed-content"),
    ):
        with pytest.raises(WbxmlError) as e:
            encode(doc)
        assert e.value.reason == reason


_TAGS = sorted(f"{ns}:{name}" for ns, names in CODE_PAGES.values() for name in names.values())
_trees = st.recursive(
    st.builds(
        lambda t, v: Element(t, v),
        st.sampled_from(_TAGS),
        st.one_of(
            st.none(),
            st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), min_size=1),
            st.binary(),
        ),
    ),
    lambda kids: st.builds(
        lambda t, c: Element(t, None, c), st.sampled_from(_TAGS), st.lists(kids, min_size=1, max_size=4)
    ),
    max_leaves=20,
)
_EXAMPLES = int(os.environ.get("UCGATE_FUZZ_EXAMPLES", "200"))


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_trees)
def test_round_trip_property(tree):
    assert decode(encode(tree)) == tree


@settings(max_examples=_EXAMPLES, deadline=None)
@given(st.binary(max_size=200))
def test_decoder_raises_only_wbxml_error(data):
    try:
        decode(HEADER + data)
    except WbxmlError:
        pass
