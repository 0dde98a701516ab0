"""Point 1: the Temporal Web UI is not open to the network, and workflow payloads can be sealed.

Histories hold pickup addresses, contact names and phones: the UI is published on loopback only,
read-only, with OIDC documented; with TAKEBACK_PAYLOAD_KEYS every payload the client and worker
write is AES-GCM ciphertext, readable by holders of the key (old keys kept for rotation) and, for
people with its token, through `takeback codec-server`."""

import base64
import os
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import httpx
import pytest
from temporalio.client import Client

from domain.deal_progress import DealWorkflowInput
from domain.models import BookingRequest, PickupRequest
from service import deals
from tests.conftest import make_settings, running_worker
from tests.security.compose_helpers import SERVICES, env_of, port_mappings, security_section
from temporal_client import connect

SECRET_CONTACT = "Samira Privateperson"
SECRET_PHONE = "+1 416 555 0199"
SECRET_ADDRESS = "77 Hidden Lane, Toronto"


def test_the_web_ui_and_every_published_port_are_on_loopback_and_the_ui_is_read_only():
    ui = env_of("temporal-ui")
    assert ui.get("TEMPORAL_DISABLE_WRITE_ACTIONS") == "true", "the UI can terminate, signal and reset deals"
    assert port_mappings("temporal-ui") == [("127.0.0.1", 8080, 8080)]
    for name in SERVICES:
        for host_ip, host_port, _ in port_mappings(name):
            assert host_ip == "127.0.0.1", f"{name} publishes {host_port} on {host_ip}"
    security = security_section()
    for setting in ("TEMPORAL_AUTH_ENABLED", "TEMPORAL_AUTH_PROVIDER_URL", "TEMPORAL_AUTH_CLIENT_ID", "TEMPORAL_CODEC_ENDPOINT"):
        assert setting in security, f"README does not say how to set {setting}"


def keys(*key_ids: str) -> dict[str, bytes]:
    return {key_id: os.urandom(32) for key_id in key_ids}


def keyring(keys: dict[str, bytes]) -> str:
    return ",".join(f"{key_id}:{base64.b64encode(key).decode()}" for key_id, key in keys.items())


def sealed_settings(tmp_path, env, keys: dict[str, bytes], key_id: str, task_queue: str | None = None):
    overrides = {"task_queue": task_queue} if task_queue else {}
    return make_settings(tmp_path, temporal_address=env.client.service_client.config.target_host, payload_keys=keyring(keys), payload_key_id=key_id, **overrides)


def private_booking() -> BookingRequest:
    return BookingRequest.model_validate({
        "partner_id": "P1", "customer": {"name": "Northwind", "country": "CA"}, "opportunity": "refresh",
        "new_products_value": Decimal("100000.00"), "incentive_rate": Decimal("0.05"), "equipment": [{"product_id": "C9300-48P", "quantity": 10}],
    })


TOMORROW = (datetime.now(timezone.utc) + timedelta(days=1)).date().isoformat()  # a pickup is ready from today to the deadline
PRIVATE_PICKUP = PickupRequest(address=SECRET_ADDRESS, contact_name=SECRET_CONTACT, contact_phone=SECRET_PHONE, ready_on=TOMORROW, expected_units=10)


async def history_bytes(client: Client, deal_id: str) -> bytes:
    history = await deals.deal_handle(client, deal_id).fetch_history()
    return b"".join(event.SerializeToString() for event in history.events)


async def pickup_requests(client: Client, deal_id: str) -> list[PickupRequest]:
    """The pickup requests the deal accepted, decoded from its history with `client`'s converter."""
    history = await deals.deal_handle(client, deal_id).fetch_history()
    requests = []
    for event in history.events:
        if event.HasField("workflow_execution_update_accepted_event_attributes"):
            update = event.workflow_execution_update_accepted_event_attributes.accepted_request.input
            if update.name == "request_pickup":
                (request,) = await client.data_converter.decode(update.args.payloads, [PickupRequest])
                requests.append(request)
    return requests


async def started_input(client: Client, deal_id: str) -> DealWorkflowInput:
    history = await deals.deal_handle(client, deal_id).fetch_history()
    payloads = history.events[0].workflow_execution_started_event_attributes.input.payloads
    (decoded,) = await client.data_converter.decode(payloads, [DealWorkflowInput])
    return decoded


