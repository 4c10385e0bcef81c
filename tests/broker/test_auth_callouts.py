"""HTTP authn/authz callouts: the exact requests EMQX would send, and how EMQX reads the answers (docs/EMQX.md §3–4).

The HTTP server is an aiohttp app inside the test that records each request and answers what the test scripted,
so these tests pin the broker side of the contract independently of authsvc.
"""
from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from aiohttp import web

from emqx.standin.authn import Authenticator
from emqx.standin.authz import Authorizer
from emqx.standin.clientinfo import ClientInfo, PeerCert
from emqx.standin.config import ConfigError, load_config
from fleetcore import paths
from tests.broker.compat_support import FakeAuthService, conf_from
from tests.conftest import free_port

TOKEN = "tok-123"


def production_config(port: int, **extra_env: str):
    """emqx/emqx.conf with the same overrides fleetctl's broker_env() sets for the auth calls."""
    header = f'{{"x-fleet-broker-token" = "{TOKEN}"}}'
    env = {"EMQX_AUTHENTICATION__1__URL": f"http://127.0.0.1:{port}/mqtt/authn",
           "EMQX_AUTHENTICATION__1__HEADERS": header,
           "EMQX_AUTHORIZATION__SOURCES__1__URL": f"http://127.0.0.1:{port}/mqtt/authz",
           "EMQX_AUTHORIZATION__SOURCES__1__HEADERS": header, **extra_env}
    return load_config(paths.emqx_conf(), env)


def vehicle(**kw: Any) -> ClientInfo:
    base = {"clientid": "veh-7", "username": "veh-7", "password": b"s3cret", "peerhost": "127.0.0.9",
            "peerport": 50123, "client_attrs": {"role": "vehicle", "fleet": "north"}}
    base.update(kw)
    return ClientInfo(**base)


def run(coro):
    return asyncio.run(coro)


# -- authentication ---------------------------------------------------------------------------------------

def test_authn_request_is_exactly_what_emqx_sends():
    async def scenario():
        async with FakeAuthService() as svc:
            svc.reply = lambda r: web.json_response(
                {"result": "allow", "is_superuser": False, "client_attrs": {"role": "vehicle", "fleet": "north"}})
            auth = Authenticator(production_config(svc.port).authentication)
            await auth.start()
            result = await auth.authenticate(vehicle(client_attrs={}))
            await auth.stop()
            return svc.requests, result

    requests, result = run(scenario())
    assert result.allow and result.reason == "success" and result.is_superuser is False
    assert result.client_attrs == {"role": "vehicle", "fleet": "north"}
    [req] = requests
    assert (req["method"], req["path"]) == ("POST", "/mqtt/authn")
    assert req["headers"]["content-type"] == "application/json"
    assert req["headers"]["x-fleet-broker-token"] == TOKEN
    # no client certificate: EMQX renders the unset cert_* variables as "" (docs/EMQX.md §3.1)
    assert req["json"] == {"clientid": "veh-7", "username": "veh-7", "password": "s3cret", "peerhost": "127.0.0.9",
                           "cert_common_name": "", "cert_pem": ""}


def test_authn_request_carries_the_verified_client_certificate():
    """On the mTLS listener: ${cert_common_name} is the certificate's CN and ${cert_pem} the base64 of its DER (as
    EMQX 5.10.4 renders it), and an absent password is "" (docs/EMQX.md §3.1)."""
    async def scenario():
        async with FakeAuthService() as svc:
            svc.reply = lambda r: web.Response(status=204)
            auth = Authenticator(production_config(svc.port).authentication)
            await auth.start()
            cert = PeerCert(common_name="veh-7", subject="CN=veh-7", der=b"\x30\x82der-bytes")
            result = await auth.authenticate(vehicle(password=None, peercert=cert, listener="ssl:mtls"))
            await auth.stop()
            return svc.requests, result

    requests, result = run(scenario())
    assert result.allow
    [req] = requests
    assert req["json"] == {"clientid": "veh-7", "username": "veh-7", "password": "", "peerhost": "127.0.0.9",
                           "cert_common_name": "veh-7", "cert_pem": base64.b64encode(b"\x30\x82der-bytes").decode()}


