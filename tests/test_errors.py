"""One error base class with a ``reason`` (ucgate.errors): every error class of ucgate that
carries a reason code derives from it and none re-declares the attribute."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import textwrap
from pathlib import Path

import pytest

import ucgate
from ucgate.errors import UcgateError, reason_of

SRC = Path(ucgate.__file__).parent


def _modules():
    for info in pkgutil.walk_packages([str(SRC)], prefix="ucgate."):
        if ".migrations" in info.name or info.name.endswith("__main__"):
            continue
        try:
            yield importlib.import_module(info.name)
        except ImportError as e:  # an optional dependency (gssapi) that this machine lacks
            if "gssapi" not in str(e):
                raise


def test_reason_carrying_errors_derive_from_the_base():
    offenders = []
    for mod in _modules():
        for name, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ != mod.__name__ or not issubclass(cls, BaseException):
                continue
            src = inspect.getsource(cls)
            if ("self.reason" in src or "reason:" in src or "reason =" in src) and not issubclass(cls, UcgateError):
                offenders.append(f"{mod.__name__}.{name}")
    assert not offenders, "carry a reason but are not UcgateError: " + ", ".join(offenders)


def test_no_error_class_assigns_reason_itself():
    """``self.reason = ...`` lives in the base class only (a value object's ``reason``, like a
    status line's reason phrase, is not an error's)."""
    hits = []
    for mod in _modules():
        for name, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ != mod.__name__ or not issubclass(cls, BaseException) or cls is UcgateError:
                continue
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.ctx, ast.Store)
                    and node.attr == "reason"
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                ):
                    hits.append(f"{mod.__name__}.{name}")
    assert not hits, "assigns self.reason (pass it to UcgateError.__init__): " + ", ".join(hits)


def test_base_message_reason_and_detail():
    e = UcgateError("bad-chunk-size", "0x1g")
    assert (e.reason, e.detail, str(e)) == ("bad-chunk-size", "0x1g", "bad-chunk-size: 0x1g")
    assert str(UcgateError("too-large")) == "too-large"
    assert str(UcgateError("x", "y", message="custom")) == "custom"
    assert reason_of(e) == "bad-chunk-size"
    assert reason_of(KeyError("k")) == "KeyError"
    assert reason_of(KeyError("k"), "internal") == "internal"


@pytest.mark.parametrize(
    "path, cls, args, reason, base, text",
    [
        (
            "ucgate.protocols.http1",
            "HttpError",
            (400, "bad-chunk-size", "x"),
            "bad-chunk-size",
            Exception,
            "400 bad-chunk-size: x",
        ),
        (
            "ucgate.protocols.ntlm",
            "NtlmError",
            ("bad-mic", "MIC does not match"),
            "bad-mic",
            ValueError,
            "bad-mic: MIC does not match",
        ),
        ("ucgate.protocols.sip", "SipError", ("obs-fold", "line 3"), "obs-fold", ValueError, "400 obs-fold: line 3"),
        ("ucgate.protocols.spnego", "SpnegoError", ("malformed", "short"), "malformed", ValueError, "malformed: short"),
        (
            "ucgate.protocols.decode",
            "DecodeError",
            ("too-deep", "nesting"),
            "too-deep",
            ValueError,
            "too-deep: nesting",
        ),
        (
            "ucgate.gateway.upstream",
            "UpstreamError",
            ("connect-failed", ""),
            "connect-failed",
            Exception,
            "connect-failed",
        ),
        (
            "ucgate.id.writer",
            "WriterBusy",
            ("the writer is closed",),
            "store-unavailable",
            Exception,
            "the writer is closed",
        ),
    ],
)
def test_known_errors_keep_their_bases_and_messages(path, cls, args, reason, base, text):
    """Deriving from UcgateError keeps the old bases (callers that catch ValueError) and the old
    str(e) (what the log lines print)."""
    klass = getattr(importlib.import_module(path), cls)
    e = klass(*args)
    assert isinstance(e, UcgateError) and isinstance(e, base) and e.reason == reason
    assert str(e) == text
