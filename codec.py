"""Optional end-to-end encryption of workflow payloads, and the codec server that decodes them for people.

Workflow inputs, results, signals, updates, queries, activity arguments and memos hold personal
data (pickup addresses, contact names and phones, trainee e-mails). With TAKEBACK_PAYLOAD_KEYS
set, every payload is sealed with AES-GCM before it leaves the process, so the Temporal server,
its database and its Web UI see only ciphertext. Each sealed payload names its key id: new
payloads use TAKEBACK_PAYLOAD_KEY_ID, and any listed key opens the payloads it sealed (rotation:
add the new key, switch the id, keep the old one listed while histories sealed with it are open).
Payloads that are not sealed pass through, so turning the codec on leaves older histories readable.

`takeback codec-server` serves Temporal's codec-server protocol (POST /encode, /decode with
`{"payloads": [...]}` in protobuf JSON) so the Web UI and the `temporal` CLI can show decoded
payloads to the people who hold its token.
"""

import hmac
import os

from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12


class PayloadKeyMissing(ValueError):
    """A payload was sealed with a key this process does not hold."""


class PayloadNotSealed(ValueError):
    """A payload arrived unsealed while TAKEBACK_PAYLOAD_REQUIRE_ENCRYPTION refuses those."""


class AesGcmCodec(PayloadCodec):
    def __init__(self, keys: dict[str, bytes], key_id: str, require_sealed: bool = False):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if key_id not in keys:
            raise ValueError(f"payload key id {key_id!r} is not among the keys")
        self.key_id = key_id
        self.require_sealed = require_sealed
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.items()}

    async def encode(self, payloads):
        return [self.seal(payload) for payload in payloads]

    async def decode(self, payloads):
        return [self.open(payload) for payload in payloads]

    def seal(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        # The key id is authenticated too: a payload cannot be relabelled to another key.
        sealed = self._ciphers[self.key_id].encrypt(nonce, payload.SerializeToString(), self.key_id.encode())
        return Payload(metadata={"encoding": ENCODING, KEY_ID: self.key_id.encode()}, data=nonce + sealed)

    def open(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            if self.require_sealed:
                encoding = payload.metadata.get("encoding", b"").decode("utf-8", "replace")
                raise PayloadNotSealed(
                    f"refused a payload that is not encrypted (encoding {encoding!r}): TAKEBACK_PAYLOAD_REQUIRE_ENCRYPTION "
                    "accepts only payloads sealed with TAKEBACK_PAYLOAD_KEYS"
                )
            return payload  # written before the codec was turned on
        key_id = payload.metadata.get(KEY_ID, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadKeyMissing(f"payload sealed with key {key_id!r}, which is not in TAKEBACK_PAYLOAD_KEYS")
        plain = cipher.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], key_id.encode())
        opened = Payload()
        opened.ParseFromString(plain)
        return opened


def codec_from_settings(settings) -> AesGcmCodec | None:
    """The codec the settings ask for, or None when no payload key is set (the codec is off)."""
    keys = settings.payload_keyring
    if not keys:
        if settings.payload_require_encryption:
            raise ValueError("TAKEBACK_PAYLOAD_REQUIRE_ENCRYPTION is set without TAKEBACK_PAYLOAD_KEYS")
        return None
    if not settings.payload_key_id:
        raise ValueError("TAKEBACK_PAYLOAD_KEYS is set without TAKEBACK_PAYLOAD_KEY_ID")
    return AesGcmCodec(keys, settings.payload_key_id, require_sealed=settings.payload_require_encryption)


# --- the codec server --------------------------------------------------------------------------


def codec_server_app(codec: AesGcmCodec, token: str | None, origins: list[str]):
    """Temporal's codec-server protocol over HTTP: POST /encode and POST /decode.

    With a token, every call must send `Authorization: Bearer <token>` (the Web UI forwards the
    signed-in user's access token with TEMPORAL_CODEC_PASS_ACCESS_TOKEN). Browsers may call it from
    `origins` only (CORS), so another site open in the same browser cannot use it."""
    from google.protobuf import json_format
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    expected = f"Bearer {token}".encode() if token else None

    def problem(status: int, detail: str, kind: str) -> JSONResponse:
        return JSONResponse(
            {"type": f"https://takeback.example/problems/{kind}", "title": kind.replace("-", " "), "status": status, "detail": detail},
            status_code=status,
            media_type="application/problem+json",
            headers={"WWW-Authenticate": 'Bearer realm="takeback-codec"'} if status == 401 else None,
        )

    def endpoint(transform):
        async def handle(request: Request) -> Response:
            if expected is not None and not hmac.compare_digest(request.headers.get("authorization", "").encode(), expected):
                return problem(401, "send the codec server's token: Authorization: Bearer <token>", "unauthorized")
            body = await request.body()
            if len(body) > 4 * 1024 * 1024:
                return problem(413, "at most 4 MiB of payloads per call", "payload-too-large")
            payloads = Payloads()
            try:
                json_format.Parse(body or b"{}", payloads)
                result = Payloads(payloads=await transform(list(payloads.payloads)))
            except json_format.ParseError:
                return problem(400, 'the body is {"payloads": [...]} in protobuf JSON', "bad-request")
            except Exception as error:  # a payload sealed with an unknown key, or tampered with
                return problem(422, f"cannot decode: {type(error).__name__}", "undecodable")
            return Response(json_format.MessageToJson(result), media_type="application/json")

        return handle

    return Starlette(
        routes=[Route("/encode", endpoint(codec.encode), methods=["POST"]), Route("/decode", endpoint(codec.decode), methods=["POST"])],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["POST"],
                allow_headers=["Authorization", "Content-Type", "X-Namespace"],
                allow_credentials=True,
            )
        ],
    )
