"""docker-compose.yaml and the Dockerfile, read as files (Docker is not needed): valid against the
Compose Specification's JSON schema; the same Airflow components, commands and settings as the
stack the end-to-end tests start (tests/e2e/topology.py); an image on the pinned Airflow that
installs requirements.txt; and no secret written in them.

Each check of docker-compose.yaml is a function that returns the problems it finds; besides the
repository's file, each runs on a copy changed in one place, and must then name that place."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from e2e import services, topology
from tuneloop.config.file import RECIPES_DIR_ENV, recipes_root
from tuneloop.demo.embedded_airflow import MIGRATE_ARGV, Component

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SCHEMA = REPO / "tests" / "data" / "compose" / "compose-spec.json"
SCHEMA_SOURCE = SCHEMA.with_name("SOURCE.md")

COMPONENT_SERVICE_PREFIX = "airflow-"
"""The compose service of an e2e component: this prefix and the component's name, a worker's
number left off (``worker-1`` -> ``airflow-worker``)."""

ONE_OFF_SERVICES = {
    "airflow-init": "migrates the metadata database once, before any component starts",
    "airflow-cli": "runs an airflow command on demand (profile cli)",
}
"""Services with Airflow's settings that are no long-running component."""

PER_PROCESS_OPTIONS = {
    "-H": "a worker's Celery name: the e2e stack runs two workers on one machine, compose one "
    "per container (named after the container)",
    "-c": "a worker's slots: sizing, AIRFLOW__CELERY__WORKER_CONCURRENCY in compose",
}
"""Options of an e2e component's command that compose leaves out, and why."""

LOCAL_DEFAULTS = {"airflow", "admin"}
"""The only passwords compose may fall back on: for a stack that publishes its ports on
127.0.0.1 alone."""


# --- reading the files ---------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<default>[^}]*))?\}")


def interpolate(value: str) -> str:
    """A compose value as Compose gives it to a container when no variable is set: ``${X:-d}``
    is ``d``, ``${X}`` empty, ``$$`` one ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("op") in (":-", "-"):
            return match.group("default") or ""
        return ""  # unset: ${X}, ${X:+alternative}; ${X:?message} would stop Compose

    return _VARIABLE.sub(replace, value)


def load_compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")))


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment, interpolated (the list form ``KEY=value`` too)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(k): interpolate("" if v is None else str(v)) for k, v in raw.items()}


def command_argv(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(word) for word in command]


def bind_mounts(service: Mapping[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to the repository) of each bind mount; named
    volumes map to ``volume:<name>``."""
    mounts = {}
    for entry in service.get("volumes") or []:
        source, target = str(entry).split(":")[:2]
        is_path = source.startswith((".", "/"))
        mounts[target] = source.removeprefix("./") if is_path else f"volume:{source}"
    return mounts


def e2e_stack(tmp_path: Path) -> tuple[dict[str, str], list[Component]]:
    """The settings and components of the e2e stack, built as conftest.py builds them, with the
    URLs its PostgreSQL and Redis give (ports and paths of no machine in particular)."""
    postgres = SimpleNamespace(user=services.POSTGRES_USER, port=15432)
    redis = SimpleNamespace(port=16379)
    env = topology.stack_env(
        tmp_path / "airflow",
        port=18080,
        database_url=services.PostgresServer.url(postgres, topology.DATABASE),
        broker_url=services.RedisServer.url.fget(redis),
        campaigns_dir=tmp_path / "campaigns",
        project_dir=tmp_path / "project",
        fake_jobs=tmp_path / "fake-jobs.json",
    )
    return env, topology.components()


# --- how a compose value may differ from the e2e one ---------------------------------------------

Check = Callable[[str | None, str, Mapping[str, Any]], str | None]
"""(compose value or None, e2e value, compose service) -> a problem, or None."""


def absent(compose: str | None, e2e: str, service: Mapping[str, Any]) -> str | None:
    return None if compose is None else f"must not be set (Airflow's default), is {compose!r}"


def equals(expected: str) -> Check:
    def check(compose: str | None, e2e: str, service: Mapping[str, Any]) -> str | None:
        return None if compose == expected else f"must be {expected!r}, is {compose!r}"

    return check


def positive_int(compose: str | None, e2e: str, service: Mapping[str, Any]) -> str | None:
    ok = compose is not None and compose.isdigit() and int(compose) > 0
    return None if ok else f"must be a positive integer, is {compose!r}"


