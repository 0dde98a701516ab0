"""The worker's log lines carry no e-mail addresses or keys (issue 11, Minor: logs)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_worker_masks_addresses_and_keys_in_its_log_lines():
    script = (
        "import logging, worker\n"
        "worker.main.__globals__['asyncio'] = type('A', (), {'run': staticmethod(lambda coro: (coro.close(), logging.getLogger('takeback.activities').warning("
        "'mail to %s failed: SendGrid refused key SG.abcdefghijklmnopqrstuvwx for %s', 'ana@partner.example', 'tbk_ops_abcdefghijklmnop')))})\n"
        "import os; os._exit = lambda code: None\n"
        "worker.main()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    log = done.stderr
    assert "mail to" in log, log
    assert "ana@partner.example" not in log and "SG.abcdefghijklmnopqrstuvwx" not in log and "tbk_ops_abcdefghijklmnop" not in log
    assert "<email>" in log
