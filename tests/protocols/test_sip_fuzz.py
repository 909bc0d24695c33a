"""Fuzzing the SIP framer and the MS-SIPAE parser with oracles.

* a generated message serialises to bytes that frame back to exactly its parts (round trip);
* framing a concatenation of messages and keep-alive CRLFs yields those events, in order;
* any split of the byte stream — valid or not — gives the same events and the same refusal;
* whatever the bytes (mutated spec vectors, random bytes), only SipError escapes, and what is
  accepted obeys the rules restated independently here (CRLF only, one Content-Length, token
  names, no controls, the bytes it was framed from);
* generated MS-SIPAE fields parse back to their parameters; random text raises only SipError.

Bounded for CI (whole file < 20 s); set UCGATE_FUZZ_EXAMPLES=5000 (say) to run longer.
"""

from __future__ import annotations

import base64
import os
import re

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ucgate.protocols import sip
from ucgate.protocols.sip import (
    KeepAlive,
    SipError,
    SipFramer,
    SipMessage,
    parse_message,
    parse_name_addr,
    sip_device_facts,
)
from ucgate.protocols.sipauth import SCHEMES, parse_auth

from .test_sip import SPEC_VECTORS

EXAMPLES = int(os.environ.get("UCGATE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
tokens = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=10)
labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
hosts = st.lists(labels, min_size=1, max_size=3).map(".".join)
users = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()&=+$,", min_size=1, max_size=10
)
# field values: printable ASCII, HTAB, a little UTF-8; no surrounding whitespace (the parser
# strips it from the value it reports and keeps it in ``raw``)
value_chars = st.characters(
    codec="utf-8", exclude_categories=("Cc", "Cs"), exclude_characters="\x7f\x85\u2028\u2029"
) | st.just("\t")
values = st.text(alphabet=value_chars, max_size=30).map(lambda v: v.strip(" \t"))
NOT_EXTRA = (
    sip.SINGLE_FIELDS | set(sip.REQUIRED_FIELDS) | {k for k, v in sip.COMPACT_FORMS.items() if v in sip.SINGLE_FIELDS}
)
extra_names = tokens.filter(lambda n: sip.canonical_name(n) not in NOT_EXTRA)


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@st.composite
def name_addrs(draw) -> tuple[str, str | None, str, tuple[tuple[str, str | None], ...]]:
    """(text, display name, uri, params) of a From/To/Contact entry."""
    uri = f"sip:{draw(users)}@{draw(hosts)}"
    display = draw(st.none() | st.text(alphabet=value_chars, max_size=12))
    names = draw(st.lists(tokens.map(str.lower), max_size=4, unique=True))
    params = tuple((n, draw(st.none() | tokens | st.text(alphabet=value_chars, max_size=8))) for n in names)
    text = (quote(display) + " " if display is not None else "") + f"<{uri}>"
    for n, v in params:
        if v is None:
            text += f";{n}"
        else:
            text += f";{n}=" + (v if re.fullmatch(sip._TOKEN_S, v) else quote(v))
    return text, display, uri, params


@st.composite
def messages(draw) -> tuple[bytes, dict]:
    """A valid message and what it must parse to."""
    is_request = draw(st.booleans())
    method = draw(st.sampled_from(["REGISTER", "INVITE", "SUBSCRIBE", "SERVICE", "NOTIFY", "ACK"]) | tokens)
    if is_request:
        start = f"{method} sip:{draw(hosts)} SIP/2.0"
    else:
        start = f"SIP/2.0 {draw(st.integers(100, 699))} {draw(values)}"
    body = draw(st.binary(max_size=60))
    frm, to = draw(name_addrs()), draw(name_addrs())
    number = draw(st.integers(0, 2**32 - 1))
    required = [
        (draw(st.sampled_from(["Via", "v", "VIA"])), f"SIP/2.0/TLS {draw(hosts)}:{draw(st.integers(1, 65535))}"),
        (draw(st.sampled_from(["From", "f", "FROM"])), frm[0]),
        (draw(st.sampled_from(["To", "t"])), to[0]),
        (draw(st.sampled_from(["Call-ID", "i", "call-id"])), draw(tokens)),
        ("CSeq", f"{number} {method}"),
        (draw(st.sampled_from(["Content-Length", "l"])), str(len(body))),
    ]
    extra = draw(st.lists(st.tuples(extra_names, values), max_size=6))
    fields = draw(st.permutations(required + extra))
    lines = [start]
    for name, value in fields:
        lines.append(
            f"{name}:{draw(st.sampled_from(['', ' ', '  ', chr(9)]))}{value}{draw(st.sampled_from(['', ' ']))}"
        )
    raw = "\r\n".join(lines).encode() + b"\r\n\r\n" + body
    expect = {
        "fields": [(n, v) for n, v in fields],
        "body": body,
        "from": frm,
        "to": to,
        "cseq": number,
        "method": method if is_request else None,
    }
    return raw, expect


