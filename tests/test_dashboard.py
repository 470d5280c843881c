"""The dashboard at `/`, loaded in headless Chromium against a real control plane with agents: what
it shows arrives live (a worker that joins, one that is lost, a task that runs while the page is
open), and it is behind the same tokens as the rest of HTTP. Screenshots are kept in
$GPUCP_ARTIFACTS (tests/artifacts by default)."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser import Browser, Page, find_chromium
from cluster import AgentProcess, ControlPlaneProcess, eventually, wait_for_workers
from gpucp import Client
from test_autoscaler import autoscaled, gpu_task, pool

ARTIFACTS = Path(os.environ.get("GPUCP_ARTIFACTS") or Path(__file__).parent / "artifacts")
TOKENS = {"admin": "adm-token", "viewer": "view-token"}
AGENT_ENV = {"GPUCP_AGENT_TOKEN": "agents"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    binary = find_chromium()
    assert binary, "apt-get installed chromium but no chromium binary is on PATH"
    with Browser(binary) as b:
        yield b


def auth_file(tmp_path: Path) -> Path:
    path = tmp_path / "auth.toml"
    digest = {role: hashlib.sha256(token.encode()).hexdigest() for role, token in TOKENS.items()}
    path.write_text(
        f'[[principal]]\nname = "ops"\ntoken_sha256 = "{digest["admin"]}"\nrole = "admin"\n'
        f'[[principal]]\nname = "acme-viewer"\ntoken_sha256 = "{digest["viewer"]}"\nrole = "viewer"\n'
        'tenants = ["acme"]\n'
    )
    return path


def request(cp: ControlPlaneProcess, path: str, token: str = "") -> http.client.HTTPResponse:
    """A GET left open (a stream is read as far as the caller wants); close it when done."""
    conn = http.client.HTTPConnection("127.0.0.1", cp.http_port, timeout=30)
    # Connection: close hands the socket to the response, which closes it when read or closed.
    headers = {"Connection": "close", **({"Authorization": f"Bearer {token}"} if token else {})}
    conn.request("GET", path, headers=headers)
    return conn.getresponse()


def first_event(reply: http.client.HTTPResponse, name: str) -> dict[str, object]:
    """The data of the stream's first event called `name`."""
    for _ in range(20):
        block = b""
        while not block.endswith(b"\n\n"):
            block += reply.readline()
        lines = block.decode().splitlines()
        if lines[0] == f"event: {name}":
            data: dict[str, object] = json.loads(lines[1].removeprefix("data: "))
            return data
    raise AssertionError(f"no {name} event in the stream's first 20")


def open_dashboard(browser: Browser, cp: ControlPlaneProcess, token: str) -> Page:
    page = browser.page()
    page.goto(f"http://127.0.0.1:{cp.http_port}/#token={token}")
    return page


def task_state(page: Page, task_id: str) -> str:
    return str(page.evaluate(f"(document.querySelector('#tasks tr[data-task=\"{task_id}\"]') || {{dataset: {{}}}})"
                             ".dataset.state || ''"))


def worker_state(page: Page, worker_id: str) -> str:
    return str(page.evaluate(f"(document.querySelector('#workers tr[data-worker=\"{worker_id}\"] .badge') || {{}})"
                             ".textContent || ''"))