@pytest.mark.parametrize("answer, allow, reason", [
    (lambda r: web.json_response({"result": "deny"}), False, "not_authorized"),
    (lambda r: web.json_response({"result": "ignore"}), False, "not_authorized"),
    (lambda r: web.json_response({"is_superuser": True}), False, "not_authorized"),          # no result → ignore
    (lambda r: web.json_response({"result": "maybe"}), False, "not_authorized"),
    (lambda r: web.Response(status=204), True, "success"),
    (lambda r: web.json_response({"result": "allow"}, status=401), False, "not_authorized"),  # non-2xx → ignore
    (lambda r: web.json_response({"result": "allow"}, status=500), False, "not_authorized"),
    (lambda r: web.Response(text='{"result": "allow"}', content_type="text/plain"), False, "not_authorized"),
    (lambda r: web.Response(text="result=allow&is_superuser=true",
                            content_type="application/x-www-form-urlencoded"), True, "success"),
    (lambda r: web.json_response({"result": "allow", "is_superuser": "true"}), True, "success"),
])
def test_authn_answers(answer, allow, reason):
    async def scenario():
        async with FakeAuthService() as svc:
            svc.reply = answer
            auth = Authenticator(production_config(svc.port).authentication)
            result = await auth.authenticate(vehicle())
            await auth.stop()
            return result

    result = run(scenario())
    assert (result.allow, result.reason) == (allow, reason)


def test_authn_superuser_flag_and_form_body():
    async def scenario():
        async with FakeAuthService() as svc:
            svc.reply = lambda r: web.json_response({"result": "allow", "is_superuser": True})
            auth = Authenticator(production_config(svc.port).authentication)
            result = await auth.authenticate(vehicle())
            await auth.stop()
            return result

    assert run(scenario()).is_superuser is True


def test_authn_timeout_and_unreachable_mean_ignore_then_not_authorized():
    async def scenario():
        async with FakeAuthService() as svc:
            async def hang(_):
                await svc.never.wait()
                return web.json_response({"result": "allow"})
            svc.reply = hang
            cfg = production_config(svc.port, EMQX_AUTHENTICATION__1__REQUEST_TIMEOUT="200ms")
            auth = Authenticator(cfg.authentication)
            timed_out = await auth.authenticate(vehicle())
            await auth.stop()
        down = Authenticator(production_config(free_port()).authentication)
        unreachable = await down.authenticate(vehicle())
        await down.stop()
        return timed_out, unreachable

    timed_out, unreachable = run(scenario())
    assert (timed_out.allow, timed_out.reason) == (False, "not_authorized")
    assert (unreachable.allow, unreachable.reason) == (False, "not_authorized")


def test_authn_chain_falls_through_ignore_and_empty_chain_allows(tmp_path):
    async def scenario():
        async with FakeAuthService() as svc:
            svc.reply = lambda r: (web.json_response({"result": "ignore"}) if r["path"] == "/first"
                                   else web.json_response({"result": "allow", "client_attrs": {"role": "enrolling"}}))
            body = "".join(f"""{{mechanism = password_based, backend = http, url = "http://127.0.0.1:{svc.port}/{p}"
                               body {{ clientid = "${{clientid}}" }} }},""" for p in ("first", "second"))
            cfg = conf_from(tmp_path, f"authentication = [{body}]")
            auth = Authenticator(cfg.authentication)
            result = await auth.authenticate(vehicle(username=None, password=None))
            await auth.stop()
            anonymous = await Authenticator([]).authenticate(vehicle())
            return svc.requests, result, anonymous

    requests, result, anonymous = run(scenario())
    assert [r["path"] for r in requests] == ["/first", "/second"]
    assert requests[0]["json"] == {"clientid": "veh-7"}
    assert result.allow and result.client_attrs == {"role": "enrolling"}
    assert anonymous.allow                                  # EMQX: no authenticator → anonymous access


def test_authn_get_sends_query_and_undefined_renders_empty(tmp_path):
    async def scenario():
        async with FakeAuthService() as svc:
            svc.reply = lambda r: web.Response(status=204)
            cfg = conf_from(tmp_path, f"""authentication = [{{mechanism = password_based, backend = http,
                method = get, url = "http://127.0.0.1:{svc.port}/auth?c=${{clientid}}", headers {{}},
                body {{ u = "${{username}}", p = "${{password}}", a = "${{client_attrs.role}}" }} }}]""")
            auth = Authenticator(cfg.authentication)
            result = await auth.authenticate(vehicle(username=None, client_attrs={}))
            await auth.stop()
            return svc.requests, result

    [req], result = run(scenario())
    assert result.allow
    assert req["method"] == "GET" and req["raw"] == b""
    assert req["query"] == {"c": "veh-7", "u": "", "p": "s3cret", "a": ""}


