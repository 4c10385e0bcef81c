"""Command line: ``fleetctl run`` (the embedded stack), ``fleetctl env`` (its addresses for a shell),
``fleetctl db …`` (bootstrap, migrate, status, psql), ``fleetctl create-admin`` (the first operator),
``fleetctl enroll-bulk`` (vehicles with enrollment tokens), ``fleetctl production-env`` (a ``.env`` with fresh
secrets for docker-compose.yml) and ``fleetctl check-env`` (is a ``.env`` safe to use).

Every command that needs the embedded stack finds the one running from ``var/`` on whatever ports it was started
(fleetcore/embedded.py); a database command with no stack running starts the embedded PostgreSQL just for itself,
under the same lock, so two servers never share a data directory.
"""
from __future__ import annotations

import argparse
import getpass
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2

from fleetcore import db, embedded, migrations, paths
from fleetcore.config import ConfigError, env_secret, env_str

_COLOURS = {"postgres": "34", "authsvc": "35", "broker": "36", "api": "33", "worker": "93", "fleetctl": "32"}


def _console_line(component: str, line: str) -> None:
    prefix = f"{component:<8}|"
    if sys.stdout.isatty():
        prefix = f"\033[{_COLOURS.get(component, '37')}m{prefix}\033[0m"
    print(f"{prefix} {line}", flush=True)


def _say(message: str) -> None:
    _console_line("fleetctl", message)


def _shown(path: Path) -> str:
    """``path`` as the user would type it in the project directory."""
    try:
        return str(path.relative_to(paths.PROJECT_ROOT))
    except ValueError:
        return str(path)


def _summary(stack) -> str:
    from fleetctl import postman
    from fleetctl.stack import API_KEY_NAME
    p = stack.config.ports
    h = stack.config.host
    running = {c.name for c in stack.started}
    secrets_file = stack.state_dir / "secrets.env"
    rows = ["", "Fleet backend (embedded mode) is up:"]
    if "api" in running:
        rows.append(f"  Operator API   {stack.url('api')}/api/v1   (Swagger UI: {stack.url('api')}/docs)")
        rows.append(f"  Console        {stack.url('api')}/console/   (operators log in; works offline)")
        if "FLEET_ADMIN_PASSWORD" in stack.created_secrets:
            rows.append(f"  Log in         user 'admin', password '{stack.secrets['FLEET_ADMIN_PASSWORD']}'"
                        f"  (shown once; kept in {secrets_file})")
        else:
            rows.append(f"  Log in         user 'admin', password: FLEET_ADMIN_PASSWORD in {secrets_file}")
    if "broker" in running:
        rows.append(f"  MQTT           mqtt://{h}:{p.mqtt}   ws://{h}:{p.mqtt_ws}/mqtt"
                    + (f"   mqtts://{h}:{p.mqtt_tls}" if (stack.tls_dir / "server.pem").exists() else ""))
        if (stack.tls_dir / "server.pem").exists():
            rows.append(f"  MQTT mTLS      mqtts://{h}:{p.mqtt_mtls}   (client certificates from the fleet CA "
                        f"{stack.tls_dir}/fleet-ca.pem; docs/PROTOCOL.md)")
        rows.append(f"  Broker API     {stack.url('emqx_api')}/api/v5   (basic auth: key '{API_KEY_NAME}', "
                    f"secret FLEET_EMQX_API_SECRET in {secrets_file})")
        rows.append(f"  Dashboard      {stack.url('emqx_api')}/   (user 'admin', password "
                    f"FLEET_EMQX_DASHBOARD_PASSWORD in {secrets_file})")
    if "worker" in running:
        rows.append(f"  Worker         missions, maintenance, alarms, webhooks   "
                    f"(health: {stack.url('worker')}/healthz)")
    if "authsvc" in running:
        rows.append(f"  authsvc        {stack.url('authsvc')}   (/healthz)")
    host, port, database = stack.database_server
    rows.append(f"  PostgreSQL     {host}:{port}/{database}   (psql: .venv/bin/fleetctl db psql)")
    rows.append(f"  Logs           {stack.log_dir}/")
    if "api" in running:
        environment = _shown(stack.postman_environment)
        rows.append(f"  Postman        environment {environment}   (mode 0600: it holds the admin password)")
        rows += ["In a second terminal (the README's testing guide, with these ports):",
                 f"  cd {shlex.quote(str(paths.PROJECT_ROOT))}"]
        if stack.state_dir != (paths.PROJECT_ROOT / "var").resolve():
            rows.append(f"  export FLEET_STATE_DIR={shlex.quote(str(stack.state_dir))}")
        rows += ['  eval "$(.venv/bin/fleetctl env)"     # sets API, MQTT_HOST, MQTT_PORT and ADMIN_PW',
                 f"  {postman.newman_command(environment)}"]
    rows.append("Press Ctrl-C to stop everything.")
    return "\n".join(rows)


