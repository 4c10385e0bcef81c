"""The operator console in a real browser (Debian's chromium, headless, through chromium-driver), against the
running stack and a simulated vehicle — what an operator does, step by step:

log in; watch the vehicle move on the map; create a mission by clicking waypoints on the map and watch it go
dispatched → accepted → in_progress → completed live; e-stop the vehicle and release it; stop the vehicle and see
the offline alarm appear, and acknowledge it. Also: /docs renders Swagger UI with no internet.

The browser has no route to the internet here, so a page that loaded anything from a CDN would not work. Screenshots
go to ``FLEET_SCREENSHOTS_DIR`` (default: the test's temporary directory); the README's come from
``FLEET_SCREENSHOTS_DIR=docs/images``.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from simulator.api_client import OperatorApi
from simulator.credentials_store import CredentialsStore
from simulator.enrollment import ApiEnroller
from simulator.fleet import Fleet, FleetOptions
from simulator.vehicle import BrokerAddress
from tests.support.browser import start_browser
from tests.support.operators import unique
from tests.support.required import require_components
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def screenshots(tmp_path) -> Path:
    directory = Path(os.environ.get("FLEET_SCREENSHOTS_DIR") or tmp_path / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def browser():
    driver = start_browser()
    yield driver
    driver.quit()


@pytest.fixture
def simulated_vehicle(stack, api_url, admin_password, operator, tmp_path):
    """One simulated vehicle of the operator's fleet, patrolling (so it moves) and executing missions."""
    require_components(stack, "api", "broker", "authsvc", "worker")
    api = OperatorApi(api_url, "admin", admin_password).login()
    vehicle_id = unique("car")
    state_dir = tmp_path / "sim"
    enroller = ApiEnroller(api, operator.fleet)
    enroller.prepare(CredentialsStore(state_dir), [vehicle_id])
    sim = Fleet(FleetOptions(vehicle_ids=[vehicle_id], broker=BrokerAddress("127.0.0.1", stack.config.ports.mqtt),
                             state_dir=state_dir, workers=1, ramp_s=0.0, seed=7, time_scale=3.0,
                             progress_every_s=0.5, status_every_s=2.0, spread_m=50.0),
                renew_token=enroller.new_token)
    sim.start()
    sim.vehicle_id = vehicle_id
    yield sim
    sim.stop()


@pytest.fixture
def quick_offline(admin):
    before = admin.get("/api/v1/alarms/settings").json()
    assert admin.patch("/api/v1/alarms/settings", json={"offline_after_s": 2}).status_code == 200
    yield
    admin.patch("/api/v1/alarms/settings", json={"offline_after_s": before["offline_after_s"]})


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def vehicle_in_console(driver, vehicle_id: str) -> dict | None:
    return js(driver, "const v = window.fleetConsole.state.vehicles.get(arguments[0]); return v ? {...v} : null;",
              vehicle_id)


