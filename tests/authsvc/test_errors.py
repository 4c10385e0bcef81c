"""The broker callouts are plain WSGI in front of Flask (authsvc/broker_request.py), yet they answer errors in the
same shape as every Flask route of authsvc and the api (fleetcore/errors.py): ``{code, message, details}``."""
from __future__ import annotations

import logging

from werkzeug.test import Client

from authsvc.broker_request import BrokerCallouts, CalloutUnavailable

TOKEN = "broker-token-" + "x" * 20


def callouts(decide) -> Client:
    return Client(BrokerCallouts(app=None, routes={"/mqtt/authn": decide}, broker_token=TOKEN.encode(),
                                 max_body_bytes=1024))


def post(client: Client, token: str = TOKEN):
    return client.post("/mqtt/authn", data=b"{}", headers={"x-fleet-broker-token": token,
                                                           "Content-Type": "application/json"})


def test_a_bug_in_a_callout_is_a_json_500_with_a_request_id_that_is_logged(caplog):
    def decide(_body: bytes) -> bytes:
        raise ZeroDivisionError("a bug")
    with caplog.at_level(logging.ERROR):
        response = post(callouts(decide))
    assert response.status == "500 Internal Server Error"
    body = response.json
    request_id = body["details"]["request_id"]
    assert body == {"code": "internal_error", "message": f"unexpected server error (request id {request_id}); "
                                                         "it was logged", "details": {"request_id": request_id}}
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "authsvc.unhandled_error"]
    assert record.request_id == request_id and record.path == "/mqtt/authn" and record.exc_info


def test_an_undecidable_callout_is_a_json_503():
    def decide(_body: bytes) -> bytes:
        raise CalloutUnavailable("the credential store is unavailable")
    response = post(callouts(decide))
    assert (response.status_code, response.json) == (503, {"code": "unavailable", "details": {},
                                                           "message": "the credential store is unavailable"})


def test_wrong_token_and_wrong_method_are_json_errors():
    client = callouts(lambda body: b'{"result":"allow"}')
    assert post(client, token="wrong").json["code"] == "unauthorized"
    response = client.get("/mqtt/authn")
    assert (response.status_code, response.headers["Allow"], response.json["code"]) == \
        (405, "POST", "method_not_allowed")
    assert post(client).json == {"result": "allow"}
