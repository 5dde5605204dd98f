"""The cluster's widgets and dashboard page on a real LocalCluster (two worker processes,
TCP on 127.0.0.1): the widgets follow real requests, the page's numbers come from each
worker's ``eb_status`` (polled from the client and from the Dask scheduler), and the kill
button kills a real worker process."""
from __future__ import annotations

import time

import numpy as np
import pytest

from edgebench.graph.dags import linear_model

pytestmark = pytest.mark.slow
W = pytest.importorskip("ipywidgets")
pytest.importorskip("jupyter_bokeh")
pytest.importorskip("distributed")
from edgebench.notebook import display  # noqa: E402
from edgebench.notebook.views_cluster import ClusterView, DeploymentView  # noqa: E402


def wait_for(cond, timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


@pytest.fixture(scope="module")
def cl():
    from edgebench.cluster import Cluster
    from edgebench.notebook.dask_pages import register_dask_pages

    register_dask_pages()  # before the scheduler starts: its dashboard gets the cluster page
    c = Cluster.local(n_workers=2, threads_per_worker=1, dashboard=True)
    yield c
    c.close()


@pytest.fixture(scope="module")
def dep(cl):
    d = cl.deploy(linear_model(16, seed=3, name="lin16"), replicas=2, name="vc")
    yield d
    if not d.closed and not cl.closed:
        d.undeploy()


def drive(dep, n: int) -> None:
    x = {"x": np.ones((1, 16), np.float32)}
    for f in [dep.submit(x) for _ in range(n)]:
        f.result(30)


def test_cluster_widget_follows_requests_and_events(cl, dep):
    view = display.widget(cl)
    assert isinstance(view, ClusterView) and view.running and display.widget(cl) is view
    try:
        assert {w["worker"] for w in view.workers} == set(cl.worker_addresses())
        assert [d["deployment"] for d in view.deployments] == ["vc"]
        assert view.deployments[0]["replicas"] == 2 and "vc" in view.tables.value
        assert "deployed" in [e["kind"] for e in view.events] and "deployed" in view.event_list.value
        assert cl.client.scheduler.address in view.header.value
        before = view.deployments[0]["completed"]
        n0 = len(view.sources["vc"].data["t"])
        drive(dep, 150)
        # the daemon updater (not the test) streams new points and refreshes the tables
        assert wait_for(lambda: view.deployments[0]["completed"] >= before + 150)
        assert wait_for(lambda: max(view.sources["vc"].data["rate"], default=0) > 0)
        data = view.sources["vc"].data
        assert len(data["t"]) > n0 and np.nanmax(np.asarray(data["p99_ms"], float)) > 0
        assert f"{before + 150:,}" in view.tables.value
        assert sum(w["replicas"] for w in view.workers) == 2
    finally:
        view.close()
    assert wait_for(lambda: not view.running, 5)


def test_deployment_widget_and_html_fallbacks(cl, dep):
    view = DeploymentView(dep, start=False)
    try:
        done = view.row["completed"]
        drive(dep, 40)
        view.update()
        assert view.row["completed"] == done + 40 and view.row["errors"] == 0
        for r in dep.replicas:
            assert r.rid in view.replicas.value and r.worker in view.replicas.value
        assert len(view.source.data["t"]) == 2 and view.source.data["rate"][-1] > 0
    finally:
        view.close()
    # the HTML cards the bundles carry (what frontends without widgets show)
    bundle = display.mimebundle(dep)
    assert "vc" in bundle["text/html"] and display.WIDGET_MIME in bundle
    assert bundle["text/plain"] == repr(dep)
    html = cl._repr_html_()
    assert "vc" in html and "deployed" in html and all(a in html for a in cl.worker_addresses())
    assert "vc" in display.mimebundle(cl)["text/html"]


def test_dashboard_page_polls_the_workers(cl, dep):
    from bokeh.document import Document

    from edgebench.notebook.dashboard.pages import PAGES, cluster_doc

    assert PAGES.get("/edgebench/cluster") is cluster_doc
    doc = Document()
    cluster_doc(doc, source=cl)
    assert [r.name for r in doc.roots] == ["edgebench-cluster"]
    page = doc.edgebench_pages[0]
    poller = page.feed.poller
    drive(dep, 60)
    polls = poller.polls
    # the page's tick only reads; the poller asks every worker's eb_status on the client's loop
    assert wait_for(lambda: (page.update(), poller.polls >= polls + 2)[1])
    page.update()
    st = page.feed.status
    assert {w["worker"] for w in st.workers} == set(cl.worker_addresses())
    assert all(w["health"] == "ok" for w in st.workers)
    assert sorted(r["replica"] for r in st.replicas) == sorted(r.rid for r in dep.replicas)
    per_worker = {w["worker"]: w["replicas"] for w in st.workers}
    for r in dep.replicas:
        assert per_worker[r.worker] >= 1
    # the workers' own counters and latencies: every answered request was counted there
    assert sum(r["requests"] for r in st.replicas) >= dep.completed
    assert all(0 < r["p50_ms"] <= r["p99_ms"] for r in st.replicas)
    workers, replicas = page.components[1], page.components[4]
    assert set(workers.source.data["worker"]) == set(cl.worker_addresses())
    assert list(replicas.source.data["replica"]) == [r["replica"] for r in st.replicas]
    # under load the rate line rises
    rate = page.components[3].source
    drive(dep, 200)
    n = len(rate.data["time"])
    assert wait_for(lambda: (page.update(), len(rate.data["time"]) > n and rate.data["rate"][-1] > 0)[1])
    # a page without any source picks up this process's default client (the cluster's)
    doc2 = Document()
    cluster_doc(doc2)
    assert doc2.edgebench_pages[0].feed.poller is poller
    # in a notebook: the same page as a live Dashboard, given the cluster
    from edgebench.notebook.dashboard import Dashboard

    dash = Dashboard("/edgebench/cluster", start=False, source=cl)
    assert dash.root.name == "edgebench-cluster" and [p for _, p in dash.callbacks] == [1.0]
    dash.update()
    assert dash.doc.edgebench_pages[0].feed.status is not None


def test_edgebench_dashboard_command_polls_a_scheduler(cl, dep):
    import re
    import subprocess
    import sys

    from bokeh.client import pull_session

    proc = subprocess.Popen([sys.executable, "-m", "edgebench.cli", "dashboard", "--port", "0", "--duration", "60",
                             "--scheduler", cl.client.scheduler.address],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        base = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert base, line + proc.stdout.read() if proc.poll() is not None else line

        def replicas_on_page():
            with pull_session(url=base.group(0) + "/edgebench/cluster") as session:
                return sorted(session.document.select_one({"name": "cluster-replicas"}).data["replica"])

        assert wait_for(lambda: replicas_on_page() == sorted(r.rid for r in dep.replicas), 20, 0.5)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_cluster_page_in_the_dask_dashboard(cl, dep):
    from bokeh.client import pull_session

    from edgebench.notebook.dask_pages import dask_routes

    routes = dask_routes()
    assert "/edgebench-cluster" in routes and "/individual-edgebench-cluster" in routes
    port = cl._dask_cluster.scheduler.http_server.port
    url = f"http://127.0.0.1:{port}/edgebench-cluster"
    drive(dep, 30)

    def replicas_on_page():
        with pull_session(url=url) as session:
            src = session.document.select_one({"name": "cluster-replicas"})
            return list(src.data["replica"])

    # the scheduler polls its workers itself: the replicas appear once its first poll is in
    assert wait_for(lambda: sorted(replicas_on_page()) == sorted(r.rid for r in dep.replicas), 15, 0.5)
    from edgebench.notebook.dashboard.cluster import poller_for

    scheduler = cl._dask_cluster.scheduler
    on_scheduler = poller_for(scheduler)
    assert on_scheduler is not poller_for(cl) and on_scheduler.polls >= 1
    assert on_scheduler.loop is scheduler.loop.asyncio_loop
    assert {w["worker"] for w in on_scheduler.latest.workers} == set(cl.worker_addresses())


def test_kill_button(cl, dep):
    view = ClusterView(cl, start=False)
    try:
        view.kill_worker("tcp://127.0.0.1:1").join(30)   # not a worker: the message says so
        assert "no worker" in view.message.value and not view.kill_button.disabled
        victim = dep.replicas[0].worker
        view.kill_worker(victim).join(30)
        assert "killed" in view.message.value and victim in view.message.value
        assert victim not in cl.worker_addresses() or wait_for(lambda: victim not in cl.worker_addresses())
        # the replica comes back, and requests keep being answered
        assert wait_for(lambda: sum(r.healthy and r.worker != victim for r in dep.replicas) == 2, 30, 0.2)
        drive(dep, 20)
        view.update()
        assert "worker_killed" in [e["kind"] for e in view.events]
        assert view.deployments[0]["replicas"] == 2
    finally:
        view.close()


def test_views_stop_when_the_cluster_closes(cl, dep):
    view, dview = ClusterView(cl, interval=0.1), DeploymentView(dep, interval=0.1)
    try:
        assert view.running and dview.running
        cl.close()
        assert wait_for(lambda: not view.running and not dview.running, 5)
        assert "closed" in view.header.value and view.kill_button.disabled
        assert "undeployed" in dview.header.value
        assert "closed" in cl._repr_html_()
    finally:
        view.close()
        dview.close()
