#!/usr/bin/env python3
"""The console's first view of a portal, timed in headless Chromium.

Talks WebDriver (plain HTTP + JSON) to chromedriver. The service must be
running; scripts/console-first-view.sh starts it on a filled journal and
calls this with its URL, a read token and the portal's member id.

  scripts/console-first-view-browser.py BASE_URL TOKEN MEMBER_ID

Prints the time from opening the portal's view (after signing in on the
portal list) until its 50 newest events and its 48-hour chart are drawn,
cold and then the median of 5 more.
"""
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

base, token, member = sys.argv[1:4]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def call(url, method="GET", body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)["value"]


port = free_port()
driver = subprocess.Popen([shutil.which("chromedriver"), f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
profile = tempfile.mkdtemp()
try:
    wd = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(wd + "/status", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", "--window-size=1280,900", f"--user-data-dir={profile}"]
    caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": shutil.which("chromium"), "args": args}}}}
    session = call(wd + "/session", "POST", caps)["sessionId"]
    s = f"{wd}/session/{session}"

    def run(script, *a):
        return call(s + "/execute/sync", "POST", {"script": script, "args": list(a)})

    call(s + "/url", "POST", {"url": base + "/console"})
    run("sessionStorage.setItem('b24j-read-token', arguments[0])", token)
    times = []
    for i in range(6):
        call(s + "/url", "POST", {"url": base + "/console#/"})
        run("location.reload()")
        deadline = time.time() + 30
        while not run("return document.querySelectorAll('#portal-table tbody tr').length > 0"):
            assert time.time() < deadline, "portal list not shown"
            time.sleep(0.02)
        run("window.t0 = performance.now(); location.hash = '#/p/' + arguments[0]", member)
        deadline = time.time() + 30
        while True:
            ms = run("""return (document.querySelectorAll('#events tbody tr').length === 50
                       && document.querySelectorAll('#chart rect').length === 48)
                       ? performance.now() - window.t0 : null""")
            if ms is not None:
                break
            assert time.time() < deadline, "portal view not shown"
            time.sleep(0.005)
        times.append(ms)
    print(f"browser: first view of the portal (50 events + 48-hour chart drawn): cold {times[0]:.0f} ms, "
          f"warm median {statistics.median(times[1:]):.0f} ms (of 5; polled every 5 ms)")
    call(s, "DELETE")
finally:
    driver.kill()
    shutil.rmtree(profile, ignore_errors=True)
