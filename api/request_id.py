"""`X-Request-Id`: taken from the caller when it is a plain token, made otherwise; echoed on every
answer (problem+json bodies carry it too, api/problems.py) and on every log line of the request
(observability/logs.py), so a caller's report finds its lines.

Plain ASGI and the outermost layer: the edge's own refusals (401, 408, 413, 429) carry it as well.
"""

import re
import uuid

from observability import logs

HEADER = b"x-request-id"
# What a caller may name its request with: no spaces or control characters to forge a log line with.
ACCEPTED = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def new_request_id() -> str:
    return uuid.uuid4().hex


class RequestId:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = None
        for name, value in scope["headers"]:
            if name == HEADER:
                request_id = value.decode("ascii") if ACCEPTED.fullmatch(value) else None
                break
        request_id = request_id or new_request_id()
        logs.start_request(request_id, scope)
        encoded = request_id.encode("ascii")

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = message.get("headers") or []
                if not any(name.lower() == HEADER for name, _ in headers):  # problem answers set it themselves
                    message["headers"] = [*headers, (HEADER, encoded)]
            await send(message)

        await self.app(scope, receive, send_with_id)
