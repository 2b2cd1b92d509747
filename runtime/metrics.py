"""Prometheus /metrics over HTTP, as ``prometheus_client.start_http_server`` serves it
(a WSGI server in a daemon thread, so metrics answer even while the event
loop is busy), without the ``Server: WSGIServer/0.2 CPython/3.11`` banner
that names the software and its version to whoever asks."""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref import simple_server

import prometheus_client


class _Handler(simple_server.ServerHandler):
    server_software = ""  # wsgiref writes no Server header when this is empty


class _RequestHandler(simple_server.WSGIRequestHandler):
    def handle(self) -> None:
        # WSGIRequestHandler.handle, with the handler above (it names its class inline).
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():  # an error was sent
            return
        handler = _Handler(self.rfile, self.wfile, self.get_stderr(), self.get_environ(), multithread=False)
        handler.request_handler = self
        handler.run(self.server.get_app())

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() != "server":  # the error pages of http.server name it too
            super().send_header(keyword, value)

    def log_message(self, format: str, *args) -> None:
        """Scrapes come every few seconds: no line for each."""


class _Server(ThreadingMixIn, simple_server.WSGIServer):
    daemon_threads = True


def serve(host: str, port: int) -> simple_server.WSGIServer:
    """Serve the default registry on host:port from a daemon thread; returns the server."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server_class = type("MetricsServer", (_Server,), {"address_family": family})
    server = simple_server.make_server(
        host, port, prometheus_client.make_wsgi_app(), server_class, handler_class=_RequestHandler
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