def port(compose: str | None, e2e: str, service: Mapping[str, Any]) -> str | None:
    ok = compose is not None and compose.isdigit() and 0 < int(compose) < 65536
    return None if ok else f"must be a port number, is {compose!r}"


def same_url_kind(compose: str | None, e2e: str, service: Mapping[str, Any]) -> str | None:
    """Same scheme (driver) and database; host, port and credentials may differ."""
    if compose is None:
        return "must be set"
    ours, theirs = urlsplit(compose), urlsplit(e2e)
    if (ours.scheme, ours.path) != (theirs.scheme, theirs.path):
        return f"must be a {theirs.scheme}://.../{theirs.path.strip('/')} URL, is {compose!r}"
    return None


def api_url(path: str) -> Check:
    """An http URL of the API server (compose: the api-server service or the published port)."""

    def check(compose: str | None, e2e: str, service: Mapping[str, Any]) -> str | None:
        if compose is None:
            return "must be set"
        ours, theirs = urlsplit(compose), urlsplit(e2e)
        if ours.scheme != theirs.scheme or ours.path != theirs.path or not ours.port:
            return f"must be {theirs.scheme}://<host>:<port>{theirs.path}, is {compose!r}"
        return None

    return check


def mounted_from(repo_folder: str) -> Check:
    """The container path where the repository's ``repo_folder`` is mounted, as the e2e stack
    uses the repository's folder itself."""

    def check(compose: str | None, e2e: str, service: Mapping[str, Any]) -> str | None:
        if Path(e2e) != REPO / repo_folder:
            return f"the e2e stack no longer uses the repository's {repo_folder}/ ({e2e})"
        if compose is None or bind_mounts(service).get(compose) != repo_folder:
            return f"must be where ./{repo_folder} is mounted, is {compose!r}"
        return None

    return check


def in_recipes_mount(compose: str | None, e2e: str, service: Mapping[str, Any]) -> str | None:
    mounts = {source: target for target, source in bind_mounts(service).items()}
    expected = f"{mounts.get('recipes')}/campaigns"
    return None if compose == expected else f"must be {expected} (recipes/campaigns/)"


def shared_volume(compose: str | None, e2e: str, service: Mapping[str, Any]) -> str | None:
    mount = bind_mounts(service).get(compose or "")
    if mount is None or not mount.startswith("volume:"):
        return f"must be the mount point of a named volume, is {compose!r}"
    return None


def project_relative(key: str, e2e_project: str) -> Check:
    """Inside the project folder at the place the e2e stack has it."""

    def check(compose: str | None, e2e: str, service: Mapping[str, Any]) -> str | None:
        env = service_env(service)
        relative = Path(e2e).relative_to(e2e_project)
        expected = str(Path(env.get(key, "?")) / relative)
        return None if compose == expected else f"must be {expected}, is {compose!r}"

    return check


def differences(e2e_project: str) -> dict[str, tuple[Check, str]]:
    """The e2e settings compose does not copy: how compose's value is checked, and why."""
    sizing = (positive_int, "sizing: the e2e stack fits a 2-core machine")
    database = (
        same_url_kind,
        "host, port and password: e2e a throwaway cluster on loopback, compose the postgres "
        "service",
    )
    return {
        "AIRFLOW_HOME": (absent, "e2e a temporary folder; compose the image's /opt/airflow"),
        "AIRFLOW__API__HOST": (
            equals("0.0.0.0"),
            "a container listens on its network interface, the e2e stack on loopback",
        ),
        "AIRFLOW__API__PORT": (port, "e2e a free port, as two stacks may share a machine"),
        "AIRFLOW__API__BASE_URL": (
            api_url(""),
            "what a browser opens: e2e the free port, compose the published one on localhost",
        ),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": (
            api_url("/execution/"),
            "the API server as workers reach it: e2e loopback, compose the api-server service",
        ),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": database,
        "AIRFLOW__CELERY__RESULT_BACKEND": database,
        "AIRFLOW__CELERY__BROKER_URL": (
            same_url_kind,
            "host and port: e2e a redis-server on loopback, compose the redis service",
        ),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": (
            absent,
            "e2e free ports, as its workers share one machine; each container has its own",
        ),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": (absent, "as the worker's log-server port"),
        "AIRFLOW__CORE__PARALLELISM": sizing,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": sizing,
        "AIRFLOW__API__WORKERS": sizing,
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": sizing,
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": (
            absent,
            "e2e tests kill workers and wait 30 s for Airflow to notice; a deployment keeps "
            "Airflow's default",
        ),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": (
            absent,
            "as the heartbeat timeout",
        ),
        "AIRFLOW__CORE__DAGS_FOLDER": (mounted_from("dags"), "a container sees the mount"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": (mounted_from("plugins"), "a container sees the mount"),
        "TUNELOOP_CAMPAIGNS_DIR": (
            in_recipes_mount,
            "e2e a temporary folder the tests write campaigns into; compose the repository's "
            "recipes/campaigns/",
        ),
        "TUNELOOP_PROJECT_DIR": (
            shared_volume,
            "e2e a temporary folder; compose a volume every component shares",
        ),
        "TUNELOOP_HOME": (
            project_relative("TUNELOOP_PROJECT_DIR", e2e_project),
            "inside the project folder, wherever that is",
        ),
        "TUNELOOP_FAKE_JOBS": (absent, "the e2e tests' fake job backend; never deployed"),
    }