# -- authorization ----------------------------------------------------------------------------------------

def test_authz_request_is_exactly_what_emqx_sends_and_cache_hits():
    async def scenario():
        calls = []
        async with FakeAuthService() as svc:
            svc.reply = lambda r: web.json_response({"result": "allow" if r["json"]["action"] == "publish" else "deny"})
            az = Authorizer(production_config(svc.port).authorization,
                            on_authz_complete=lambda *args: calls.append(args[1:]))
            await az.start()
            client = vehicle()
            first = await az.authorize(client, "publish", "fleet/v1/veh-7/telemetry", 1, False)
            second = await az.authorize(client, "publish", "fleet/v1/veh-7/telemetry", 1, False)
            denied = await az.authorize(client, "subscribe", "fleet/v1/#", 0, False)
            n_before_clear = len(svc.requests)
            az.clear_cache("veh-7")
            third = await az.authorize(client, "publish", "fleet/v1/veh-7/telemetry", 1, False)
            await az.stop()
            return svc.requests, (first, second, denied, third), calls, n_before_clear

    requests, results, calls, n_before_clear = run(scenario())
    assert results == (True, True, False, True)
    assert n_before_clear == 2 and len(requests) == 3          # the second publish was a cache hit
    req = requests[0]
    assert (req["method"], req["path"]) == ("POST", "/mqtt/authz")
    assert req["headers"]["x-fleet-broker-token"] == TOKEN
    assert req["headers"]["content-type"] == "application/json"
    assert req["json"] == {"clientid": "veh-7", "username": "veh-7", "topic": "fleet/v1/veh-7/telemetry",
                           "action": "publish", "qos": "1", "retain": "false", "role": "vehicle",
                           "vda": ""}                  # a client without the attribute renders it empty
    assert requests[1]["json"]["action"] == "subscribe" and requests[1]["json"]["topic"] == "fleet/v1/#"
    assert requests[1]["json"]["qos"] == "0"
    assert calls == [("publish", "fleet/v1/veh-7/telemetry", "allow", "http"),
                     ("publish", "fleet/v1/veh-7/telemetry", "allow", "cache"),
                     ("subscribe", "fleet/v1/#", "deny", "http"),
                     ("publish", "fleet/v1/veh-7/telemetry", "allow", "http")]


@pytest.mark.parametrize("answer", [
    lambda r: web.json_response({"result": "ignore"}),
    lambda r: web.json_response({"oops": 1}),
    lambda r: web.json_response({"result": "allow"}, status=403),
    lambda r: web.json_response({"result": "allow"}, status=503),
    lambda r: web.Response(text="allow", content_type="text/html"),
])
def test_authz_nomatch_falls_to_no_match_deny(answer):
    async def scenario():
        sources = []
        async with FakeAuthService() as svc:
            svc.reply = answer
            az = Authorizer(production_config(svc.port).authorization,
                            on_authz_complete=lambda c, a, t, result, source: sources.append((result, source)))
            allowed = await az.authorize(vehicle(), "publish", "fleet/v1/veh-7/status", 1, True)
            await az.stop()
            return allowed, sources

    allowed, sources = run(scenario())
    assert allowed is False and sources == [("deny", "default")]


def test_authz_204_allows_and_cache_can_be_disabled():
    async def scenario():
        async with FakeAuthService() as svc:
            svc.reply = lambda r: (web.Response(status=204) if r["json"]["topic"] == "a"
                                   else web.json_response({"result": "allow"}))
            cfg = production_config(svc.port, EMQX_AUTHORIZATION__CACHE__ENABLE="false")
            az = Authorizer(cfg.authorization)
            results = (await az.authorize(vehicle(), "publish", "a"), await az.authorize(vehicle(), "publish", "b"),
                       await az.authorize(vehicle(), "publish", "a"))
            await az.stop()
            return results, len(svc.requests)

    results, n = run(scenario())
    assert results == (True, True, True) and n == 3                 # cache disabled: every check calls out


