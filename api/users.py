"""Operator accounts (admins only): create, list, change role or password, assign fleets, deactivate."""
from __future__ import annotations

from flask_smorest import Blueprint

from api import auth
from api.extensions import config, database
from api.pagination import page_of, window
from api.queries import audit, sessions, users
from api.schemas import PageQuerySchema, UserCreateSchema, UserSchema, UserUpdateSchema, list_of
from fleetcore.errors import HttpError

blp = Blueprint("users", __name__, url_prefix="/api/v1/users", description="Operator accounts (admins only).")


@blp.route("", methods=["GET"])
@auth.requires("admin")
@blp.arguments(PageQuerySchema, location="query")
@blp.response(200, list_of(UserSchema, "UserPage"))
def list_users(args: dict):
    """List operator accounts."""
    limit, offset = window(args)
    with database().transaction() as cur:
        items, total = users.list_users(cur, limit, offset)
    return page_of(items, total, args)


@blp.route("", methods=["POST"])
@auth.requires("admin")
@blp.arguments(UserCreateSchema)
@blp.response(201, UserSchema)
@blp.alt_response(409, response="CONFLICT")
def create_user(body: dict):
    """Create an operator account with a role and fleet memberships (passwords: at least 12 characters)."""
    admin = auth.current_user()
    with database().transaction() as cur:
        if users.username_taken(cur, body["username"]):
            raise HttpError(409, f"username {body['username']!r} is taken")
        missing = users.missing_fleets(cur, body["fleets"])
        if missing:
            raise HttpError(422, "unknown fleets", details={"fleets": missing})
        password_hash = auth.hash_password(body["password"], config().password_hash_cost)
        user_id = users.create_user(cur, body["username"], password_hash, body["role"])
        users.set_fleets(cur, user_id, body["fleets"])
        audit.record(cur, "operator", admin.username, "user.create", "user", str(user_id),
                     {"username": body["username"], "role": body["role"], "fleets": body["fleets"]})
        return users.get_user(cur, user_id)


@blp.route("/<user_id:user_id>", methods=["GET"])
@auth.requires("admin")
@blp.response(200, UserSchema)
@blp.alt_response(404, response="NOT_FOUND")
def get_user(user_id: int):
    """One operator account."""
    with database().transaction() as cur:
        user = users.get_user(cur, user_id)
    if user is None:
        raise HttpError(404, "no such user")
    return user


@blp.route("/<user_id:user_id>", methods=["PATCH"])
@auth.requires("admin")
@blp.arguments(UserUpdateSchema)
@blp.response(200, UserSchema)
@blp.alt_response(404, response="NOT_FOUND")
def update_user(body: dict, user_id: int):
    """Change role, password, active flag or fleets. A new password or deactivation ends the user's sessions."""
    admin = auth.current_user()
    with database().transaction() as cur:
        user = users.get_user(cur, user_id)
        if user is None:
            raise HttpError(404, "no such user")
        demoting_last_admin = user["role"] == "admin" and (
            body.get("role", "admin") != "admin" or body.get("active") is False)
        if demoting_last_admin and users.count_admins(cur, excluding=user_id) == 0:
            raise HttpError(409, "this is the last active admin; create another admin first")
        changes = {k: body[k] for k in ("role", "active") if k in body}
        if "password" in body:
            changes["password_hash"] = auth.hash_password(body["password"], config().password_hash_cost)
        users.update_user(cur, user_id, changes)
        if "fleets" in body:
            missing = users.missing_fleets(cur, body["fleets"])
            if missing:
                raise HttpError(422, "unknown fleets", details={"fleets": missing})
            users.set_fleets(cur, user_id, body["fleets"])
        if "password" in body or body.get("active") is False:
            sessions.revoke_user_sessions(cur, user_id, "account_changed")
        audit.record(cur, "operator", admin.username, "user.update", "user", str(user_id),
                     {k: v for k, v in body.items() if k != "password"} | {"password_changed": "password" in body})
        return users.get_user(cur, user_id)


@blp.route("/<user_id:user_id>", methods=["DELETE"])
@auth.requires("admin")
@blp.response(204)
@blp.alt_response(404, response="NOT_FOUND")
def delete_user(user_id: int):
    """Delete an operator account (its sessions end with it). You cannot delete yourself."""
    admin = auth.current_user()
    if user_id == admin.id:
        raise HttpError(409, "you cannot delete your own account")
    with database().transaction() as cur:
        user = users.get_user(cur, user_id)
        if user is None:
            raise HttpError(404, "no such user")
        if user["role"] == "admin" and users.count_admins(cur, excluding=user_id) == 0:
            raise HttpError(409, "this is the last active admin")
        users.delete_user(cur, user_id)
        audit.record(cur, "operator", admin.username, "user.delete", "user", str(user_id),
                     {"username": user["username"]})