def mission_transitions(driver, mission_id: str) -> list[str]:
    return js(driver, "return window.fleetConsole.state.transitions.filter(t => t.mission_id === arguments[0])"
                      ".map(t => t.to_state);", mission_id)


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def click(driver, css: str) -> None:
    """Click the element as a user does (the console redraws lists in place, but retry if it was replaced)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    def clicked() -> bool:
        try:
            found = driver.find_elements(By.CSS_SELECTOR, css)
            if found:
                found[0].click()
            return bool(found)
        except StaleElementReferenceException:
            return False
    wait_until(clicked, timeout=15, message=f"no element {css} to click")


def text_of(driver, css: str) -> str:
    return js(driver, "const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : '';", css)


def attribute(driver, css: str, name: str) -> str | None:
    return js(driver, "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
              css, name)


def test_an_operator_follows_a_vehicle_and_its_mission_live(stack, api_url, operator, simulated_vehicle, browser,
                                                            screenshots, quick_offline):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = browser
    vehicle_id = simulated_vehicle.vehicle_id
    wait_until(lambda: simulated_vehicle.snapshot().states.get("online", 0) == 1, 30, message="vehicle not online")

    # log in as the fleet's operator
    driver.get(f"{api_url}/console/")
    wait_until(lambda: driver.find_element(By.ID, "login-username").is_displayed(), 15)
    driver.find_element(By.ID, "login-username").send_keys(operator.username)
    driver.find_element(By.ID, "login-password").send_keys(operator.password)
    driver.find_element(By.ID, "login-submit").click()
    wait_until(lambda: text_of(driver, "#live-status") == "live", 15, message="the console never went live")
    assert operator.username in text_of(driver, "#whoami")

    # the vehicle appears on the map and moves there, live
    first = wait_until(lambda: (v := vehicle_in_console(driver, vehicle_id)) and v["lat"] is not None and v,
                       20, message="the vehicle never appeared in the console")
    marker = f'.vehicle-marker[data-vehicle-id="{vehicle_id}"]'
    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, marker), 10, message="no marker on the map")
    first_position = driver.find_element(By.CSS_SELECTOR, marker).location
    wait_until(lambda: (v := vehicle_in_console(driver, vehicle_id))
               and (v["lat"], v["lon"]) != (first["lat"], first["lon"]), 20, message="the vehicle never moved")
    wait_until(lambda: driver.find_element(By.CSS_SELECTOR, marker).location != first_position, 10,
               message="the marker never moved on the screen")
    assert attribute(driver, marker, "data-look") == "ok"
    click(driver, f'#vehicle-list li[data-vehicle-id="{vehicle_id}"]')
    wait_until(lambda: vehicle_id in text_of(driver, "#detail-body h2"), 10)
    wait_until(lambda: text_of(driver, "#vehicle-online") == "online", 10)
    driver.save_screenshot(str(screenshots / "console-map.png"))

    # a mission by clicking two waypoints on the map
    click(driver, "#new-mission")
    the_map = driver.find_element(By.ID, "map")
    size = the_map.size
    for dx, dy in ((60, -40), (120, 30)):
        ActionChains(driver).move_to_element_with_offset(the_map, dx, dy).click().perform()
    wait_until(lambda: text_of(driver, "#draft-count") == "2", 5, message="the clicks made no waypoints")
    assert driver.find_element(By.ID, "draft-vehicle").get_attribute("value") == vehicle_id
    driver.find_element(By.ID, "draft-name").clear()
    driver.find_element(By.ID, "draft-name").send_keys("browser mission")
    click(driver, "#draft-create")
    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#detail-body h2[data-mission-id]"), 10,
               message="the new mission was not shown")
    mission_id = attribute(driver, "#detail-body h2[data-mission-id]", "data-mission-id")
    mission = operator.get(f"/api/v1/missions/{mission_id}").json()
    assert (mission["name"], mission["vehicle_id"], len(mission["waypoints"])) == ("browser mission", vehicle_id, 2)
    assert size["width"] > 0
    wait_until(lambda: "completed" in mission_transitions(driver, mission_id), 90,
               message=lambda: f"the mission never completed in the console: {mission_transitions(driver, mission_id)}")
    transitions = mission_transitions(driver, mission_id)
    assert transitions[:4] == ["queued", "dispatched", "accepted", "in_progress"], transitions
    assert transitions[-1] == "completed" and set(transitions[4:-1]) <= {"in_progress"}, transitions
    wait_until(lambda: text_of(driver, "#mission-state") == "completed", 5)
    timeline = js(driver, "return [...document.querySelectorAll('#mission-timeline li')]"
                          ".map(li => li.dataset.toState);")
    assert timeline[:4] == ["queued", "dispatched", "accepted", "in_progress"] and timeline[-1] == "completed"
    driver.save_screenshot(str(screenshots / "console-mission.png"))

    # e-stop the vehicle, then release it
    click(driver, ".tabs [data-tab=vehicles]")
    click(driver, f'#vehicle-list li[data-vehicle-id="{vehicle_id}"]')
    click(driver, "#vehicle-estop")
    wait_until(lambda: text_of(driver, "#vehicle-estop-state") == "ACTIVE", 20, message="the e-stop never showed")
    wait_until(lambda: attribute(driver, marker, "data-look") == "bad", 5)
    driver.save_screenshot(str(screenshots / "console-estop.png"))
    click(driver, "#vehicle-release")
    wait_until(lambda: not driver.find_element(By.ID, "modal").get_attribute("hidden"), 5)
    click(driver, "#modal-ok")
    wait_until(lambda: text_of(driver, "#vehicle-estop-state") == "off", 20, message="the release never showed")

    # a fleet e-stop from the top bar: the operator may stop their own fleet (not every fleet), sees the stop in
    # the Stops tab with the vehicle's confirmation, and releases it there
    click(driver, "#fleet-estop")
    wait_until(lambda: not driver.find_element(By.ID, "modal").get_attribute("hidden"), 5)
    scopes = js(driver, "return [...document.querySelectorAll('#modal-scope option')].map(o => o.value);")
    assert scopes == [f"fleet:{operator.fleet}"], scopes
    driver.find_element(By.ID, "modal-reason").send_keys("browser fleet stop")
    driver.find_element(By.ID, "modal-confirm").send_keys("STOP")
    click(driver, "#modal-ok")
    fleet_stop = f'#stop-list li[data-scope="fleet"][data-subject="{operator.fleet}"]'
    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, fleet_stop), 10, message="the fleet stop is not listed")
    assert "browser fleet stop" in text_of(driver, fleet_stop) and operator.username in text_of(driver, fleet_stop)
    assert text_of(driver, "#stop-count") == "1"
    wait_until(lambda: text_of(driver, f"{fleet_stop} .confirmed") == "1/1", 20,
               message=lambda: f"the vehicle never confirmed the fleet stop: {text_of(driver, fleet_stop)}")
    assert vehicle_in_console(driver, vehicle_id)["estop"] is True
    [stored] = operator.get("/api/v1/emergency-stops").json()["items"]
    assert (stored["scope"], stored["fleet_id"], stored["set_by"]) == ("fleet", operator.fleet, operator.username)
    driver.save_screenshot(str(screenshots / "console-stops.png"))
    click(driver, f"{fleet_stop} button[data-release]")
    wait_until(lambda: not driver.find_element(By.ID, "modal").get_attribute("hidden"), 5)
    driver.find_element(By.ID, "modal-confirm").send_keys("RELEASE")
    click(driver, "#modal-ok")
    wait_until(lambda: not driver.find_elements(By.CSS_SELECTOR, fleet_stop), 10, message="the stop stayed listed")
    wait_until(lambda: vehicle_in_console(driver, vehicle_id)["estop"] is False, 20,
               message="the vehicle never reported the release")
    assert operator.get("/api/v1/emergency-stops").json()["items"] == []

    # the admin's view of the broker: the vehicle's MQTT client and the rules' counters
    dashboard = stack.url("emqx_api")
    driver.execute_script("window.open('about:blank', 'dashboard')")
    driver.switch_to.window("dashboard")
    driver.get(f"{dashboard}/")
    driver.find_element(By.ID, "password").send_keys(stack.secrets["FLEET_EMQX_DASHBOARD_PASSWORD"])
    driver.find_element(By.ID, "login-submit").click()
    row = f'#clients tr[data-clientid="{vehicle_id}"]'
    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, row), 15, message="the vehicle's client is not listed")
    assert "127.0.0.1:" in text_of(driver, row)
    wait_until(lambda: int(text_of(driver, '#rules tr[data-rule="fleet_telemetry"] td.num') or 0) > 0, 15,
               message="the telemetry rule matched nothing")
    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, '#actions tr[data-action] td.num'), 10)
    assert text_of(driver, '#auth tr[data-counter="client.auth.success"] td.num') not in ("", "0")
    driver.save_screenshot(str(screenshots / "dashboard.png"))
    driver.close()
    driver.switch_to.window(driver.window_handles[0])

    # the vehicle stops: an offline alarm appears, and the operator acknowledges it
    simulated_vehicle.stop()
    click(driver, ".tabs [data-tab=alarms]")
    alarm = f'#alarm-list li[data-kind="vehicle_offline"][data-subject="{vehicle_id}"]'
    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, alarm), 30, message="no offline alarm in the console")
    assert attribute(driver, alarm, "data-state") == "active"
    wait_until(lambda: attribute(driver, marker, "data-look") == "stale", 20)
    driver.save_screenshot(str(screenshots / "console-alarms.png"))
    click(driver, f"{alarm} button[data-ack]")
    wait_until(lambda: attribute(driver, alarm, "data-state") == "acknowledged",
               10, message="the acknowledgement never showed")
    [stored] = [a for a in operator.get("/api/v1/alarms", params={"vehicle_id": vehicle_id, "state": "open"})
                .json()["items"] if a["kind"] == "vehicle_offline"]
    assert (stored["state"], stored["acknowledged_by"]) == ("acknowledged", operator.username)
    assert console_errors(driver) == []


def test_swagger_ui_renders_without_the_internet(api_url, browser, screenshots):
    from selenium.webdriver.common.by import By

    browser.get(f"{api_url}/docs")
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"), 20,
               message="Swagger UI never rendered")
    assert "Fleet operator API" in browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
    wait_until(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".opblock")) > 20, 10)
    browser.save_screenshot(str(screenshots / "swagger-ui.png"))
    assert console_errors(browser) == []


def test_swagger_ui_authorize_logs_in_through_the_oauth2_token_endpoint(api_url, make_user, browser):
    """Swagger UI's "Authorize" button with an operator's username and password (the OAuth2 password flow,
    api/tokens.py), then "Try it out" on GET /api/v1/auth/me answers 200 for that operator."""
    from selenium.webdriver.common.by import By

    user = make_user("operator")
    browser.get(f"{api_url}/docs")
    click(browser, ".swagger-ui .auth-wrapper .btn.authorize")
    wait_until(lambda: browser.find_elements(By.ID, "oauth_username"), 10, message="no OAuth2 login in the dialog")
    browser.find_element(By.ID, "oauth_username").send_keys(user.username)
    browser.find_element(By.ID, "oauth_password").send_keys(user.password)
    browser.find_element(By.XPATH, "//input[@id='oauth_username']/ancestor::div[contains(@class, 'auth-container')]"
                                   "//button[contains(@class, 'authorize')]").click()
    wait_until(lambda: js(browser, "const a = window.ui.authSelectors.authorized().toJS(); "
                                   "return !!(a.oauth2 && a.oauth2.token && a.oauth2.token.access_token);"), 15,
               message="Swagger UI got no token from the token endpoint")
    click(browser, ".swagger-ui .dialog-ux .btn-done")

    me = "#operations-auth-get_api_v1_auth_me"
    click(browser, f"{me} .opblock-summary")
    click(browser, f"{me} .try-out__btn")
    click(browser, f"{me} .btn.execute")
    status = f"{me} .live-responses-table tr.response .response-col_status"
    wait_until(lambda: text_of(browser, status).startswith("200"), 15,
               message=lambda: f"GET /auth/me answered {text_of(browser, status)!r}")
    assert f'"username": "{user.username}"' in text_of(browser, f"{me} .live-responses-table .microlight")
    assert console_errors(browser) == []
