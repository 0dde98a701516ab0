"""`takeback dev` runs the stack and stops all of it; `takeback apikey create` prints a usable key."""

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import httpx

from tests.postgres import _free_port


def start_dev(data_dir, *args: str) -> tuple[subprocess.Popen, str]:
    """`takeback dev` with `args`, and what it printed up to its ops key (the last line of its banner)."""
    dev = subprocess.Popen([sys.executable, "-m", "cli", "dev", "--data-dir", str(data_dir), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = dev.stdout.readline()
        lines.append(line)
        if line.startswith("tbk_ops_") or (not line and dev.poll() is not None):
            break
    return dev, "".join(lines)


def stop_dev(dev: subprocess.Popen) -> None:
    dev.send_signal(signal.SIGINT)
    assert dev.wait(timeout=40) == 0


def never_left_running(dev: subprocess.Popen) -> None:
    """After a failed test: SIGTERM first, which dev takes as Ctrl-C and stops its children; a bare
    SIGKILL would orphan its Temporal server."""
    from tests.test_worker_recovery import stop_worker

    stop_worker(dev)


def test_dev_serves_the_api_and_stops_everything_on_ctrl_c(tmp_path):
    temporal_port = free_port_with(0, 1000)  # temporal_port + 1000: the Web UI's
    api_port = next(p for p in iter(lambda: free_port_with(0), None) if p not in (temporal_port, temporal_port + 1000))
    dev, output = start_dev(tmp_path, "--api-port", str(api_port), "--temporal-port", str(temporal_port))
    try:
        ops_key = output.splitlines()[-1].strip()
        assert f"http://127.0.0.1:{api_port}/docs" in output and f"http://127.0.0.1:{temporal_port + 1000}" in output
        health = httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=10)
        assert health.status_code == 200, health.text
        # Operating it, locally: the worker's Prometheus endpoint is on and printed.
        worker_metrics = re.search(r"(http://127\.0\.0\.1:\d+/metrics) \(worker\)", output).group(1)
        for _ in range(100):  # the worker started before the API, but may still be connecting
            try:
                scraped = httpx.get(worker_metrics, timeout=10).text
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert "temporal_worker_task_slots_available" in scraped
        partner = httpx.post(f"http://127.0.0.1:{api_port}/v1/partners", json={"id": "CLI", "name": "Cli", "contact_email": "c@p.example", "country": "CA"},
                             headers={"Authorization": f"Bearer {ops_key}"}, timeout=10)
        assert partner.status_code == 201, partner.text
        key = subprocess.run([sys.executable, "-m", "cli", "apikey", "create", "--role", "partner", "--partner-id", "CLI", "--data-dir", str(tmp_path)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        own = httpx.get(f"http://127.0.0.1:{api_port}/v1/partners/CLI", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert own.status_code == 200 and own.json()["specialization"]["status"] == "not_certified"
        stop_dev(dev)
        time.sleep(0.5)
        for port in (api_port, temporal_port):
            with socket.socket() as sock:
                assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open after Ctrl-C"
    finally:
        never_left_running(dev)
        assert (tmp_path / "temporal.db").exists() and (tmp_path / "takeback.db").exists()
    # The engine's file is in WAL mode (temporal_client.dev_server_file_args): the mode a deadline storm was measured in.
    import sqlite3

    with contextlib.closing(sqlite3.connect(tmp_path / "temporal.db")) as engine_file:
        assert engine_file.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# Ports the tests hand to `takeback dev` come from below the kernel's ephemeral range (32768-60999 here): a port
# in it, free when picked, can be taken a moment later as the local port of any outgoing connection on the machine
# (a fresh-clone run saw the Web UI's port, the given one + 1000, taken so, and the dev server fail to bind it).
BELOW_EPHEMERAL = range(20000, 31000)


def free_port_with(*offsets: int) -> int:
    """A port p below the ephemeral range with nothing listening on p + each offset."""
    for _ in range(200):
        first = random.choice(BELOW_EPHEMERAL)
        held = []
        try:
            for offset in offsets:
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", first + offset))
            return first
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise AssertionError("no free ports found")


def adjacent_free_ports(count: int) -> int:
    """The first of `count` consecutive free ports (and the Web UI's of the second, first + 1 + 1000)."""
    return free_port_with(*range(count), 1001)


def printed_ports(output: str) -> dict[str, int]:
    line = next(line for line in output.splitlines() if line.strip().startswith("ports:"))
    return {name: int(port) for name, port in re.findall(r"([A-Za-z][A-Za-z ]*?) (\d+)(?:,|$)", line.split(":", 1)[1].strip())}


def test_dev_on_adjacent_ports_gives_every_process_a_port_of_its_own(tmp_path):
    """--api-port P --temporal-port P+1: the worker's metrics used to default to P+1, Temporal's port, and
    the worker died at boot ("Address already in use")."""
    api_port = adjacent_free_ports(3)
    dev, output = start_dev(tmp_path, "--api-port", str(api_port), "--temporal-port", str(api_port + 1))
    try:
        base = "http://127.0.0.1"

        def ready() -> bool:  # the API is ready once Temporal sees the worker poll (README "Operating it")
            return httpx.get(f"{base}:{api_port}/readyz", timeout=10).status_code == 200

        deadline = time.monotonic() + 30
        while dev.poll() is None and not ready() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert dev.poll() is None and ready(), f"a process of takeback dev died or its worker never polled:\n{output[-3000:]}"
        worker_metrics = re.search(r"(http://127\.0\.0\.1:\d+/metrics) \(worker\)", output).group(1)
        assert "temporal_worker_task_slots_available" in httpx.get(worker_metrics, timeout=10).text
        # Every port it uses is printed, each given to one process.
        ports = printed_ports(output)
        assert {"API", "Temporal gRPC", "Temporal Web UI", "Temporal HTTP API", "Temporal metrics", "worker metrics", "worker health"} <= set(ports), output
        assert len(set(ports.values())) == len(ports), f"one port for two processes: {ports}"
        assert (ports["API"], ports["Temporal gRPC"], ports["Temporal Web UI"]) == (api_port, api_port + 1, api_port + 1001)
        assert worker_metrics == f"{base}:{ports['worker metrics']}/metrics"
        assert httpx.get(f"{base}:{ports['worker health']}/livez", timeout=10).status_code == 200
        assert "temporal" in httpx.get(f"{base}:{ports['Temporal metrics']}/metrics", timeout=10).text  # the server's own
        stop_dev(dev)
    finally:
        never_left_running(dev)


def test_dev_refuses_one_port_for_two_processes_or_a_port_in_use(tmp_path):
    port = _free_port()
    same = subprocess.run([sys.executable, "-m", "cli", "dev", "--data-dir", str(tmp_path), "--api-port", str(port), "--temporal-port", str(port)],
                          capture_output=True, text=True, timeout=30)
    assert same.returncode == 2 and f"port {port} is asked for both" in same.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        refused = subprocess.run([sys.executable, "-m", "cli", "dev", "--data-dir", str(tmp_path), "--api-port", str(_free_port()), "--temporal-port", str(taken)],
                                 capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and f"port {taken} (Temporal gRPC) is in use" in refused.stderr
    metrics = subprocess.run([sys.executable, "-m", "cli", "dev", "--data-dir", str(tmp_path), "--api-port", str(port)],
                             env={**os.environ, "TAKEBACK_WORKER_METRICS_ADDRESS": f"127.0.0.1:{port}"}, capture_output=True, text=True, timeout=30)
    assert metrics.returncode == 2 and "API and worker metrics" in metrics.stderr
    assert not (tmp_path / "temporal.db").exists()  # refused before anything started


def test_apikey_create_refuses_a_partner_key_without_a_partner(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cli", "apikey", "create", "--role", "partner", "--data-dir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "--partner-id" in result.stderr
