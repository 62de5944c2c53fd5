"""Render deploy/grafana/dashboards/connman.json to a PNG without Grafana.

A real workload (three consumers, a saturating burst, a leak, killed backends, a
server restart) runs on a throwaway PostgreSQL cluster with connman's metrics served
over HTTP; a real Prometheus (the local ``prometheus`` binary) scrapes it every second;
then every panel's own PromQL, with ``$pool``/``$consumer`` set to All and
``$__rate_interval`` to 5s, is asked of Prometheus' query_range API and drawn with
matplotlib on the dashboard's grid.

    uv run --with matplotlib python deploy/grafana/render_dashboard.py [--seconds 100]

Needs the PostgreSQL server binaries and prometheus (Debian: postgresql, prometheus).
Loopback only; everything it starts it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg

from connman import AcquireTimeout, ConnectionManager, PoolConfig, PoolUnavailable
from connman import metrics as cm_metrics
from connman.testing.cluster import LocalCluster

HERE = Path(__file__).parent
DASHBOARD = HERE / "dashboards" / "connman.json"
OUTPUT = HERE / "connman-dashboard.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_prometheus(target_port: int, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: connman\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
    )
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("prometheus did not become ready") from None
            time.sleep(0.1)


async def workload(cluster: LocalCluster, manager: ConnectionManager, seconds: float) -> None:
    """Phases, as fractions of ``seconds``: steady, saturating burst, leak, killed
    backends, server down, steady."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    stop = asyncio.Event()

    async def until(fraction: float) -> None:
        await asyncio.sleep(max(0.0, start + fraction * seconds - loop.time()))

    async def consumer(name: str, rate: float, query_s: float, timeout: float) -> None:
        while not stop.is_set():
            try:
                async with manager.lease(name, timeout=timeout) as lease:
                    await lease.connection.execute(f"SELECT pg_sleep({query_s})")
            except (AcquireTimeout, PoolUnavailable, asyncpg.PostgresError, OSError):
                pass
            except asyncpg.InterfaceError:
                pass
            await asyncio.sleep(random.expovariate(rate))

    async def burst() -> None:
        await until(0.2)
        tasks = [asyncio.create_task(consumer("dgent", 50, 0.08, 2.0)) for _ in range(16)]
        await until(0.42)
        for t in tasks:
            t.cancel()

    async def leak() -> None:
        await until(0.45)
        async with manager.lease("sqlalchemy"):
            await asyncio.sleep(seconds * 0.08)  # past leak_threshold

    async def faults() -> None:
        await until(0.58)
        admin = await asyncpg.connect(cluster.dsn)
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'connman'"
        )
        await admin.close()
        await until(0.68)
        await asyncio.to_thread(cluster.stop)
        await asyncio.sleep(seconds * 0.08)
        await asyncio.to_thread(cluster.start)

    background = [
        asyncio.create_task(consumer("sqlalchemy", 40, 0.002, 0.5)),
        asyncio.create_task(consumer("sqlalchemy", 40, 0.002, 0.5)),
        asyncio.create_task(consumer("dgent", 30, 0.005, 1.0)),
        asyncio.create_task(consumer("brain", 15, 0.01, 0.1)),
        asyncio.create_task(consumer("brain", 15, 0.01, 0.1)),
    ]
    scripted = [asyncio.create_task(c) for c in (burst(), leak(), faults())]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*scripted, return_exceptions=True)
    for t in background:
        t.cancel()
    await asyncio.gather(*background, return_exceptions=True)


def query_range(prom: str, expr: str, start: float, end: float) -> list[dict[str, Any]]:
    expr = (
        expr.replace('"$pool"', '".*"')
        .replace('"$consumer"', '".*"')
        .replace("$__rate_interval", "5s")
    )
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": "1s"})
    with urllib.request.urlopen(f"{prom}/api/v1/query_range?{params}", timeout=30) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def legend(template: str, labels: dict[str, str]) -> str:
    out = template
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value)
    return out or ",".join(f"{k}={v}" for k, v in labels.items()) or "value"


