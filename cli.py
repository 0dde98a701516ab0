"""`takeback`: run the whole stack or one part of it, and manage API keys."""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _temporal_binary() -> str:
    candidate = Path(sys.executable).parent / "temporal"
    found = str(candidate) if candidate.exists() else shutil.which("temporal")
    if not found:
        sys.exit("the `temporal` CLI is missing: install the package (`make run` does) or put temporal on PATH")
    return found


def _wait_for_port(port: int, name: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with code {process.returncode} while starting")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"{name} did not open port {port} within {timeout:.0f}s")


class PortClash(Exception):
    """`takeback dev` cannot give every one of its processes a port of its own."""


class DevPorts:
    """Every port `takeback dev` hands out, planned before any process starts, each to one process.

    Ports the user chose (--api-port, --temporal-port, TAKEBACK_WORKER_METRICS_ADDRESS/_HEALTH_ADDRESS)
    are taken as given: two the same, or one in use, is a refusal. The others (the Temporal Web UI at
    gRPC port + 1000, the worker's metrics and health next to the API's port, the Temporal server's HTTP
    API and metrics) take their usual port when it is free and not planned for another process, else
    one the system picks. Each is held (bound, not listening) until just before the process that uses
    it starts, so nothing else gets it meanwhile: neither another program nor the Temporal server's
    internal services, which take free ports of their own while the API's and the worker's are held."""

    def __init__(self):
        self.ports: dict[str, tuple[str, int]] = {}
        self._held: dict[str, socket.socket] = {}

    def take(self, name: str, host: str, port: int) -> None:
        """A port the user chose: refused if another process has it in the plan, or something listens there."""
        for other, (_, planned) in self.ports.items():
            if planned == port:
                raise PortClash(f"port {port} is asked for both {other} and {name}: give each its own")
        held = _bind(host, port)
        if held is None:
            raise PortClash(f"port {port} ({name}) is in use on {host}: choose another")
        self._hold(name, host, held)

    def pick(self, name: str, host: str, preferred: int | None = None) -> None:
        """`preferred` if it is free and nobody else's in the plan, else a free port the system picks."""
        planned = {port for _, port in self.ports.values()}
        held = _bind(host, preferred) if preferred and 0 < preferred < 65536 and preferred not in planned else None
        self._hold(name, host, held or _bind(host, 0))

    def _hold(self, name: str, host: str, held: socket.socket) -> None:
        self.ports[name] = (host, held.getsockname()[1])
        self._held[name] = held

    def port(self, name: str) -> int:
        return self.ports[name][1]

    def address(self, name: str) -> str:
        host, port = self.ports[name]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def release(self, *names: str) -> None:
        """Let go of these ports: the process they are for starts next and binds them."""
        for name in names:
            held = self._held.pop(name, None)
            if held is not None:
                held.close()

    def release_all(self) -> None:
        self.release(*list(self._held))

    def summary(self) -> str:
        return ", ".join(f"{name} {port}" for name, (_, port) in self.ports.items())


def _bind(host: str, port: int) -> socket.socket | None:
    """A TCP socket bound to host:port (port 0: one the system picks), or None if that port is taken."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    return sock


def _chosen_address(env: dict, variable: str) -> tuple[str, int] | None:
    from settings import parse_host_port

    return parse_host_port(env[variable]) if env.get(variable) else None


def plan_dev_ports(args: argparse.Namespace, env: dict) -> DevPorts:
    """The ports of `takeback dev` (DevPorts): the API's and the Temporal server's as given, the worker's
    as TAKEBACK_WORKER_METRICS_ADDRESS / _HEALTH_ADDRESS say, the rest free ones. Raises PortClash."""
    plan = DevPorts()
    plan.take("API", args.api_host, args.api_port)
    plan.take("Temporal gRPC", "127.0.0.1", args.temporal_port)
    chosen = {name: _chosen_address(env, variable) for name, variable in WORKER_PORTS.items()}
    for name, address in chosen.items():
        if address is not None:
            plan.take(name, *address)
    plan.pick("Temporal Web UI", "127.0.0.1", args.temporal_port + 1000)  # the dev server's own convention
    for offset, name in enumerate(WORKER_PORTS, 1):  # next to the API's port, as before
        if chosen[name] is None:
            plan.pick(name, "127.0.0.1", args.api_port + offset)
    plan.pick("Temporal HTTP API", "127.0.0.1")
    plan.pick("Temporal metrics", "127.0.0.1")
    return plan


WORKER_PORTS = {"worker metrics": "TAKEBACK_WORKER_METRICS_ADDRESS", "worker health": "TAKEBACK_WORKER_HEALTH_ADDRESS"}
TEMPORAL_PORTS = ("Temporal gRPC", "Temporal Web UI", "Temporal HTTP API", "Temporal metrics")


def _stop(processes: list[tuple[str, subprocess.Popen]]) -> None:
    # Reverse start order: API first, then the worker (finishes its tasks), the server last.
    for name, process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in 20s; killing it", flush=True)
                process.kill()
                process.wait()


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt  # SIGTERM stops `takeback dev` as Ctrl-C does: children first


DEV_SECRET_FILE = "carrier-webhook-secret"


def _dev_webhook_secret(data_dir: Path) -> str:
    """A random webhook secret for this data dir, made once and kept in it (only its owner may read it)."""
    import secrets

    path = data_dir / DEV_SECRET_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip()


def _webhook_secret_source(data_dir: Path) -> str:
    if os.environ.get("TAKEBACK_CARRIER_WEBHOOK_SECRET"):
        return "TAKEBACK_CARRIER_WEBHOOK_SECRET"
    return str(data_dir / DEV_SECRET_FILE)


def cmd_dev(args: argparse.Namespace) -> int:
    from temporal_client import dev_server_file_args
    from workflows import search_attributes

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # even where SIGINT was inherited as ignored (background jobs)
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["TAKEBACK_DATA_DIR"] = str(data_dir)
    env["TEMPORAL_ADDRESS"] = f"127.0.0.1:{args.temporal_port}"
    # A local stack: mail to the outbox is the point, and a webhook secret of the user's choosing is theirs.
    env["TAKEBACK_ENV"] = "development"
    if not env.get("TAKEBACK_CARRIER_WEBHOOK_SECRET"):
        env["TAKEBACK_CARRIER_WEBHOOK_SECRET"] = _dev_webhook_secret(data_dir)
    if not args.keep_database_url:
        env.pop("TAKEBACK_DATABASE_URL", None)  # dev keeps everything under --data-dir
    # Operating it, locally: the server has the search attributes ops filter deals by, the worker
    # serves its metrics and health (README "Operating it"), each process on a port of its own.
    env["TAKEBACK_SEARCH_ATTRIBUTES"] = "true"
    try:
        ports = plan_dev_ports(args, env)
    except PortClash as clash:
        print(f"error: takeback dev: {clash}", file=sys.stderr)
        return 2
    print(f"takeback dev ports: {ports.summary()}", flush=True)
    for name, variable in WORKER_PORTS.items():
        env[variable] = ports.address(name)
    ui_port = ports.port("Temporal Web UI")
    env.setdefault("TAKEBACK_TEMPORAL_UI_URL", f"http://127.0.0.1:{ui_port}")  # where the console links a deal's workflow
    processes: list[tuple[str, subprocess.Popen]] = []
    try:
        ports.release(*TEMPORAL_PORTS)
        server = subprocess.Popen(
            [_temporal_binary(), "server", "start-dev", *dev_server_file_args(data_dir / "temporal.db"), "--ip", "127.0.0.1",
             "--port", str(args.temporal_port), "--ui-port", str(ui_port), "--http-port", str(ports.port("Temporal HTTP API")),
             "--metrics-port", str(ports.port("Temporal metrics")), "--log-level", "error", *search_attributes.dev_server_args()],
            env=env,
        )
        processes.append(("temporal dev server", server))
        _wait_for_port(args.temporal_port, "temporal dev server", server)
        ports.release(*WORKER_PORTS)
        worker = subprocess.Popen([sys.executable, "-m", "cli", "worker"], env=env)
        processes.append(("worker", worker))
        ports.release("API")
        api = subprocess.Popen([sys.executable, "-m", "cli", "api", "--host", args.api_host, "--port", str(args.api_port)], env=env)
        processes.append(("api", api))
        _wait_for_port(args.api_port, "api", api)
        os.environ["TAKEBACK_DATA_DIR"] = str(data_dir)
        ops_key = _create_key("ops", None, data_dir)
        print(
            f"\ntakeback is running (data in {data_dir})\n"
            f"  API docs:        http://{args.api_host}:{args.api_port}/docs\n"
            f"  console:         http://{args.api_host}:{args.api_port}/console (sign in with the ops key below)\n"
            f"  Temporal Web UI: http://127.0.0.1:{ui_port}\n"
            f"  metrics:         http://{args.api_host}:{args.api_port}/metrics (API), http://{env['TAKEBACK_WORKER_METRICS_ADDRESS']}/metrics (worker), "
            f"http://127.0.0.1:{ports.port('Temporal metrics')}/metrics (Temporal)\n"
            f"  worker health:   http://{env['TAKEBACK_WORKER_HEALTH_ADDRESS']}/readyz\n"
            f"  ports:           {ports.summary()}\n"
            f"  outbox:          {data_dir / 'outbox'}\n"
            f"  webhook secret:  {_webhook_secret_source(data_dir)}\n"
            "  stop with Ctrl-C\n"
            "a fresh ops API key:\n"
            f"{ops_key}\n",
            flush=True,
        )
        if args.demo:
            demo = subprocess.Popen([sys.executable, "-m", "cli", "demo"], env=env)
            processes.append(("demo", demo))
        while all(process.poll() is None for name, process in processes if name != "demo"):
            time.sleep(0.5)
        for name, process in processes:
            if process.poll() is not None and name != "demo":
                print(f"{name} exited with code {process.returncode}; stopping the rest", flush=True)
        return 1
    except KeyboardInterrupt:
        print("\nstopping api, worker and temporal dev server ...", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan children
        ports.release_all()
        _stop(processes)


def _refuse_unsafe_settings(what: str) -> bool:
    """Print why the settings are unsafe to serve with (a known webhook secret, mail set up empty, ...); True if so."""
    from settings import UnsafeSettings, get_settings

    try:
        get_settings().require_safe_to_start(what)
    except (UnsafeSettings, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return True
    return False


def cmd_worker(_args: argparse.Namespace) -> int:
    if _refuse_unsafe_settings("takeback worker"):
        return 2
    import worker

    worker.main()
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    if _refuse_unsafe_settings("takeback api"):
        return 2
    import uvicorn

    from api.limits import uvicorn_options
    from observability import tracing
    from observability.logs import api_log_config
    from settings import get_settings

    settings = get_settings()
    tracing.configure(settings, "takeback-api")  # only when OTEL_* asks for traces
    # Connection limit, keep-alive and header deadlines, header size (api/limits.py); logs that carry
    # no keys or e-mail addresses and cannot be forged with CR/LF (api/logsafe.py), JSON when asked.
    uvicorn.run("api.app:create_served_app", factory=True, host=args.host, port=args.port, log_level="info", log_config=api_log_config(settings.log_format),
                **uvicorn_options(settings))
    return 0


def _key_session(data_dir: Path | None):
    from settings import Settings
    from store.db import session_scope

    settings = Settings(data_dir=data_dir, database_url="") if data_dir else Settings()
    return session_scope(settings.effective_database_url)


def _data_dir(args: argparse.Namespace) -> Path | None:
    return Path(args.data_dir).resolve() if args.data_dir else None


def _duration(text: str | None, what: str, zero_ok: bool = False):
    from datetime import timedelta

    from domain.durations import parse_duration

    if text is None:
        return None
    if zero_ok and text.strip() in ("0", "0s"):
        return timedelta(0)
    try:
        return parse_duration(text)
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from None


def _create_key(role: str, partner_id: str | None, data_dir: Path | None, owner: str | None = None, expires_in=None) -> str:
    from store.api_keys import create_api_key

    with _key_session(data_dir) as session:
        return create_api_key(session, role, partner_id, owner=owner, expires_in=expires_in)


def cmd_apikey_create(args: argparse.Namespace) -> int:
    try:
        key = _create_key(args.role, args.partner_id, _data_dir(args), owner=args.owner, expires_in=_duration(args.expires_in, "--expires-in"))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    owner = f" for partner {args.partner_id}" if args.partner_id else ""
    expiry = f", expiring in {args.expires_in}" if args.expires_in else ""
    print(f"created a {args.role} key{owner}{expiry}; it is shown once, store it now:")
    print(key)
    return 0


def _when(moment) -> str:
    return moment.strftime("%Y-%m-%dT%H:%MZ") if moment else "-"


def cmd_apikey_list(args: argparse.Namespace) -> int:
    """One line per key: never the key itself (only its hash is stored), its prefix to recognise it."""
    from store.api_keys import list_api_keys, state

    with _key_session(_data_dir(args)) as session:
        rows = list_api_keys(session, include_inactive=args.all)
    columns = ("id", "prefix", "role", "account", "created", "expires", "last used", "state")
    lines = [columns] + [
        (str(row.id), row.prefix, row.role, row.account, _when(row.created_at), _when(row.expires_at), _when(row.last_used_at), state(row)) for row in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    for line in lines:
        print("  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip())
    return 0


def cmd_apikey_revoke(args: argparse.Namespace) -> int:
    from store.api_keys import ApiKeyError, revoke_api_key

    try:
        with _key_session(_data_dir(args)) as session:
            row = revoke_api_key(session, args.key_id)
    except ApiKeyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"revoked key {row.id} ({row.prefix}..., {row.account}): every API process refuses it from its next request")
    return 0


def cmd_apikey_rotate(args: argparse.Namespace) -> int:
    from store.api_keys import ApiKeyError, rotate_api_key

    try:
        overlap = _duration(args.overlap, "--overlap", zero_ok=True)
        expires_in = _duration(args.expires_in, "--expires-in")
        with _key_session(_data_dir(args)) as session:
            key, new = rotate_api_key(session, args.key_id, overlap, expires_in=expires_in)
    except (ApiKeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"key {args.key_id} is replaced by key {new.id} ({new.account}) and stops working in {args.overlap}; the new key is shown once, store it now:")
    print(key)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import asyncio

    import demo

    return asyncio.run(demo.run(args))


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay recorded files, or the server's workflows, against this code; 1 on any non-determinism."""
    import asyncio

    from service import replay

    async def run():
        from settings import get_settings
        from temporal_client import connect, data_converter

        if args.histories:
            return await replay.replay_files([Path(p) for p in args.histories], replay.print_progress, data_converter(get_settings()))
        return await replay.replay_server(await connect(get_settings()), args.query or replay.DEFAULT_QUERY, replay.print_progress)

    report = asyncio.run(run())
    for workflow_id, failure in report.failures:
        print(f"NOT DETERMINISTIC {workflow_id}: {failure}")
    print(f"replayed {report.replayed} histories: {len(report.failures)} failed")
    if report.replayed == 0:
        print("nothing was replayed: check --query or the paths", file=sys.stderr)
        return 2
    return 0 if report.ok else 1


def _deploy_build_id(settings, build_id: str | None) -> str | None:
    """The build the check vouches for: --build-id, or this process's TAKEBACK_BUILD_ID. The check
    replays against the code installed here, so a process of another build may not vouch for B."""
    if settings.build_id and build_id and build_id != settings.build_id:
        raise ValueError(f"this code is build {settings.build_id} (TAKEBACK_BUILD_ID), not {build_id}: run the check where build {build_id} is installed")
    return build_id or settings.build_id


async def _deploy_check(client, settings, build_id: str | None) -> bool:
    """Replay every open workflow of the queue against this code; print progress, failures and a summary."""
    from service import replay

    code = f"build {build_id}" if build_id else "the code installed here"
    print(f"deploy check: replaying the open workflows of queue {settings.task_queue} against {code}", flush=True)
    report = await replay.check_open_workflows(client, settings.task_queue, replay.print_progress)
    for workflow_id, failure in report.failures:
        print(f"NOT DETERMINISTIC {workflow_id}: {failure}", flush=True)
    if report.failures:
        print(f"deploy check FAILED: {len(report.failures)} of {report.replayed} open workflows do not replay on {code}: "
              + ", ".join(workflow_id.split(" ")[0] for workflow_id, _ in report.failures), flush=True)
    else:
        print(f"deploy check passed: {report.replayed} open workflows replay on {code}", flush=True)
    return report.ok


def cmd_deploy(args: argparse.Namespace) -> int:
    """`deploy check`: exit 1 if an open workflow does not replay on this code. `deploy promote`: the
    same check, then --build-id becomes the deployment's current version (refused if the check fails)."""
    import asyncio

    from settings import get_settings
    from temporal_client import connect

    settings = get_settings()
    try:
        build_id = _deploy_build_id(settings, args.build_id)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    async def run() -> int:
        client = await connect(settings)
        if not await _deploy_check(client, settings, build_id):
            if args.deploy_command == "promote":
                print(f"refusing to promote {settings.deployment_name}.{build_id}: open workflows would not replay on it", file=sys.stderr)
            return 1
        if args.deploy_command == "promote":
            return await _promote(client, settings, build_id)
        return 0

    return asyncio.run(run())


VERSION_APPEARS_WITHIN = 10.0  # seconds `deploy promote` waits for a just-started version's workers to be seen


async def _promote(client, settings, build_id: str) -> int:
    """SetWorkerDeploymentCurrentVersion: new workflows start on this version, and a deal continuing as
    new moves to it; workflows pinned to an earlier version stay there."""
    import asyncio
    import socket as sockets

    from temporalio.api.workflowservice.v1 import SetWorkerDeploymentCurrentVersionRequest
    from temporalio.service import RPCError, RPCStatusCode

    version = f"{settings.deployment_name}.{build_id}"
    request = SetWorkerDeploymentCurrentVersionRequest(
        namespace=settings.temporal_namespace, deployment_name=settings.deployment_name, build_id=build_id, identity=f"takeback deploy promote@{sockets.gethostname()}"
    )
    deadline = time.monotonic() + VERSION_APPEARS_WITHIN
    while True:
        try:
            answer = await client.workflow_service.set_worker_deployment_current_version(request)
            break
        except RPCError as error:
            # A version exists once its workers' polls have reached the server on each of its queues: a
            # second or two after they start. Until then the server answers NOT_FOUND or FAILED_PRECONDITION.
            if error.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                continue
            print(f"error: the server did not make {version} current ({error.status.name}: {error.message}); "
                  f"are workers with TAKEBACK_BUILD_ID={build_id} and TAKEBACK_DEPLOYMENT_NAME={settings.deployment_name} polling?", file=sys.stderr)
            return 1
    previous = answer.previous_deployment_version
    was = f"{previous.deployment_name}.{previous.build_id}" if previous.build_id else "none: workflows went to unversioned workers"
    settled = await _routing_settled(client, settings)
    print(f"{version} is now the current version of deployment {settings.deployment_name} (was {was}); "
          "new workflows start on it, deals move to it when they continue as new, pinned workflows stay where they are"
          + ("" if settled else "; the task queues had not all taken the change in yet: `temporal worker deployment describe` shows when"), flush=True)
    return 0


async def _routing_settled(client, settings, within: float = 30.0) -> bool:
    """Until the server has handed the new routing to every task queue of the deployment: before, a
    workflow continuing as new could still be sent to the previous version."""
    import asyncio

    from temporalio.api.enums.v1 import RoutingConfigUpdateState
    from temporalio.api.workflowservice.v1 import DescribeWorkerDeploymentRequest

    request = DescribeWorkerDeploymentRequest(namespace=settings.temporal_namespace, deployment_name=settings.deployment_name)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        info = (await client.workflow_service.describe_worker_deployment(request)).worker_deployment_info
        if info.routing_config_update_state != RoutingConfigUpdateState.ROUTING_CONFIG_UPDATE_STATE_IN_PROGRESS:
            return True  # COMPLETED (or a server that does not say)
        await asyncio.sleep(0.2)
    return False


def cmd_codec_server(args: argparse.Namespace) -> int:
    """Temporal's codec-server protocol (POST /encode, /decode) with the payload keys of the settings."""
    import uvicorn

    from codec import codec_from_settings, codec_server_app
    from settings import get_settings

    settings = get_settings()
    codec = codec_from_settings(settings)
    if codec is None:
        print("error: TAKEBACK_PAYLOAD_KEYS is not set: payloads are not encrypted, there is nothing to decode", file=sys.stderr)
        return 2
    token = settings.codec_server_token.get_secret_value() if settings.codec_server_token else None
    if not token and args.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"error: the codec server on {args.host} would decrypt for anyone: set TAKEBACK_CODEC_SERVER_TOKEN", file=sys.stderr)
        return 2
    origins = [origin.strip() for origin in settings.codec_server_origins.split(",") if origin.strip()]
    print(f"codec server on http://{args.host}:{args.port} (key {codec.key_id}; browser origins {', '.join(origins)}; token {'required' if token else 'off'})", flush=True)
    uvicorn.run(codec_server_app(codec, token, origins), host=args.host, port=args.port, log_level="warning")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="takeback", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="Temporal dev server + worker + API in one command")
    dev.add_argument("--data-dir", default=".data")
    dev.add_argument("--api-port", type=int, default=8000)
    dev.add_argument("--api-host", default="127.0.0.1")
    dev.add_argument("--temporal-port", type=int, default=7233)
    dev.add_argument("--demo", action="store_true", help="also book a demo deal with a 60s window and print its life")
    dev.add_argument("--keep-database-url", action="store_true", help="use TAKEBACK_DATABASE_URL instead of D/takeback.db")
    dev.set_defaults(func=cmd_dev)

    commands.add_parser("worker", help="run a worker (TEMPORAL_ADDRESS, TAKEBACK_DATABASE_URL)").set_defaults(func=cmd_worker)

    api = commands.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.set_defaults(func=cmd_api)

    apikey = commands.add_parser("apikey", help="manage API keys").add_subparsers(dest="apikey_command", required=True)
    create = apikey.add_parser("create", help="create a key; the key is the last line printed")
    create.add_argument("--role", choices=["ops", "partner"], required=True)
    create.add_argument("--partner-id")
    create.add_argument("--owner", help="whose ops key (a person or team): its idempotency keys and audit entries are that account's")
    create.add_argument("--expires-in", metavar="DURATION", help="the key stops working after this long, e.g. 90d (default: never)")
    create.add_argument("--data-dir", help="use D/takeback.db (default: TAKEBACK_DATABASE_URL)")
    create.set_defaults(func=cmd_apikey_create)
    listing = apikey.add_parser("list", help="list keys (id, prefix, role, account, expiry, last use, state); never the keys themselves")
    listing.add_argument("--all", action="store_true", help="also revoked and expired keys")
    listing.add_argument("--data-dir", help="use D/takeback.db (default: TAKEBACK_DATABASE_URL)")
    listing.set_defaults(func=cmd_apikey_list)
    revoke = apikey.add_parser("revoke", help="stop a key at once, in every API process")
    revoke.add_argument("key_id", type=int, metavar="ID", help="the key's id, as `apikey list` shows it")
    revoke.add_argument("--data-dir", help="use D/takeback.db (default: TAKEBACK_DATABASE_URL)")
    revoke.set_defaults(func=cmd_apikey_revoke)
    rotate = apikey.add_parser("rotate", help="make a new key for the same account; the old one works for --overlap more, then stops")
    rotate.add_argument("key_id", type=int, metavar="ID", help="the key's id, as `apikey list` shows it")
    rotate.add_argument("--overlap", default="24h", metavar="DURATION", help="how long the old key keeps working (default 24h; 0s stops it now)")
    rotate.add_argument("--expires-in", metavar="DURATION", help="the new key stops working after this long (default: never)")
    rotate.add_argument("--data-dir", help="use D/takeback.db (default: TAKEBACK_DATABASE_URL)")
    rotate.set_defaults(func=cmd_apikey_rotate)

    replay = commands.add_parser("replay", help="replay workflow histories against this code (before a deploy); exit 1 on non-determinism")
    replay.add_argument("--query", default=None, help="visibility query of the workflows to replay (default: every takeback workflow, open or closed)")
    replay.add_argument("--histories", nargs="+", metavar="PATH", help="replay recorded history files (JSON, or folders of them) instead of a server's")
    replay.set_defaults(func=cmd_replay)

    deploy = commands.add_parser("deploy", help="Worker Versioning: check that open workflows replay on this code; make a build the current version")
    deploy_commands = deploy.add_subparsers(dest="deploy_command", required=True)
    check = deploy_commands.add_parser("check", help="replay every open deal and partner year (every open workflow of the queue) against this code; exit 1 if one fails")
    check.add_argument("--build-id", help="the build this code is (default TAKEBACK_BUILD_ID; must agree with it)")
    check.set_defaults(func=cmd_deploy)
    promote = deploy_commands.add_parser("promote", help="run the check, then make --build-id the deployment's current version (refused if the check fails)")
    promote.add_argument("--build-id", required=True, help="the version to make current: its workers (TAKEBACK_BUILD_ID) must be polling")
    promote.set_defaults(func=cmd_deploy)

    codec = commands.add_parser("codec-server", help="decode encrypted workflow payloads for the Temporal Web UI and CLI (TAKEBACK_PAYLOAD_KEYS)")
    codec.add_argument("--host", default="127.0.0.1")
    codec.add_argument("--port", type=int, default=8888)
    codec.set_defaults(func=cmd_codec_server)

    demo = commands.add_parser("demo", help="book one deal with a short window on a running stack and print its life")
    demo.add_argument("--window", default="60s")
    demo.set_defaults(func=cmd_demo)

    purge = commands.add_parser(
        "purge-personal-data",
        help="anonymise pickup addresses and contacts of deals closed, and trainees' e-mails and names, longer ago than the retention (run it daily)",
    )
    purge.add_argument("--older-than", metavar="DURATION", help="the retention, e.g. 365d (default: TAKEBACK_PERSONAL_DATA_RETENTION)")
    purge.add_argument("--dry-run", action="store_true", help="count what would be erased, erase nothing")
    purge.add_argument("--data-dir", help="use D/takeback.db (default: TAKEBACK_DATABASE_URL)")
    purge.set_defaults(func=cmd_purge_personal_data)
    return parser


def cmd_purge_personal_data(args: argparse.Namespace) -> int:
    """Anonymise the personal data kept longer than the retention (README, Security): pickups' address
    and contact once their deal closed that long ago, trainees once their last training is that old."""
    from datetime import datetime, timezone

    from domain.durations import parse_duration
    from settings import Settings
    from store import retention as store
    from store.db import session_scope

    settings = Settings(data_dir=Path(args.data_dir).resolve(), database_url="") if args.data_dir else Settings()
    try:
        before = datetime.now(timezone.utc) - parse_duration(args.older_than or settings.personal_data_retention)
    except (ValueError, OverflowError) as error:
        print(f"error: --older-than: {error}", file=sys.stderr)
        return 2
    with session_scope(settings.effective_database_url) as session:
        counts = store.purge_personal_data(session, before, dry_run=args.dry_run)
    verb = "would erase" if args.dry_run else "erased"
    print(
        f"{verb} the address and contact of {counts.pickups} pickup(s) of deals closed before {before:%Y-%m-%dT%H:%MZ}, "
        f"and the e-mail and name of {counts.trainees} trainee(s) last trained before then or whose partner is gone"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
