"""The embedded stack: PostgreSQL (migrated, with the first operator 'admin'), then authsvc, the EMQX-compatible
broker, the api and the api's worker, in that order.

``make run`` and the test suite both start it through ``Stack``: one way to start, so what the tests exercise
is what a developer runs. Each component is a separate process that talks to the others only over HTTP,
MQTT and PostgreSQL; the services receive their whole configuration as environment variables, the broker
additionally reads ``emqx/emqx.conf`` with ``EMQX_*`` overrides exactly as EMQX does. Every component answers a
health URL, which the launcher polls until it is up; its output goes to ``<state>/log/<component>.log``.

While it runs, the stack holds ``<state>/stack.lock`` and describes itself in ``<state>/stack.json``, so other
tools find it on its ports and nothing starts a second one on the same data directory (fleetcore/embedded.py);
once up it writes the Postman environment ``<state>/postman.environment.json`` (fleetctl/postman.py).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fleetcore import certificates, db, migrations, paths
from fleetcore.config import ConfigError
from fleetcore.embedded import Ports, RunningStack, StackLock
from fleetctl import dbadmin, localsecrets, postman
from fleetctl.postgres import EmbeddedPostgres
from fleetctl.procs import ChildProcess

API_KEY_NAME = "fleet"
POSTMAN_ENVIRONMENT = "postman.environment.json"

__all__ = ["API_KEY_NAME", "Ports", "Stack", "StackConfig", "StackError"]

# Where the embedded stack is looser than production (emqx/emqx.conf), through the same keys. The simulator's fault
# injection and the acceptance tests publish where a vehicle may not, on purpose, and check that the attempt is
# dead-lettered while the vehicle stays connected; benchmarks push hundreds of messages a second per vehicle
# through one listener. Flapping detection, the handshake and idle timeouts and the connection rate stay as in
# production. docs/OPERATIONS.md ("Broker limits") has both sets of values.
EMBEDDED_LIMITS = {
    "EMQX_AUTHORIZATION__DENY_ACTION": "ignore",
    **{f"EMQX_LISTENERS__{kind}__DEFAULT__{key}": value
       for kind in ("TCP", "SSL", "WS")
       for key, value in (("MESSAGES_RATE", '"100000/s"'), ("BYTES_RATE", '"1GB/s"'))},
}


@dataclass
class StackConfig:
    state_dir: Path = field(default_factory=paths.state_dir)
    ports: Ports = field(default_factory=Ports.from_env)
    durable: bool = True          # False for tests: no fsync, faster
    host: str = "127.0.0.1"
    # Extra environment for every service (tests use it to shorten timeouts).
    extra_env: dict[str, str] = field(default_factory=dict)
    # Which services to start (default: every one that exists). FLEET_STACK_COMPONENTS=authsvc,broker or =none.
    components: tuple[str, ...] | None = field(default_factory=lambda: _components_from_env())


def _components_from_env() -> tuple[str, ...] | None:
    raw = os.environ.get("FLEET_STACK_COMPONENTS")
    if raw is None or raw.strip() == "":
        return None
    return tuple(name.strip() for name in raw.split(",") if name.strip() and name.strip() != "none")


@dataclass
class Component:
    name: str
    module: str                    # the package that must exist for this component to be started
    argv: list[str]
    env: dict[str, str]
    health_url: str
    process: ChildProcess | None = None

    @property
    def available(self) -> bool:
        try:
            spec = importlib.util.find_spec(self.module)
        except ModuleNotFoundError:
            return False
        # An empty directory is a namespace package (origin None): not a component yet.
        return spec is not None and spec.origin not in (None, "namespace")


class StackError(RuntimeError):
    pass


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback health URL
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _git_commit() -> str:
    """The commit the api runs (GET / shows it), read from git at start; a working tree with changes is marked
    ``-dirty``. FLEET_GIT_COMMIT wins when set (a copy without .git); else "unknown" outside a git checkout."""
    if os.environ.get("FLEET_GIT_COMMIT"):
        return os.environ["FLEET_GIT_COMMIT"]
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40", "--match=NO-TAGS"],
                              cwd=paths.PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


class Stack:
    """Start, watch and stop the embedded stack."""

    def __init__(self, config: StackConfig | None = None, *, out: Callable[[str], None] = print,
                 on_line: Callable[[str, str], None] | None = None) -> None:
        self.config = config or StackConfig()
        self.out = out
        self.on_line = on_line
        self.state_dir = self.config.state_dir.resolve()
        self.log_dir = self.state_dir / "log"
        self.secrets, self.created_secrets = localsecrets.load_or_create(self.state_dir / "secrets.env")
        self.external_database_url = os.environ.get("DATABASE_URL") or None
        self.postgres: EmbeddedPostgres | None = None
        self.components: list[Component] = []
        self.started: list[Component] = []
        self._stopped: dict[str, Component] = {}
        self._stop = threading.Event()
        self.stop_reason = ""
        self.lock = StackLock(self.state_dir)

    # -- addresses ------------------------------------------------------------------------------------------
    def url(self, component: str) -> str:
        port = getattr(self.config.ports, component)
        return f"http://{self.config.host}:{port}"

    @property
    def database_url(self) -> str:
        if self.external_database_url:
            return self.external_database_url
        return (f"postgresql://{dbadmin.APP_ROLE}:{self.secrets['FLEET_DB_PASSWORD']}@{self.config.host}:"
                f"{self.config.ports.postgres}/{dbadmin.DATABASE}")

    @property
    def database_server(self) -> tuple[str, int, str]:
        if self.external_database_url:
            from psycopg2.extensions import parse_dsn
            dsn = parse_dsn(self.external_database_url)
            return dsn.get("host", "127.0.0.1"), int(dsn.get("port", 5432)), dsn.get("dbname", dbadmin.DATABASE)
        return self.config.host, self.config.ports.postgres, dbadmin.DATABASE

    @property
    def tls_dir(self) -> Path:
        return self.state_dir / "certs"

    # -- environment handed to the services ---------------------------------------------------------------
    def service_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EMQX_", "FLEET_", "DATABASE_URL"))}
        env.update({
            "DATABASE_URL": self.database_url,
            "FLEET_EMQX_API_URL": self.url("emqx_api"),
            "FLEET_EMQX_API_KEY": API_KEY_NAME,
            "FLEET_EMQX_API_SECRET": self.secrets["FLEET_EMQX_API_SECRET"],
            "FLEET_BROKER_TOKEN": self.secrets["FLEET_BROKER_TOKEN"],
            "FLEET_DEVICE_SECRET_KEY": self.secrets["FLEET_DEVICE_SECRET_KEY"],
            "FLEET_JWT_SECRET": self.secrets["FLEET_JWT_SECRET"],
            "FLEET_LOG_FORMAT": os.environ.get("FLEET_LOG_FORMAT", "logfmt"),
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.config.extra_env)
        return env

    def authsvc_env(self) -> dict[str, str]:
        """authsvc signs vehicles' CSRs with the stack's fleet CA (``_ensure_fleet_ca``)."""
        return self.service_env() | {
            "AUTHSVC_BIND": f"{self.config.host}:{self.config.ports.authsvc}",
            "AUTHSVC_FLEET_CA_CERT_FILE": str(self.tls_dir / certificates.CA_CERT_FILE),
            "AUTHSVC_FLEET_CA_KEY_FILE": str(self.tls_dir / certificates.CA_KEY_FILE),
        }

    def broker_env(self) -> dict[str, str]:
        """EMQX-style overrides of emqx/emqx.conf: the same variables a Compose file would set for EMQX."""
        host, port, database = self.database_server
        broker_token = self.secrets["FLEET_BROKER_TOKEN"]
        token_header = f'{{"x-fleet-broker-token" = "{broker_token}"}}'
        authsvc = self.url("authsvc")
        ports = self.config.ports
        h = self.config.host
        env = self.service_env()
        env.update({
            "EMQX_NODE__DATA_DIR": str(self.state_dir / "emqx"),
            "EMQX_API_KEY__BOOTSTRAP_FILE": str(self.state_dir / "emqx" / "api_keys.txt"),
            "EMQX_DASHBOARD__LISTENERS__HTTP__BIND": f'"{h}:{ports.emqx_api}"',
            "EMQX_DASHBOARD__DEFAULT_PASSWORD": self.secrets["FLEET_EMQX_DASHBOARD_PASSWORD"],
            "EMQX_LISTENERS__TCP__DEFAULT__BIND": f'"{h}:{ports.mqtt}"',
            "EMQX_LISTENERS__WS__DEFAULT__BIND": f'"{h}:{ports.mqtt_ws}"',
            "EMQX_AUTHENTICATION__1__URL": f"{authsvc}/mqtt/authn",
            "EMQX_AUTHENTICATION__1__HEADERS": token_header,
            "EMQX_AUTHORIZATION__SOURCES__1__URL": f"{authsvc}/mqtt/authz",
            "EMQX_AUTHORIZATION__SOURCES__1__HEADERS": token_header,
            "EMQX_CONNECTORS__HTTP__AUTHSVC__URL": authsvc,
            "EMQX_CONNECTORS__HTTP__AUTHSVC__HEADERS": token_header,
            "EMQX_CONNECTORS__PGSQL__FLEET_DB__SERVER": f'"{host}:{port}"',
            "EMQX_CONNECTORS__PGSQL__FLEET_DB__DATABASE": database,
            "EMQX_CONNECTORS__PGSQL__FLEET_DB__USERNAME": dbadmin.INGEST_ROLE,
            "EMQX_CONNECTORS__PGSQL__FLEET_DB__PASSWORD": self.secrets["FLEET_INGEST_DB_PASSWORD"],
        })
        env.update(EMBEDDED_LIMITS)
        if (self.tls_dir / "server.pem").exists():
            env.update({
                "EMQX_LISTENERS__SSL__DEFAULT__BIND": f'"{h}:{ports.mqtt_tls}"',
                "EMQX_LISTENERS__SSL__DEFAULT__SSL_OPTIONS__CACERTFILE": str(self.tls_dir / "ca.pem"),
                "EMQX_LISTENERS__SSL__DEFAULT__SSL_OPTIONS__CERTFILE": str(self.tls_dir / "server.pem"),
                "EMQX_LISTENERS__SSL__DEFAULT__SSL_OPTIONS__KEYFILE": str(self.tls_dir / "server.key"),
                # the mTLS listener: the broker's own certificate, and the fleet CA for the vehicles' certificates
                "EMQX_LISTENERS__SSL__MTLS__BIND": f'"{h}:{ports.mqtt_mtls}"',
                "EMQX_LISTENERS__SSL__MTLS__SSL_OPTIONS__CACERTFILE": str(self.tls_dir / certificates.CA_CERT_FILE),
                "EMQX_LISTENERS__SSL__MTLS__SSL_OPTIONS__CERTFILE": str(self.tls_dir / "server.pem"),
                "EMQX_LISTENERS__SSL__MTLS__SSL_OPTIONS__KEYFILE": str(self.tls_dir / "server.key"),
            })
        else:
            env["EMQX_LISTENERS__SSL__DEFAULT__ENABLE"] = "false"
            env["EMQX_LISTENERS__SSL__MTLS__ENABLE"] = "false"
        return env

    def _components(self) -> list[Component]:
        python = sys.executable
        ports = self.config.ports
        h = self.config.host
        authsvc_env = self.authsvc_env()
        api_env = self.service_env() | {"API_BIND": f"{h}:{ports.api}", "FLEET_GIT_COMMIT": _git_commit()}
        worker_env = self.service_env() | {"WORKER_BIND": f"{h}:{ports.worker}"}
        return [
            Component("authsvc", "authsvc", [python, "-m", "authsvc.server"], authsvc_env,
                      f"{self.url('authsvc')}/healthz"),
            Component("broker", "emqx.standin", [python, "-m", "emqx.standin", "--config", str(paths.emqx_conf())],
                      self.broker_env(), f"{self.url('emqx_api')}/status"),
            Component("api", "api", [python, "-m", "api.server"], api_env, f"{self.url('api')}/healthz"),
            Component("worker", "api.worker", [python, "-m", "api.worker"], worker_env,
                      f"{self.url('worker')}/healthz"),
        ]

    # -- state files -----------------------------------------------------------------------------------------
    def description(self, purpose: str = "stack") -> RunningStack:
        """What ``<state>/stack.json`` says about this stack (fleetcore/embedded.py)."""
        started = (["postgres"] if self.postgres else []) + [c.name for c in self.started]
        return RunningStack(pid=os.getpid(), purpose=purpose, host=self.config.host, ports=self.config.ports,
                            components=tuple(started), ready=purpose == "stack" and bool(self.started))

    @property
    def postman_environment(self) -> Path:
        return self.state_dir / POSTMAN_ENVIRONMENT

    def _write_postman_environment(self) -> None:
        """The Postman/newman environment of this stack: its api URL and the initial admin password (mode 0600,
        like secrets.env)."""
        running = {c.name for c in self.started}
        if "api" in running:
            postman.write_environment(self.postman_environment, base_url=self.url("api"),
                                      password=self.secrets["FLEET_ADMIN_PASSWORD"],
                                      broker_available="broker" in running)

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> None:
        """Start everything and return once every component is healthy; raise (after cleaning up) if not.
        StateDirInUse (fleetcore/embedded.py) when another process runs from the same state directory."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "emqx").mkdir(parents=True, exist_ok=True)
        self.lock.acquire(self.description("starting"))
        try:
            self._start_database()
            self._write_api_keys()
            self._ensure_tls_certificates()
            self._ensure_fleet_ca()
            wanted = self.config.components
            components = [c for c in self._components() if c.available and (wanted is None or c.name in wanted)]
            if any(c.name == "api" for c in components):
                self._create_first_admin()
            for component in components:
                self._start_component(component, timeout)
            self._write_postman_environment()
            self.lock.publish(self.description("stack"))
        except BaseException:
            self.stop("start-up failed")
            raise

    def start_database(self, migrate: bool = True) -> None:
        """Only the embedded PostgreSQL, for a ``fleetctl db …`` command while no stack runs: it holds the state
        directory's lock like a stack, so ``make run`` says who has the data directory instead of failing on it."""
        self.lock.acquire(self.description("starting"))
        try:
            self._start_database(migrate=migrate)
            self.lock.publish(self.description("database"))
        except BaseException:
            self.stop("start-up failed")
            raise

    def _create_first_admin(self) -> None:
        """The operator 'admin' with FLEET_ADMIN_PASSWORD from the secrets file, as ``fleetctl create-admin`` does
        in production; a password that breaks the rule stops the start."""
        from api import first_admin, passwords
        try:
            created = first_admin.create(self.database_url, self.secrets[first_admin.PASSWORD_VARIABLE],
                                         passwords.hash_cost(self.service_env()))  # the api's setting
        except ConfigError as exc:
            raise StackError(f"{exc} (set in {self.state_dir / 'secrets.env'})") from None
        if created:
            self.out("created the operator 'admin'")

    def _ensure_tls_certificates(self) -> None:
        """First run: a local CA and a broker certificate (scripts/make-certs.sh), so the TLS listener is on.
        Without openssl the TLS listener stays off and the summary does not list it."""
        if (self.tls_dir / "server.pem").exists() or not shutil.which("openssl"):
            return
        script = paths.PROJECT_ROOT / "scripts" / "make-certs.sh"
        done = subprocess.run(["sh", str(script), str(self.tls_dir)], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            self.out(f"TLS certificates could not be made, MQTT over TLS stays off: {done.stderr.strip()[:300]}")
        else:
            self.out(f"made a local CA and broker certificate in {self.tls_dir} (vehicles verify with ca.pem)")

    def _ensure_fleet_ca(self) -> None:
        """First run: the fleet CA that signs vehicles' CSRs (authsvc) and that the mTLS listener trusts. Made with
        the ``cryptography`` library; the key stays in ``<state>/certs/fleet-ca.key`` (mode 0600), never logged."""
        if certificates.create_ca(self.tls_dir):
            self.out(f"made the fleet CA {self.tls_dir / certificates.CA_CERT_FILE} (vehicles' client certificates)")

    def _start_database(self, migrate: bool = True) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.external_database_url:
            admin_url = os.environ.get("FLEET_DB_ADMIN_URL")
            self.out(f"using external PostgreSQL from DATABASE_URL ({self.database_server[0]})")
        else:
            self.postgres = EmbeddedPostgres(
                self.state_dir / "pgdata", self.config.ports.postgres, self.secrets["FLEET_PG_SUPERUSER_PASSWORD"],
                durable=self.config.durable, log=self.out, log_dir=self.log_dir, on_line=self.on_line)
            started = time.monotonic()
            self.postgres.start()
            self.out(f"postgres ready on {self.config.host}:{self.config.ports.postgres} "
                     f"in {time.monotonic() - started:.2f} s")
            admin_url = self.postgres.url()
        if admin_url:
            dbadmin.bootstrap(admin_url, app_password=self.secrets["FLEET_DB_PASSWORD"],
                              ingest_password=self.secrets["FLEET_INGEST_DB_PASSWORD"], log=self.out)
        if not migrate:
            return
        conn = db.connect(self.database_url, application_name="fleetctl-migrate")
        try:
            self.out(f"database: {migrations.migrate(conn, log=self.out).summary()}")
        finally:
            conn.close()

    def _write_api_keys(self) -> None:
        # EMQX bootstrap file format: key:secret:role, one per line, no comments.
        path = self.state_dir / "emqx" / "api_keys.txt"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{API_KEY_NAME}:{self.secrets['FLEET_EMQX_API_SECRET']}:administrator\n")

    def _start_component(self, component: Component, timeout: float) -> None:
        process = ChildProcess(component.name, component.argv, env=component.env, cwd=paths.PROJECT_ROOT,
                               log_path=self.log_dir / f"{component.name}.log", on_line=self.on_line)
        component.process = process
        started = time.monotonic()
        process.start()
        self.started.append(component)
        deadline = started + timeout
        while time.monotonic() < deadline:
            if not process.running():
                raise StackError(f"{component.name} exited with code {process.poll()} while starting:\n"
                                 f"{process.last_lines()}")
            if _http_ok(component.health_url):
                self.out(f"{component.name} ready in {time.monotonic() - started:.2f} s")
                return
            time.sleep(0.05)
        raise StackError(f"{component.name} was not healthy at {component.health_url} within {timeout:.0f} s:\n"
                         f"{process.last_lines()}")

    def component(self, name: str) -> Component:
        for component in self.started:
            if component.name == name:
                return component
        raise KeyError(name)

    def restart_component(self, name: str, timeout: float = 60.0) -> None:
        """Stop one service and start it again (used by the failure tests)."""
        component = self.component(name)
        self.started.remove(component)
        if component.process:
            component.process.stop()
        self._start_component(component, timeout)

    def stop_component(self, name: str) -> None:
        """Stop one service and keep it aside for start_component (used by the outage tests)."""
        component = self.component(name)
        self.started.remove(component)
        self._stopped[name] = component
        if component.process:
            component.process.stop()

    def start_component(self, name: str, timeout: float = 60.0) -> None:
        self._start_component(self._stopped.pop(name), timeout)

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason
        self._stop.set()

    def wait(self) -> str:
        """Block until a stop is requested or a component dies; return why."""
        while not self._stop.wait(0.2):
            for component in self.started:
                process = component.process
                if process and not process.stopping and process.poll() is not None:
                    self.request_stop(f"{component.name} exited unexpectedly with code {process.poll()}")
            if self.postgres and not self.postgres.running():
                self.request_stop("postgres exited unexpectedly")
        return self.stop_reason

    def stop(self, reason: str = "stopped") -> None:
        """Stop everything in reverse start order: services first, PostgreSQL last."""
        self.stop_reason = self.stop_reason or reason
        for component in reversed(self.started):
            if component.process:
                code = component.process.stop()
                if code not in (0, None, -signal.SIGTERM):
                    self.out(f"{component.name} stopped with code {code}")
        self.started.clear()
        if self.postgres:
            self.postgres.stop()
            self.postgres = None
        self.lock.release()
