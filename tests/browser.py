"""Headless Chromium driven over the Chrome DevTools protocol, for tests and benches of the dashboard.

Debian's `chromium` is installed with apt-get when missing (CI starts from a fresh machine). The
browser runs in a process of its own with a throwaway profile; `Page` speaks CDP to one tab over
aiohttp's websocket client, synchronously (an event loop in a thread), so tests stay plain functions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium(install: bool = True) -> str | None:
    """The Chromium binary; with `install`, apt-get installs Debian's `chromium` when there is none."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    if not install:
        return None
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(step, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"chromium is missing and `{' '.join(step)}` failed: {done.stderr[-500:]}")
    return find_chromium(install=False)


class Browser:
    """One headless Chromium process; `page()` opens a tab."""

    def __init__(self, binary: str, width: int = 1400, height: int = 1000) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="gpucp-chromium-"))
        self.proc = subprocess.Popen(
            [
                binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
                f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (active.exists() and active.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port within 60 s")
            time.sleep(0.05)
        self.port = int(active.read_text().split()[0])
        self.pages: list[Page] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def page(self) -> Page:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(request, timeout=30) as reply:
            target = json.loads(reply.read())
        page = Page(self, target["webSocketDebuggerUrl"], target["id"])
        self.pages.append(page)
        self.run(page.connect())
        return page

    def close(self) -> None:
        for page in getattr(self, "pages", ()):
            page.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "loop"):
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    """One tab: navigate, evaluate JS, wait for a condition, take a screenshot."""

    def __init__(self, browser: Browser, url: str, target_id: str) -> None:
        self.browser = browser
        self.url = url
        self.target_id = target_id
        self.ids = itertools.count(1)
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.console: list[str] = []  # the page's exceptions and console errors, for failure messages

    async def connect(self) -> None:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.url, max_msg_size=64 * 1024 * 1024)
        await self._call("Runtime.enable")
        await self._call("Page.enable")

    async def _call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        call_id = next(self.ids)
        await self.ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.receive_str())
            if msg.get("id") == call_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            self._note(msg)

    def _note(self, msg: dict[str, Any]) -> None:
        method = msg.get("method")
        params = msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            self.console.append(str(params.get("exceptionDetails", {}).get("exception", {}).get("description")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning"):
            self.console.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        return self.browser.run(self._call(method, **params))

    def goto(self, url: str) -> None:
        """Open `url` and return once its document has loaded."""
        self.call("Page.navigate", url=url)
        # The fragment is left out: the dashboard takes a token from it and drops it from the address.
        loaded = f"location.href.startsWith({json.dumps(url.split('#')[0])}) && document.readyState === 'complete'"
        self.wait_for(loaded, what=f"{url} to load")

    def evaluate(self, expression: str) -> Any:
        """The value of a JS expression (awaited if it is a promise), as JSON."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:200]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 30, what: str = "") -> Any:
        """Poll a JS expression until it is truthy; its value. AssertionError with the page's text if not."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText.slice(0, 3000) : ''")
                raise AssertionError(f"{what or expression} not true within {timeout_s:g} s; the page says:\n{text}\n"
                                     f"console: {self.console[-10:]}")
            time.sleep(0.1)

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            metrics = self.call("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 8000), "scale": 1}
        data = self.call("Page.captureScreenshot", **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """Close the tab (again: nothing), so that its page stops what it does (a live stream)."""
        ws, session, self.ws, self.session = self.ws, self.session, None, None
        if ws is None:
            return
        with contextlib.suppress(OSError):
            close = f"http://127.0.0.1:{self.browser.port}/json/close/{self.target_id}"
            urllib.request.urlopen(close, timeout=30).close()

        async def closing() -> None:
            await ws.close()
            if session is not None:
                await session.close()

        self.browser.run(closing())

