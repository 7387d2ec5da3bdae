"""The dashboard in a real headless Chromium, against the real app on a socket (lifespan, embedded worker).

Without ``chromium``/``chromedriver`` these tests skip, except under ``CI=true`` where they fail (``make browser``
installs both). Screenshots of every view go to ``$ATELIER_TEST_ARTIFACTS`` (default ``test-artifacts/dashboard/``
under the repository); a failing test also leaves its screenshot, page source and browser console there.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar, cast

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from atelier.app import create_app
from atelier.core.auth import Role, mint_token
from atelier.core.migrate import upgrade
from atelier.settings import AuthSettings, Settings
from tests.conftest import data_url, make_settings, scripted_registry
from tests.engine.test_workflows_e2e import generate
from tests.fakes.server import serve

REPO = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 30.0  # the longest any DOM condition is waited for (polled, never slept)
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)
ADJUST = {"task_type": "IMAGE_ADJUSTER", "input_image": data_url((64, 48), "red"), "aspect_ratio": 1, "mode": "pad"}

T = TypeVar("T")


# ------------------------------------------------------------------------------------------------ plumbing


def unavailable(reason: str) -> NoReturn:
    """Skip locally; in CI (``CI=true``) the browser tests must run, so fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true requires the browser tests (run `make browser`)", pytrace=False)
    pytest.skip(reason)


