"""The harness of the pages' browser tests: a real imd, a real headless Chromium.

    cargo build -p imd
    python3 -m pip install -r imd/web/pages_test/requirements.txt   # or .ci/test's venv
    python3 -m pytest -q imd/web/pages_test

Each test module gets one imd process (`IMD_BIN`, default the repository's
target/debug/imd) on a free loopback port with a temporary data dir, started with
`--dev-tokens` so the pages mint their own tokens (a test that needs it off starts
an imd of its own), and one Chromium (`CHROMIUM`,
default Debian's /usr/bin/chromium) driven by Playwright. Every person in a test gets
a browser context of their own: separate storage, as on two machines.

Tests wait for what a page shows (Playwright's `expect` retries until it holds or
times out); none sleeps. Set `IMD_PAGES_SCREENSHOTS` to a folder to keep screenshots.

imd serves the pages compiled into its binary. While editing them, set
`IMD_PAGES_FROM_DISK=1` to have the browser load /chat/ and /console/ from imd/web/
instead, without rebuilding imd; CI leaves it unset and tests what imd serves.
"""

import json
import os
import shutil
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

WEB = Path(__file__).resolve().parents[1]
REPO = WEB.parents[1]
IMD_BIN = Path(os.environ.get("IMD_BIN", REPO / "target/debug/imd")).resolve()
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SECRET = "imd-pages-test-secret"
ADMIN = "imd-pages-test-admin"
READY_TIMEOUT_S = 15
FROM_DISK = bool(os.environ.get("IMD_PAGES_FROM_DISK"))

# Long enough for the console's queue poll (3 s) and a CI machine that is busy.
expect.set_options(timeout=10_000)


class Imd:
    """A real imd process; `stop()` ends it and removes its data dir."""

    def __init__(self, *extra_args: str):
        self.data_dir = tempfile.mkdtemp(prefix="imd-pages-")
        self.log_path = Path(self.data_dir) / "imd.log"
        self._log = open(self.log_path, "wb")
        args = [
            str(IMD_BIN), "serve",
            "--listen", "127.0.0.1:0",
            "--data-dir", self.data_dir,
            "--token-secret", SECRET,
            "--admin-token", ADMIN,
            # Several browser contexts connect from one ip in quick succession.
            "--connect-rate", "0",
            *extra_args,
        ]
        try:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log)
        except FileNotFoundError:
            pytest.fail(f"{IMD_BIN} not found: run `cargo build -p imd` or set IMD_BIN")
        self.url = self._wait_ready()

    def _wait_ready(self) -> str:
        """Reads stdout until imd's JSON ready line, which says the bound address."""
        ready = threading.Event()
        found = {}

        def read():
            for line in self.proc.stdout:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if isinstance(ev, dict) and ev.get("event") == "ready":
                    found["listen"] = ev["listen"]
                    ready.set()
            ready.set()  # stdout closed: imd exited

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(READY_TIMEOUT_S) or "listen" not in found:
            self.stop()
            pytest.fail(f"imd did not start within {READY_TIMEOUT_S} s:\n{self.logs()}")
        return f"http://{found['listen']}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def request(self, method: str, path: str, body=None, token: str = ADMIN):
        """An HTTP call with a bearer token (the admin's by default); the JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("authorization", f"Bearer {token}")
        req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as res:
                text = res.read().decode()
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{method} {path}: {e.code} {e.read().decode()}") from None
        return json.loads(text) if text else {}

    def set_shop(self, shop: str, agents: list, **settings):
        self.request("PUT", f"/admin/v1/shops/{shop}/agents", {"agents": agents, **settings})

    def token(self, uid: str, device: str = "web", role: str | None = None) -> str:
        """A client token as `imd token` prints it, the way a user would make one."""
        args = [str(IMD_BIN), "token", "--uid", uid, "--device", device, "--platform", "web",
                "--token-secret", SECRET, "--data-dir", self.data_dir]
        if role:
            args += ["--role", role]
        return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def imd():
    server = Imd("--dev-tokens")
    yield server
    server.stop()


@pytest.fixture
def imd_without_dev_tokens():
    """An imd where POST /dev/v1/token is off (404), as in production."""
    server = Imd()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                # Pages served by the route handler (IMD_PAGES_FROM_DISK) have no
                # address, so Chromium would block their calls to imd on loopback.
                *(["--disable-features=LocalNetworkAccessChecks"] if FROM_DISK else []),
            ],
        )
        yield b
        b.close()


def from_disk(path: Path):
    """A route handler that answers with the page as it is on disk now."""
    return lambda route: route.fulfill(body=path.read_text(), content_type="text/html")


@pytest.fixture
def person(browser: Browser, request):
    """Opens a page for one person in a browser context of their own.

    Uncaught errors of the page's script fail the test; so does a console error other
    than Chromium's own line for an HTTP error answer.
    """
    contexts = []
    problems = []

    def open_page(url: str, name: str) -> Page:
        ctx = browser.new_context(viewport={"width": 1100, "height": 800})
        contexts.append(ctx)
        if FROM_DISK:
            for route, file in (("**/chat/*", "chat.html"), ("**/console/*", "console.html")):
                ctx.route(route, from_disk(WEB / file))
        page = ctx.new_page()
        page.on("pageerror", lambda e: problems.append(f"{name}: uncaught {e}"))
        # An HTTP error answer is logged by Chromium itself; the pages handle those.
        page.on("console", lambda m: m.type == "error" and "Failed to load resource" not in m.text
                and problems.append(f"{name}: console {m.text}"))
        page.goto(url)
        return page

    yield open_page
    shots = os.environ.get("IMD_PAGES_SCREENSHOTS")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        for i, ctx in enumerate(contexts):
            for page in ctx.pages:
                page.screenshot(path=str(Path(shots) / f"{request.node.name}-{i}.png"), full_page=True)
    for ctx in contexts:
        ctx.close()
    assert not problems, "\n".join(problems)
