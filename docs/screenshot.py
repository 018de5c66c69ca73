"""Take docs/swagger-users-me.png: Swagger UI after Authorize and an executed GET /users/me.

Starts `uvicorn main:app` on a fresh SQLite file with one signed-up user, then drives
Debian's headless Chromium through the DevTools protocol over a websocket (no browser
download, no Selenium): real mouse clicks and typing, as a person would. Not part of CI.

    apt-get install -y chromium pngquant       # once (pngquant, if there, shrinks the PNG)
    python docs/screenshot.py                  # from the repository root, app's venv active

Imports: the standard library and `websockets` (installed with uvicorn[standard]).
"""

import asyncio
import base64
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "docs" / "swagger-users-me.png"
USERNAME, PASSWORD = "ada", "correct horse battery"
OPERATION = "#operations-users-users-read_user_me"
WIDTH, HEIGHT = 1100, 900
TIMEOUT_SECONDS = 20


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(ready: Any, what: str) -> Any:
    """Poll `ready()` until it returns something truthy, for at most TIMEOUT_SECONDS."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            if value := ready():
                return value
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


def http(method: str, url: str, body: bytes | None = None, content_type: str = "application/json") -> Any:
    # S310: the URLs are our own loopback app and browser.
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": content_type})  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.load(response)


class Page:
    """One browser tab, driven with DevTools protocol commands."""

    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket
        self.last_id = 0

    async def send(self, method: str, **params: Any) -> Any:
        self.last_id += 1
        await self.websocket.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:  # skip events until our answer comes back
            message = json.loads(await asyncio.wait_for(self.websocket.recv(), TIMEOUT_SECONDS))
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def wait_for(self, expression: str) -> Any:
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if value := await self.evaluate(expression):
                return value
            await asyncio.sleep(0.1)
        sys.exit(f"timed out waiting for {expression}")

    async def click(self, selector: str) -> None:
        """A real left click in the middle of the (visible) element."""
        center = await self.wait_for(f"""(() => {{
            const element = document.querySelector({json.dumps(selector)});
            if (!element || !element.offsetParent) return null;
            element.scrollIntoView({{block: "center"}});
            const box = element.getBoundingClientRect();
            return [box.x + box.width / 2, box.y + box.height / 2];
        }})()""")
        for event in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", type=event, x=center[0], y=center[1], button="left", clickCount=1
            )
        await asyncio.sleep(0.3)  # let React render what the click opened

    async def type(self, selector: str, text: str) -> None:
        await self.click(selector)
        await self.send("Input.insertText", text=text)


async def walk_through(websocket_url: str, docs_url: str) -> bytes:
    """The README's steps, then a PNG from the page top to the end of the live response."""
    async with connect(websocket_url, max_size=None) as websocket:
        page = Page(websocket)
        await page.send(
            "Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False
        )
        await page.send("Page.navigate", url=docs_url)
        await page.click(".auth-wrapper .btn.authorize")  # 1-2. open /docs, click Authorize
        await page.type("#oauth_username", USERNAME)  # 3. username and password
        await page.type("#oauth_password", PASSWORD)
        await page.click(".auth-btn-wrapper .btn.modal-btn.auth.authorize")  # 4. Authorize, then Close
        await page.wait_for(
            "[...document.querySelectorAll('.auth-btn-wrapper .btn')].some(b => b.textContent === 'Logout')"
        )
        await page.click(".auth-btn-wrapper .btn-done")
        await page.click("#operations-tag-auth")  # fold the auth section, so users comes first
        await page.click(f"{OPERATION} .opblock-summary-control")  # 5. GET /users/me, Try it out, Execute
        await page.click(f"{OPERATION} .try-out__btn")
        await page.click(f"{OPERATION} .btn.execute")
        status = f"document.querySelector('{OPERATION} .live-responses-table tbody .response-col_status')"
        await page.wait_for(f"{status} && {status}.textContent.trim() === '200'")  # 6. the 200 response
        bottom = await page.evaluate(
            f"document.querySelector('{OPERATION} .live-responses-table').getBoundingClientRect().bottom + scrollY"
        )
        clip = {"x": 0, "y": 0, "width": WIDTH, "height": bottom + 16, "scale": 1}
        shot = await page.send("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
        return base64.b64decode(shot["data"])


def main() -> None:
    chromium = shutil.which("chromium") or sys.exit("chromium not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as tmp:
        port, debug_dir = free_port(), Path(tmp, "chromium")
        base = f"http://127.0.0.1:{port}"
        environ = {
            "SECRET_KEY": secrets.token_urlsafe(48),
            "BCRYPT_ROUNDS": "4",
            "DATABASE_URL": f"sqlite:///{tmp}/app.db",
        }
        server = subprocess.Popen(  # noqa: S603 (a fixed command line, no shell)
            [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env={"PATH": "/usr/bin:/bin", "LOG_LEVEL": "WARNING"} | environ,
        )
        browser = None
        try:
            wait_until(lambda: http("GET", f"{base}/health"), "the app")
            user = {"email": "ada@example.com", "username": USERNAME, "password": PASSWORD, "full_name": "Ada Lovelace"}
            http("POST", f"{base}/api/v1/users/", json.dumps(user).encode())
            browser = subprocess.Popen(  # noqa: S603
                [
                    chromium,
                    "--headless",
                    "--no-sandbox",  # we run as root in a container
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--hide-scrollbars",
                    f"--window-size={WIDTH},{HEIGHT}",
                    f"--user-data-dir={debug_dir}",
                    "--remote-debugging-port=0",  # Chromium picks one and writes it to DevToolsActivePort
                    "about:blank",
                ],
                stderr=subprocess.DEVNULL,
            )
            active_port = debug_dir / "DevToolsActivePort"
            debug_port = wait_until(lambda: active_port.exists() and active_port.read_text().split()[0], "Chromium")
            targets = wait_until(lambda: http("GET", f"http://127.0.0.1:{debug_port}/json/list"), "a Chromium tab")
            websocket_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            png = asyncio.run(walk_through(websocket_url, f"{base}/docs"))
        finally:
            for process in (browser, server):
                if process is not None:
                    process.terminate()
                    process.wait(timeout=10)
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_bytes(png)
    if pngquant := shutil.which("pngquant"):
        subprocess.run([pngquant, "--force", "--skip-if-larger", "--output", str(OUTPUT), str(OUTPUT)], check=False)  # noqa: S603
    print(f"wrote {OUTPUT.relative_to(REPO)} ({OUTPUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
