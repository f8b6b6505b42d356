#!/usr/bin/env python3
"""Drive headless Chromium over the DevTools protocol to check hark's live bus page.

Chromium runs with --remote-debugging-pipe: DevTools messages are JSON terminated by NUL,
written to its fd 3 and read from its fd 4, so no websocket library is needed.

Steps: open --url; wait until the page's status says "live" and the row of --recent (an
event published before the page opened) is in the DOM; print {"ready": true}; read one
uuid per line from stdin (events the test publishes now) and wait for each row
`#ev-<uuid>` to appear through the live stream, printing its text; save a PNG screenshot
to --screenshot; exit 0. Exit 2 on a timeout (with what the page showed), 3 on a
DevTools error.
"""

import argparse
import base64
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402


class DevTools:
    def __init__(self, chromium, user_data_dir):
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()

        def wire():
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", "--no-default-browser-check",
             "--remote-debugging-pipe", "--user-data-dir=" + user_data_dir,
             "--window-size=1280,900", "about:blank"],
            pass_fds=(3, 4), preexec_fn=wire,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buf = b""
        self.next_id = 0

    def _read_message(self, deadline):
        while b"\0" not in self.buf:
            if time.time() > deadline:
                peerlib.fail(peerlib.EXIT_TIMEOUT, "no DevTools answer")
            chunk = os.read(self.from_chrome, 65536)
            if not chunk:
                peerlib.fail(3, "chromium closed the DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, session=None, timeout=30):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    peerlib.fail(3, "%s: %s" % (method, answer["error"]))
                return answer.get("result", {})

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except SystemExit:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--url", required=True)
    p.add_argument("--recent", required=True, help="uuid of an event published before")
    p.add_argument("--screenshot", required=True)
    p.add_argument("--user-data-dir", required=True)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()

    dt = DevTools(args.chromium, args.user_data_dir)
    try:
        target = dt.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = dt.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        dt.call("Page.enable", session=session)
        dt.call("Page.navigate", {"url": args.url}, session=session)

        def evaluate(expr):
            r = dt.call("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session=session)
            return r.get("result", {}).get("value")

        def wait_for(expr, what):
            deadline = time.time() + args.timeout
            while time.time() < deadline:
                value = evaluate(expr)
                if value:
                    return value
                time.sleep(0.05)
            shown = evaluate("document.body ? document.body.innerText : ''")
            peerlib.fail(peerlib.EXIT_TIMEOUT, "%s never showed; the page says: %r" % (what, shown))

        row = "(function(){var r=document.getElementById('ev-%s');return r?r.innerText:null})()"
        wait_for("document.getElementById('status').textContent === 'live'", "the live status")
        recent = wait_for(row % args.recent, "the recent event")
        peerlib.emit({"ready": True, "recent": recent})
        for line in sys.stdin:
            uuid = line.strip()
            if not uuid:
                continue
            text = wait_for(row % uuid, "the live event " + uuid)
            body = evaluate("document.body.innerText")
            peerlib.emit({"uuid": uuid, "row": text, "page": body})
            break
        shot = dt.call("Page.captureScreenshot", {"format": "png"}, session=session)
        os.makedirs(os.path.dirname(os.path.abspath(args.screenshot)), exist_ok=True)
        with open(args.screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        peerlib.emit({"screenshot": args.screenshot})
    finally:
        dt.close()


if __name__ == "__main__":
    main()
