"""The API's readiness (`/readyz`, a load balancer's probe) needs a worker polling the deals' task queue;
its liveness (`/livez`, a supervisor's probe) needs nothing but the process (README "Operating it")."""

import time

from api.routes import health
from tests.api_helpers import api_client, eventually
from tests.conftest import make_settings, running_worker


async def test_the_api_is_not_ready_while_no_worker_polls_the_deals_queue(dev_server_env, tmp_path, monkeypatch):
    settings = make_settings(tmp_path, temporal_address=dev_server_env.client.service_client.config.target_host)  # a queue nobody polls yet
    asked = []
    polled = health.queue_polled

    async def counted(*args, **kwargs):
        asked.append(time.monotonic())
        return await polled(*args, **kwargs)

    monkeypatch.setattr(health, "queue_polled", counted)
    async with api_client(settings) as http:
        probes = [await http.get("/readyz") for _ in range(20)]  # a load balancer probing while no worker runs
        assert {r.status_code for r in probes} == {503}
        body = probes[0].json()
        assert body["type"].endswith("/worker-unavailable") and probes[0].headers["retry-after"]
        assert (body["database"], body["temporal"], body["workers"]) == ("ok", "ok", "down")
        assert len(asked) == 1  # the engine was asked once about the queue's pollers, not per probe
        # Nothing a restart would cure: the supervisor's probe says the process is fine, and the v1 check too.
        assert (await http.get("/livez")).status_code == 200
        assert (await http.get("/healthz")).status_code == 200

        async with running_worker(dev_server_env.client, settings):
            async def ready():
                return (await http.get("/readyz")).status_code == 200

            await eventually(ready, timeout=health.POLLERS_CACHE + 10, what="readiness once a worker polls")
            assert (await http.get("/readyz")).json() == {"status": "ok", "database": "ok", "temporal": "ok"}
