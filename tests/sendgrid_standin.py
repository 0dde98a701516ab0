"""A SendGrid v3 stand-in on 127.0.0.1 that misbehaves as providers do, and counts what it delivered.

The real `sendgrid` client talks to it (SENDGRID_HOST), as in production. It can refuse some
addresses (400), refuse the API key (401), be down (503), answer some requests after the client
has given up, rate-limit as SendGrid does (`rate_limit` messages a `rate_window`: past it, 429 with
`X-RateLimit-Reset`, the unix time the window ends), and it counts each message it accepted by
(to, subject, the sender's message key in `custom_args`): a message there twice was delivered
twice, whatever the client saw. `accepted_at` keeps when each was accepted (unix seconds).
"""

import json
import math
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class SendGridStandIn:
    def __init__(self):
        self.rejected_addresses: set[str] = set()
        self.down = False  # every request: 503
        self.key_revoked = False  # every request: 401
        self.fail_every = 0  # every n-th request: 503
        self.slow_every = 0  # every n-th request is accepted, but answered after `slow_seconds`
        self.slow_seconds = 0.0
        # A fixed window, as SendGrid's: it starts at the first request after the last one ended; 0: no limit.
        self.rate_limit = 0
        self.rate_window = 60.0
        self.window_ends = 0.0
        self.window_used = 0
        self.requests = 0
        self.accepted_at: list[float] = []
        self.delivered: Counter = Counter()  # (to, subject, message key) -> times accepted
        self.refusals: Counter = Counter()  # status -> count
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                to = payload["personalizations"][0]["to"][0]["email"]
                status, delay, headers = outer._answer(to, payload["subject"], payload.get("custom_args", {}).get("takeback_key", ""))
                time.sleep(delay)
                body = b'{"errors":[{"message":"refused by the stand-in"}]}' if status >= 400 else b""
                try:
                    self.send_response(status)
                    if status == 202:
                        self.send_header("X-Message-Id", f"standin-{outer.requests}")
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up waiting: the message was delivered all the same

            def log_message(self, *_):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def _answer(self, to: str, subject: str, key: str) -> tuple[int, float, dict]:
        with self.lock:
            self.requests += 1
            n = self.requests
            headers: dict = {}
            now = time.time()
            if self.rate_limit and now >= self.window_ends:
                self.window_ends, self.window_used = now + self.rate_window, 0
            if self.rate_limit:
                headers = {"X-RateLimit-Limit": str(self.rate_limit), "X-RateLimit-Reset": str(math.ceil(self.window_ends))}
            if self.key_revoked:
                status = 401
            elif self.down or (self.fail_every and n % self.fail_every == 0):
                status = 503
            elif self.rate_limit and self.window_used >= self.rate_limit:
                status = 429
            elif to in self.rejected_addresses:
                status = 400
            else:
                status = 202
            if status == 202:
                self.delivered[(to, subject, key)] += 1
                self.accepted_at.append(now)
                self.window_used += 1
            else:
                self.refusals[status] += 1
            if self.rate_limit:
                headers["X-RateLimit-Remaining"] = str(max(0, self.rate_limit - self.window_used))
            delay = self.slow_seconds if status == 202 and self.slow_every and n % self.slow_every == 0 else 0.0
            return status, delay, headers

    def delivered_to(self, to: str, subject_part: str = "") -> int:
        with self.lock:
            return sum(n for (address, subject, _key), n in self.delivered.items() if address == to and subject_part in subject)

    def delivered_twice(self) -> list:
        with self.lock:
            return [message for message, n in self.delivered.items() if n > 1]

    def close(self):
        self.server.shutdown()
        self.server.server_close()
