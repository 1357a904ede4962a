"""A minimal Chrome DevTools Protocol client: enough to drive Debian's chromium from the site tests.

One websocket to the browser; pages are attached with `flatten`, so every command and event of a
page carries its sessionId over that same socket.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

Event = dict[str, Any]


class CDPError(RuntimeError):
    pass


@dataclass
class Transfer:
    """Bytes received per request (Network.loadingFinished's encodedDataLength: headers and body as sent)."""

    urls: dict[str, str] = field(default_factory=dict)
    bytes_by_request: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.bytes_by_request.values())

    def by_url(self) -> dict[str, int]:
        return {self.urls.get(rid, rid): n for rid, n in self.bytes_by_request.items()}


class Page:
    def __init__(self, browser: Browser, session_id: str) -> None:
        self._browser = browser
        self.session_id = session_id
        self._listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self.transfer = Transfer()
        self.console: list[str] = []

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self._browser.send(method, params, session_id=self.session_id)

    def _dispatch(self, method: str, params: dict[str, Any]) -> None:
        if method == "Network.requestWillBeSent":
            self.transfer.urls[params["requestId"]] = params["request"]["url"]
        elif method == "Network.loadingFinished":
            self.transfer.bytes_by_request[params["requestId"]] = int(params["encodedDataLength"])
        elif method == "Runtime.consoleAPICalled":
            self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            self.console.append("exception: " + json.dumps(params["exceptionDetails"])[:500])
        elif method == "Log.entryAdded" and "Content Security Policy" in params["entry"].get("text", ""):
            # A refused inline script or style: the page must need none (services/publish/cache.py's CSP).
            self.console.append("csp: " + params["entry"]["text"][:500])
        for listener in list(self._listeners):
            listener(method, params)

    async def enable(self, *, network: bool = False) -> None:
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send("Log.enable")
        if network:
            await self.send("Network.enable")

    async def emulate_phone(self) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True},
        )

    async def navigate(self, url: str, within: float = 15.0) -> None:
        """Load `url` and wait for its load event (a hash-only change fires none: use wait_for)."""
        loaded: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_event(method: str, params: dict[str, Any]) -> None:
            if method == "Page.loadEventFired" and not loaded.done():
                loaded.set_result(None)

        self._listeners.append(on_event)
        try:
            result = await self.send("Page.navigate", {"url": url})
            if result.get("errorText"):
                raise CDPError(f"navigate {url}: {result['errorText']}")
            await asyncio.wait_for(loaded, within)
        finally:
            self._listeners.remove(on_event)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True}
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"{expression[:200]!r}: {text}")
        return result["result"].get("value")

    async def wait_for(self, condition: str, within: float = 10.0) -> Any:
        """The truthy value of the JS `condition`, checked in the page on every DOM change.

        The page does the waiting (a MutationObserver, plus a 50 ms backstop for state the DOM does
        not show, such as an image finishing its decode), so no round trip per check.
        """
        script = f"""new Promise((resolve, reject) => {{
          const check = () => {{ try {{ return ({condition}); }} catch (e) {{ return undefined; }} }};
          let obs, timer, backstop;
          const done = (fn, v) => {{ obs.disconnect(); clearTimeout(timer); clearInterval(backstop); fn(v); }};
          const test = () => {{ const v = check(); if (v) done(resolve, v); }};
          obs = new MutationObserver(test);
          obs.observe(document, {{subtree: true, childList: true, attributes: true, characterData: true}});
          backstop = setInterval(test, 50);
          timer = setTimeout(() => done(reject, new Error("timed out waiting for: " + {json.dumps(condition)})),
                             {int(within * 1000)});
          test();
        }})"""
        return await self.evaluate(script)

    async def click(self, selector: str) -> None:
        """A real mouse click (pressed + released) in the middle of the first element matching `selector`."""
        box = await self.evaluate(
            f"""(() => {{
              const el = document.querySelector({json.dumps(selector)});
              if (!el) return null;
              el.scrollIntoView({{block: "center"}});
              const r = el.getBoundingClientRect();
              return {{x: r.left + r.width / 2, y: r.top + r.height / 2}};
            }})()"""
        )
        if box is None:
            raise CDPError(f"no element matches {selector!r}")
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1},
            )

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (beyond the viewport)."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        shot = await self.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            },
        )
        await asyncio.to_thread(_write_file, path, base64.b64decode(shot["data"]))
        return path


class Browser:
    def __init__(self, process: asyncio.subprocess.Process, ws: ClientConnection) -> None:
        self._process = process
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pages: dict[str, Page] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                message = json.loads(raw)
                if "id" in message:
                    future = self._pending.pop(message["id"], None)
                    if future is None or future.done():
                        continue
                    if "error" in message:
                        future.set_exception(CDPError(json.dumps(message["error"])))
                    else:
                        future.set_result(message.get("result", {}))
                elif (page := self._pages.get(message.get("sessionId", ""))) is not None:
                    page._dispatch(message["method"], message.get("params", {}))
        except websockets.ConnectionClosed:
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CDPError("the browser closed the DevTools connection"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, session_id: str | None = None, within: float = 30
    ) -> dict[str, Any]:
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        await self._ws.send(json.dumps(message))
        return await asyncio.wait_for(future, within)

    async def new_page(self, *, network: bool = False, phone: bool = True) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        self._pages[page.session_id] = page
        await page.enable(network=network)
        if phone:
            await page.emulate_phone()
        return page

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.send("Browser.close"), 5)
        with contextlib.suppress(Exception):
            await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        try:
            await asyncio.wait_for(self._process.wait(), 10)
        except TimeoutError:
            _kill_group(self._process)
            await self._process.wait()


def _kill_group(process: asyncio.subprocess.Process) -> None:
    # chromium forks renderers and zygotes: end the whole group we started, nothing else.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


def _port_file_url(profile: Path) -> str | None:
    port_file = profile / "DevToolsActivePort"
    lines = port_file.read_text().split("\n") if port_file.exists() else []
    return f"ws://127.0.0.1:{lines[0]}{lines[1]}" if len(lines) >= 2 and lines[1] else None


async def _devtools_url(profile: Path, process: asyncio.subprocess.Process, log: Path, within: float) -> str:
    """The browser websocket URL, from the DevToolsActivePort file chromium writes once it listens."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise CDPError(f"chromium exited with {process.returncode}: {_tail(log)}")
        if url := _port_file_url(profile):
            return url
        await asyncio.sleep(0.05)  # an external process starting up: poll with a deadline
    raise CDPError(f"chromium did not open DevTools within {within}s: {_tail(log)}")


@contextlib.asynccontextmanager
async def launch(executable: str, workdir: Path, within: float = 30.0) -> AsyncIterator[Browser]:
    """A headless chromium for the block, with its profile and log under `workdir`."""
    profile = workdir / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "DevToolsActivePort").unlink(missing_ok=True)  # a reused profile's is stale
    log = workdir / "chromium.log"
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            executable,
            "--headless=new",
            "--no-sandbox",  # the tests may run as root, where the sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    try:
        url = await _devtools_url(profile, process, log, within)
        ws = await websockets.connect(url, max_size=64 * 1024 * 1024, open_timeout=within)
    except BaseException:
        _kill_group(process)
        await process.wait()
        raise
    browser = Browser(process, ws)
    try:
        yield browser
    finally:
        await browser.close()
        _kill_group(process)  # stray helpers of the group, if any outlived the browser
