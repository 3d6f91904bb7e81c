"""``hybrid-pipeline ui mlflow|feast``: MLflow's and Feast's own UIs over the project's stores.

The pipeline writes two stores that have a UI of their own: the MLflow tracking and registry
database (runs, metrics, the ``production`` alias; ``Settings.model_registry_uri``) and the
generated Feast repo (entities, feature views, feature services; ``Settings.feature_repo_dir``).
These commands open exactly those stores, so nobody has to know where they are. Before
starting a server they check what a person can get wrong (the store is not there yet, the port
is taken, the ``ui`` extra is missing) and say it in one line with a non-zero exit.

Nothing here is imported until the command runs: ``mlflow`` and ``feast`` are heavy.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import os
import socket
import sys
from pathlib import Path

import yaml

from hybrid_pipeline.settings import Settings

DEFAULT_HOST = "127.0.0.1"
MLFLOW_PORT = 5000
FEAST_PORT = 8888
EXTRA_HINT = "install the project's `ui` extra: .venv/bin/pip install -e '.[ui]' (make install does)"


class UIError(Exception):
    """A reason the UI cannot start, worded as what to do about it (printed as one line)."""


def check_port(host: str, port: int) -> None:
    """Raise :class:`UIError` unless ``host:port`` can be listened on.

    Checked here because the servers would otherwise report a taken port as a stack trace
    (Feast) or a retry loop in a worker (MLflow). ``SO_REUSEADDR`` as the servers set it, so
    a port in TIME_WAIT after a stopped server counts as free.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UIError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UIError(f"port {port} on {host} is in use: stop what listens there or pick another with --port") from None
            raise UIError(f"cannot listen on {host}:{port} ({exc.strerror}): pick another --host/--port") from None


def _require(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UIError(f"{what} is not installed: {EXTRA_HINT}")


def mlflow_store(settings: Settings) -> tuple[str, str]:
    """The tracking URI the pipeline writes and the artifact root beside it; :class:`UIError` if absent."""
    from hybrid_pipeline.ml.registry import default_artifact_location

    uri = settings.model_registry_uri
    db = Path(uri[len("sqlite:///"):])
    if not db.is_file() or db.stat().st_size == 0:
        raise UIError(
            f"no MLflow store at {db}: run `make run` first (it trains and registers the models), "
            "or point HYBRID_LAKEHOUSE_ROOT at the lakehouse whose runs you want to see"
        )
    return uri, default_artifact_location(uri)


def mlflow_command(settings: Settings, host: str, port: int) -> list[str]:
    """``mlflow server`` over the project's store, one worker (the UI serves one person)."""
    uri, artifacts = mlflow_store(settings)
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        "--default-artifact-root", artifacts,
        "--artifacts-destination", artifacts,
        "--host", host,
        "--port", str(port),
        "--workers", "1",
    ]


def feast_repo(settings: Settings) -> Path:
    """The generated Feast repo once ``feast apply`` has written its registry; :class:`UIError` if not."""
    repo = settings.feature_repo_dir
    config = repo / "feature_store.yaml"
    hint = ("run `make run` first (features/feast_registry generates the repo and applies it), "
            "or point HYBRID_FEATURE_REPO at a generated repo")
    if not config.is_file():
        raise UIError(f"no Feast repo at {repo} (no feature_store.yaml): {hint}")
    try:
        registry = (yaml.safe_load(config.read_text()) or {}).get("registry")
    except yaml.YAMLError as exc:
        raise UIError(f"{config} is not valid YAML ({exc.__class__.__name__}): {hint}") from None
    path = registry.get("path") if isinstance(registry, dict) else registry
    if isinstance(path, str) and "://" not in path:
        file = Path(path) if Path(path).is_absolute() else repo / path
        if not file.is_file():
            raise UIError(f"the Feast repo at {repo} has no registry yet ({file}): {hint}")
    return repo


def run_mlflow(settings: Settings, host: str, port: int) -> int:
    """Replace this process with MLflow's tracking server (UI + REST API) over the pipeline's store."""
    # Top-level lookups only (importing mlflow takes seconds): flask comes with mlflow, not mlflow-skinny.
    for module in ("mlflow", "flask"):
        _require(module, "MLflow's tracking server (package mlflow, not only mlflow-skinny)")
    command = mlflow_command(settings, host, port)
    check_port(host, port)
    print(f"MLflow UI over {command[command.index('--backend-store-uri') + 1]} on http://{host}:{port}", flush=True)
    env = dict(os.environ)
    # MLflow's job runner (seven Huey worker processes for GenAI evaluation jobs) serves nothing
    # this project logs; left on, it costs a core's worth of start-up on a laptop.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execve(sys.executable, command, env)  # signals (Ctrl-C) then reach the server itself
    return 0  # not reached


def run_feast(settings: Settings, host: str, port: int) -> int:
    """Feast's UI (``FeatureStore.serve_ui``) over the generated repo, in this process."""
    _require("grpc_reflection", "Feast's UI (feast[grpcio])")
    repo = feast_repo(settings)
    check_port(host, port)
    from feast import FeatureStore

    try:
        store = FeatureStore(repo_path=str(repo))
        project = store.project
    except Exception as exc:  # noqa: BLE001 - a repo Feast cannot open: say which, not how
        raise UIError(f"Feast cannot open the repo at {repo} ({exc.__class__.__name__}: {exc}): "
                      "rerun `make run` to regenerate it") from None
    print(f"Feast UI over {repo} (project {project}) on http://{host}:{port}", flush=True)
    store.serve_ui(host=host, port=port)
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    try:
        if not 0 < args.port < 65536:
            raise UIError(f"--port {args.port}: a port is a number from 1 to 65535")
        settings = Settings.from_env()
        runner = run_mlflow if args.ui == "mlflow" else run_feast
        return runner(settings, args.host, args.port)
    except (UIError, ValueError) as exc:
        print(f"hybrid-pipeline ui {args.ui}: {exc}", file=sys.stderr)
        return 2


def add_ui_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``ui mlflow`` and ``ui feast`` on the CLI's subcommands."""
    ui = sub.add_parser("ui", help="open MLflow's or Feast's UI over the pipeline's own stores")
    which = ui.add_subparsers(dest="ui", required=True)
    for name, port, what in (
        ("mlflow", MLFLOW_PORT, "MLflow's UI: runs, parameters, metrics, the model registry and its aliases"),
        ("feast", FEAST_PORT, "Feast's UI: entities, feature views, feature services, data sources"),
    ):
        cmd = which.add_parser(name, help=what)
        cmd.add_argument("--host", default=DEFAULT_HOST, help=f"interface to listen on (default {DEFAULT_HOST})")
        cmd.add_argument("--port", type=int, default=port, help=f"port to listen on (default {port})")
        cmd.set_defaults(func=_cmd_ui)