def test_the_dashboard_shows_the_fleet_and_tasks_live(tmp_path, browser):
    cp = ControlPlaneProcess(tmp_path, "--auth", str(auth_file(tmp_path)), "--reconnect-grace", "0",
                             env=AGENT_ENV).start()
    agents = [AgentProcess(tmp_path, cp.address, f"w{i}", "--gpus", "2xA100-80GB", env=AGENT_ENV) for i in range(2)]
    big: AgentProcess | None = None
    page = None
    try:
        with Client(cp.address, token=TOKENS["admin"]) as client:
            wait_for_workers(client, ["w0", "w1"])
            done = client.submit("noop", tenant="acme")
            client.wait(done, timeout_s=30)
            waiting = client.submit("noop", gpus=4, tenant="acme")  # no worker has 4 GPUs yet

            page = open_dashboard(browser, cp, TOKENS["admin"])
            page.wait_for("document.body.dataset.loadedMs", what="the page's first summary and tables")
            for worker in ("w0", "w1"):
                assert worker_state(page, worker) == "connected", page.evaluate("document.body.innerText")
            gpus = page.evaluate("document.querySelector('#workers tr[data-worker=\"w0\"]').innerText")
            assert "°C" in gpus and "GiB" in gpus, f"w0's row shows no GPU temperature and memory: {gpus}"
            assert task_state(page, done) == "succeeded"
            assert task_state(page, waiting) == "pending"
            why = page.evaluate(f"document.querySelector('#tasks tr[data-task=\"{waiting}\"] .why').textContent")
            assert "GPU" in why, f"the pending task's row does not say why it waits: {why!r}"
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(ARTIFACTS / "dashboard-pending.png")

            # While the page is open: a worker big enough joins and the waiting task runs; one is
            # drained, one is lost. The page shows it all without a reload.
            big = AgentProcess(tmp_path, cp.address, "w-big", "--gpus", "4xA100-80GB", env=AGENT_ENV)
            client.wait(waiting, timeout_s=30)
            client.drain("w0")
            agents[1].kill()
            page.wait_for(f"!!document.querySelector('#tasks tr[data-task=\"{waiting}\"][data-state=succeeded]')",
                          what=f"task {waiting} shown as succeeded")
            eventually(lambda: worker_state(page, "w-big") == "connected", 30, "w-big shown as connected")
            eventually(lambda: worker_state(page, "w0") == "draining", 30, "w0 shown as draining")
            eventually(lambda: worker_state(page, "w1") == "lost", 30, "w1 shown as lost")

            # A task opens with its events and where it ran and why.
            page.evaluate(f"document.querySelector('#tasks tr[data-task=\"{waiting}\"]').click()")
            events = page.wait_for("document.querySelector('#detail-events tbody').innerText.includes('finished')"
                                   " && document.querySelector('#detail-events tbody').innerText",
                                   what="the task's events")
            assert "assigned" in events and "w-big" in events, events
            fields = page.evaluate("document.querySelector('#detail-fields').innerText")
            assert "w-big" in fields, fields
            page.screenshot(ARTIFACTS / "dashboard-4-agents.png")
            assert not page.console, f"the page logged errors: {page.console}"
    finally:
        if page is not None:
            page.close()
        for agent in [*agents, *([big] if big else [])]:
            agent.stop()
        cp.kill()


def test_the_dashboard_needs_a_token_and_shows_a_reader_only_its_tenants(tmp_path, browser):
    cp = ControlPlaneProcess(tmp_path, "--auth", str(auth_file(tmp_path)), env=AGENT_ENV).start()
    page = None
    try:
        with Client(cp.address, token=TOKENS["admin"]) as client:
            mine = client.submit("noop", gpus=1, tenant="acme")  # no worker: both wait
            theirs = client.submit("noop", gpus=1, tenant="other")

        # The page itself holds no data; everything it reads asks for a token.
        page_reply = request(cp, "/")
        assert page_reply.status == 200 and b"/dashboard/app.js" in page_reply.read()
        for path in ("/api/v1/dashboard/stream", "/api/v1/dashboard/workers", "/api/v1/tasks"):
            reply = request(cp, path)
            body = json.loads(reply.read())
            assert reply.status == 401 and "token" in body["error"], (path, reply.status, body)
        reply = request(cp, "/api/v1/dashboard/workers", TOKENS["viewer"])
        assert reply.status == 403 and "admin.read" in json.loads(reply.read())["error"]

        # A stranger's browser is asked for a token.
        page = browser.page()
        page.goto(f"http://127.0.0.1:{cp.http_port}/")
        message = page.wait_for("!document.querySelector('#auth').hidden && "
                                "document.querySelector('#auth-message').textContent", what="the token form")
        assert "token" in message, message
        assert page.evaluate("document.querySelector('#tasks tbody').rows.length") == 0
        page.close()

        # A viewer sees its tenant's tasks and queue, and neither the fleet nor the other tenant.
        page = open_dashboard(browser, cp, TOKENS["viewer"])
        page.wait_for("document.body.dataset.loadedMs", what="the viewer's page")
        assert task_state(page, mine) == "pending" and task_state(page, theirs) == ""
        assert page.evaluate("document.querySelector('#fleet').hidden") is True
        assert "acme" in page.evaluate("document.querySelector('#by-tenant').innerText")
        assert "other" not in page.evaluate("document.querySelector('#by-tenant').innerText")
        page.screenshot(ARTIFACTS / "dashboard-viewer.png")

        # A viewer's summary carries no cluster-wide numbers.
        reply = request(cp, "/api/v1/dashboard/stream", TOKENS["viewer"])
        summary = first_event(reply, "summary")
        reply.close()
        assert summary["queue_by_tenant"] == {"acme": 1} and "fleet" not in summary, summary
    finally:
        if page is not None:
            page.close()
        cp.kill()