async def test_payloads_in_history_are_encrypted_and_a_key_holder_reads_them(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = sealed_settings(tmp_path, env, keys("k1"), "k1")
    client = await connect(settings)  # the one data converter: the worker below takes this client's
    async with running_worker(client, settings):
        deal = await deals.book_deal(client, settings, private_booking())
        await deals.request_pickup(client, deal.id, PRIVATE_PICKUP)
        view = await deals.get_deal(client, settings, deal.id)  # a query, answered through the codec
        assert view.id == deal.id and len(view.pickups) == 1

        raw = await history_bytes(env.client, deal.id)  # what the server (and its Web UI) hold
        for plaintext in (SECRET_CONTACT, SECRET_PHONE, SECRET_ADDRESS):
            assert plaintext.encode() not in raw, f"{plaintext!r} is readable in the history"
        assert b"binary/encrypted" in raw and b"k1" in raw
        assert (await started_input(client, deal.id)).terms.deal_id == deal.id
        assert [(r.contact_name, r.contact_phone, r.address) for r in await pickup_requests(client, deal.id)] == [(SECRET_CONTACT, SECRET_PHONE, SECRET_ADDRESS)]
        with pytest.raises(Exception):  # without the key, the answer cannot be read
            await deals.deal_handle(env.client, deal.id).query("view")


async def test_a_rotated_key_still_opens_the_payloads_the_old_one_sealed(dev_server_env, tmp_path):
    env = dev_server_env  # a real server: the stopped worker's deals move to the new one at once
    old, new = keys("2026-01"), keys("2026-07")
    before = sealed_settings(tmp_path, env, old, "2026-01")
    client = await connect(before)
    async with running_worker(client, before):
        deal = await deals.book_deal(client, before, private_booking())
        await deals.get_deal(client, before, deal.id)

    # The new key seals, the old one stays listed: a new worker replays the old history and goes on.
    after = sealed_settings(tmp_path, env, new | old, "2026-07", task_queue=before.task_queue)
    rotated = await connect(after)
    async with running_worker(rotated, after):
        await deals.request_pickup(rotated, deal.id, PRIVATE_PICKUP)
        assert len((await deals.get_deal(rotated, after, deal.id)).pickups) == 1
        raw = await history_bytes(env.client, deal.id)
        assert b"2026-01" in raw and b"2026-07" in raw and SECRET_CONTACT.encode() not in raw
        assert (await started_input(rotated, deal.id)).terms.deal_id == deal.id
        assert [r.contact_name for r in await pickup_requests(rotated, deal.id)] == [SECRET_CONTACT]

    only_new = await connect(sealed_settings(tmp_path, env, new, "2026-07"))
    with pytest.raises(Exception, match="2026-01"):  # the old key was needed: it sealed the booking
        await started_input(only_new, deal.id)


async def test_the_codec_server_round_trips_and_refuses_callers_without_its_token(tmp_path):
    from temporalio.api.common.v1 import Payload

    from codec import codec_server_app
    from temporal_client import data_converter

    settings = make_settings(tmp_path, payload_keys=keyring(keys("k1")), payload_key_id="k1")
    converter = data_converter(settings)
    ui = "http://127.0.0.1:8080"
    app = codec_server_app(converter.payload_codec, "codec-token-for-tests", [ui])
    plain = converter.payload_converter.to_payloads([{"contact_name": SECRET_CONTACT}])
    from google.protobuf import json_format
    from temporalio.api.common.v1 import Payloads

    body = json_format.MessageToJson(Payloads(payloads=plain))
    auth = {"Authorization": "Bearer codec-token-for-tests", "Content-Type": "application/json", "X-Namespace": "default"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://codec.test") as http:
        for headers in ({"Content-Type": "application/json"}, {**auth, "Authorization": "Bearer wrong"}):
            for path in ("/encode", "/decode"):
                refused = await http.post(path, content=body, headers=headers)
                assert refused.status_code == 401 and refused.headers["content-type"].startswith("application/problem+json")

        encoded = await http.post("/encode", content=body, headers=auth)
        assert encoded.status_code == 200 and SECRET_CONTACT not in encoded.text
        sealed = json_format.Parse(encoded.text, Payloads())
        assert sealed.payloads[0].metadata["encoding"] == b"binary/encrypted"
        decoded = await http.post("/decode", content=encoded.text, headers=auth)
        assert decoded.status_code == 200
        opened = json_format.Parse(decoded.text, Payloads()).payloads
        assert list(opened) == list(plain) and isinstance(opened[0], Payload)

        # The Web UI's origin may call it from a browser; another site may not.
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type,x-namespace"}
        allowed = await http.options("/decode", headers={"Origin": ui, **preflight})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ui
        other = await http.options("/decode", headers={"Origin": "https://evil.example", **preflight})
        assert other.headers.get("access-control-allow-origin") is None


def test_the_codec_server_command_refuses_to_decrypt_for_anyone(monkeypatch, capsys):
    import cli
    from settings import get_settings

    for name in ("TAKEBACK_PAYLOAD_KEYS", "TAKEBACK_PAYLOAD_KEY_ID", "TAKEBACK_CODEC_SERVER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    assert cli.main(["codec-server"]) == 2 and "TAKEBACK_PAYLOAD_KEYS" in capsys.readouterr().err  # no keys: nothing to decode
    monkeypatch.setenv("TAKEBACK_PAYLOAD_KEYS", keyring(keys("k1")))
    monkeypatch.setenv("TAKEBACK_PAYLOAD_KEY_ID", "k1")
    get_settings.cache_clear()
    try:
        assert cli.main(["codec-server", "--host", "0.0.0.0"]) == 2 and "TAKEBACK_CODEC_SERVER_TOKEN" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()
