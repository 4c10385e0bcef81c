"""bcrypt's cost for operator passwords is a setting (``API_PASSWORD_HASH_COST``, api/passwords.py): production keeps
bcrypt's default, 12, and the tests' stacks use the lowest, 4 (tests/conftest.py), because they log in hundreds of
times. The first admin (made by the launcher) and users made over the API get it; a hash keeps the cost it was
made with, so a login still checks an older, costlier hash."""
from __future__ import annotations

import bcrypt
import pytest

from api import create_app, passwords
from api.auth import check_password, hash_password
from api.config import ApiConfig
from fleetcore.config import ConfigError
from tests.support.database import rows
from tests.support.operators import ApiClient, unique


def cost_of(password_hash: str) -> int:
    return int(password_hash.split("$")[2])


def test_production_keeps_bcrypts_default_cost():
    assert passwords.DEFAULT_HASH_COST == 12
    assert passwords.hash_cost({}) == 12
    env = {"DATABASE_URL": "postgresql://x@127.0.0.1/x", "FLEET_EMQX_API_URL": "http://127.0.0.1:1",
           "FLEET_EMQX_API_KEY": "k", "FLEET_EMQX_API_SECRET": "s" * 16, "FLEET_JWT_SECRET": "j" * 32,
           "FLEET_DEVICE_SECRET_KEY": "d" * 32}
    assert ApiConfig.from_env(env).password_hash_cost == 12
    assert ApiConfig.from_env(env | {"API_PASSWORD_HASH_COST": "10"}).password_hash_cost == 10


@pytest.mark.parametrize("cost", ["3", "32"])
def test_a_cost_bcrypt_refuses_stops_the_start(cost):
    with pytest.raises(ConfigError, match="API_PASSWORD_HASH_COST must be from 4 to 31"):
        passwords.hash_cost({"API_PASSWORD_HASH_COST": cost})
    config = ApiConfig(database_url="postgresql://x@127.0.0.1/x", emqx_api_url="http://127.0.0.1:1",
                       emqx_api_key="k", emqx_api_secret="s" * 16, jwt_secret="j" * 32,
                       device_secret_key="d" * 32, password_hash_cost=int(cost))
    with pytest.raises(ConfigError, match="API_PASSWORD_HASH_COST"):
        create_app(config)


def test_the_test_stack_hashes_at_the_configured_cost(stack, admin, api_url):
    [first_admin] = rows(stack.database_url, "SELECT password_hash FROM users WHERE username = 'admin'")
    assert cost_of(first_admin["password_hash"]) == 4
    username = unique("cost")
    response = admin.post("/api/v1/users", json={"username": username, "password": "correct horse battery 4",
                                                 "role": "viewer", "fleets": []})
    assert response.status_code == 201, response.text
    [made] = rows(stack.database_url, "SELECT password_hash FROM users WHERE username = %s", (username,))
    assert cost_of(made["password_hash"]) == 4
    ApiClient(api_url).login(username, "correct horse battery 4")


def test_a_hash_keeps_its_own_cost(stack, admin, api_url):
    """A password hashed at another cost (before the setting changed) still logs in."""
    username = unique("cost")
    response = admin.post("/api/v1/users", json={"username": username, "password": "correct horse battery 5",
                                                 "role": "viewer", "fleets": []})
    assert response.status_code == 201, response.text
    older = hash_password("correct horse battery 5", 5)
    assert cost_of(older) == 5 and check_password("correct horse battery 5", older)
    assert bcrypt.checkpw(b"correct horse battery 5", older.encode())
    assert rows(stack.database_url, "UPDATE users SET password_hash = %s WHERE username = %s RETURNING id",
                (older, username)) == [{"id": response.json()["id"]}]
    ApiClient(api_url).login(username, "correct horse battery 5")