def test_authz_timeout_is_ignore_then_no_match_and_superuser_skips():
    async def scenario():
        async with FakeAuthService() as svc:
            async def hang(_):
                await svc.never.wait()
                return web.json_response({"result": "allow"})
            svc.reply = hang
            cfg = production_config(svc.port, EMQX_AUTHORIZATION__SOURCES__1__REQUEST_TIMEOUT="200ms")
            az = Authorizer(cfg.authorization)
            timed_out = await az.authorize(vehicle(), "publish", "x")
            superuser = await az.authorize(vehicle(clientid="admin", is_superuser=True), "subscribe", "#")
            await az.stop()
            return timed_out, superuser, len(svc.requests)

    timed_out, superuser, n = run(scenario())
    assert timed_out is False and superuser is True and n == 1


def test_authz_cache_max_size_ttl_and_forget(tmp_path):
    async def scenario():
        async with FakeAuthService() as svc:
            svc.reply = lambda r: web.json_response({"result": "allow"})
            cfg = production_config(svc.port, EMQX_AUTHORIZATION__CACHE__MAX_SIZE="2",
                                    EMQX_AUTHORIZATION__CACHE__EXCLUDES='["nocache/#"]')
            az = Authorizer(cfg.authorization)
            c = vehicle()
            for topic in ("t1", "t2", "t3", "t1"):              # t1 was evicted by t3 (oldest first)
                await az.authorize(c, "publish", topic)
            after_eviction = len(svc.requests)
            await az.authorize(c, "publish", "t1", qos=1)        # qos is part of the key
            await az.authorize(c, "publish", "nocache/x")
            await az.authorize(c, "publish", "nocache/x")
            excluded = len(svc.requests) - after_eviction
            az.forget("veh-7")
            await az.authorize(c, "publish", "t3")
            forgotten = len(svc.requests)
            cfg.authorization.cache_ttl_s = 0.0                  # every entry is expired at once
            az2 = Authorizer(cfg.authorization)
            await az2.authorize(c, "publish", "t9")
            await az2.authorize(c, "publish", "t9")
            await az.stop()
            await az2.stop()
            return after_eviction, excluded, forgotten, len(svc.requests) - forgotten

    after_eviction, excluded, forgotten, expired_calls = run(scenario())
    assert after_eviction == 4
    assert excluded == 3
    assert forgotten == after_eviction + excluded + 1
    assert expired_calls == 2


# -- ACL rules delivered with the authn answer (EMQX 5.8+ `client_info` source) -----------------------------

def test_authn_acl_is_checked_before_the_sources_and_survives_an_authz_outage():
    acl = [{"permission": "allow", "action": "publish", "topic": "fleet/v1/${clientid}/telemetry"},
           {"permission": "allow", "action": "subscribe", "topics": ["fleet/v1/veh-7/cmd"], "qos": [0, 1]},
           {"permission": "deny", "action": "all", "topic": "eq fleet/v1/#"}]

    async def scenario():
        async with FakeAuthService() as svc:
            svc.reply = lambda r: web.json_response({"result": "allow", "acl": acl,
                                                     "client_attrs": {"role": "vehicle"}})
            config = production_config(svc.port)
            auth = Authenticator(config.authentication)
            await auth.start()
            result = await auth.authenticate(vehicle(client_attrs={}))
            await auth.stop()
        # The auth service is gone now: only the attached rules and no_match decide.
        client = vehicle(acl=result.acl)
        authz = Authorizer(config.authorization)
        await authz.start()
        decisions = [await authz.authorize(client, "publish", "fleet/v1/veh-7/telemetry", 1),
                     await authz.authorize(client, "subscribe", "fleet/v1/veh-7/cmd", 1),
                     await authz.authorize(client, "subscribe", "fleet/v1/veh-7/cmd", 2),
                     await authz.authorize(client, "subscribe", "fleet/v1/#", 1),
                     await authz.authorize(client, "publish", "fleet/v1/veh-8/telemetry", 1)]
        await authz.stop()
        return result, decisions

    result, decisions = run(scenario())
    assert result.allow and len(result.acl) == 3
    assert decisions == [True, True, False, False, False]


@pytest.mark.parametrize("acl", [
    "not-a-list", [{"permission": "maybe", "topic": "a"}], [{"permission": "allow", "action": "read", "topic": "a"}],
    [{"permission": "allow"}], [{"permission": "allow", "topic": "a", "qos": [3]}],
])
def test_a_malformed_authn_acl_fails_the_login(acl):
    async def scenario():
        async with FakeAuthService() as svc:
            svc.reply = lambda r: web.json_response({"result": "allow", "acl": acl})
            auth = Authenticator(production_config(svc.port).authentication)
            await auth.start()
            result = await auth.authenticate(vehicle())
            await auth.stop()
            return result

    result = run(scenario())
    assert not result.allow and result.reason == "bad_username_or_password"


