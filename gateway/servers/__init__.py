"""One thin adapter per server interface over the server-independent core (gateway/app.py): Granian (RSGI) and
uvicorn (ASGI), both on uvloop. `run` starts the configured one with N workers."""

from __future__ import annotations

from gateway.config import Config


def run(config: Config, host: str, port: int, workers: int) -> int:
    if config.server.server == "granian":
        from gateway.servers import granian_server

        return granian_server.run(config, host, port, workers)
    from gateway.servers import uvicorn_worker

    return uvicorn_worker.run(config, host, port, workers)
