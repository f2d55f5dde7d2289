"""`graphrt serve`: the HTTP app (service.py) as Ray Serve replicas, one engine (one GPU) each,
or, without --ray, as one local replica under uvicorn. Ray Serve's proxy spreads requests over
the replicas; each replica batches its own requests into its engine's graph buckets."""

from __future__ import annotations

import dataclasses

import uvicorn
from ray import serve

from .offline import check_resources, connect
from .service import LocateService, ServiceConfig, build_app

APP_NAME = "graphrt"


@serve.ingress()
class LocateDeployment:
    """A Ray Serve replica: one engine and the same FastAPI app as the local server."""

    def __init__(self, cfg: ServiceConfig):
        self.service = LocateService(cfg)

    def __serve_build_asgi_app__(self):
        return build_app(self.service)


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    gpus_per_engine: float = 1.0  # 0: replicas on CPUs
    max_ongoing_requests: int = 0  # per replica; 0: four batches' worth, so batches can fill


def run_local(cfg: ServiceConfig, host: str, port: int) -> None:
    """One replica in this process (blocks until interrupted)."""
    uvicorn.run(build_app(LocateService(cfg)), host=host, port=port, log_level="warning")


def deploy(cfg: ServiceConfig, opts: ServeOptions, address: str | None = None, blocking: bool = True) -> None:
    """Start Serve's HTTP proxy on host:port and `replicas` engine replicas on the cluster."""
    connect(address)
    check_resources(opts.replicas, opts.gpus_per_engine)
    serve.start(http_options={"host": opts.host, "port": opts.port})
    rows = cfg.batch_rows or 32
    deployment = serve.deployment(
        LocateDeployment, name="locate", num_replicas=opts.replicas,
        max_ongoing_requests=opts.max_ongoing_requests or 4 * rows,
        ray_actor_options={"num_gpus": opts.gpus_per_engine, "num_cpus": 0 if opts.gpus_per_engine else 1})
    serve.run(deployment.bind(cfg), name=APP_NAME, route_prefix="/", blocking=blocking)


def shutdown() -> None:
    serve.delete(APP_NAME)
    serve.shutdown()
