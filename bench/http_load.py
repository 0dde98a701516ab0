"""The benchmark's HTTP load generator: aiohttp behind the few httpx-like calls the bench makes.

The load generator shares the 2 cores with the server, worker and API, so its own CPU is charged
to the product: httpx spent about 3 ms per booking request here, aiohttp about 0.4 ms, while the
raw SDK side's client spends about 0.6 ms per start. With httpx, a third of the API's measured
shortfall was the client's.
"""

import json as jsonlib
from dataclasses import dataclass

import aiohttp


@dataclass
class Reply:
    status_code: int
    text: str

    def json(self):
        return jsonlib.loads(self.text)


class LoadClient:
    """Keep-alive connections to one base URL, with default headers (an API key)."""

    def __init__(self, base_url: str, headers: dict | None = None, connections: int = 64, timeout: float = 60):
        self._session = aiohttp.ClientSession(
            base_url=base_url,
            headers=headers or {},
            connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=2.0),  # under uvicorn's 5 s: no reuse race
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def request(self, method: str, path: str, json=None, content: bytes | None = None, headers: dict | None = None) -> Reply:
        data = jsonlib.dumps(json).encode() if json is not None else content
        headers = dict(headers or {})
        if json is not None:
            headers["Content-Type"] = "application/json"
        async with self._session.request(method, path, data=data, headers=headers) as response:
            return Reply(response.status, await response.text())

    async def get(self, path: str, headers: dict | None = None) -> Reply:
        return await self.request("GET", path, headers=headers)

    async def post(self, path: str, json=None, content: bytes | None = None, headers: dict | None = None) -> Reply:
        return await self.request("POST", path, json=json, content=content, headers=headers)

    async def __aenter__(self) -> "LoadClient":
        return self

    async def __aexit__(self, *_exc) -> None:
        await self._session.close()