def cmd_run(args: argparse.Namespace) -> int:
    from fleetctl.stack import Stack, StackConfig
    stack = Stack(StackConfig(), out=_say, on_line=_console_line)
    try:
        stack.start()
    except KeyboardInterrupt:
        _say("interrupted while starting; everything was stopped")
        return 130
    except Exception as exc:  # noqa: BLE001 - report any start-up failure in one clear message
        _say(f"could not start the stack: {exc}")
        return 1

    def on_signal(signum: int, _frame) -> None:
        stack.request_stop(f"received {signal.Signals(signum).name}")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(_summary(stack), flush=True)
    reason = stack.wait()
    _say(f"stopping: {reason}")
    stack.stop(reason)
    _say("all components stopped")
    return 0 if reason.startswith("received") else 1


class CommandError(RuntimeError):
    """A command cannot do its work; the message says why in one line."""


def _no_stack(state_dir: Path, *, database: bool = True) -> CommandError:
    return CommandError(f"no embedded stack is running from {state_dir}: start it with `make run`"
                        + (" (or set DATABASE_URL for another database)" if database else ""))


def _running_database_url(state_dir: Path) -> str | None:
    """The app role's URL of the embedded PostgreSQL running from ``state_dir`` (a stack or a command's), or None."""
    holder = embedded.running(state_dir)
    if holder is None:
        return None
    if holder.purpose == "starting":
        raise CommandError(f"{state_dir} is in use by {holder.describe()}; try again once it is up")
    from fleetctl.stack import Stack, StackConfig
    config = StackConfig(state_dir=state_dir, ports=holder.ports, host=holder.host)
    return Stack(config, out=lambda m: None).database_url


