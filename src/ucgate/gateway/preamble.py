"""The PROXY protocol header on the plain-HTTP listener (``[gateway] proxy_protocol``).

The TLS listener reads the header off the raw socket before the handshake
(``tlstransport._Preamble``); a plain-HTTP connection gets its bytes through a :class:`Stream`,
so here the header is parsed from the stream's buffer in callback mode, before the connection
is registered and its session waits for the first request head. The rules are the TLS
listener's: from a trusted balancer the header is required; from any other peer a PROXY
signature closes the connection with a warning and anything else is a direct client's request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..protocols import proxyproto
from .stream import Stream

log = logging.getLogger("ucgate.gateway")

_NO_DEADLINE = float("inf")


class StreamPreamble:
    """Wait for ``stream``'s PROXY header (``trusted``) or for proof there is none, until
    ``deadline`` (loop time); then ``on_done(client address)`` with the header's bytes taken
    out of the buffer, or the stream is closed with a log line.

    Args:
        stream: a new connection's stream, nothing read from it yet.
        peer: its ``peername``.
        trusted: the peer is in ``trusted_proxies`` (it must send a header).
    """

    __slots__ = ("on_done", "peer", "stream", "timeout", "trusted")

    def __init__(
        self, stream: Stream, peer: tuple, trusted: bool, timeout: float, on_done: Callable[[tuple[str, int]], None]
    ) -> None:
        self.stream, self.peer, self.trusted, self.timeout = stream, peer, trusted, timeout
        self.on_done = on_done
        stream.on_data = self._on_data
        stream.on_deadline = self._on_deadline
        stream.set_deadline(stream.loop.time() + timeout)

    def _on_data(self) -> None:
        s = self.stream
        data = s.peek()
        if self.trusted:
            try:
                header = proxyproto.parse(data)
            except proxyproto.ProxyError as e:
                self._refuse(e.reason, e.detail)
                return
            if header is None:
                if s._eof:
                    self._closed_early(data)
                return
            s.take_buffered(header.length)
            self._done(proxyproto.client_address(header, self.peer))
            return
        kind = proxyproto.detect(data)
        if kind is None:  # the first bytes of a signature, or of "\r\n" before a request line
            if s._eof:
                self._closed_early(data)
            return
        if kind:
            self._refuse("untrusted-proxy-header", "the peer is not in trusted_proxies")
            return
        self._done((str(self.peer[0]), int(self.peer[1])))

    def _done(self, client: tuple[str, int]) -> None:
        s = self.stream
        s.on_data = s.on_deadline = None
        s.set_deadline(_NO_DEADLINE)
        self.on_done(client)

    def _refuse(self, reason: str, detail: str) -> None:
        log.warning(
            "connection from %s closed: PROXY protocol: %s%s", self.peer[0], reason, f" ({detail})" if detail else ""
        )
        self.stream.close()

    def _closed_early(self, data: bytes) -> None:
        if data:
            log.info("connection from %s closed in its PROXY header", self.peer[0])
        self.stream.close()

    def _on_deadline(self) -> None:
        what = "PROXY header" if self.trusted else "request head"
        log.info("connection from %s closed: no %s within %ss", self.peer[0], what, self.timeout)
        self.stream.close()
