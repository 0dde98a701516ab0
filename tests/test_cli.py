"""`takeback dev` runs the stack and stops all of it; `takeback apikey create` prints a usable key."""

import contextlib
import signal
import subprocess
import sys
import time

import httpx

from tests.postgres import _free_port


def test_dev_serves_the_api_and_stops_everything_on_ctrl_c(tmp_path):
    api_port, temporal_port = _free_port(), _free_port()
    dev = subprocess.Popen(
        [sys.executable, "-m", "cli", "dev", "--data-dir", str(tmp_path), "--api-port", str(api_port), "--temporal-port", str(temporal_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = dev.stdout.readline()
            lines.append(line)
            if line.startswith("tbk_ops_"):
                break
        ops_key = lines[-1].strip()
        output = "".join(lines)
        assert f"http://127.0.0.1:{api_port}/docs" in output and f"http://127.0.0.1:{temporal_port + 1000}" in output
        health = httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=10)
        assert health.status_code == 200, health.text
        # Operating it, locally: the worker's Prometheus endpoint is on and printed.
        import re

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
        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=40) == 0
        time.sleep(0.5)
        for port in (api_port, temporal_port):
            import socket

            with socket.socket() as sock:
                assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open after Ctrl-C"
    finally:
        if dev.poll() is None:
            dev.kill()
        assert (tmp_path / "temporal.db").exists() and (tmp_path / "takeback.db").exists()
    # The engine's file is in WAL mode (temporal_client.dev_server_file_args): the mode a deadline storm was measured in.
    import sqlite3

    with contextlib.closing(sqlite3.connect(tmp_path / "temporal.db")) as engine_file:
        assert engine_file.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_apikey_create_refuses_a_partner_key_without_a_partner(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cli", "apikey", "create", "--role", "partner", "--data-dir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "--partner-id" in result.stderr