COMPOSE_ONLY = {
    "AIRFLOW__CORE__FERNET_KEY_CMD": "the e2e processes share one AIRFLOW_HOME and its "
    "config; containers share none, so the key every component must agree on is read from "
    "the secrets volume",
    "AIRFLOW__API_AUTH__JWT_SECRET_CMD": "as the Fernet key",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": "the passwords live in the secrets "
    "volume, not in a container's home",
    "PYTHONPYCACHEPREFIX": "dags/, plugins/ and recipes/ are mounted read-only",
    "DUMB_INIT_SETSID": "the image's init process: Celery's warm shutdown",
}
"""Settings compose has and the e2e stack has not, and why."""


# --- the checks ----------------------------------------------------------------------------------


def role(component_name: str) -> str:
    return re.sub(r"-\d+$", "", component_name)


def e2e_command(component: Component) -> list[str]:
    argv, kept = list(component.argv), []
    while argv:
        word = argv.pop(0)
        if word in PER_PROCESS_OPTIONS:
            argv.pop(0)
            continue
        kept.append(word)
    return kept


def airflow_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run Airflow: those with Airflow's executor setting."""
    return {
        name: service
        for name, service in compose["services"].items()
        if "AIRFLOW__CORE__EXECUTOR" in service_env(service)
    }


def topology_problems(
    compose: Mapping[str, Any], e2e_env: Mapping[str, str], e2e_components: list[Component]
) -> list[str]:
    problems: list[str] = []
    services_ = airflow_services(compose)
    expected = {}
    for component in e2e_components:
        expected.setdefault(COMPONENT_SERVICE_PREFIX + role(component.name), component)
    for name in sorted(set(expected) - set(services_)):
        problems.append(f"e2e component {expected[name].name}: no compose service {name}")
    for name in sorted(set(services_) - set(expected) - set(ONE_OFF_SERVICES)):
        problems.append(f"compose service {name} runs Airflow but the e2e stack has no such role")
    init = services_.get("airflow-init")
    if init is None or command_argv(init) != list(MIGRATE_ARGV):
        problems.append(f"airflow-init must run `airflow {' '.join(MIGRATE_ARGV)}`")

    project = e2e_env["TUNELOOP_PROJECT_DIR"]
    allowed = differences(project)
    for key in sorted(set(allowed) - set(e2e_env)):
        problems.append(f"{key}: listed as a difference, but the e2e stack does not set it")
    for name, service in sorted(services_.items()):
        component = expected.get(name)
        if component is not None and command_argv(service) != e2e_command(component):
            problems.append(
                f"{name}: command {command_argv(service)} but the e2e {component.name} runs "
                f"{e2e_command(component)} (options left out: {sorted(PER_PROCESS_OPTIONS)})"
            )
        wanted = {**e2e_env, **(component.env if component else {})}
        have = service_env(service)
        for key in sorted(set(wanted) | set(have)):
            ours, theirs = have.get(key), wanted.get(key)
            if key in allowed:
                check, _why = allowed[key]
                problem = check(ours, theirs or "", service)
                if problem:
                    problems.append(f"{name}: {key} {problem}")
            elif theirs is None and ours is not None:
                if key not in COMPOSE_ONLY:
                    problems.append(f"{name}: {key}={ours!r} is not in the e2e stack")
            elif (ours or "") != (theirs or ""):  # unset and empty both mean Airflow's default
                problems.append(f"{name}: {key} is {ours!r}, the e2e stack has {theirs!r}")
            if ours and "://" in ours:
                host = urlsplit(ours).hostname
                if host not in {*compose["services"], "localhost"}:
                    problems.append(f"{name}: {key} names host {host}, which is no service")
    return problems


