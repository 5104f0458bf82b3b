"""What a centre tells a monitoring system, on its portal: ``/metrics``, ``/healthz``, ``/readyz``.

A centre is often offline, so nobody scrapes it from the capital; a regional relay, a
laptop on the LAN, or a Prometheus agent on the node itself that forwards when a link is up
does. What they read comes from the node's state database, not from this process's memory:
a pass run by ``caravane node sync`` from cron, by the agent or by a drive import counts
the same, and the counts survive a restart (they are counters, so ``rate()`` works on them
across one).

``/readyz`` checks what serving needs: the state database answers at the schema this code
expects and the store's pinned root can be read.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from .state import SCHEMA_HEAD, NodeState
from .sync import SyncResult

if TYPE_CHECKING:  # the agent counts its passes here: no import of it at run time
    from .agent import NodeAgent

log = logging.getLogger("caravane.node.metrics")
OUTCOMES = ("complete", "incomplete", "error", "offline")


def outcome(result: SyncResult) -> str:
    """complete: every channel served its newest release; incomplete: some wait (budget,
    time limit, disk); error: a refusal or failure; offline: no upstream answered."""
    if result.skipped:
        return "offline"
    if not result.ok:
        return "error"
    return "complete" if result.complete else "incomplete"


def record_pass(state: NodeState, result: SyncResult) -> None:
    """Count one sync pass and the bytes it received per route (the agent calls it)."""
    kind = outcome(result)
    counts: dict[str, float] = {f"passes.{kind}": 1}
    for route, n in result.by_route.items():
        counts[f"bytes.{route}"] = n
    try:
        state.add_counts(counts, at={f"last_pass.{kind}": time.time()})
    except Exception as exc:  # a full disk must not turn a good pass into a failure
        log.warning("could not count the sync pass for /metrics: %s", exc)


class NodeCollector(Collector):
    """Reads the node's state at each scrape."""

    def __init__(self, node: NodeAgent) -> None:
        self.node = node

    def collect(self) -> list[Metric]:
        node = self.node
        passes = CounterMetricFamily(
            "caravane_node_sync_passes",
            "Sync passes by outcome (complete, incomplete, error, offline).",
            labels=["outcome"],
        )
        got = node.state.counts("passes.")
        for kind in OUTCOMES:
            passes.add_metric([kind], got.get(kind, 0.0))
        last = GaugeMetricFamily(
            "caravane_node_last_sync_timestamp_seconds",
            "When the last pass of each outcome ended (Unix time).",
            labels=["outcome"],
        )
        for kind, when in sorted(node.state.counts("last_pass.").items()):
            last.add_metric([kind], when)
        received = CounterMetricFamily(
            "caravane_node_received_bytes",
            "Bytes received from upstreams, by route (network, peer, usb, rsync ...).",
            labels=["route"],
        )
        for route, n in sorted(node.state.counts("bytes.").items()):
            received.add_metric([route], n)
        usage = shutil.disk_usage(node.config.data_dir)
        free = GaugeMetricFamily(
            "caravane_node_disk_free_bytes", "Free bytes on the node's data disk."
        )
        free.add_metric([], usage.free)
        total = GaugeMetricFamily("caravane_node_disk_total_bytes", "Size of the node's data disk.")
        total.add_metric([], usage.total)
        active = GaugeMetricFamily(
            "caravane_node_active_version",
            "The release each channel serves now (0: none yet).",
            labels=["channel"],
        )
        latest = GaugeMetricFamily(
            "caravane_node_latest_known_version",
            "The newest release of each channel this node has verified metadata for.",
            labels=["channel"],
        )
        for ch in node.channels():
            active.add_metric([ch], node.releases.active(ch) or 0)
            try:
                latest.add_metric([ch], node.repo.channel_meta(ch).version)
            except Exception:  # nothing verified yet for this channel
                latest.add_metric([ch], 0)
        waiting = GaugeMetricFamily(
            "caravane_node_reports_waiting", "Signed reports not yet delivered to the hub."
        )
        waiting.add_metric([], len(node.state.unsent_reports()))
        return [passes, last, received, free, total, active, latest, waiting]


METRICS_REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("metrics", CollectorRegistry)
NODE: web.AppKey[NodeAgent] = web.AppKey("metrics_node")


async def metrics(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(generate_latest, request.app[METRICS_REGISTRY])
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def readiness(node: NodeAgent) -> dict[str, str]:
    """Each check's word: "ok", or what is wrong."""
    checks: dict[str, str] = {}
    try:
        node.state.ping()
        checks["database"] = "ok"
        revision = node.state.revision()
        checks["schema"] = (
            "ok"
            if revision == SCHEMA_HEAD
            else f"state database at revision {revision or 'none'}, this node expects "
            f"{SCHEMA_HEAD}: run any `caravane node` command once to migrate it"
        )
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}: {str(exc)[:200]}"
        checks["schema"] = "unknown: the state database did not answer"
    checks["store"] = node.repo.readable()
    return checks


async def readyz(request: web.Request) -> web.Response:
    checks = await asyncio.to_thread(readiness, request.app[NODE])
    ready = all(v == "ok" for v in checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


def add_metrics(app: web.Application, node: NodeAgent) -> None:
    """Routes ``/metrics``, ``/healthz`` and ``/readyz`` on the portal."""
    registry = CollectorRegistry()
    registry.register(NodeCollector(node))
    app[METRICS_REGISTRY] = registry
    app[NODE] = node
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