def events_of(stream: bytes, cuts: list[int]) -> tuple[list, str | None]:
    """Feed ``stream`` in pieces cut at ``cuts``; the events and the refusal reason (or None)."""
    framer = SipFramer()
    out: list = []
    prev = 0
    try:
        for cut in [*sorted(cuts), len(stream)]:
            framer.feed(stream[prev:cut])
            prev = cut
            while (event := framer.next_event()) is not None:
                out.append(event)
        framer.close()
    except SipError as e:
        return out, e.reason
    return out, None


# --- oracles on valid input ----------------------------------------------------------------------


@FUZZ
@given(messages())
def test_a_generated_message_frames_back_to_its_parts(case):
    raw, expect = case
    m = parse_message(raw)
    assert m.raw == raw and m.serialize() == raw and m.body == expect["body"]
    assert [(f.name.decode(), f.value.decode()) for f in m.headers] == expect["fields"]
    assert m.method == expect["method"] and m.cseq.number == expect["cseq"]
    for got, (_, display, uri, params) in ((m.from_, expect["from"]), (m.to, expect["to"])):
        assert (got.display_name, got.uri, got.params) == (display, uri, params)
    assert parse_message(m.serialize()) == m


@FUZZ
@given(st.lists(st.tuples(messages(), st.integers(0, 3)), min_size=1, max_size=4), st.data())
def test_a_concatenation_frames_into_its_messages_at_any_split(parts, data):
    stream = b"".join(b"\r\n" * crlfs + raw for (raw, _), crlfs in parts)
    expected: list = []
    for (raw, _), crlfs in parts:
        expected += [KeepAlive(i + 1) for i in range(crlfs)]
        expected.append(raw)
    whole, error = events_of(stream, [])
    assert error is None
    assert [e.raw if isinstance(e, SipMessage) else e for e in whole] == expected
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    assert events_of(stream, cuts) == (whole, None)


# --- oracles on any input -------------------------------------------------------------------------

_LINE_RE = re.compile(rb"[A-Za-z0-9\-.!%*_+`'~]+:[\t ]*[\t\x20-\x7e\x80-\xff]*")