def test_live_streams_are_capped_per_principal_and_end_at_shutdown(tmp_path):
    cp = ControlPlaneProcess(tmp_path).start()
    streams = []
    try:
        for _ in range(4):
            reply = request(cp, "/api/v1/dashboard/stream")
            assert reply.status == 200 and reply.getheader("Content-Type") == "text/event-stream"
            summary = first_event(reply, "summary")
            assert summary["fleet"]["workers"]["connected"] == 0, summary
            streams.append(reply)
        refused = request(cp, "/api/v1/dashboard/stream")
        body = json.loads(refused.read())
        assert refused.status == 429 and "close a dashboard tab" in body["error"], body
        streams.pop().close()
        def another() -> bool:
            streams.append(request(cp, "/api/v1/dashboard/stream"))
            return streams[-1].status == 200

        eventually(another, 10, "a stream to be served once another closed")
        # Open pages do not hold the shutdown: SIGTERM ends their streams and the process exits.
        assert cp.terminate(timeout_s=20) == 0, cp.log()
    finally:
        for reply in streams:
            reply.close()
        cp.kill()


def test_worker_pages_are_bounded_and_filtered(tmp_path):
    cp = ControlPlaneProcess(tmp_path).start()
    agents = [AgentProcess(tmp_path, cp.address, f"w{i}") for i in range(3)]
    try:
        with cp.client() as client:
            wait_for_workers(client, ["w0", "w1", "w2"])
            client.drain("w1")

        def page(query: str) -> tuple[int, Any]:
            reply = request(cp, f"/api/v1/dashboard/workers?{query}")
            return reply.status, json.loads(reply.read())

        status, first = page("limit=2")
        assert status == 200 and [w["worker_id"] for w in first["workers"]] == ["w0", "w1"], first
        status, rest = page(f"limit=2&after={first['next_after']}")
        assert [w["worker_id"] for w in rest["workers"]] == ["w2"] and rest["next_after"] == "", rest
        eventually(lambda: [w["worker_id"] for w in page("state=draining")[1]["workers"]] == ["w1"],
                   10, "the draining filter to list w1 alone")
        assert [w["worker_id"] for w in page("q=2")[1]["workers"]] == ["w2"]
        for query, words in (("limit=5000", "from 1 to 1000"), ("state=asleep", "is not one of")):
            status, body = page(query)
            assert status == 400 and words in str(body["error"]), (query, body)
    finally:
        for agent in agents:
            agent.stop()
        cp.kill()


def test_the_dashboard_shows_the_autoscalers_pools_pods_and_decisions(tmp_path, monkeypatch, browser):
    with autoscaled(tmp_path, monkeypatch, [pool(max=2)]) as (_fake, cp, client, admin):
        ids = client.submit_many([gpu_task("alice", 0.5)] * 2)
        for task_id in ids:
            client.wait(task_id, timeout_s=60)
        decision = eventually(lambda: admin.events("scale_up"), 10, "a scale-up decision")[0].message
        page = open_dashboard(browser, cp, "")
        try:
            page.wait_for("!document.querySelector('#autoscaler-on').hidden", what="the autoscaler's section")
            pools = page.wait_for("document.querySelector('#pools').innerText.includes('a100') && "
                                  "document.querySelector('#pools').innerText", what="pool a100")
            assert "0–2" in pools, pools  # its min and max
            pods = page.evaluate("document.querySelector('#pods').innerText")
            assert "a100" in pods and "running" in pods, pods
            page.wait_for(f"document.querySelector('#scaling').innerText.includes({json.dumps(decision)})",
                          what=f"the decision {decision!r}")
            assert "alice" in page.evaluate("document.querySelector('#spend-tenants').innerText")
            page.screenshot(ARTIFACTS / "dashboard-autoscaler.png")
        finally:
            page.close()


def test_reloading_the_page_does_not_use_up_its_streams(tmp_path, browser):
    """A page left (reloaded, navigated away) ends its stream: the sixth load in a row is live too."""
    cp = ControlPlaneProcess(tmp_path).start()
    page = browser.page()
    try:
        for load in range(6):
            page.goto("about:blank")
            page.goto(f"http://127.0.0.1:{cp.http_port}/")
            page.wait_for("document.querySelector('#live').textContent === 'live' && document.body.dataset.loadedMs",
                          what=f"load {load + 1} to be live")
    finally:
        page.close()
        cp.kill()