def dependency_problems(compose: Mapping[str, Any]) -> list[str]:
    """Every dependency exists; one waited on as healthy has a healthcheck; every long-running
    Airflow component has one."""
    problems = []
    services_ = compose["services"]
    for name, service in services_.items():
        for target, condition in (service.get("depends_on") or {}).items():
            if target not in services_:
                problems.append(f"{name} depends on {target}, which does not exist")
            elif condition["condition"] == "service_healthy" and not services_[target].get(
                "healthcheck"
            ):
                problems.append(f"{name} waits for {target} to be healthy; it has no healthcheck")
            elif condition["condition"] == "service_completed_successfully" and services_[
                target
            ].get("restart") not in (None, "no"):
                problems.append(f"{name} waits for {target} to finish; it is restarted instead")
    for name in set(airflow_services(compose)) - set(ONE_OFF_SERVICES):
        if not services_[name].get("healthcheck"):
            problems.append(f"{name} has no healthcheck")
    return problems


SECRET_SETTING = re.compile(r"(FERNET_KEY|JWT_SECRET|SECRET_KEY)$")
URL_PASSWORD = re.compile(r"://[^/\s:@]+:(?P<password>[^@\s]*)@")
FERNET_LIKE = re.compile(r"[A-Za-z0-9_-]{43}=")


def secret_problems(compose: Mapping[str, Any], text: str) -> list[str]:
    """No Fernet key, JWT secret or password written as a literal: secrets are read from the
    secrets volume (``_CMD``) or taken from a variable, a password's default a local one."""
    problems = []
    places: list[tuple[str, Mapping[str, Any]]] = [
        (name, service) for name, service in compose["services"].items()
    ]
    places += [(name, block) for name, block in compose.items() if name.startswith("x-")]
    for name, block in places:
        raw = block.get("environment") or {} if isinstance(block, Mapping) else {}
        for key, value in dict(raw).items():
            value = "" if value is None else str(value)
            if SECRET_SETTING.search(key) and key.startswith("AIRFLOW__"):
                problems.append(f"{name}: {key} is written in the file; read it with {key}_CMD")
            elif key.endswith("_CMD") and SECRET_SETTING.search(key.removesuffix("_CMD")):
                if not value.startswith("cat /opt/airflow/secrets/"):
                    problems.append(f"{name}: {key} must read a file of the secrets volume")
            elif SECRET_SETTING.search(key) or key.endswith("PASSWORD"):
                reference = re.fullmatch(r"\$\{(\w+):-(.*)\}", value)
                default_ok = reference and (
                    reference.group(2) in LOCAL_DEFAULTS
                    or (SECRET_SETTING.search(key) and reference.group(2) == "")
                )
                if not default_ok:
                    problems.append(f"{name}: {key} must be ${{VARIABLE:-local default}}")
            for match in URL_PASSWORD.finditer(value):
                reference = re.fullmatch(r"\$\{POSTGRES_PASSWORD:-(\w*)\}", match["password"])
                if not reference or reference.group(1) not in LOCAL_DEFAULTS:
                    problems.append(f"{name}: {key} has a password that is no variable")
    if FERNET_LIKE.search(text):
        problems.append("the file holds what looks like a Fernet key")
    return problems


def schema_problems(compose: Mapping[str, Any]) -> list[str]:
    from jsonschema import Draft7Validator

    # The schema names draft-07 by a URL jsonschema does not know (no trailing "#").
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert "draft-07" in schema["$schema"]
    validator = Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in validator.iter_errors(compose)
    ]


# --- tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def test_the_pinned_schema_is_the_copy_its_source_names() -> None:
    digest = hashlib.sha256(SCHEMA.read_bytes()).hexdigest()
    assert f"SHA-256: `{digest}`" in SCHEMA_SOURCE.read_text(encoding="utf-8")


