"""TAKEBACK_PAYLOAD_REQUIRE_ENCRYPTION: once every history is sealed, a payload that is not is refused.

A process writing around the codec (a client without the keys, a `temporal workflow start` by hand)
must not feed plaintext to the deals: with the setting, the worker's and the API's converters refuse an
unsealed payload with an error that says so, and neither starts without a payload key."""

import pytest
from temporalio.api.enums.v1 import EventType

from codec import PayloadNotSealed
from service import deals
from settings import Settings
from temporal_client import connect, data_converter
from tests.conftest import add_partner, make_settings
from tests.postgres import _free_port
from tests.security.test_temporal_ui_and_payload_codec import keyring, keys, private_booking, sealed_settings, started_input
from tests.security.test_webhook_secret import STRONG, production_env, start
from worker import build_worker


def required(tmp_path, env, task_queue: str | None = None):
    settings = sealed_settings(tmp_path, env, keys("k1"), "k1", task_queue=task_queue)
    return settings.model_copy(update={"payload_require_encryption": True})


async def test_the_codec_refuses_an_unsealed_payload_only_when_encryption_is_required(tmp_path):
    plain = data_converter(make_settings(tmp_path)).payload_converter.to_payloads([{"contact_name": "Sam"}])
    lenient = data_converter(make_settings(tmp_path, payload_keys=keyring(keys("k1")), payload_key_id="k1"))
    assert await lenient.payload_codec.decode(plain) == plain  # a history from before the codec reads as it is
    strict = data_converter(make_settings(tmp_path, payload_keys=keyring(keys("k1")), payload_key_id="k1", payload_require_encryption=True))
    with pytest.raises(PayloadNotSealed, match="not encrypted.*TAKEBACK_PAYLOAD_REQUIRE_ENCRYPTION"):
        await strict.payload_codec.decode(plain)
    sealed = await strict.payload_codec.encode(plain)
    assert await strict.payload_codec.decode(sealed) == plain


async def test_the_api_client_refuses_a_deal_started_without_the_codec(time_skipping_env, tmp_path):
    env = time_skipping_env
    plain = make_settings(tmp_path, temporal_address=env.client.service_client.config.target_host)
    add_partner(plain)
    deal = await deals.book_deal(env.client, plain, private_booking())  # written around the codec, in plaintext
    client = await connect(required(tmp_path, env))
    with pytest.raises(PayloadNotSealed, match="TAKEBACK_PAYLOAD_REQUIRE_ENCRYPTION"):
        await started_input(client, deal.id)


async def test_a_worker_refuses_to_run_a_deal_started_without_the_codec(time_skipping_env, tmp_path):
    env = time_skipping_env
    settings = required(tmp_path, env)
    plain = make_settings(tmp_path, temporal_address=env.client.service_client.config.target_host, task_queue=settings.task_queue)
    add_partner(plain)
    deal = await deals.book_deal(env.client, plain, private_booking())
    client = await connect(settings)
    handle = deals.deal_handle(client, deal.id)
    async with build_worker(client, settings):
        failed = None
        for _ in range(100):
            history = await handle.fetch_history()
            failed = next((e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED), None)
            if failed is not None:
                break
            await env.sleep(0.1)
    assert failed is not None, "the worker ran a deal whose input was not sealed"
    # The worker says why in the task's failure (sealed itself: a key holder reads it).
    failure = failed.workflow_task_failed_event_attributes.failure
    await client.data_converter.payload_codec.decode_failure(failure)
    message = client.data_converter.failure_converter.from_failure(failure, client.data_converter.payload_converter)
    assert "TAKEBACK_PAYLOAD_REQUIRE_ENCRYPTION" in str(message)
    kinds = [e.event_type for e in history.events]
    assert EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED not in kinds  # nothing of the deal ran


def test_required_encryption_without_a_key_is_a_refusal_to_start():
    problems = Settings.model_validate({"TAKEBACK_PAYLOAD_REQUIRE_ENCRYPTION": "true", "TAKEBACK_ENV": "test"}).startup_problems()
    assert any("TAKEBACK_PAYLOAD_REQUIRE_ENCRYPTION" in problem and "TAKEBACK_PAYLOAD_KEYS" in problem for problem in problems)
    with pytest.raises(ValueError, match="TAKEBACK_PAYLOAD_KEYS"):  # a converter is never built without one either
        data_converter(Settings.model_validate({"TAKEBACK_PAYLOAD_REQUIRE_ENCRYPTION": "true"}))
    sealed = Settings.model_validate({"TAKEBACK_PAYLOAD_REQUIRE_ENCRYPTION": "true", "TAKEBACK_ENV": "test",
                                      "TAKEBACK_PAYLOAD_KEYS": keyring(keys("k1")), "TAKEBACK_PAYLOAD_KEY_ID": "k1"})
    assert sealed.startup_problems() == []


@pytest.mark.parametrize("command", ["worker", "api"])
def test_the_worker_and_the_api_do_not_start_without_a_payload_key(tmp_path, command):
    env = production_env(tmp_path, TAKEBACK_CARRIER_WEBHOOK_SECRET=STRONG, TAKEBACK_PAYLOAD_REQUIRE_ENCRYPTION="true")
    result = start(command, env, port=_free_port() if command == "api" else None)
    assert result is not None and result.returncode == 2, f"takeback {command} started with encryption required and no key"
    assert "TAKEBACK_PAYLOAD_REQUIRE_ENCRYPTION is set without TAKEBACK_PAYLOAD_KEYS" in result.stderr
