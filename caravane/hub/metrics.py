"""What the hub tells a monitoring system: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``.

``/metrics`` is prometheus_client's text format, so any Prometheus, VictoriaMetrics or
Grafana Agent scrapes it as it is. Two kinds of series:

- counted by this process since it started (check-ins, bytes served, job runs and
  failures): with several hub processes, add them up (``sum``);
- read from the database at each scrape (centres by state, releases per channel, active
  tokens): the same on every process, so take one of them (``max``).

``/healthz`` answers as long as the event loop does (a supervisor restarts a process that
stops answering); ``/readyz`` also checks what serving needs: the database answers, the
repository's root metadata can be read, and the schema is the one this code expects (a
load balancer sends no traffic to a process that is not ready).

Each application has its own registry rather than prometheus_client's global one: a test
or a process may run several hubs, and each must count only its own work.
"""

from __future__ import annotations

import ipaddress
import logging

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from .appstate import HUB_KEY, in_thread
from .service import Hub

log = logging.getLogger("caravane.hub.metrics")

#: the report route of the API: one POST is one check-in by a centre
REPORT_ROUTE = "/api/v1/nodes/{nid}/reports"
REPO_KINDS = ("metadata", "manifests", "objects", "packs")


class HubMetrics:
    """The counters of one hub application, and the collector that reads the database."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.registry = CollectorRegistry()
        self.checkins = Counter(
            "caravane_hub_checkins",
            "Reports centres sent over the network or through a peer, by outcome "
            "(accepted, replayed: already held, refused: bad signature or unknown centre).",
            ["outcome"],
            registry=self.registry,
        )
        self.served = Counter(
            "caravane_hub_served_bytes",
            "Bytes of the repository sent to centres, mirrors and drives, by kind of file.",
            ["kind"],
            registry=self.registry,
        )
        self.publishes = Counter(
            "caravane_hub_publishes",
            "Releases signed by this process (API and web publishing), by channel.",
            ["channel"],
            registry=self.registry,
        )
        self.job_runs = Counter(
            "caravane_hub_job_runs",
            "Scheduled job runs by this process (packs, uploads, gc, expiry, stale).",
            ["job"],
            registry=self.registry,
        )
        self.job_failures = Counter(
            "caravane_hub_job_failures",
            "Scheduled job runs that ended in an error (the log says which).",
            ["job"],
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "caravane_hub_job_duration_seconds",
            "How long each scheduled job ran.",
            ["job"],
            buckets=(0.1, 1, 10, 60, 600, 3600),
            registry=self.registry,
        )
        for kind in REPO_KINDS:
            self.served.labels(kind)
        for outcome in ("accepted", "replayed", "refused"):
            self.checkins.labels(outcome)
        self.registry.register(_DatabaseCollector(hub))

    def job_ran(self, job: str, seconds: float, failed: bool) -> None:
        """What :class:`hub.jobs.JobRunner` calls after each scheduled run."""
        self.job_runs.labels(job).inc()
        self.job_seconds.labels(job).observe(seconds)
        if failed:
            self.job_failures.labels(job).inc()

    def published(self, channel: str) -> None:
        self.publishes.labels(channel).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _DatabaseCollector(Collector):
    """Series read from the database at each scrape (shared by every hub process)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> list[Metric]:
        try:
            counts = self.hub.operations_counts()
        except Exception as exc:  # the scrape still shows the process's own counters
            log.warning("metrics: the database did not answer (%s)", exc)
            return []
        centres = GaugeMetricFamily(
            "caravane_hub_centres",
            "Registered centres by state (not_enrolled, stale, behind, up_to_date).",
            labels=["state"],
        )
        for state, n in sorted(counts["centres"].items()):
            centres.add_metric([state], n)
        releases = GaugeMetricFamily(
            "caravane_hub_releases", "Releases recorded per channel.", labels=["channel"]
        )
        for channel, n in sorted(counts["releases"].items()):
            releases.add_metric([channel], n)
        tokens = GaugeMetricFamily("caravane_hub_tokens_active", "API tokens not revoked.")
        tokens.add_metric([], counts["tokens"]["active"])
        return [centres, releases, tokens]


METRICS: web.AppKey[HubMetrics] = web.AppKey("metrics", HubMetrics)
SCHEMA_HEAD: web.AppKey[list[str]] = web.AppKey("schema_head", list)


def schema_head(url: str) -> str:
    """The newest hub schema revision this code ships (alembic's head; "" if none)."""
    from alembic.script import ScriptDirectory

    from caravane.migrations import alembic_config

    return ScriptDirectory.from_config(alembic_config(url, "hub")).get_current_head() or ""


def allowed(request: web.Request, allow: list[str]) -> bool:
    """True when hub.toml's ``metrics_allow`` is empty or names the caller's network."""
    if not allow:
        return True
    try:
        addr = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(net, strict=False) for net in allow)


async def metrics(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    if not allowed(request, hub.config.metrics_allow):
        return web.json_response(
            {"error": "metrics are not open to this address (hub.toml metrics_allow)"},
            status=403,
        )
    body = await in_thread(request.app[METRICS].render)
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def readiness(hub: Hub, head: str | None) -> dict[str, str]:
    """Each check's word: "ok", or what is wrong and what to do."""
    checks: dict[str, str] = {}
    try:
        revision = hub.database_revision()
        checks["database"] = "ok"
        if head is not None and revision != head:
            checks["schema"] = (
                f"database at revision {revision or 'none'}, this hub expects {head}: "
                "migrate the database"
            )
        else:
            checks["schema"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}: {str(exc)[:200]}"
        checks["schema"] = "unknown: the database did not answer"
    checks["repository"] = hub.repo.readable()
    return checks


async def readyz(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    cache = request.app[SCHEMA_HEAD]
    if not cache:
        cache.append(await in_thread(schema_head, hub.config.url))
    checks = await in_thread(readiness, hub, cache[0] or None)
    ready = all(v == "ok" for v in checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def _count_response(request: web.Request, response: web.StreamResponse) -> None:
    """Count what leaves: repository bytes by kind, and each check-in by its outcome."""
    m = request.app.get(METRICS)
    if m is None:
        return
    path = request.path
    if path.startswith("/repo/") and response.status in (200, 206):
        kind = path[6:].split("/", 1)[0]
        if kind in REPO_KINDS and response.content_length:
            m.served.labels(kind).inc(response.content_length)
        return
    resource = request.match_info.route.resource
    if request.method == "POST" and resource is not None and resource.canonical == REPORT_ROUTE:
        outcome = {200: "accepted", 409: "replayed"}.get(response.status, "refused")
        m.checkins.labels(outcome).inc()


def add_metrics(app: web.Application, hub: Hub) -> HubMetrics:
    """Routes ``/metrics``, ``/healthz``, ``/readyz`` and the response counter."""
    m = HubMetrics(hub)
    app[METRICS] = m
    app[SCHEMA_HEAD] = []
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.on_response_prepare.append(_count_response)
    return m