def test_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    assert schema_problems(compose) == []
    broken = copy.deepcopy(compose)
    broken["services"]["airflow-scheduler"]["comand"] = ["scheduler"]
    broken["services"]["mlflow"]["depends_on"]["mlflow-database"]["condition"] = "finished"
    found = "\n".join(schema_problems(broken))
    assert "'comand' does not match" in found
    assert "services/mlflow/depends_on: {'mlflow-database': {'condition': 'finished'}}" in found


def test_compose_runs_the_components_and_settings_of_the_e2e_stack(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    env, components = e2e_stack(tmp_path)
    assert topology_problems(compose, env, components) == []


def beside_airflow_problems(compose: Mapping[str, Any]) -> list[str]:
    """How PostgreSQL, Redis and the MLflow server of ``compose`` differ from the e2e stack's
    (`topology`: the versions its Debian packages are, the tracking server's command and
    settings)."""
    found: list[str] = []
    compose_services = compose["services"]
    postgres_major = str(topology.POSTGRES_MAJOR)
    for name in ("postgres", "mlflow-database"):
        image = str(compose_services[name]["image"])
        if image.split(":", 1)[-1].split("-", 1)[0] != postgres_major:
            found.append(f"{name}: image {image}, the e2e stack runs PostgreSQL {postgres_major}")
    redis = str(compose_services["redis"]["image"])
    want = ".".join(map(str, topology.REDIS_MAJOR_MINOR))
    if redis.split(":", 1)[-1].split("-", 1)[0] != want:
        found.append(f"redis: image {redis}, the e2e stack runs Redis {want}")

    mlflow = compose_services["mlflow"]
    entry = [str(word) for word in mlflow.get("entrypoint") or []]
    if not entry or entry[-1] != "mlflow":
        found.append(f"mlflow: entrypoint {entry} does not run mlflow")
    # Host, port and workers are this machine's or that container's; the words are the same.
    ours = topology.mlflow_server_argv(host="HOST", port=0, workers=0)
    theirs = command_argv(mlflow)
    flags = [word for word in ours if word.startswith("-") or word == "server"]
    if [word for word in theirs if word.startswith("-") or word == "server"] != flags:
        found.append(f"mlflow: command {theirs}, the e2e stack runs mlflow {ours}")
    env = service_env(mlflow)
    e2e_env = topology.mlflow_server_env(
        backend_store_uri="postgresql+psycopg://u@h/" + topology.MLFLOW_DATABASE,
        artifacts_destination="/artifacts",
    )
    for key, value in e2e_env.items():
        given = env.get(key)
        if given is None:
            found.append(f"mlflow: {key} is not set (the e2e stack sets it)")
        elif key == "MLFLOW_BACKEND_STORE_URI":
            scheme, _, rest = given.partition("://")
            if scheme != value.partition("://")[0] or rest.rsplit("/", 1)[-1] != (
                topology.MLFLOW_DATABASE
            ):
                found.append(f"mlflow: {key} {given}, the e2e stack's store is {value}")
        elif key == "MLFLOW_ARTIFACTS_DESTINATION":
            if not given:  # a folder of its own or s3://: artifacts proxied either way
                found.append(f"mlflow: {key} is empty")
        elif given != value:
            found.append(f"mlflow: {key}={given!r}, the e2e stack sets {value!r}")
    return found


def test_postgres_redis_and_mlflow_are_what_the_e2e_stack_runs(compose: dict[str, Any]) -> None:
    assert beside_airflow_problems(compose) == []
    drifted = copy.deepcopy(compose)
    drifted["services"]["postgres"]["image"] = "postgres:17"
    drifted["services"]["redis"]["image"] = "redis:7.4"
    drifted["services"]["mlflow"]["command"] = ["server", "--host", "0.0.0.0"]
    drifted["services"]["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"] = "sqlite:///m.db"
    del drifted["services"]["mlflow"]["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]
    found = "\n".join(beside_airflow_problems(drifted))
    for says in (
        "postgres: image postgres:17, the e2e stack runs PostgreSQL 15",
        "redis: image redis:7.4, the e2e stack runs Redis 7.0",
        "mlflow: command ['server', '--host', '0.0.0.0']",
        "mlflow: MLFLOW_BACKEND_STORE_URI sqlite:///m.db",
        "mlflow: MLFLOW_SERVER_ENABLE_JOB_EXECUTION is not set",
    ):
        assert says in found


def test_the_topology_check_names_a_drift(compose: dict[str, Any], tmp_path: Path) -> None:
    env, components = e2e_stack(tmp_path)

    extra_component = [*components, Component("flower", ["celery", "flower"])]
    assert topology_problems(compose, env, extra_component) == [
        "e2e component flower: no compose service airflow-flower"
    ]

    extra_service = copy.deepcopy(compose)
    extra_service["services"]["airflow-edge"] = extra_service["services"]["airflow-triggerer"]
    assert topology_problems(extra_service, env, components) == [
        "compose service airflow-edge runs Airflow but the e2e stack has no such role"
    ]

    changed = {**env, "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "5"}
    problems = topology_problems(compose, changed, components)
    assert len(problems) == len(airflow_services(compose))
    assert all("MIN_HEARTBEAT_INTERVAL is '1', the e2e stack has '5'" in p for p in problems)

    other_command = copy.deepcopy(compose)
    other_command["services"]["airflow-worker"]["command"] = ["celery", "worker", "-q", "x"]
    assert any(
        "airflow-worker: command" in p for p in topology_problems(other_command, env, components)
    )

    other_host = copy.deepcopy(compose)
    other_host["services"]["airflow-worker"]["environment"] = {
        **other_host["services"]["airflow-worker"]["environment"],
        "AIRFLOW__CELERY__BROKER_URL": "redis://broker:6379/0",
    }
    assert topology_problems(other_host, env, components) == [
        "airflow-worker: AIRFLOW__CELERY__BROKER_URL names host broker, which is no service"
    ]

    other_driver = {**env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://u@h:5/airflow"}
    assert any(
        "SQL_ALCHEMY_CONN must be a postgresql://.../airflow URL" in p
        for p in topology_problems(compose, other_driver, components)
    )


def test_services_wait_for_what_they_need(compose: dict[str, Any]) -> None:
    assert dependency_problems(compose) == []
    broken = copy.deepcopy(compose)
    del broken["services"]["redis"]["healthcheck"]
    broken["services"]["mlflow"]["depends_on"]["minio"] = {"condition": "service_started"}
    assert sorted(dependency_problems(broken)) == [
        "airflow-api-server waits for redis to be healthy; it has no healthcheck",
        "airflow-cli waits for redis to be healthy; it has no healthcheck",
        "airflow-dag-processor waits for redis to be healthy; it has no healthcheck",
        "airflow-init waits for redis to be healthy; it has no healthcheck",
        "airflow-scheduler waits for redis to be healthy; it has no healthcheck",
        "airflow-triggerer waits for redis to be healthy; it has no healthcheck",
        "airflow-worker waits for redis to be healthy; it has no healthcheck",
        "mlflow depends on minio, which does not exist",
    ]


def test_no_secret_is_written_in_the_compose_file(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    assert secret_problems(compose, text) == []
    common = compose["x-airflow-common"]["environment"]
    assert common["AIRFLOW__CORE__FERNET_KEY_CMD"] == "cat /opt/airflow/secrets/fernet_key"
    assert common["AIRFLOW__API_AUTH__JWT_SECRET_CMD"] == "cat /opt/airflow/secrets/jwt_secret"
    given = compose["services"]["airflow-secrets"]["environment"]
    assert given["AIRFLOW_FERNET_KEY"] == "${AIRFLOW_FERNET_KEY:-}"
    assert given["AIRFLOW_JWT_SECRET"] == "${AIRFLOW_JWT_SECRET:-}"

    leaked = copy.deepcopy(compose)
    # The services share this mapping (YAML merge keys); changed here alone, once.
    env = leaked["x-airflow-common"]["environment"] = dict(
        compose["x-airflow-common"]["environment"]
    )
    key = "ZmVybmV0LWtleS1ub3QtcmVhbC1qdXN0LWEtdGVzdC0xMjM="
    env["AIRFLOW__CORE__FERNET_KEY"] = key
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = "postgresql+psycopg://airflow:hunter2@postgres/a"
    leaked["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] = "hunter2"
    leaked["services"]["airflow-secrets"]["environment"]["AIRFLOW_JWT_SECRET"] = "${X:-s3cr3t}"
    assert sorted(secret_problems(leaked, text + key)) == [
        "airflow-secrets: AIRFLOW_JWT_SECRET must be ${VARIABLE:-local default}",
        "postgres: POSTGRES_PASSWORD must be ${VARIABLE:-local default}",
        "the file holds what looks like a Fernet key",
        "x-airflow-common: AIRFLOW__CORE__FERNET_KEY is written in the file; read it with "
        "AIRFLOW__CORE__FERNET_KEY_CMD",
        "x-airflow-common: AIRFLOW__DATABASE__SQL_ALCHEMY_CONN has a password that is no variable",
    ]


def requirement_pin(name: str) -> str:
    text = (REPO / "requirements.txt").read_text(encoding="utf-8")
    match = re.search(rf"^{re.escape(name)}==(\S+)", text, re.MULTILINE)
    assert match, f"requirements.txt pins no {name}"
    return match.group(1)


def test_the_image_is_the_pinned_airflow_with_requirements_and_tuneloop() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    base = re.search(
        r"^FROM apache/airflow:(?P<version>[\d.]+)-python(?P<python>3\.\d+)\s*$", text, re.M
    )
    assert base, "the Dockerfile must start FROM apache/airflow:<version>-python<3.x>"
    assert base["version"] == requirement_pin("apache-airflow")
    assert base["python"] in ("3.11", "3.12")  # pyproject.toml: requires-python >=3.11,<3.13
    assert "pip install --no-cache-dir -r requirements.txt" in text
    assert "pip install --no-cache-dir --no-deps -e ." in text

    copied = re.findall(r"^COPY (?:--chown=\S+ )?(.+) \S+$", text, re.M)
    sources = [source for line in copied for source in line.split()]
    assert {"requirements.txt", "pyproject.toml", "plugins/", "dags/", "recipes/"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), f"the Dockerfile copies {source}, which does not exist"

    # The Celery stack comes from requirements-dev.txt with the pattern the Dockerfile greps.
    pattern = re.search(r"grep -E '([^']+)' \\\s*requirements-dev.txt", text)
    assert pattern
    dev = (REPO / "requirements-dev.txt").read_text(encoding="utf-8").splitlines()
    assert len([line for line in dev if re.match(pattern.group(1), line)]) == 4


def test_torch_is_installed_only_when_asked_and_from_the_cpu_index() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^ARG LOCAL_TRAINING=false$", text, re.M)
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu$", text, re.M)
    instructions = re.split(r"\n(?=[A-Z]+ )", re.sub(r"^#.*\n", "", text, flags=re.M))
    for instruction in instructions:
        if "torch" in instruction or "requirements-local.txt" in instruction:
            if instruction.startswith("COPY") or instruction.startswith("ARG"):
                continue
            assert 'if [ "$LOCAL_TRAINING" = "true" ]' in instruction, instruction
            assert '--index-url "$TORCH_INDEX_URL"' in instruction, instruction


def test_the_mounted_folders_exist_and_keep_the_repository_layout(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    mounts = bind_mounts(compose["x-airflow-common"])
    folders = {source: target for target, source in mounts.items() if ":" not in source}
    assert set(folders) == {"dags", "plugins", "recipes"}
    for source in folders:
        assert (REPO / source).is_dir(), f"compose mounts ./{source}, which is no folder"
    # tuneloop finds recipes/ beside the folder its package is in: the mounts keep them side by
    # side, as in the repository.
    monkeypatch.delenv(RECIPES_DIR_ENV, raising=False)
    assert recipes_root() == REPO / "recipes"
    assert Path(folders["recipes"]).parent == Path(folders["plugins"]).parent
    build = compose["x-airflow-image"]["build"]
    assert (REPO / build["context"] / "Dockerfile").is_file()


def test_the_build_context_leaves_out_what_the_image_does_not_need() -> None:
    ignored = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", "mlruns", "tests", "**/__pycache__"} <= ignored
    assert not ignored & {"plugins", "dags", "recipes", "requirements.txt", "pyproject.toml"}


def test_values_are_read_as_compose_gives_them_without_a_dot_env() -> None:
    assert interpolate("a${X:-b}c") == "abc"
    assert interpolate("${X-}|${X}|${X:+y}|$${HOSTNAME}") == "|||${HOSTNAME}"
    assert interpolate("postgresql://u:${P:-airflow}@h/db") == "postgresql://u:airflow@h/db"
