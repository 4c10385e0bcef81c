"""Rule engine → HTTP action (the registration webhook): request shape, ack after 2xx, retries."""
from __future__ import annotations

import asyncio
import base64
import time
import zlib

import pytest
from aiohttp import web

from emqx.standin.clientinfo import Message
from emqx.standin.config import load_config
from emqx.standin.rules import RuleDeliveryError, RuleEngine
from fleetcore import paths
from tests.broker.compat_support import FakeAuthService, conf_from, eventually

TOKEN = "tok-xyz"


def registration_request(payload: bytes = b'{"v":1,"data":{"enrollment_token":"enr_1"}}') -> Message:
    return Message(id="00AB", clientid="veh-5", username="veh-5", topic="fleet/v1/veh-5/register/request",
                   payload=payload, qos=1, retain=False, publish_received_at=int(time.time() * 1000),
                   peerhost="127.0.0.1", client_attrs={"role": "enrolling"})


def production_rules(port: int):
    return load_config(paths.emqx_conf(), {
        "EMQX_CONNECTORS__HTTP__AUTHSVC__URL": f"http://127.0.0.1:{port}",
        "EMQX_CONNECTORS__HTTP__AUTHSVC__HEADERS": f'{{"x-fleet-broker-token" = "{TOKEN}"}}',
        "EMQX_CONNECTORS__PGSQL__FLEET_DB__SERVER": '"127.0.0.1:1"',
    })


def test_registration_request_is_posted_as_rule_output_json_and_acked_after_200():
    async def scenario():
        async with FakeAuthService() as svc:
            svc.reply = lambda r: web.json_response({"ok": True})
            engine = RuleEngine(production_rules(svc.port))
            await engine.start()
            msg = registration_request()
            await engine.on_publish(msg)
            seen = list(svc.requests)                   # the request was answered before on_publish returned
            metrics = engine.metrics()
            await engine.stop()
            return msg, seen, metrics

    msg, seen, metrics = asyncio.run(scenario())
    [req] = seen
    assert (req["method"], req["path"]) == ("POST", "/mqtt/register")
    assert req["headers"]["x-fleet-broker-token"] == TOKEN
    assert req["headers"]["content-type"] == "application/json"
    assert req["json"] == {"clientid": "veh-5", "username": "veh-5", "topic": "fleet/v1/veh-5/register/request",
                           "payload_b64": base64.b64encode(msg.payload).decode(),
                           "publish_received_at": msg.publish_received_at}
    assert metrics["actions"]["http:registration"]["success"] == 1


def test_503_and_429_are_retried_until_2xx():
    """emqx_bridge_http_connector transform_result: 429 and 503 are recoverable — max_retries at once, then the
    buffer worker retries until request_ttl."""
    async def scenario():
        async with FakeAuthService() as svc:
            answers = iter([503, 429, 503, 503, 200])
            svc.reply = lambda r: web.json_response({}, status=next(answers))
            engine = RuleEngine(production_rules(svc.port))       # max_retries = 2, then buffer retries
            await engine.start()
            await engine.on_publish(registration_request())
            metrics = engine.metrics()
            await engine.stop()
            return len(svc.requests), metrics

    calls, metrics = asyncio.run(scenario())
    assert calls == 5
    action = metrics["actions"]["http:registration"]
    assert (action["success"], action["retried"], action["retried.success"], action["failed"]) == (1, 1, 1, 0)


@pytest.mark.parametrize("status", [500, 502, 504])
def test_other_5xx_fail_the_message_at_once_without_a_retry(status):
    """Any status but 2xx, 429 and 503 is an unrecoverable error for EMQX: counted failed, never sent again."""
    async def scenario():
        async with FakeAuthService() as svc:
            svc.reply = lambda r: web.json_response({}, status=status)
            engine = RuleEngine(production_rules(svc.port))
            await engine.start()
            with pytest.raises(RuleDeliveryError, match=f"HTTP {status}"):
                await engine.on_publish(registration_request())
            metrics = engine.metrics()
            await engine.stop()
            return len(svc.requests), metrics

    calls, metrics = asyncio.run(scenario())
    assert calls == 1
    action = metrics["actions"]["http:registration"]
    assert (action["failed"], action["success"], action["retried"]) == (1, 0, 0)
    assert metrics["rules"]["fleet_registration"]["actions.failed.unknown"] == 1


def test_4xx_fails_the_message():
    async def scenario():
        async with FakeAuthService() as svc:
            svc.reply = lambda r: web.json_response({"error": "no"}, status=400)
            engine = RuleEngine(production_rules(svc.port))
            await engine.start()
            with pytest.raises(RuleDeliveryError, match="HTTP 400"):
                await engine.on_publish(registration_request())
            await engine.stop()
            return len(svc.requests)

    assert asyncio.run(scenario()) == 1


