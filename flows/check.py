"""`loom check`: is this cluster ready for Loom? One task pinned to every alive Ray node reports its
host, Python, Ray, Loom and torch versions and GPUs, and whether it sees the work directory (a probe
file the driver writes there); the Prefect API, where one is configured, must answer its health check.

    loom check --ray-address auto --workdir /mnt/loom/work
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def _node_report(probe: str, token: str) -> dict:
    import platform
    import socket
    from importlib.metadata import version

    import ray

    try:
        import torch

        gpus, torch_version = torch.cuda.device_count(), torch.__version__
    except Exception:  # torch missing or broken on this node
        gpus, torch_version = 0, "missing"
    path = Path(probe)
    return {"host": socket.gethostname(), "python": platform.python_version(), "ray": ray.__version__,
            "loom": version("loom"), "torch": torch_version, "cuda_devices": gpus,
            "sees_workdir": path.exists() and path.read_text() == token}


def check_cluster(workdir: Path, ray_address: str | None) -> dict:
    """{"nodes": [...], "problems": [...], "prefect": ...}; problems is empty when all is well."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    address = ray_address or os.environ.get("LOOM_RAY_ADDRESS") or "auto"
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as e:
            raise ValueError(f"no Ray cluster at {address!r} ({e}); start one (`ray start --head`) or pass "
                             "--ray-address HOST:6379") from None
    problems: list[str] = []
    workdir.mkdir(parents=True, exist_ok=True)
    probe_dir = workdir / ".loom-check"
    probe_dir.mkdir(exist_ok=True)
    token = uuid.uuid4().hex
    probe = probe_dir / token
    probe.write_text(token)
    try:
        remote = ray.remote(num_cpus=0)(_node_report)
        alive = [n for n in ray.nodes() if n.get("Alive")]
        refs = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(probe), token) for n in alive]
        nodes = []
        for node, report in zip(alive, ray.get(refs, timeout=300), strict=True):
            resources = node.get("Resources", {})
            nodes.append({"node_ip": node.get("NodeManagerAddress"), "cpus": resources.get("CPU", 0),
                          "gpus": resources.get("GPU", 0), **report})
    finally:
        probe.unlink(missing_ok=True)
    for key in ("python", "ray", "loom"):
        seen = {n[key] for n in nodes}
        if len(seen) > 1:
            problems.append(f"nodes run different {key} versions: {', '.join(sorted(seen))}")
    for n in nodes:
        if not n["sees_workdir"]:
            problems.append(f"node {n['node_ip']} ({n['host']}) does not see the work directory {workdir}: mount "
                            "the same shared storage at the same path on every node")
        if n["gpus"] and n["cuda_devices"] == 0:
            problems.append(f"node {n['node_ip']} offers {n['gpus']:g} GPUs to Ray but torch there sees none "
                            f"(torch {n['torch']}: a CPU build?)")
    prefect = _check_prefect()
    if prefect["healthy"] is False:
        problems.append(f"the Prefect API at {prefect['api_url']} does not answer its health check")
    return {"address": address, "workdir": str(workdir), "nodes": nodes, "prefect": prefect, "problems": problems}


def _check_prefect() -> dict:
    """The Prefect API in PREFECT_API_URL and whether it answers (None: no API configured)."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return {"api_url": None, "healthy": None}
    import httpx

    try:
        healthy = httpx.get(f"{url.rstrip('/')}/health", timeout=10).status_code == 200
    except httpx.HTTPError:
        healthy = False
    return {"api_url": url, "healthy": healthy}