# -- the `file` source (acl.conf) -----------------------------------------------------------------------------

ACL_CONF = """
%% EMQX's own default rules, then ours
{allow, {username, {re, "^dashboard$"}}, subscribe, ["$SYS/#"]}.
{allow, {ipaddr, "127.0.0.1"}, all, ["$SYS/#", "#"]}.
{deny, all, subscribe, ["$SYS/#", {eq, "#"}]}.
{deny, {'and', [{clientid, "veh-7"}, {user, "veh-7"}]}, {publish, [{retain, true}]}, ["fleet/v1/${clientid}/#"]}.
{allow, {clientid, {re, "^veh-"}}, publish, ["fleet/v1/${clientid}/telemetry"]}.
{allow, {'or', [{username, "ops"}, {ipaddrs, ["10.0.0.0/8"]}]}, {subscribe, [{qos, [0, 1]}]}, ["eq fleet/v1/#"]}.
{deny, all}.
"""


def test_file_source_rules_match_in_order_as_emqx_compiles_them(tmp_path):
    (tmp_path / "acl.conf").write_text(ACL_CONF)
    config = conf_from(tmp_path, 'authorization.sources = [{type = file, path = "${EMQX_ETC_DIR}/acl.conf"}]')

    async def decide(client, action, topic, qos=0, retain=False):
        authz = Authorizer(config.authorization)
        return await authz.authorize(client, action, topic, qos, retain)

    def ask(*args, **client):
        return run(decide(vehicle(**client), *args))

    local, remote = {"peerhost": "127.0.0.1"}, {"peerhost": "192.0.2.1"}
    assert ask("subscribe", "$SYS/brokers", username="dashboard", **remote) is True
    assert ask("subscribe", "#", **local) is True                       # the ipaddr rule comes first
    assert ask("subscribe", "#", **remote) is False                     # {eq, "#"}
    assert ask("subscribe", "fleet/#", **remote) is False               # {deny, all} at the end
    assert ask("publish", "fleet/v1/veh-7/telemetry", 1, **remote) is True
    assert ask("publish", "fleet/v1/veh-7/telemetry", 1, True, **remote) is False    # retain: the 'and' rule
    assert ask("publish", "fleet/v1/veh-8/telemetry", 1, clientid="veh-7", **remote) is False
    assert ask("subscribe", "fleet/v1/#", 1, username="ops", **remote) is True
    assert ask("subscribe", "fleet/v1/#", 2, username="ops", **remote) is False      # qos not in [0, 1]
    assert ask("subscribe", "fleet/v1/x", 1, username="ops", **remote) is False      # eq: the filter itself
    assert ask("subscribe", "fleet/v1/#", 0, username="x", peerhost="10.1.2.3") is True


@pytest.mark.parametrize("rule, message", [
    ('{allow, all, all, ["#"]}', "a term must end with '.'"),
    ('{maybe, all}.', "invalid_authorization_rule"),
    ('{maybe, all, all, ["#"]}.', "invalid_authorization_permission"),
    ('{allow, {group, "x"}, all, ["#"]}.', "invalid_client_match_condition"),
    ('{allow, {ipaddr, "300.1.1.1"}, all, ["#"]}.', "invalid_client_match_condition"),
    ('{allow, all, read, ["#"]}.', "invalid_authorization_action"),
    ('{allow, all, {publish, [{qos, 3}]}, ["#"]}.', "invalid_authorization_qos"),
    ('{allow, all, {publish, [{retain, yes}]}, ["#"]}.', "invalid_authorization_retain"),
    ('{allow, all, all, "#"}.', "invalid_authorization_rule"),
    ('{allow, all, all, [#]}.', "cannot read"),
])
def test_an_acl_conf_emqx_would_refuse_stops_the_start(tmp_path, rule, message):
    (tmp_path / "acl.conf").write_text(rule + "\n")
    with pytest.raises(ConfigError, match=message):
        conf_from(tmp_path, 'authorization.sources = [{type = file, path = "${EMQX_ETC_DIR}/acl.conf"}]')