def render(prom: str, start: float, end: float, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_w, unit_h = 0.78, 0.42  # inches per grid unit
    fig = plt.figure(figsize=(24 * unit_w, rows * unit_h + 0.8), facecolor="#111217")
    fig.suptitle(
        f"{dashboard['title']}   (pool: All, consumer: All; rendered from Prometheus data)",
        color="#d8d9da",
        fontsize=13,
        x=0.01,
        ha="left",
    )
    colors = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff"]
    for panel in panels:
        g = panel["gridPos"]
        left = g["x"] / 24 + 0.03
        width = g["w"] / 24 - 0.036
        top = 1 - (g["y"] / rows) * (1 - 0.8 / (rows * unit_h + 0.8)) - 0.8 / (rows * unit_h + 0.8)
        height = g["h"] / rows * (1 - 0.8 / (rows * unit_h + 0.8)) - 0.012
        ax = fig.add_axes((left, top - height, width, height - 0.018), facecolor="#181b1f")
        ax.set_title(panel["title"], color="#d8d9da", fontsize=10, loc="left")
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        series: list[tuple[str, list[float], list[float]]] = []
        for target in panel["targets"]:
            for result in query_range(prom, target["expr"], start, end):
                ts = [float(t) - start for t, _ in result["values"]]
                vs = [float(v) for _, v in result["values"]]
                series.append((legend(target.get("legendFormat", ""), result["metric"]), ts, vs))
        if panel["type"] == "stat":
            ax.set_xticks([])
            ax.set_yticks([])
            text = "no data"
            if series:
                name, _, vs = series[-1]
                last = next((v for v in reversed(vs) if not math.isnan(v)), float("nan"))
                if panel["options"].get("textMode") == "name":
                    text = name
                elif panel["title"] == "Pools up":
                    text = "UP" if last >= 1 else "DOWN"
                else:
                    decimals = panel["fieldConfig"]["defaults"].get("decimals")
                    text = f"{last:.{decimals}f}" if decimals is not None else f"{last:g}"
            color = "#f2495c" if text in ("DOWN",) or "degraded: true" in text else "#73bf69"
            ax.text(0.5, 0.45, text, ha="center", va="center", fontsize=18, color=color)
            continue
        for i, (name, ts, vs) in enumerate(series):
            ax.plot(ts, vs, label=name, color=colors[i % len(colors)], linewidth=1.2)
        ax.grid(color="#2c3235", linewidth=0.5)
        finite = [v for _, _, vs in series for v in vs if math.isfinite(v)]
        if finite:
            ax.set_ylim(bottom=min(0.0, min(finite)), top=max(finite) * 1.15 or 1.0)
        if unit == "s":
            ax.yaxis.set_major_formatter(
                matplotlib.ticker.FuncFormatter(
                    lambda v, _: f"{v * 1000:.0f} ms" if v < 1 else f"{v:.1f} s"
                )
            )
        ax.set_xlabel("seconds", color="#8e8e8e", fontsize=7)
        if series:
            ax.legend(
                fontsize=7,
                loc="upper left",
                facecolor="#181b1f",
                edgecolor="#2c3235",
                labelcolor="#d8d9da",
                ncol=min(3, len(series)),
            )
    fig.savefig(output, dpi=80, facecolor=fig.get_facecolor())
    print(f"wrote {output}")


async def main(seconds: float) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="connman-render-"))
    cluster = LocalCluster()
    cluster.start()
    prom: subprocess.Popen[bytes] | None = None
    try:
        metrics = cm_metrics.Metrics(None)
        config = PoolConfig(
            min_size=2,
            max_size=8,
            consumer_limits={"brain": 2},
            leak_threshold=seconds * 0.04,
            reconnect_initial_delay=0.05,
            reconnect_max_delay=1.0,
        )
        manager = ConnectionManager(cluster.url, config=config, observer=metrics.observer)
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry()
        registry.register(metrics)
        metrics.registry = registry
        async with manager:
            port = free_port()
            server = cm_metrics.serve_metrics(manager, port=port, metrics=metrics)
            prom, prom_url = start_prometheus(port, workdir)
            try:
                start = time.time()
                await workload(cluster, manager, seconds)
                await asyncio.sleep(3)  # the last scrapes
                end = time.time()
            finally:
                server.close()
        render(prom_url, start, end, OUTPUT)
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(30)
        cluster.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=100.0)
    args = parser.parse_args()
    asyncio.run(main(args.seconds))