def browser_binaries() -> tuple[str, str]:
    """Paths of Chromium and its driver (PATH first, then Debian's locations)."""
    chromium = next(
        (
            p
            for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
            if p and os.access(p, os.X_OK)
        ),
        None,
    )
    driver = next(
        (p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver") if p and os.access(p, os.X_OK)), None
    )
    if chromium is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", chromium), ("chromedriver", driver)) if p is None)
        unavailable(f"{missing} not installed (apt-get install chromium chromium-driver)")
    return chromium, driver


def artifacts_dir() -> Path:
    """Where screenshots go (created on demand)."""
    folder = Path(os.environ.get("ATELIER_TEST_ARTIFACTS") or REPO / "test-artifacts" / "dashboard")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shot(driver: webdriver.Chrome, name: str) -> Path:
    """Save a screenshot of the current view as an artifact."""
    path = artifacts_dir() / f"{name}.png"
    size = driver.get_window_size()
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(size["width"], max(size["height"], min(height + 150, 6000)))  # the whole page
    try:
        assert driver.save_screenshot(str(path)), path
    finally:
        driver.set_window_size(size["width"], size["height"])
    return path


def wait(driver: webdriver.Chrome, condition: Callable[[webdriver.Chrome], T | Literal[False] | None], what: str) -> T:
    """Poll ``condition`` until it returns something truthy (its value), for at most WAIT_SECONDS."""
    try:
        # The page redraws what changed at each poll, so an element found a moment ago may be gone: look again.
        waiter = WebDriverWait(
            driver, WAIT_SECONDS, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
        )
        result = cast(T, waiter.until(condition, message=what))
    except TimeoutException:
        shot(driver, "timeout-" + "".join(c if c.isalnum() else "-" for c in what)[:60])
        raise
    return result


def css(driver: webdriver.Chrome, selector: str) -> list[WebElement]:
    """Elements matching ``selector``."""
    return driver.find_elements(By.CSS_SELECTOR, selector)


def click(driver: webdriver.Chrome, selector: str, what: str) -> None:
    """Click the first element matching ``selector`` (found again if a redraw replaced it)."""

    def attempt(d: webdriver.Chrome) -> bool:
        found = css(d, selector)
        if not found:
            return False
        found[0].click()
        return True

    wait(driver, attempt, what)


def js(driver: webdriver.Chrome, script: str) -> Any:
    """Run ``script`` in the page (reads there are atomic: no stale elements)."""
    return driver.execute_script(script)


def console_log(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """Browser console entries since the last call (selenium leaves ``get_log`` untyped)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return entries


def visible(driver: webdriver.Chrome, element_id: str) -> WebElement | None:
    """The element when it is displayed."""
    found = driver.find_elements(By.ID, element_id)
    return found[0] if found and found[0].is_displayed() else None


def stored_token(driver: webdriver.Chrome) -> Any:
    """The token the page keeps in sessionStorage."""
    return driver.execute_script("return window.sessionStorage.getItem('atelier.dashboard.token')")


@dataclass
class Site:
    """The app on a real port, with a service token of tenant ``acme``."""

    url: str
    token: str
    settings: Settings

    @property
    def headers(self) -> dict[str, str]:
        """Authorization header of ``token``."""
        return {"Authorization": f"Bearer {self.token}"}

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the API and return the accepted body."""
        response = httpx.post(f"{self.url}{path}", json=body, headers=self.headers, timeout=30)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def binaries() -> tuple[str, str]:
    """Chromium and chromedriver, or a skip (a failure under CI=true)."""
    return browser_binaries()


@pytest.fixture(scope="module")
def site(binaries: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The real app (lifespan: runtime, embedded worker, reaper) with the scripted test providers."""
    settings = make_settings(tmp_path_factory.mktemp("dashboard") / "data")
    upgrade(settings.database_url)
    token = mint_token(settings.auth, tenant="acme", role=Role.SERVICE)
    with serve(create_app(settings, providers=scripted_registry()), lifespan=True) as url:
        yield Site(url, token, settings)


@pytest.fixture(scope="module")
def chrome(binaries: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the module (a fresh profile in tmp)."""
    chromium, chromedriver = binaries
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chrome: webdriver.Chrome, site: Site, request: pytest.FixtureRequest) -> Iterator[webdriver.Chrome]:
    """The browser on a fresh, logged-out dashboard; leaves evidence when the test fails and checks the console."""
    chrome.get(f"{site.url}/dashboard/")
    chrome.execute_script("window.sessionStorage.clear()")
    chrome.get(f"{site.url}/dashboard/#/overview")
    chrome.refresh()
    wait(chrome, lambda d: visible(d, "view-login"), "the login form")
    console_log(chrome)  # drop what came before this test
    failed_before = request.session.testsfailed
    yield chrome
    console = console_log(chrome)
    if request.session.testsfailed > failed_before:
        name = "FAILED-" + request.node.name
        shot(chrome, name)
        (artifacts_dir() / f"{name}.html").write_text(chrome.page_source, encoding="utf-8")
        (artifacts_dir() / f"{name}.console.json").write_text(json.dumps(console, indent=2), encoding="utf-8")
        return
    # Refused requests (401s) are logged by the browser as failed loads; anything else severe is a bug
    # (an exception in app.js, a blocked resource, a CSP violation).
    severe = [
        e for e in console if e.get("level") == "SEVERE" and "Failed to load resource" not in e.get("message", "")
    ]
    assert not severe, severe


def log_in(driver: webdriver.Chrome, token: str) -> None:
    """Paste ``token`` into the login form and submit it."""
    field = wait(driver, lambda d: visible(d, "token-input"), "the token field")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.ID, "login-submit").click()


def open_view(driver: webdriver.Chrome, name: str) -> WebElement:
    """Click a navigation link and wait for its view."""
    driver.find_element(By.ID, f"nav-{name}").click()
    return wait(driver, lambda d: visible(d, f"view-{name}"), f"the {name} view")


@pytest.fixture
def logged_in(browser: webdriver.Chrome, site: Site) -> webdriver.Chrome:
    """The browser logged in with the service token, on the queues-and-workers view."""
    log_in(browser, site.token)
    wait(browser, lambda d: visible(d, "view-overview"), "the overview after login")
    assert stored_token(browser) == site.token
    return browser


# ------------------------------------------------------------------------------------------------ tests


def test_a_wrong_token_shows_the_login_error(browser: webdriver.Chrome) -> None:
    forged = mint_token(AuthSettings(secret_key="another-key-" * 4), tenant="acme", role=Role.SERVICE)
    log_in(browser, forged)
    error = wait(browser, lambda d: visible(d, "login-error"), "the login error")
    assert "refused" in error.text
    assert "invalid token" in error.text  # the server's reason, shown as text
    assert visible(browser, "view-login") is not None
    assert visible(browser, "topbar") is None
    assert stored_token(browser) is None
    shot(browser, "01-login-error")


def test_queues_and_workers_are_shown_live(logged_in: webdriver.Chrome, site: Site) -> None:
    driver = logged_in
    health = wait(driver, lambda d: css(d, "#health-status[data-healthy]"), "worker health")[0]
    assert health.get_attribute("data-healthy") == "true", health.text
    queues = wait(driver, lambda d: css(d, "[data-testid=queue-row]"), "queue rows")
    assert "inference" in {q.get_attribute("data-queue") for q in queues}
    workers = wait(driver, lambda d: css(d, "[data-testid=worker-row]"), "worker rows")
    assert len(workers) == 1  # the embedded worker
    assert "tenant acme" in driver.find_element(By.ID, "identity").text
    first = driver.find_element(By.ID, "overview-updated").text
    wait(driver, lambda d: d.find_element(By.ID, "overview-updated").text != first, "the next poll")
    shot(driver, "02-queues-and-workers")


def test_a_task_reaches_completed_and_its_detail_shows_the_images(logged_in: webdriver.Chrome, site: Site) -> None:
    driver = logged_in
    open_view(driver, "tasks")
    task_id = site.post("/api/v1/tasks/", ADJUST)["id"]  # submitted while the list is on screen

    row = f"[data-testid=task-row][data-task-id='{task_id}']"
    wait(driver, lambda d: css(d, f"{row}[data-status=COMPLETED]"), "the task COMPLETED in the list")
    badge = js(
        driver,
        f'const b = document.querySelector("{row} [data-testid=status-badge]"); return [b.textContent, b.className]',
    )
    assert badge == ["COMPLETED", "badge status-COMPLETED"]
    shot(driver, "03-tasks")

    # Search by id prefix: only this task is left.
    search = driver.find_element(By.ID, "filter-search")
    search.send_keys(task_id[:8], Keys.ENTER)
    wait(
        driver,
        lambda d: (
            (rows := css(d, "[data-testid=task-row]")) and all(r.get_attribute("data-task-id") == task_id for r in rows)
        ),
        "the search result",
    )
    assert driver.find_element(By.ID, "tasks-page-info").text.endswith("· 1 task")
    shot(driver, "04-tasks-search")

    # A status filter applies on change: FAILED hides the task, COMPLETED shows it again.
    Select(driver.find_element(By.ID, "filter-status")).select_by_value("FAILED")
    wait(driver, lambda d: visible(d, "tasks-empty") and not css(d, "[data-testid=task-row]"), "no FAILED task")
    Select(driver.find_element(By.ID, "filter-status")).select_by_value("COMPLETED")
    wait(driver, lambda d: css(d, row), "the task among the COMPLETED ones")

    click(driver, f"{row} [data-testid=task-link]", "the task's link")
    wait(driver, lambda d: visible(d, "view-task"), "the task detail")
    wait(driver, lambda d: css(d, "#task-detail-status[data-status=COMPLETED]"), "the detail's status")
    assert driver.find_element(By.ID, "task-detail-id").text == task_id
    assert "result_image_path" in driver.find_element(By.ID, "task-data").text

    def loaded(kind: str) -> Callable[[webdriver.Chrome], Any]:
        script = f"""
            const img = document.querySelector("#task-{kind}s img[data-testid=media-image][data-media-kind={kind}]");
            return img && img.complete && img.naturalWidth > 0 ? [img.naturalWidth, img.naturalHeight, img.src] : null;
        """
        return lambda d: d.execute_script(script)

    out_w, out_h, out_src = wait(driver, loaded("output"), "the output image preview")
    in_w, in_h, in_src = wait(driver, loaded("input"), "the input image preview")
    assert (in_w, in_h) == (64, 48)
    assert out_w == out_h  # aspect ratio 1, padded: the real result, fetched with the token
    assert out_src.startswith("blob:") and in_src.startswith("blob:")
    shot(driver, "05-task-detail")


def test_a_workflow_is_drawn_as_a_dag_whose_nodes_open_their_tasks(logged_in: webdriver.Chrome, site: Site) -> None:
    driver = logged_in
    body = {
        "name": "dashboard-dag",
        "origin_instance": "tests",
        "steps": [generate("render", ["ok"]), generate("finish", ["ok"], "render")],
    }
    workflow_id = site.post("/api/v1/workflows/", body)["id"]

    open_view(driver, "workflows")
    row = f"[data-testid=workflow-row][data-workflow-id='{workflow_id}']"
    wait(driver, lambda d: css(d, f"{row}[data-status=COMPLETED]"), "the workflow COMPLETED in the list")
    shot(driver, "06-workflows")
    click(driver, f"{row} [data-testid=workflow-link]", "the workflow's link")
    wait(driver, lambda d: visible(d, "view-workflow"), "the workflow detail")
    wait(driver, lambda d: css(d, "#workflow-detail-status[data-status=COMPLETED]"), "the workflow's status")

    read_nodes = """return [...document.querySelectorAll("[data-testid=dag-node]")].map(n => ({
        step: n.dataset.stepId, status: n.dataset.status, task: n.dataset.taskId, x: n.getBoundingClientRect().x}))"""
    nodes = wait(driver, lambda d: len(found := js(d, read_nodes)) == 2 and found, "the DAG's two nodes")
    by_step = {n["step"]: n for n in nodes}
    assert set(by_step) == {"render", "finish"}
    assert {n["status"] for n in nodes} == {"COMPLETED"}
    assert by_step["finish"]["x"] > by_step["render"]["x"]  # the dependant sits one layer to the right
    edges = js(
        driver,
        "return [...document.querySelectorAll('[data-testid=dag-edge]')].map(e => [e.dataset.from, e.dataset.to])",
    )
    assert edges == [["render", "finish"]]
    assert driver.find_element(By.ID, "workflow-detail-name").text == "dashboard-dag"
    shot(driver, "07-workflow-dag")

    finish_task = by_step["finish"]["task"]
    assert finish_task
    click(driver, "[data-testid=dag-node][data-step-id=finish]", "the node of step 'finish'")
    wait(driver, lambda d: visible(d, "view-task"), "the step's task")
    wait(driver, lambda d: d.find_element(By.ID, "task-detail-id").text == finish_task, "the step's task id")
    link = wait(driver, lambda d: visible(d, "task-workflow-link"), "the link back to the workflow")
    assert workflow_id in link.text


def test_stats_are_drawn_as_bar_charts(logged_in: webdriver.Chrome, site: Site) -> None:
    driver = logged_in
    site.post("/api/v1/tasks/", ADJUST)
    open_view(driver, "stats")
    read = """const bars = (chart) => Object.fromEntries([...document.querySelectorAll(
            "#" + chart + " [data-testid=chart-bar]")].map(b => [b.dataset.label, Number(b.dataset.value)]));
        return {total: Number(document.getElementById("stat-total").textContent), status: bars("chart-by-status"),
                type: bars("chart-by-task-type"), provider: bars("chart-by-provider")}"""
    stats = wait(
        driver,
        lambda d: (found := js(d, read))["type"].get("IMAGE_ADJUSTER") and found,
        "the IMAGE_ADJUSTER bar",
    )
    assert stats["total"] >= 1
    assert sum(stats["status"].values()) == stats["total"]
    assert sum(stats["type"].values()) == stats["total"]
    assert stats["provider"].get("LOCAL", 0) >= stats["type"]["IMAGE_ADJUSTER"]
    assert visible(driver, "stat-workflows") is not None
    shot(driver, "08-stats")


def test_an_expired_token_returns_to_the_login_form(browser: webdriver.Chrome, site: Site) -> None:
    short = mint_token(site.settings.auth, tenant="acme", role=Role.VIEWER, ttl_seconds=4)
    log_in(browser, short)
    wait(browser, lambda d: visible(d, "view-overview"), "the overview while the token is valid")
    assert "viewer" in browser.find_element(By.ID, "identity").text
    # The overview polls every 2 s; the first poll refused once the token expired ends the session.
    error = wait(browser, lambda d: visible(d, "login-error"), "the login form after the token expired")
    assert "expired" in error.text.lower()
    assert stored_token(browser) is None
    assert visible(browser, "topbar") is None
    shot(browser, "09-session-expired")


def test_logout_forgets_the_token(logged_in: webdriver.Chrome) -> None:
    logged_in.find_element(By.ID, "logout").click()
    wait(logged_in, lambda d: visible(d, "view-login"), "the login form after logout")
    assert stored_token(logged_in) is None
    assert visible(logged_in, "login-error") is None
    logged_in.refresh()  # nothing remembered across a reload either
    wait(logged_in, lambda d: visible(d, "view-login"), "the login form after a reload")
