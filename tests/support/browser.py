"""A real browser for the tests: Debian's chromium, driven headless through chromium-driver by selenium.

Nothing is downloaded from the internet at test time: ``browser_paths()`` finds ``chromium`` and ``chromedriver``
on the machine and, when they are missing and the tests run as root on Debian (a fresh CI machine), installs the
two packages with apt-get first — as tests/test_postman.py installs newman. Without them (not root, no apt) the
test is skipped, and under CI=true it fails (tests/support/required.py). Parallel test workers take turns: one
installs under a lock while the other waits (apt-get refuses to run twice at once), then finds them installed.
Each browser gets a new profile in a temporary directory of its own (chromedriver's default).
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from fleetcore import paths
from tests.support.required import missing

PACKAGES = ("chromium", "chromium-driver")
WINDOW = (1440, 900)


def _found() -> tuple[str, str] | None:
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver), installing Debian's packages first when they are missing and we may."""
    found = _found()
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        missing(f"chromium and chromedriver are not installed (apt-get install {' '.join(PACKAGES)}, as root)")
    lock_path = paths.PROJECT_ROOT / "var" / "browser-install.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # released when the file is closed
        installed = _found()               # by another worker while this one waited
        if installed:
            return installed
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = [apt, "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
        done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:   # a fresh machine has no package lists yet
            subprocess.run([apt, "update", "-q"], capture_output=True, text=True, env=env, timeout=600)
            done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, f"apt-get install {' '.join(PACKAGES)} failed:\n{done.stderr[-3000:]}"
    found = _found()
    assert found, "chromium or chromedriver is still not on PATH after installing them"
    return found


def start_browser(download_dir: Path | None = None):
    """A headless chromium (a new profile each time); the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}", "--disable-extensions", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if download_dir is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(download_dir)})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)
