"""The HTML run report (issue 12): built from a small lite release with a done, a failed and a
blocked part, checked as files (the ledger's counts, every relative link and image resolves,
valid PNGs), and loaded in headless Chromium through the DevTools protocol (no console error,
no failed load, no broken image or link; a screenshot is saved beside the report)."""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import fitsio
import pytest
from distributed import Client
from PIL import Image

from lsdask.cli import main
from lsdask.demo import DemoSettings, format_summary, simulate_demo, summarize, write_demo_config
from lsdask.graphs.images import discover, image_key
from lsdask.jobqueue import make_cluster
from lsdask.ledger import Ledger
from lsdask.release import Release

#: The smallest lite release with everything a report shows: 2 bands x 2 exposures, 3 bricks
#: in a column (Dec 32-32.5); each exposure touches 2 of them.
SETTINGS = DemoSettings(ramin=180.0, ramax=180.35, decmin=32.0, decmax=32.5, bands=("g", "r"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The release, run once: the first g exposure truncated, so its calibs fail (``input``),
    its zeropoints and the 2 bricks it touches are blocked; the third brick is done and
    the whole-release stages (depth ...) run. Returns (release, run result, the failed key)."""
    d = tmp_path_factory.mktemp("report")
    simulate_demo(d, SETTINGS)
    release = Release.from_config(write_demo_config(d, SETTINGS))
    bad = release.layout.image(discover(release.layout, ["decam"])[0])
    with open(bad, "r+b") as f:
        f.truncate(bad.stat().st_size // 3)
    cluster = make_cluster("local", n_workers=2, threads_per_worker=1)
    try:
        with Client(cluster) as client:
            res = release.run(client, progress=False)
    finally:
        cluster.close()
    return release, res, image_key(bad.relative_to(release.layout.images_dir).as_posix())


class Page(HTMLParser):
    """The links, images and table rows of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.rows: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a":
            self.hrefs.append(a["href"])
        elif tag == "img":
            self.srcs.append(a["src"])
        elif tag == "table":
            self._table = a.get("id", "")
            self.rows.setdefault(self._table, [])
        elif tag == "tr" and self._table is not None:
            self.rows[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self.rows[self._table][-1].append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._table is not None and self.rows[self._table] and self.rows[self._table][-1]:
            self.rows[self._table][-1][-1] += data


def local_target(base: Path, url: str) -> Path | None:
    """The file a relative URL of the page points to (None: a fragment or data: URL)."""
    if url.startswith(("#", "data:")):
        return None
    u = urlparse(url)
    assert not u.scheme and not u.netloc, f"not a relative link: {url}"
    return (base / unquote(u.path)).resolve()


def check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= 100, (path, im.size)


def test_run_refreshes_the_report_and_lsdask_report_writes_it(built, capsys):
    release, res, bad_key = built
    layout = release.layout
    index = layout.report_index
    assert res.run_report == str(index) and index.exists()  # refreshed at the run's end
    assert res.failed == {"input": 1} and res.blocked == 3  # 1 zeropoints + 2 bricks
    assert main(["report", str(release.config.path)]) == 0
    assert capsys.readouterr().out.strip() == str(index)
    text = index.read_text()
    page = Page(text)
    assert "could not be made" not in text and "Not yet" not in text
    # per stage: the ledger's counts, as `lsdask status` has them
    st = release.status()
    head, *rows = page.rows["stages-table"]
    assert head[:6] == ["stage", "to do", "running", "done", "failed", "blocked"]
    shown = {r[0]: [int(v) for v in r[1:6]] for r in rows}
    assert set(shown) == set(st.index) >= {"calibs", "zeropoints", "runbrick", "depth"}
    for stage, r in st.iterrows():
        assert shown[stage] == [r["pending"], r["running"], r["succeeded"], r["failed"],
                                r["blocked"]], stage
    calibs = next(r for r in rows if r[0] == "calibs")
    assert calibs[6] == "input 1" and float(calibs[7]) > 0  # failures by class, core-hours
    # the failed task, linking its own log
    _, failed = page.rows["failed-tasks"]
    assert failed[:3] == ["calibs", bad_key, "input"]
    log = layout.log("calibs", bad_key)
    assert log.exists() and log.resolve() in [local_target(layout.report_dir, h)
                                              for h in page.hrefs]
    # every relative link and image resolves; the plots are valid PNGs
    for url in page.hrefs + page.srcs:
        target = local_target(layout.report_dir, url)
        assert target is None or target.is_file(), url
    pngs = [local_target(layout.report_dir, s) for s in page.srcs if s.endswith(".png")]
    assert {p.stem for p in pngs} >= {"sky-states", "sky-depth", "depth-area", "durations",
                                      "memory", "timeline", "ccds-decam"}
    for p in pngs:
        check_png(p)
    # bricks on the sky, the gallery with each brick's sources, the runs with their reports
    assert "done 1 · failed 0 · blocked 2 · running 0 · to do 0" in text
    done = [r["key"] for r in release.tasks("runbrick", "succeeded").to_dict("records")]
    assert len(done) == 1
    for b in done:
        n = fitsio.read_header(str(layout.tractor(b)), ext=1)["NAXIS2"]
        assert n > 10 and f"{b}: {n} sources" in text
        assert layout.report_thumbnail(b).is_file()
    with release.ledger() as led:
        run = led.runs()[-1]
    assert run["config_hash"] in text and run["dask_version"] in text
    perf = layout.performance_report(run["run_id"]).resolve()
    assert perf in [local_target(layout.report_dir, h) for h in page.hrefs]


def test_demo_summary_ends_with_the_report_path(built):
    release, res, _ = built
    lines = format_summary(summarize(release, res, 1.0)).splitlines()
    assert lines[-1] == f"report: {release.layout.report_index}"


def test_half_run_release_says_not_yet(tmp_path):
    """Nothing run: every section says "not yet"; a few tasks in the ledger and no products:
    the stage table, and "not yet" for the products."""
    release = Release.from_config(write_demo_config(tmp_path, SETTINGS))
    assert main(["report", str(tmp_path)]) == 0
    text = release.layout.report_index.read_text()
    assert text.count("Not yet") == 8 and "could not be made" not in text
    led = Ledger(release.layout.ledger)
    led.acquire(heartbeat=False)
    led.start_run("abc", ["calibs"])
    led.ensure_tasks("calibs", ["x", "y"])
    now = time.time()
    led.record("calibs", "x", "succeeded", 1, start=now - 5, end=now, wall=5.0, threads=1,
               worker="tcp://w1")
    led.end_run("interrupted")
    led.close()
    assert main(["report", str(tmp_path)]) == 0
    text = release.layout.report_index.read_text()
    assert "could not be made" not in text and text.count("Not yet") == 5
    head, calibs = Page(text).rows["stages-table"]
    assert calibs[:6] == ["calibs", "1", "0", "1", "0", "0"]
    assert head[10] == "ETA" and calibs[10] == "<1 min"  # y left, x took 5 s


def test_timeline_draws_every_attempt_of_a_killed_and_restarted_run(tmp_path, monkeypatch):
    """A driver killed while a task ran, then a new run: the timeline gets the abandoned
    attempt (on its worker, until the last thing the killed run recorded) and the one that
    succeeded; a failed attempt retried within a run is drawn too."""
    from lsdask.report import plots, write_report

    release = Release.from_config(write_demo_config(tmp_path, SETTINGS))
    now = time.time()
    led = Ledger(release.layout.ledger)
    led.acquire(heartbeat=False)
    led.start_run("abc", ["calibs"])
    led.ensure_tasks("calibs", ["x", "y"])
    led.mark_running([("calibs", "x", 1, 1), ("calibs", "y", 1, 1)])
    led.mark_started("calibs", "x", "tcp://w1", "h1", None, now - 60)
    led.mark_started("calibs", "y", "tcp://w2", "h2", None, now - 60)
    led.record("calibs", "y", "failed", 1, count_failure=True, final=False,
               failure_class="worker-lost", worker="tcp://w2", start=now - 60, end=now - 50)
    led.mark_running([("calibs", "y", 2, 1)])
    led.record("calibs", "y", "succeeded", 2, start=now - 50, end=now - 45, wall=5.0,
               threads=1, worker="tcp://w1")
    led.close()  # the driver dies with x running: no end, no attempt recorded for x
    led = Ledger(release.layout.ledger)
    led.acquire(heartbeat=False)
    led.start_run("abc", ["calibs"])  # the restart
    assert led.get("calibs", "x")["state"] == "pending"
    led.mark_running([("calibs", "x", 1, 1)])
    led.record("calibs", "x", "succeeded", 1, start=now - 10, end=now, wall=10.0, threads=1,
               worker="tcp://w3")
    led.end_run("ok")
    led.close()
    drawn: list[list[dict]] = []

    def spy(attempts, run_starts, path):
        drawn.append(attempts)
        return real(attempts, run_starts, path)

    real = plots.timeline
    monkeypatch.setattr(plots, "timeline", spy)
    write_report(release)
    assert len(drawn) == 1
    got = [(a["key"], a["state"], a["worker"], a["start"], a["end"]) for a in drawn[0]]
    assert got == [("y", "failed", "tcp://w2", now - 60, now - 50),
                   ("y", "succeeded", "tcp://w1", now - 50, now - 45),
                   ("x", "abandoned", "tcp://w1", now - 60, now - 45),
                   ("x", "succeeded", "tcp://w3", now - 10, now)]
    check_png(release.layout.report_plot("timeline"))
    assert "Timeline (every attempt)" in release.layout.report_index.read_text()


def test_a_failing_report_is_one_warning_not_an_error(built, monkeypatch, caplog):
    release, _, _ = built

    def broken(_release):
        raise OSError("disk on fire\nsecond line")

    monkeypatch.setattr("lsdask.report.write_report", broken)
    with caplog.at_level(logging.WARNING):
        assert release.refresh_report() is None
    assert [r.getMessage() for r in caplog.records] == [
        "run report not refreshed: OSError: disk on fire"]


# -- the real browser ----------------------------------------------------------------------
class Chromium:
    """Headless Chromium driven through the DevTools protocol (one page)."""

    def __init__(self, exe: str):
        import websocket

        self.profile = tempfile.mkdtemp(prefix="lsdask-chromium-")
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-port=0", "--remote-allow-origins=*",
             f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.monotonic() < deadline and self.proc.poll() is None, "no DevTools port"
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60,
                                              suppress_origin=True)
        self.n = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                assert "error" not in msg, (method, msg["error"])
                return msg["result"]
            self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            assert time.monotonic() < deadline, f"no {event}"
            self.events.append(json.loads(self.ws.recv()))

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression,
                         returnByValue=True)["result"]["value"]

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")  # before `built`: a missing browser fails or skips at once
def chromium() -> str:
    """Debian's chromium; missing: a failure under CI=true (.ci/run installs it), else a skip."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        msg = "chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def test_report_in_headless_chromium(chromium, built):
    release, _, _ = built
    layout = release.layout
    assert main(["report", str(release.config.path)]) == 0
    browser = Chromium(chromium)
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable")
        browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=900,
                     deviceScaleFactor=1, mobile=False)
        browser.call("Page.navigate", url=layout.report_index.resolve().as_uri())
        browser.wait_for("Page.loadEventFired")
        assert browser.js("document.title") == f"lsdask report: {release.name}"
        images = browser.js("[...document.images].map(i => [i.src, i.complete, i.naturalWidth])")
        assert len(images) == len(Page(layout.report_index.read_text()).srcs) >= 8
        broken = [src for src, complete, width in images if not complete or width == 0]
        assert not broken, broken
        links = browser.js("[...document.links].map(a => a.href)")
        for href in links:
            u = urlparse(href)
            assert u.scheme == "file", href
            assert Path(url2pathname(u.path)).is_file(), href
        height = browser.js("document.documentElement.scrollHeight")
        browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=height,
                     deviceScaleFactor=1, mobile=False)
        shot = browser.call("Page.captureScreenshot", format="png")
        layout.report_screenshot.write_bytes(base64.b64decode(shot["data"]))
        errors = [e for e in browser.events if
                  e.get("method") in ("Runtime.exceptionThrown", "Network.loadingFailed")
                  or (e.get("method") == "Runtime.consoleAPICalled"
                      and e["params"]["type"] in ("error", "assert"))
                  or (e.get("method") == "Log.entryAdded"
                      and e["params"]["entry"]["level"] == "error")]
        assert not errors, errors
        loaded = [e for e in browser.events if e.get("method") == "Network.loadingFinished"]
        assert len(loaded) >= len(images)
    finally:
        browser.close()
    check_png(layout.report_screenshot)
    with Image.open(layout.report_screenshot) as im:
        assert im.size[0] == 1280 and im.size[1] >= 900