def check_accepted(m: SipMessage) -> None:
    """The rules, restated apart from the parser, that every accepted message obeys."""
    head = m.raw[: len(m.raw) - len(m.body)]
    assert head.endswith(b"\r\n\r\n") and head.count(b"\r") == head.count(b"\n") == head.count(b"\r\n")
    assert m.serialize() == m.raw
    lines = head[:-4].split(b"\r\n")
    assert lines[0] == m.start_line and b"\x00" not in head
    for line in lines[1:]:
        assert _LINE_RE.fullmatch(line), line
    lengths = [f for f in m.headers if f.canonical == "content-length"]
    assert len(lengths) == 1 and int(lengths[0].value) == len(m.body)
    for name in ("from", "to", "call-id", "cseq"):
        assert len(m.fields(name)) == 1
    sip_device_facts(m)  # never raises on message contents


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    """Flip, overwrite, insert, delete or duplicate a few bytes of a valid stream."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "dup-line", "crlf"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(
                st.sampled_from([0, 9, 10, 13, 32, 44, 58, 59, 60, 62, 0x7F, 0xC0, draw(st.integers(0, 255))])
            )
        elif op == "insert":
            data[pos:pos] = draw(
                st.sampled_from([b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"l: 0\r\n", b"\x00"])
                | st.binary(min_size=1, max_size=6)
            )
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "dup-line":
            start = data.rfind(b"\r\n", 0, pos) + 2
            end = data.find(b"\r\n", pos)
            if 1 < start < end:
                data[end + 2 : end + 2] = data[start : end + 2]
        elif op == "crlf":
            data[pos:pos] = b"\r\n"
    return bytes(data)


@st.composite
def streams(draw) -> bytes:
    seed = draw(st.sampled_from(SPEC_VECTORS) | messages().map(lambda c: c[0]))
    return draw(mutated(seed + draw(st.sampled_from([b"", b"\r\n\r\n", seed]))))


@FUZZ
@given(streams(), st.data())
def test_any_stream_frames_the_same_at_any_split_and_only_sip_error_escapes(stream, data):
    whole = events_of(stream, [])
    for e in whole[0]:
        if isinstance(e, SipMessage):
            check_accepted(e)
    event(f"refused: {whole[1]}" if whole[1] else f"accepted {len(whole[0])} events")
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    assert events_of(stream, cuts) == whole
    # the messages are the stream's bytes, in order, after any keep-alive CRLFs
    rebuilt = b"".join(e.raw for e in whole[0])
    if whole[1] is None:
        assert rebuilt == stream


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(stream):
    events, _ = events_of(stream, [])
    for e in events:
        if isinstance(e, SipMessage):
            check_accepted(e)


@FUZZ
@given(st.text(max_size=80))
def test_field_value_parsers_raise_only_sip_error(text):
    for parse in (parse_name_addr, sip.parse_contacts, sip.parse_via, sip.parse_sip_uri):
        try:
            parse(text)
        except SipError:
            pass
    for kind in ("challenge", "credentials", "info"):
        try:
            parse_auth(text, kind)
        except SipError:
            pass


@FUZZ
@given(name_addrs())
def test_name_addr_round_trip(case):
    text, display, uri, params = case
    n = parse_name_addr(text)
    assert (n.display_name, n.uri, n.params) == (display, uri, params)


# --- MS-SIPAE fields -------------------------------------------------------------------------------

hex_text = st.text(alphabet="0123456789abcdefABCDEF", min_size=1, max_size=16)
KNOWN_VALUES = {
    "realm": st.text(alphabet=value_chars, min_size=1, max_size=20),
    "targetname": st.text(alphabet=value_chars, min_size=1, max_size=20),
    "version": st.integers(0, 99).map(str),
    "opaque": hex_text,
    "qop": st.sampled_from(["auth", "AUTH"]),
}
SIGNED = {
    "credentials": {"crand": hex_text, "cnum": st.integers(0, 10**9).map(str), "response": hex_text},
    "info": {"srand": hex_text, "snum": st.integers(0, 10**9).map(str), "rspauth": hex_text},
}


@st.composite
def auth_values(draw) -> tuple[str, str, str, list[tuple[str, str]]]:
    kind = draw(st.sampled_from(["challenge", "credentials", "info"]))
    scheme = draw(st.sampled_from(sorted(SCHEMES)))
    chosen = {"realm", "targetname"} | set(draw(st.lists(st.sampled_from(sorted(KNOWN_VALUES)), max_size=3)))
    params = [(n, draw(KNOWN_VALUES[n])) for n in sorted(chosen)]
    if kind in SIGNED and draw(st.booleans()):
        params += [(n, draw(s)) for n, s in SIGNED[kind].items()]
    if kind != "info" and draw(st.booleans()):
        params.append(("gssapi-data", base64.b64encode(draw(st.binary(max_size=40))).decode()))
    unknown = draw(st.lists(tokens.map(str.lower).filter(lambda n: n not in sip_auth_known()), max_size=2, unique=True))
    params += [(n, draw(st.text(alphabet=value_chars, max_size=8))) for n in unknown]
    params = draw(st.permutations(params))
    parts = []
    for n, v in params:
        as_token = re.fullmatch(sip._TOKEN_S, v) is not None and draw(st.booleans())
        spelled = draw(st.sampled_from([n, n.upper(), n.title()]))
        parts.append(f"{spelled}{draw(st.sampled_from(['=', ' = ']))}{v if as_token else quote(v)}")
    text = (
        draw(st.sampled_from([scheme, SCHEMES[scheme], scheme.upper()]))
        + " "
        + draw(st.sampled_from([",", ", ", " ,"])).join(parts)
    )
    return text, kind, SCHEMES[scheme], params


def sip_auth_known() -> frozenset[str]:
    from ucgate.protocols import sipauth

    return sipauth._KNOWN


@FUZZ
@given(auth_values())
def test_generated_auth_fields_parse_back_to_their_parameters(case):
    text, kind, scheme, params = case
    a = parse_auth(text, kind)
    assert a.scheme == scheme and list(a.params) == params
    typed = dict(params)
    assert (a.realm, a.targetname) == (typed["realm"], typed["targetname"])
    if "version" in typed:
        assert a.version == int(typed["version"])
    assert a.signed == any(n in typed for n in ("response", "rspauth"))
    if "gssapi-data" in typed:
        assert a.gssapi_data == base64.b64decode(typed["gssapi-data"])