@contextmanager
def _database_url(*, start: bool = True, migrate: bool = True) -> Iterator[str]:
    """DATABASE_URL; else the embedded database of the stack running from ``var/``; else, with ``start``, the
    embedded database started just for this command (and stopped after it). Never a second server on a data
    directory that is in use."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    state_dir = paths.state_dir().resolve()
    url = _running_database_url(state_dir)
    if url:
        yield url
        return
    if not start:
        raise _no_stack(state_dir)
    from fleetctl.stack import Stack, StackConfig
    stack = Stack(StackConfig(state_dir=state_dir), out=_say)
    stack.start_database(migrate=migrate)
    try:
        yield stack.database_url
    finally:
        stack.stop()


def cmd_env(args: argparse.Namespace) -> int:
    """Shell variables for the running stack: ``eval "$(fleetctl env)"``. The admin password is not printed: the
    line reads it from secrets.env when the shell evaluates it."""
    state_dir = paths.state_dir().resolve()
    holder = embedded.running(state_dir)
    if holder is None or holder.purpose == "database":
        raise _no_stack(state_dir, database=False)
    if holder.purpose == "starting" or not holder.ready:
        raise CommandError(f"the embedded stack in {state_dir} is still starting; try again in a few seconds")
    secrets_file = shlex.quote(str(state_dir / "secrets.env"))
    print(f"export API={holder.api_url}/api/v1")
    print(f"export MQTT_HOST={holder.host} MQTT_PORT={holder.ports.mqtt}")
    print(f"export ADMIN_PW=\"$(sed -n 's/^FLEET_ADMIN_PASSWORD=//p' {secrets_file})\"   # the initial password")
    return 0


def cmd_db_migrate(args: argparse.Namespace) -> int:
    with _database_url(migrate=False) as url:
        conn = db.connect(url, application_name="fleetctl-migrate")
        try:
            outcome = migrations.migrate(conn, log=_say)
        finally:
            conn.close()
    _say(f"{outcome.summary()}; database is up to date")
    return 0


def cmd_db_bootstrap(args: argparse.Namespace) -> int:
    from fleetctl import dbadmin
    dbadmin.bootstrap(env_str("FLEET_DB_ADMIN_URL"), app_password=env_secret("FLEET_DB_PASSWORD"),
                      ingest_password=env_secret("FLEET_INGEST_DB_PASSWORD"), log=_say)
    _say("roles and database are in place")
    return 0


def cmd_db_status(args: argparse.Namespace) -> int:
    with _database_url(migrate=False) as url:  # show what `migrate` would do, not what it did
        conn = db.connect(url, application_name="fleetctl-status")
        try:
            rows = migrations.status(conn)
        finally:
            conn.close()
    for filename, state in rows:
        print(f"{filename:<40} {state}")
    return 0


def cmd_db_psql(args: argparse.Namespace) -> int:
    """psql on the running stack's database (an interactive session would keep a temporary server, and with it
    the data directory, from `make run`: so none is started)."""
    from fleetctl.postgres import bin_dir
    with _database_url(start=False) as url:
        return subprocess.call([str(bin_dir() / "psql"), url, *args.psql_args])


def cmd_production_env(args: argparse.Namespace) -> int:
    from fleetctl import production
    return production.main()


def cmd_check_env(args: argparse.Namespace) -> int:
    from fleetctl import production
    return production.check_main(args.path)


def _admin_password() -> str:
    """FLEET_ADMIN_PASSWORD or FLEET_ADMIN_PASSWORD_FILE; asked for (twice) when neither is set on a terminal."""
    if os.environ.get("FLEET_ADMIN_PASSWORD") or os.environ.get("FLEET_ADMIN_PASSWORD_FILE") \
            or not sys.stdin.isatty():
        return env_secret("FLEET_ADMIN_PASSWORD", min_length=1)  # the length rule is the operators' (api/passwords.py)
    password = getpass.getpass("Password of the operator 'admin': ")
    if getpass.getpass("The same again: ") != password:
        raise ConfigError("the two passwords differ; nothing was created")
    return password


def cmd_create_admin(args: argparse.Namespace) -> int:
    """Create the operator 'admin' unless an admin exists (DATABASE_URL, or the embedded database)."""
    from api import first_admin, passwords
    password = _admin_password()
    first_admin.check_password(password)  # before a database is even started
    hash_cost = passwords.hash_cost()
    with _database_url() as url:
        created = first_admin.create(url, password, hash_cost)
    _say("created the operator 'admin'" if created else "an admin exists already; nothing to do")
    return 0


def cmd_enroll_bulk(args: argparse.Namespace) -> int:
    """Create vehicles with enrollment tokens (DATABASE_URL + FLEET_DEVICE_SECRET_KEY, or the embedded stack)."""
    from fleetctl import enroll
    if os.environ.get("DATABASE_URL"):
        key = env_secret("FLEET_DEVICE_SECRET_KEY", min_length=32)
    else:
        from fleetctl import localsecrets
        key = localsecrets.load_or_create(paths.state_dir() / "secrets.env")[0]["FLEET_DEVICE_SECRET_KEY"]
    try:
        with _database_url() as url:
            enrollments = enroll.enroll_bulk(url, key, fleet_id=args.fleet, count=args.count, prefix=args.prefix,
                                             start=args.start, token_ttl_s=args.ttl_hours * 3600,
                                             create_fleet=args.create_fleet)
    except Exception as exc:  # noqa: BLE001 - one clear line for the operator (nothing was created)
        _say(f"error: nothing was created: {exc}")
        return 1
    enroll.write_csv(enrollments, args.out)
    if args.out != "-":
        _say(f"created {len(enrollments)} vehicles in fleet {args.fleet} "
             f"({enrollments[0].vehicle_id} … {enrollments[-1].vehicle_id}); tokens in {args.out}")
    return 0


def cmd_fleet_ca(args: argparse.Namespace) -> int:
    """Make the fleet CA for certificate identity (production; the embedded stack makes its own in var/certs)."""
    from pathlib import Path

    from fleetcore import certificates
    directory = Path(args.dir)
    if not certificates.create_ca(directory, args.name):
        _say(f"{directory}/{certificates.CA_CERT_FILE} and {certificates.CA_KEY_FILE} exist already; nothing to do")
        return 0
    key = directory / certificates.CA_KEY_FILE
    if args.owner_uid is not None:
        try:
            os.chown(key, args.owner_uid, -1)
        except PermissionError:
            _say(f"warning: cannot give {key} to uid {args.owner_uid} (needs root): "
                 f"sudo chown {args.owner_uid} '{key}'")
    _say(f"created the fleet CA {directory}/{certificates.CA_CERT_FILE} (for the broker's mTLS listener) and its "
         f"key {key} (mode 0600: for authsvc only)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleetctl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start the embedded stack in the foreground").set_defaults(func=cmd_run)
    sub.add_parser("env", help="print the running stack's addresses as shell variables: "
                   'eval "$(fleetctl env)" sets API, MQTT_HOST, MQTT_PORT and ADMIN_PW').set_defaults(func=cmd_env)
    dbp = sub.add_parser("db", help="database commands").add_subparsers(dest="db_command", required=True)
    dbp.add_parser("migrate", help="apply pending migrations and changed code files of sql/code/ (DATABASE_URL, "
                   "or the embedded database: the running stack's, else started for this command)"
                   ).set_defaults(func=cmd_db_migrate)
    dbp.add_parser("bootstrap", help="create roles and database (FLEET_DB_ADMIN_URL, FLEET_DB_PASSWORD, "
                   "FLEET_INGEST_DB_PASSWORD)").set_defaults(func=cmd_db_bootstrap)
    dbp.add_parser("status", help="list migrations and code files and whether they are applied"
                   ).set_defaults(func=cmd_db_status)
    psql = dbp.add_parser("psql", help="open psql on the database (DATABASE_URL, or the running stack's)")
    psql.add_argument("psql_args", nargs=argparse.REMAINDER)
    psql.set_defaults(func=cmd_db_psql)
    sub.add_parser("create-admin", help="create the operator 'admin' unless an admin exists, with the password "
                   "from FLEET_ADMIN_PASSWORD or FLEET_ADMIN_PASSWORD_FILE (asked for on a terminal); DATABASE_URL, "
                   "or the embedded database").set_defaults(func=cmd_create_admin)
    sub.add_parser("production-env", help="print a .env for docker-compose.yml with fresh random secrets "
                   "(fleetctl production-env > .env)").set_defaults(func=cmd_production_env)
    check = sub.add_parser("check-env", help="check a .env for docker-compose.yml: every variable present, no "
                           "placeholder left, no value that Compose, EMQX's HOCON, a database URL or EMQX's API key "
                           "file would break or change (names the variable, never shows the value)")
    check.add_argument("path", nargs="?", default=".env", help="the file to check (default .env)")
    check.set_defaults(func=cmd_check_env)
    bulk = sub.add_parser("enroll-bulk", help="create vehicles with one-time enrollment tokens, written to a CSV "
                          "(vehicle_id,fleet_id,enrollment_token,expires_at)")
    bulk.add_argument("--fleet", required=True, help="fleet id")
    bulk.add_argument("--count", required=True, type=int, help="how many vehicles (1–100000)")
    bulk.add_argument("--prefix", help="vehicle id prefix (default '<fleet>-'); ids are <prefix>0001, …")
    bulk.add_argument("--start", type=int, default=1, help="first number (default 1)")
    bulk.add_argument("--ttl-hours", type=int, default=24, help="token validity in hours (default 24)")
    bulk.add_argument("--create-fleet", action="store_true", help="create the fleet if it does not exist")
    bulk.add_argument("--out", required=True, help="CSV file to write (mode 0600), or - for standard output")
    bulk.set_defaults(func=cmd_enroll_bulk)
    ca = sub.add_parser("fleet-ca", help="make the fleet CA that signs vehicles' client certificates (fleet-ca.pem, "
                        "fleet-ca.key with mode 0600) unless it exists; docs/OPERATIONS.md, Certificate identity")
    ca.add_argument("dir", nargs="?", default="fleet-ca", help="where (default ./fleet-ca, as docker-compose.yml "
                    "mounts it)")
    ca.add_argument("--name", default="Fleet vehicle CA", help="the CA's common name")
    ca.add_argument("--owner-uid", type=int, help="give the key to this uid (authsvc's container runs as 10001)")
    ca.set_defaults(func=cmd_fleet_ca)
    argv = sys.argv[1:] if argv is None else argv
    # Everything after `db psql` goes to psql untouched (argparse would read `-c` as its own option).
    passthrough: list[str] = []
    if argv[:2] == ["db", "psql"]:
        argv, passthrough = argv[:2], argv[2:]
    args = parser.parse_args(argv)
    if passthrough:
        args.psql_args = passthrough
    from fleetctl.postgres import PostgresError
    from fleetctl.stack import StackError
    try:
        return args.func(args)
    except (ConfigError, migrations.MigrationError, CommandError, embedded.StateDirInUse, PostgresError,
            StackError) as exc:
        _say(f"error: {exc}")
        return 2
    except psycopg2.OperationalError as exc:
        _say(f"error: cannot use the database: {str(exc).strip().splitlines()[0]}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
