"""Everything in infra/ is checked by the tool that will read it, as far as this machine allows:
DeepSpeed's config parser (and real engines for ZeRO 0, 2 and 3), Ray's cluster-config validation
(plus botocore's EC2 request model for the AWS node types), the KubeRay CRD fields, the Dockerfile's
stages and build context, the compose files by the Compose Specification (or `docker compose config`
where Docker has it), and Prefect's server on a real PostgreSQL."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
ZERO_CONFIGS = {"zero0": 0, "zero1": 1, "zero2": 2, "zero3": 3, "zero3-offload": 3}


# ---- DeepSpeed -------------------------------------------------------------------------------------

def test_every_deepspeed_config_passes_deepspeeds_parser():
    from deepspeed.runtime.config import DeepSpeedConfig

    from training.config import LoopConfig
    from training.launch import deepspeed_json
    from training.train import deepspeed_config

    assert {p.stem for p in (INFRA / "deepspeed").glob("*.json")} == set(ZERO_CONFIGS)
    for name, stage in ZERO_CONFIGS.items():
        raw = json.loads((INFRA / "deepspeed" / f"{name}.json").read_text())
        parsed = DeepSpeedConfig(copy.deepcopy(raw))
        assert parsed.zero_optimization_stage == stage, name
        assert parsed.bfloat16_config.enabled and parsed.gradient_clipping == 1.0
        offload = name.endswith("offload")
        assert parsed.zero_config.offload_optimizer is not None if offload else parsed.zero_config.offload_optimizer is None
        if offload:
            assert parsed.zero_config.offload_optimizer.device == "cpu" and parsed.zero_config.offload_param.device == "cpu"
        # what a worker builds its engine from: the run's batch sizes and learning rate, checked again
        worker = deepspeed_config(deepspeed_json(name, use_gpu=True), LoopConfig(micro_batch=4, grad_accum=8, lr=1e-4))
        again = DeepSpeedConfig(worker)
        assert (again.train_micro_batch_size_per_gpu, again.gradient_accumulation_steps, again.train_batch_size) == (
            4, 8, 32)
    assert deepspeed_json("", use_gpu=True)["zero_optimization"]["stage"] == 2
    assert deepspeed_json("", use_gpu=False)["zero_optimization"]["stage"] == 1
    with pytest.raises(ValueError, match=r"zero9.*not one of zero0, zero1, zero2, zero3, zero3-offload"):
        deepspeed_json("zero9", use_gpu=False)


@pytest.fixture(scope="module")
def small_tokens(shared, tmp_path_factory) -> Path:
    from tasks.ingest import Ingest
    from tasks.stage import local_mapper, run_stage
    from tasks.tokenize import Tokenize

    tmp = tmp_path_factory.mktemp("zero-tokens")
    text = (shared / "pretrain/tinyshakespeare.txt").read_text()
    with open(tmp / "plays.jsonl", "w") as f:
        for i, p in enumerate(p for p in text.split("\n\n")[:2000] if p.strip()):
            f.write(json.dumps({"id": f"p{i}", "text": p}) + "\n")
    run_stage(Ingest(), run_id="z", stage_dir=tmp / "01", inputs=[str(tmp / "plays.jsonl")], mapper=local_mapper(1))
    run_stage(Tokenize(vocab_size=512), run_id="z", stage_dir=tmp / "tokens", inputs=[str(tmp / "01")],
              mapper=local_mapper(1))
    return tmp / "tokens"


@pytest.mark.slow
def test_zero_0_2_and_3_engines_train_alike_and_their_checkpoints_load(small_tokens, tmp_path):
    """Each config builds a real engine (CPU, gloo) of the same model on the same batches: fp32 losses
    agree across stages, and every checkpoint loads to the same weights (ZeRO-3's through zero_to_fp32)."""
    import torch

    from training.checkpoint import resolve_checkpoint
    from training.launch import PretrainConfig, worker_config
    from training.load import load_model

    losses, weights = {}, {}
    for name in ("zero0", "zero2", "zero3"):
        cfg = PretrainConfig(steps=4, eval_every=4, ckpt_every=4, log_every=2, eval_batches=1, micro_batch=4,
                             deepspeed=name)
        config = worker_config(cfg, small_tokens, tmp_path / name, 512, use_gpu=False)
        (tmp_path / f"{name}.json").write_text(config.model_dump_json())
        proc = subprocess.run([sys.executable, "-m", "training.train", str(tmp_path / f"{name}.json")], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [m["loss"] for m in metrics if "loss" in m]
        weights[name] = load_model(resolve_checkpoint(tmp_path / name / "checkpoints"))[0].state_dict()
    assert len(losses["zero0"]) >= 2
    for name in ("zero2", "zero3"):
        assert losses[name] == pytest.approx(losses["zero0"], rel=1e-4), name
        for key, value in weights["zero0"].items():
            torch.testing.assert_close(weights[name][key], value, rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")


# ---- Ray cluster launcher ---------------------------------------------------------------------------

GPU_INSTANCE_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p3", "p4d", "p4de", "p5", "p5e", "p5en")


def _launcher_config(name: str) -> dict:
    return yaml.safe_load((INFRA / "ray" / name).read_text())


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-local.yaml"])
def test_ray_cluster_configs_pass_rays_own_validation(name):
    """What `ray up` does before it touches a machine: fill defaults, then validate against Ray's schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _launcher_config(name)
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    # the checkout `ray up` runs from is mounted on every node, and every node installs Loom from it
    (target, source), = raw["file_mounts"].items()
    assert (ROOT / source / "pyproject.toml").exists()
    assert any("pip install" in c and target in c for c in raw["setup_commands"])
    # setup_commands run on every node: every node mounts the shared work directory at one path
    assert any("mount" in c and "/mnt/loom" in c for c in raw["setup_commands"])
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    assert any("ray start --head" in c for c in starts) and any("ray start --address" in c for c in starts)
    assert all("LOOM_WORKDIR=/mnt/loom/work" in c for c in starts if "ray start" in c)
    assert {".venv", "loom-work"} <= set(raw["rsync_exclude"])


def test_ray_aws_cluster_has_a_gpu_worker_type_and_valid_ec2_requests():
    """The AWS node types, as the EC2 RunInstances requests Ray makes of them, pass botocore's request model."""
    import botocore.session
    from botocore.validate import ParamValidator

    raw = _launcher_config("cluster.yaml")
    assert raw["provider"]["type"] == "aws"
    shape = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    instance_types = set(shape.members["InstanceType"].enum)
    gpu_types = []
    for name, node_type in raw["available_node_types"].items():
        node_config = node_type["node_config"]
        report = ParamValidator().validate({**node_config, "MinCount": 1, "MaxCount": 1}, shape)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"
        assert node_config["InstanceType"] in instance_types, name
        assert node_config["ImageId"].startswith("resolve:ssm:/aws/service/deeplearning/"), name
        if node_config["InstanceType"].split(".")[0] in GPU_INSTANCE_FAMILIES:
            gpu_types.append(name)
    assert raw["head_node_type"] not in gpu_types and gpu_types, "a GPU worker type beside a CPU head"
    assert all(raw["available_node_types"][t]["max_workers"] >= 1 for t in gpu_types)
    assert all(raw["available_node_types"][t]["min_workers"] == 0 for t in gpu_types), "GPU nodes scale from zero"


def test_ray_local_cluster_config_bootstraps_as_on_premise():
    from ray.autoscaler._private.commands import _bootstrap_config

    raw = _launcher_config("cluster-local.yaml")
    assert raw["provider"]["type"] == "local" and raw["provider"]["head_ip"] and raw["provider"]["worker_ips"]
    config = _bootstrap_config(copy.deepcopy(raw), no_config_cache=True)
    (node_type,) = config["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(raw["provider"]["worker_ips"])


# ---- Kubernetes (KubeRay) ---------------------------------------------------------------------------

def _manifests() -> dict[str, dict]:
    docs = {}
    for path in sorted((INFRA / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path.name
            docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def _pods(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def _mounts_work_volume(pod: dict, claim: str) -> str:
    volume = next(v["name"] for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim)
    (container,) = pod["containers"]
    return next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume)


def _pinned(package: str) -> str:
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    return pins[package]


def test_every_install_path_installs_through_the_constraints_file():
    """The Makefile, the Dockerfile and the AWS cluster's setup install with `-c constraints.txt`, which pins
    the versions this checkout is tested with (Ray, Prefect, DeepSpeed as installed here), not torch."""
    import deepspeed
    import prefect

    assert (_pinned("ray"), _pinned("prefect"), _pinned("deepspeed")) == (
        __import__("ray").__version__, prefect.__version__, deepspeed.__version__)
    assert not any(line.startswith("torch==") for line in (ROOT / "constraints.txt").read_text().splitlines())
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()
    assert (INFRA / "Dockerfile").read_text().count("pip install -c constraints.txt") == 2
    setup = _launcher_config("cluster.yaml")["setup_commands"]
    assert any("-c /home/ubuntu/loom/constraints.txt" in c for c in setup)


def test_kuberay_raycluster_has_gpu_workers_and_shared_storage():
    import ray

    docs = _manifests()
    pvc = docs["PersistentVolumeClaim/loom-work"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "every Ray pod mounts the work directory"
    cluster = docs["RayCluster/loom"]
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__ == _pinned("ray"), "the Ray in the image: constraints.txt's"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict) and all(isinstance(v, str) for v in head["rayStartParams"].values())
    gpu_groups = []
    for group in spec["workerGroupSpecs"]:
        assert {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(group)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        if int(limits.get("nvidia.com/gpu", 0)) >= 1:
            assert container["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
            gpu_groups.append(group)
    assert gpu_groups, "a worker group with GPUs"
    cpu_groups = [g for g in spec["workerGroupSpecs"] if g not in gpu_groups]
    assert cpu_groups and all(g["rayStartParams"].get("num-gpus") == "0" for g in cpu_groups), "CPU pods for curation"
    assert all(g["minReplicas"] == 0 for g in gpu_groups), "GPU pods only while training asks for them"
    assert head["rayStartParams"]["num-cpus"] == "0", "no work scheduled on the head (KubeRay's guidance)"
    for pod in _pods(spec):  # Ray's object store lives in /dev/shm, 64 MiB unless a memory volume is mounted
        shm = next(m["name"] for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/dev/shm")
        assert next(v for v in pod["volumes"] if v["name"] == shm)["emptyDir"]["medium"] == "Memory"
    images = {c["image"] for pod in _pods(spec) for c in pod["containers"]}
    assert len(images) == 1, "one image, so one Python and one Ray, on every pod"
    paths = {_mounts_work_volume(pod, "loom-work") for pod in _pods(spec)}
    assert paths == {"/mnt/loom"}
    for pod in _pods(spec):
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["LOOM_WORKDIR"].startswith("/mnt/loom/")


def test_kuberay_rayjob_runs_loom_pretrain_on_the_gpu_workers():
    import click
    import typer

    from flows.cli import app
    from training.launch import deepspeed_json

    docs = _manifests()
    job = docs["RayJob/loom-pretrain"]
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] in {k.split("/")[1] for k in docs if k.startswith("RayCluster/")}
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["loom", "pretrain"]
    command = typer.main.get_command(app)
    with click.Context(command) as ctx:
        params = command.get_command(ctx, "pretrain").make_context("pretrain", argv[2:]).params
    assert params["gpu"] is True and params["ray_address"] == "auto"
    assert params["workdir"].startswith("/mnt/loom/")
    deepspeed_json(params["deepspeed"], use_gpu=True)
    gpus = sum(g["maxReplicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get(
        "nvidia.com/gpu", 0)) for g in docs["RayCluster/loom"]["spec"]["workerGroupSpecs"])
    assert params["num_workers"] <= gpus, "the GPU group can scale to one GPU per Ray Train worker"


def test_prefect_worker_deployment_serves_the_loom_pool_on_the_ray_cluster():
    docs = _manifests()
    deployment = docs["Deployment/loom-prefect-worker"]
    assert deployment["apiVersion"] == "apps/v1"
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"][
        "labels"].items()
    (container,) = pod["containers"]
    script = " ".join(container["args"])
    pools = {d["work_pool"]["name"] for d in yaml.safe_load((INFRA / "prefect.yaml").read_text())["deployments"]}
    assert re.search(r"prefect worker start --pool (\S+)", script).group(1) in pools
    assert "ray start --address=loom-head-svc:6379" in script, "KubeRay's head service of the RayCluster loom"
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["PREFECT_API_URL"]["valueFrom"]
    assert env["LOOM_RAY_ADDRESS"]["value"] == "auto"
    assert _mounts_work_volume(pod, "loom-work") == "/mnt/loom"
    assert container["image"] == docs["RayCluster/loom"]["spec"]["headGroupSpec"]["template"]["spec"][
        "containers"][0]["image"]


# ---- Containers -------------------------------------------------------------------------------------

def _dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """{stage: [(INSTRUCTION, arguments)]}, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (INFRA / "Dockerfile").read_text())
    stages, current = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+) AS (\S+)", args.strip(), re.IGNORECASE)
            assert match, f"every stage is named: FROM {args}"
            current = match.group(2)
            stages[current] = [("FROM", match.group(1))]
        elif current is not None:
            stages[current].append((instruction, " ".join(args.split())))
    return stages


def test_dockerfile_builds_a_gpu_and_a_cpu_image_of_loom():
    stages = _dockerfile_stages()
    assert set(stages) == {"source", "cpu", "gpu"}
    assert stages["gpu"][0][1].startswith("nvidia/cuda:") and "-devel-" in stages["gpu"][0][1]
    assert stages["cpu"][0][1].startswith("python:3.11")
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
    copied = set()
    for name, steps in stages.items():
        for kind, args in steps:
            if kind == "COPY" and not args.startswith("--from="):
                *sources, _dest = args.split()
                for source in sources:
                    assert (ROOT / source).exists(), f"{name}: COPY {source}"
                    assert f"!{source.rstrip('/')}/" in ignore or f"!{source}" in ignore, f"{source} in the context"
                    copied.add(source)
    for name in ("cpu", "gpu"):
        steps = stages[name]
        kinds = [k for k, _ in steps]
        runs = " && ".join(a for k, a in steps if k == "RUN")
        assert "download.pytorch.org/whl/" in runs and ("cpu" in runs) == (name == "cpu"), name
        assert runs.index('pip install "$TORCH"') < runs.index('pip install -c constraints.txt -e ".[aws]"'), "torch first"
        assert "loom --help" in runs, "the image checks its own entry point"
        assert ("COPY", "--from=source /opt/loom /opt/loom") in steps
        assert kinds[-1] == "CMD" and "USER" in kinds
        assert [a for k, a in steps if k == "USER"][-1] not in ("root", "0")
        assert any(k == "ENV" and "LOOM_WORKDIR=/mnt/loom/work" in a for k, a in steps)
    # the build context holds what pip installs: the packages pyproject.toml names
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert set(packages) | {"pyproject.toml"} <= copied


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}."""
    def sub(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        value = env.get(name)
        if op in (":-", "-"):
            return value if value or (op == "-" and value is not None) else arg
        if op in (":?", "?"):
            assert value, f"{name}: {arg}"
        return value or ""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}", sub, text)


def _compose(name: str) -> dict:
    from compose_spec import PyOptions

    text = _interpolate((INFRA / name).read_text(), {})
    parsed = PyOptions(apply_merge=True).from_yaml(text)  # the Compose Specification's model; raises if invalid
    parsed.validate()
    return parsed.to_dict()  # merged (<<) and in the specification's normal form


def test_compose_files_follow_the_compose_specification():
    compose = _compose("docker-compose.yml")
    services = compose["services"]
    assert {"postgres", "prefect-server", "prefect-worker", "ray-head", "ray-worker"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on {dependency}"
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            assert source in compose["volumes"], f"{name}: volume {source}"
    env = {name: service.get("environment", {}) for name, service in services.items()}
    # Prefect's database is the postgres service, with its credentials
    db_url = env["prefect-server"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    pg = env["postgres"]
    assert db_url == (f"postgresql+asyncpg://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/"
                      f"{pg['POSTGRES_DB']}")
    server_command = services["prefect-server"]["command"]
    port = server_command[server_command.index("--port") + 1]
    head_command = " ".join(services["ray-head"]["command"]) if isinstance(services["ray-head"]["command"], list) \
        else services["ray-head"]["command"]
    head_port = re.search(r"--port=(\d+)", head_command).group(1)
    loom_services = ("prefect-worker", "ray-head", "ray-worker")
    for name in loom_services:
        assert env[name]["PREFECT_API_URL"] == f"http://prefect-server:{port}/api"
        assert env[name]["LOOM_WORKDIR"].startswith("/mnt/loom/")
        command = services[name]["command"]
        command = " ".join(command) if isinstance(command, list) else command
        if name != "ray-head":
            assert f"--address=ray-head:{head_port}" in command, name
    assert "prefect worker start --pool loom" in services["prefect-worker"]["command"]
    images = {services[name]["image"] for name in (*loom_services, "prefect-server")}
    assert len(images) == 1, "one Loom image: the same Python, Ray and Prefect everywhere"

    gpu = _compose("docker-compose.gpu.yml")
    assert set(gpu["services"]) <= set(services)
    devices = gpu["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"

    from compose_spec import PyCompose

    with pytest.raises(ValueError):  # the parser is strict: a misspelt key fails
        PyCompose.from_yaml("services:\n  a:\n    image: x\n    enviroment: {A: b}\n")


def _docker_compose_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _docker_compose_available(), reason="docker compose is not installed here (the compose "
                    "files are still checked against the Compose Specification above)")
def test_docker_compose_config_accepts_the_files():
    for files in (["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]):
        args = [a for f in files for a in ("-f", str(INFRA / f))]
        proc = subprocess.run(["docker", "compose", *args, "config", "--quiet"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


# ---- Docs -------------------------------------------------------------------------------------------

def test_infra_readme_names_only_files_that_exist():
    text = (INFRA / "README.md").read_text()
    named = set(re.findall(r"infra/[\w./-]+\.(?:ya?ml|json|md|dockerignore)|infra/Dockerfile\b", text))
    assert len(named) >= 8
    for path in named:
        assert (ROOT / path).exists(), path
    for name in ZERO_CONFIGS:
        assert name in text
    assert os.path.exists(INFRA / "k8s") and re.search(r"^1\. ", text, re.MULTILINE), "numbered steps"
