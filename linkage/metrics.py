"""Prometheus exposition on its own port, for node and gateway (off unless configured)."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from linkage.config import ConfigError


class MetricsEndpoint:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self, listen: str) -> int:
        host, port = listen.rsplit(":", 1)
        try:
            self._server, self._thread = start_http_server(int(port), addr=host, registry=self.registry)
        except OSError as exc:  # most often the port is taken: say which setting to change
            raise ConfigError(f"[metrics] listen {listen}: {exc.strerror or exc}") from exc
        self.port = int(self._server.server_port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
