"""`takeback deploy check` replays every open workflow of the queue (deals, partner years, ...) against
the code installed, on a real dev server: an incompatible change (other commands than the history
recorded) fails it, exit 1, naming the workflow; a compatible one (a patched step) passes; `deploy
promote` refuses a build the check fails."""

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.api.enums.v1 import EventType

from activities.deal_activities import TakebackActivities
from service import replay
from tests.conftest import add_partner, booking, make_settings
from worker import build_worker

PROBE = "DeployCheckProbe"


@workflow.defn(name=PROBE, sandboxed=False)
class ProbeAsRecorded:
    """The code the open workflow's history was recorded with: a timer, then it waits."""

    def __init__(self) -> None:
        self.done = False

    @workflow.run
    async def run(self) -> None:
        await workflow.sleep(timedelta(milliseconds=10))
        await workflow.wait_condition(lambda: self.done)

    @workflow.signal
    def finish(self) -> None:
        self.done = True


@workflow.defn(name=PROBE, sandboxed=False)
class ProbeWithAnActivityForTheTimer(ProbeAsRecorded):
    """Incompatible: its first command schedules an activity where the history started a timer."""

    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity("record_extension", start_to_close_timeout=timedelta(seconds=5))
        await workflow.wait_condition(lambda: self.done)


@workflow.defn(name=PROBE, sandboxed=False)
class ProbeWithAPatchedStep(ProbeAsRecorded):
    """Compatible: the new step is behind a patch, which an open workflow's replay does not take."""

    @workflow.run
    async def run(self) -> None:
        if workflow.patched("probe-extra-timer"):
            await workflow.sleep(timedelta(milliseconds=10))
        await workflow.sleep(timedelta(milliseconds=10))
        await workflow.wait_condition(lambda: self.done)

    @workflow.query
    def waiting(self) -> bool:
        return not self.done


async def takeback(capsys, monkeypatch, settings, *argv: str) -> tuple[int, str]:
    """`takeback <argv>` in this process (its code is what the test installs) against the settings'
    server and queue; its exit code and everything it printed."""
    import cli
    import settings as settings_module

    env = {"TEMPORAL_ADDRESS": settings.temporal_address, "TAKEBACK_TASK_QUEUE": settings.task_queue, "TAKEBACK_DEPLOYMENT_NAME": settings.deployment_name, "TAKEBACK_DATA_DIR": str(settings.data_dir)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TAKEBACK_BUILD_ID", raising=False)
    capsys.readouterr()
    settings_module.get_settings.cache_clear()
    try:
        code = await asyncio.to_thread(cli.main, list(argv))  # the CLI runs its own event loop
    finally:
        settings_module.get_settings.cache_clear()
    printed = capsys.readouterr()
    return code, printed.out + printed.err


async def waiting_after_its_timer(handle) -> None:
    """Until the workflow has fired its timer and completed the task after it (it waits for a signal)."""
    for _ in range(200):
        events = (await handle.fetch_history()).events
        if any(e.event_type == EventType.EVENT_TYPE_TIMER_FIRED for e in events) and events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{handle.id} did not settle")


async def test_deploy_check_fails_on_an_incompatible_change_and_passes_on_a_compatible_one(dev_server_env, tmp_path, monkeypatch, capsys):
    from service import deals

    client = dev_server_env.client
    settings = make_settings(tmp_path, temporal_address=client.service_client.config.target_host)
    add_partner(settings)
    async with build_worker(client, settings, activities=TakebackActivities(settings), extra_workflows=[ProbeAsRecorded]):
        deal = await deals.book_deal(client, settings, booking(10))  # an open deal on the queue, recorded by today's code
        probe = await client.start_workflow(PROBE, id=f"probe-{settings.task_queue}", task_queue=settings.task_queue)
        await waiting_after_its_timer(probe)
    # The workers are gone; the code "installed" is what replay.WORKFLOWS holds.
    monkeypatch.setattr(replay, "WORKFLOWS", [*replay.WORKFLOWS, ProbeWithAnActivityForTheTimer])
    code, printed = await takeback(capsys, monkeypatch, settings, "deploy", "check")
    assert code == 1, printed
    assert f"NOT DETERMINISTIC {probe.id} ({PROBE}, unversioned)" in printed and "Nondeterminism" in printed
    assert "replayed 2 of 2, 1 failed" in printed
    assert f"deploy check FAILED: 1 of 2 open workflows do not replay on the code installed here: {probe.id}" in printed
    assert f"deal-{deal.id}" not in printed  # the deal replays: only the probe is named

    code, printed = await takeback(capsys, monkeypatch, settings, "deploy", "promote", "--build-id", "incompatible")
    assert code == 1 and "refusing to promote" in printed and "is now the current version" not in printed, printed

    monkeypatch.setattr(replay, "WORKFLOWS", [*replay.WORKFLOWS[:-1], ProbeWithAPatchedStep])
    code, printed = await takeback(capsys, monkeypatch, settings, "deploy", "check")
    assert code == 0, printed
    assert "deploy check passed: 2 open workflows replay on the code installed here" in printed

    monkeypatch.setattr(replay, "WORKFLOWS", replay.WORKFLOWS[:-1])  # code that no longer has the probe's type
    code, printed = await takeback(capsys, monkeypatch, settings, "deploy", "check")
    assert code == 1 and f"NOT DETERMINISTIC {probe.id}" in printed, printed

    await probe.terminate("test over")
    await client.get_workflow_handle(f"deal-{deal.id}").terminate("test over")


async def test_deploy_check_may_only_vouch_for_the_build_installed(tmp_path, monkeypatch, capsys):
    """A process of build A (TAKEBACK_BUILD_ID) refuses to check or promote build B: its code is A's."""
    import cli
    import settings as settings_module

    monkeypatch.setenv("TAKEBACK_BUILD_ID", "A")
    monkeypatch.setenv("TAKEBACK_DATA_DIR", str(tmp_path))
    settings_module.get_settings.cache_clear()
    try:
        assert cli.main(["deploy", "promote", "--build-id", "B"]) == 2
    finally:
        settings_module.get_settings.cache_clear()
    assert "this code is build A (TAKEBACK_BUILD_ID), not B" in capsys.readouterr().err