def test_body_template_path_and_headers(tmp_path):
    async def scenario():
        async with FakeAuthService() as svc:
            cfg = conf_from(tmp_path, f"""
connectors.http.hook {{ url = "http://127.0.0.1:{svc.port}/base", headers {{ "X-A" = "1" }}, pool_size = 2 }}
actions.http.hook {{ connector = hook, parameters {{ path = "/v/${{clientid}}", method = put,
  headers {{ "X-Topic" = "${{topic}}" }}, body = "{{\\"c\\":\\"${{clientid}}\\",\\"s\\":${{payload.speed}}}}" }} }}
rule_engine.rules.hook {{ sql = \"\"\"SELECT clientid, topic, payload FROM "t/#" \"\"\", actions = ["http:hook"] }}
""")
            engine = RuleEngine(cfg)
            await engine.start()
            msg = registration_request(b'{"speed": 3}')
            msg.topic = "t/1"
            await engine.on_publish(msg)
            await engine.stop()
            return svc.requests

    [req] = asyncio.run(scenario())
    assert (req["method"], req["path"]) == ("PUT", "/base/v/veh-5")
    assert req["headers"]["x-a"] == "1" and req["headers"]["x-topic"] == "t/1"
    assert req["json"] == {"c": "veh-5", "s": 3}


def test_each_buffer_worker_has_its_own_max_buffer_bytes_and_drops_its_oldest(tmp_path):
    """EMQX runs worker_pool_size buffer workers per action, each with its own buffer of max_buffer_bytes and its own
    in-flight window (docs/EMQX.md §5.6a): a full worker drops its oldest request, another worker's client is not
    held up and loses nothing. A request counts ≈ 500 bytes here (body + 256), so a 1KB buffer holds two; with
    pool_size = 2 a worker has at most two requests in flight."""
    async def scenario():
        async with FakeAuthService() as svc:
            gate = asyncio.Event()

            async def held(_request):
                await gate.wait()
                return web.json_response({})
            svc.reply = held
            cfg = conf_from(tmp_path, f"""
connectors.http.hook {{ url = "http://127.0.0.1:{svc.port}", pool_size = 2 }}
actions.http.hook {{
  connector = hook
  parameters {{ path = "/in", method = post }}
  resource_opts {{ worker_pool_size = 2, max_buffer_bytes = "1KB", request_ttl = "1m" }}
}}
rule_engine.rules.hook {{ sql = \"\"\"SELECT clientid, payload FROM "t/#" \"\"\", actions = ["http:hook"] }}
""")
            engine = RuleEngine(cfg)
            await engine.start()
            action = engine.actions["http:hook"]
            first, second = _clients_on_different_workers(2)

            def publish(clientid: str, n: int) -> asyncio.Task:
                msg = registration_request(f"{n:03d}".encode() + b"x" * 200)
                msg.clientid, msg.topic = clientid, f"t/{clientid}"
                return asyncio.create_task(engine.on_publish(msg))

            tasks = [publish(first, 1), publish(first, 2)]
            await eventually(lambda: len(svc.requests) == 2)            # the first worker's window is full
            tasks.append(publish(second, 1))
            await eventually(lambda: action.inflight() == 3, message="the second worker did not take its request")
            tasks += [publish(first, n) for n in (3, 4, 5)]              # 3 and 4 fill the buffer, 5 pushes 3 out
            stats = await eventually(lambda: action.counters["dropped.queue_full"] == 1 and action.metrics())
            gate.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            delivered = sorted(r["json"]["payload"][:3] for r in svc.requests if r["json"]["clientid"] == first)
            metrics = action.metrics()
            await engine.stop()
            return stats, results, delivered, metrics

    stats, results, delivered, metrics = asyncio.run(scenario())
    assert (stats["queuing"], stats["inflight"]) == (2, 3)
    assert [isinstance(r, RuleDeliveryError) for r in results] == [False, False, False, True, False, False]
    assert "queue_full" in str(results[3])
    assert delivered == ["001", "002", "004", "005"]
    assert (metrics["success"], metrics["dropped"], metrics["dropped.queue_full"]) == (5, 1, 1)


def _clients_on_different_workers(workers: int) -> tuple[str, str]:
    """Two client ids the stand-in puts on different buffer workers (it picks one by crc32 of the client id)."""
    by_worker: dict[int, str] = {}
    for n in range(100):
        by_worker.setdefault(zlib.crc32(f"veh-{n}".encode()) % workers, f"veh-{n}")
    return by_worker[0], by_worker[1]
