"""A fault-injecting HTTP proxy for the tests, on 127.0.0.1, in front of the real S3 server
(tests/s3server.py). Requests pass through unchanged (the Host header too, so SigV4
signatures still match) until a fault is set:

  status   answer with an HTTP error (500, 503, ...) and an S3 error document
  delay    wait `seconds`, then pass the request on (a slow store)
  hang     hold the request, unanswered, until the fault is cleared (a frozen store;
           then it is passed on, as a resumed server would answer it)
  drop     close the connection without an answer
  cut      pass the request on, but send only the headers and half of the body, then close

A fault applies to the next `count` requests (None: until clear()), and only to requests
whose method is in `methods` (GET, HEAD by default). `requests` and `injected` count what
went through."""
from __future__ import annotations

import http.client
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional, Tuple

HOST = "127.0.0.1"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate"}
ERROR_CODES = {500: "InternalError", 502: "BadGateway", 503: "ServiceUnavailable",
               504: "GatewayTimeout"}


@dataclass
class Fault:
    kind: str                           # status, delay, hang, drop, cut
    status: int = 503
    seconds: float = 0.0
    count: Optional[int] = None         # None: until cleared
    methods: Tuple[str, ...] = ("GET", "HEAD")


class FaultProxy:
    def __init__(self, upstream: str):
        host, _, port = upstream.removeprefix("http://").rstrip("/").partition(":")
        self.upstream = (host, int(port))
        self._lock = threading.Lock()
        self._fault: Optional[Fault] = None
        self._released = threading.Event()
        self._released.set()
        self.requests = 0
        self.injected = 0
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="fault-proxy")
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    def set(self, kind: str, **kwargs) -> None:
        with self._lock:
            self._fault = Fault(kind, **kwargs)
            if kind == "hang":
                self._released.clear()

    def clear(self) -> None:
        with self._lock:
            self._fault = None
            self._released.set()

    def close(self) -> None:
        self.clear()
        self._server.shutdown()
        self._server.server_close()

    def _take(self, method: str) -> Optional[Fault]:
        """The fault for this request, if any (a counted fault is used up by it)."""
        with self._lock:
            self.requests += 1
            fault = self._fault
            if fault is None or method not in fault.methods:
                return None
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self._fault = None
                    if fault.kind != "hang":
                        self._released.set()
            self.injected += 1
            return fault


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy

    def log_message(self, *args) -> None:       # quiet
        pass

    def setup(self) -> None:
        super().setup()
        self._upstream: Optional[http.client.HTTPConnection] = None

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        fault = self.owner._take(self.command)
        if fault is not None:
            if fault.kind == "status":
                return self._answer_error(fault.status)
            if fault.kind == "drop":
                return self._drop()
            if fault.kind == "delay":
                threading.Event().wait(fault.seconds)
            if fault.kind == "hang":
                self.owner._released.wait()
        status, reason, headers, data = self._forward(body)
        if fault is not None and fault.kind == "cut" and self.command == "GET" and data:
            self._send(status, reason, headers, data[:len(data) // 2],
                       length=len(data))
            return self._drop()
        self._send(status, reason, headers, data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

    def _forward(self, body: Optional[bytes]):
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        for attempt in range(2):                # a kept-alive upstream may have closed
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(*self.owner.upstream, timeout=120)
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                resp = self._upstream.getresponse()
                data = resp.read()
                return resp.status, resp.reason, resp.getheaders(), data
            except (OSError, http.client.HTTPException):
                self._upstream.close()
                self._upstream = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _send(self, status: int, reason: str, headers, data: bytes,
              length: Optional[int] = None) -> None:
        self.send_response_only(status, reason)
        for k, v in headers:
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        if self.command == "HEAD":
            upstream_length = dict((k.lower(), v) for k, v in headers).get("content-length")
            self.send_header("Content-Length", upstream_length or "0")
        else:
            self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def _answer_error(self, status: int) -> None:
        code = ERROR_CODES.get(status, "InternalError")
        doc = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
               f'<Message>injected by the test proxy</Message></Error>').encode()
        self._send(status, code, [("Content-Type", "application/xml")], doc)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finish(self) -> None:
        super().finish()
        if self._upstream is not None:
            self._upstream.close()
