"""A Synapse worker deployment on 127.0.0.1: redis, the main process and its workers.

The main process is a `SynapseServer` (harness.py) with what Synapse's worker guide asks of it
(docs/workers.md, the same from 1.100.0 to 1.157.1): an HTTP `replication` listener, `redis`,
`instance_map.main` naming that listener, a `worker_replication_secret`, and
`run_background_tasks_on`. Each worker starts from the same files as the main process (the
generated base, `homeserver.d/`, the test override) plus its own: `worker_app`,
`worker_name`, `worker_listeners` (client and metrics, each on a free port) and
`worker_log_config`. Every process is stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from tests.integration.harness import (
    LOG_CONFIG,
    ServerMissing,
    SynapseServer,
    free_port,
    wait_until_listening,
)

REPLICATION_SECRET = "integration-replication-secret"
BACKGROUND = "background1"


class RedisServer:
    """Debian's redis-server on a free loopback port, nothing persisted."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerMissing("redis-server is not installed (scripts/install-system-deps)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = workdir / "redis.log"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--dir", str(self.workdir), "--logfile", str(self.log_file),
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until_listening(self.process, self.port, self._tail, timeout=20)
        return self

    def _tail(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


class MainProcess(SynapseServer):
    """The main process, configured for workers (what every process reads)."""

    def __init__(
        self,
        workdir: Path,
        base_config: Path,
        *,
        redis: RedisServer,
        background: str | None = BACKGROUND,
        **kwargs: Any,
    ) -> None:
        super().__init__(workdir, base_config, **kwargs)
        self.replication_port = free_port()
        self.redis = redis
        self.background = background

    def _override(self) -> dict[str, Any]:
        override = super()._override()
        override["listeners"] = [
            *override["listeners"],
            {
                "port": self.replication_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "resources": [{"names": ["replication"]}],
            },
        ]
        override["redis"] = {"enabled": True, "host": "127.0.0.1", "port": self.redis.port}
        override["instance_map"] = {"main": {"host": "127.0.0.1", "port": self.replication_port}}
        override["worker_replication_secret"] = REPLICATION_SECRET
        if self.background is not None:
            override["run_background_tasks_on"] = self.background
        return override

    def shared_files(self) -> list[str]:
        """The files every process starts from (written by `command`)."""
        return [
            "-c", str(self.base_config), "-c", str(self.fragments),
            "-c", str(self.workdir / "zz-test-override.yaml"),
        ]  # fmt: skip


class WorkerProcess(SynapseServer):
    """A generic worker: the main process's files plus its own worker file."""

    def __init__(
        self,
        workdir: Path,
        main: MainProcess,
        name: str,
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(workdir, main.base_config, fragments=main.fragments)
        self.main = main
        self.name = name
        self.worker_extra = dict(extra or {})

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_config = self.workdir / "log.yaml"
        log_config.write_text(LOG_CONFIG.format(path=self.log_file))
        listen = {"bind_addresses": ["127.0.0.1"]}
        worker = {
            "worker_app": "synapse.app.generic_worker",
            "worker_name": self.name,
            "worker_listeners": [
                {
                    **listen,
                    "port": self.port,
                    "type": "http",
                    "x_forwarded": True,
                    "resources": [{"names": ["client"], "compress": False}],
                },
                {**listen, "port": self.metrics_port, "type": "metrics"},
            ],
            "worker_log_config": str(log_config),
            **self.worker_extra,
        }
        path = self.workdir / f"{self.name}.yaml"
        path.write_text(yaml.safe_dump(worker, sort_keys=False))
        return path

    def command(self) -> list[str]:
        worker = self.write_config()
        return [
            sys.executable, "-m", "synapse.app.generic_worker",
            *self.main.shared_files(), "-c", str(worker),
        ]  # fmt: skip


class WorkerDeployment:
    """Redis, the main process, two client workers and a background-tasks worker."""

    def __init__(
        self,
        base_config: Path,
        database: Mapping[str, Any],
        *,
        guard: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="synapse-guard-workers-"))
        self.redis = RedisServer(self.root / "redis")
        self.main = MainProcess(
            self.root / "main",
            base_config,
            redis=self.redis,
            database=database,
            guard=guard,
            extra=extra,
        )
        self.clients = [
            WorkerProcess(self.root / name, self.main, name) for name in ("client1", "client2")
        ]
        self.background = WorkerProcess(self.root / BACKGROUND, self.main, BACKGROUND)
        self.started_in_s = 0.0

    @property
    def processes(self) -> list[SynapseServer]:
        return [self.main, *self.clients, self.background]

    @property
    def workers(self) -> list[WorkerProcess]:
        return [*self.clients, self.background]

    def start(self) -> WorkerDeployment:
        began = time.monotonic()
        try:
            self.redis.start()
            self.main.start()  # the database schema first, then the workers at once
            with ThreadPoolExecutor(len(self.workers)) as pool:
                for started in [pool.submit(worker.start) for worker in self.workers]:
                    started.result()
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.monotonic() - began
        return self

    def stop(self) -> None:
        try:
            for process in reversed(self.processes):
                process.stop()
        finally:
            self.redis.stop()

    def cleanup(self) -> None:
        if os.environ.get("SYNAPSE_GUARD_KEEP_WORKER_LOGS"):  # to read them after a failure
            print(f"\nworker deployment's files kept in {self.root}")
            return
        shutil.rmtree(self.root, ignore_errors=True)

    def logs(self) -> dict[str, str]:
        return {
            name: (server.log_file.read_text() if server.log_file.exists() else "")
            + (server.console_file.read_text() if server.console_file.exists() else "")
            for name, server in zip(
                ("main", "client1", "client2", BACKGROUND), self.processes, strict=True
            )
        }
