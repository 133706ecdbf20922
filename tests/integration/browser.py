"""Headless Chromium driven over the DevTools protocol, for the tests of the web pages.

Debian's `chromium` and `python3-websocket` (websocket-client), nothing downloaded:
the browser is started with --remote-debugging-port=0, its port read from the
DevToolsActivePort file it writes, and one page target is driven over its
WebSocket with plain CDP commands (Page, Runtime, Input, Emulation).
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium():
    """The browser's path, or None when none is installed (the caller skips)."""
    explicit = os.environ.get("TN_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for n in CHROMIUM_NAMES:
        p = shutil.which(n)
        if p:
            return p
    return None


class CdpError(Exception):
    pass


class Browser:
    """One headless Chromium and one page in it. close() ends both."""

    def __init__(self, binary, width=1280, height=900, timeout=60):
        import websocket  # python3-websocket; imported here so a missing one is a clear error
        self.tmp = tempfile.mkdtemp(prefix="tn-chromium-")
        self.log = open(os.path.join(self.tmp, "chromium.log"), "wb")
        args = [binary, "--headless=new", "--remote-debugging-port=0",
                "--user-data-dir=" + os.path.join(self.tmp, "profile"),
                "--no-first-run", "--no-default-browser-check", "--disable-gpu",
                "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--mute-audio",
                "--hide-scrollbars", "--window-size=%d,%d" % (width, height),
                "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses its sandbox as root
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.ws = None
        self.next_id = 0
        self.events = []
        try:
            port = self._port(timeout)
            deadline = time.monotonic() + timeout
            page = None
            while page is None and time.monotonic() < deadline:
                with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port,
                                            timeout=5) as r:
                    page = next((t for t in json.load(r) if t.get("type") == "page"), None)
                if page is None:
                    time.sleep(0.1)
            if page is None:
                raise CdpError("chromium opened no page target")
            self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout,
                                                  suppress_origin=True)
            self.send("Page.enable")
            self.send("Runtime.enable")
            self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
        except Exception:
            self.close()
            raise

    def _port(self, timeout):
        f = os.path.join(self.tmp, "profile", "DevToolsActivePort")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CdpError("chromium exited with %s: %s" % (self.proc.returncode,
                                                                self.log_text()[-2000:]))
            try:
                with open(f) as fp:
                    first = fp.readline().strip()
                if first:
                    return int(first)
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise CdpError("chromium wrote no DevToolsActivePort in %.0f s" % timeout)

    def log_text(self):
        try:
            with open(os.path.join(self.tmp, "chromium.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def send(self, method, timeout=60, **params):
        """One command; returns its result (events that arrive meanwhile are kept)."""
        self.next_id += 1
        my = self.next_id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise CdpError("%s: %s" % (method, msg["error"]))
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
        raise CdpError("%s: no answer in %.0f s" % (method, timeout))

    def wait_event(self, method, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["method"] == method:
                    return self.events.pop(i)
            if time.monotonic() >= deadline:
                raise CdpError("no %s event in %.0f s" % (method, timeout))
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)

    def navigate(self, url, timeout=60):
        self.events = [e for e in self.events if e["method"] != "Page.loadEventFired"]
        r = self.send("Page.navigate", url=url)
        if r.get("errorText"):
            raise CdpError("navigate %s: %s" % (url, r["errorText"]))
        self.wait_event("Page.loadEventFired", timeout)

    def js(self, expression, timeout=60):
        """The value of a JS expression (a promise is awaited), as JSON."""
        r = self.send("Runtime.evaluate", timeout=timeout, expression=expression,
                      awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise CdpError("JS exception: %s" % json.dumps(r["exceptionDetails"])[:2000])
        return r["result"].get("value")

    def mouse(self, kind, x, y, **kw):
        self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, **kw)

    def click(self, x, y):
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y, button="left", clickCount=1)
        self.mouse("mouseReleased", x, y, button="left", clickCount=1)

    def screenshot(self, path):
        import base64
        data = self.send("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self):
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:
                pass
            self.ws = None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
