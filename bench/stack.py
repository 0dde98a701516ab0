"""Start a dev server (in memory or file-backed), the worker and the API as processes; read their CPU from /proc."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
sys.path.insert(0, str(ROOT))

from temporal_client import dev_server_file_args  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before opening port {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} not open after {timeout}s")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its reaped children, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + cutime + cstime) / CLOCK_TICKS


def rss_mb(pid: int, peak: bool = True) -> float:
    """Peak (VmHWM) or current (VmRSS) resident set size of a process, in MB."""
    key = "VmHWM:" if peak else "VmRSS:"
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Stack:
    file_backed: bool
    env_overrides: dict = field(default_factory=dict)
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="takeback-bench-")))
    processes: dict = field(default_factory=dict)
    database_url: str = ""  # empty: the SQLite file in data_dir; else e.g. a throwaway PostgreSQL's URL

    def __post_init__(self):
        self.temporal_port = free_port()
        self.api_port = free_port()
        self.env = dict(
            os.environ,
            TEMPORAL_ADDRESS=f"127.0.0.1:{self.temporal_port}",
            TAKEBACK_DATA_DIR=str(self.data_dir),
            PYTHONPATH=str(ROOT),
            TAKEBACK_ENV="test",  # bench secrets and outbox mail: production would refuse to start on them
            **self.env_overrides,
        )
        self.env.pop("TAKEBACK_DATABASE_URL", None)
        if self.database_url:
            self.env["TAKEBACK_DATABASE_URL"] = self.database_url

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self, api: bool = True) -> "Stack":
        """Start the processes; if one fails to come up, end those already started."""
        try:
            return self._start(api)
        except BaseException:
            self.stop()
            raise

    def _start(self, api: bool) -> "Stack":
        temporal = str(BIN / "temporal") if (BIN / "temporal").exists() else shutil.which("temporal")
        command = [temporal, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(self.temporal_port), "--log-level", "error"]
        if self.file_backed:
            command += dev_server_file_args(self.data_dir / "temporal.db")
        self.processes["server"] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.temporal_port, self.processes["server"])
        self.processes["worker"] = subprocess.Popen([sys.executable, "-m", "bench.baseline"], env=self.env, cwd=ROOT)
        if api:
            self.processes["api"] = subprocess.Popen(
                [sys.executable, "-m", "cli", "api", "--port", str(self.api_port)], env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(self.data_dir.parent / f"{self.data_dir.name}-api.log", "w")
            )
            wait_port(self.api_port, self.processes["api"])
        time.sleep(1.0)  # let the worker start polling
        return self

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(p.pid) for name, p in self.processes.items()}

    def db_size_mb(self) -> float:
        path = self.data_dir / "temporal.db"
        return sum(p.stat().st_size for p in self.data_dir.glob("temporal.db*")) / 1e6 if path.exists() else 0.0

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)
