"""The container images (deploy/docker/Dockerfile), read rather than built: no
Docker engine runs here. Each service has a target that runs it as user 10001
with the code and the generated protos; the manifests run those images."""

from __future__ import annotations

import fnmatch
import re

import pytest

from runtime import config
from tests.deploy import dockerfile
from tests.deploy.manifests import ROOT
from tests.deploy.test_agreement import MIGRATION_MODULE, migration_job, service_deployments

DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
STAGES = dockerfile.stages(DOCKERFILE)
GPU_SERVICES = {"synth"}
# Never in the build context: local state, generated or secret-prone files, tests.
NEVER_SENT = [".venv", "var", "gen", ".git", "tests", "bench"]


def command(target: str) -> list[str]:
    return dockerfile.exec_form(dockerfile.last(STAGES, target, "ENTRYPOINT")) + dockerfile.exec_form(
        dockerfile.last(STAGES, target, "CMD")
    )


def root_image(target: str) -> str:
    return dockerfile.lineage(STAGES, target)[-1].base


@pytest.mark.parametrize("service", sorted(config.SERVICE_PORTS))
def test_each_service_has_a_target_that_runs_it(service):
    assert service in STAGES, f"no build target {service} in {DOCKERFILE.relative_to(ROOT)}"
    assert command(service) == ["python", "-m", f"services.{service}"]
    assert dockerfile.last(STAGES, service, "USER").split(":")[0] == "10001"
    if service in GPU_SERVICES:
        assert root_image(service).startswith("nvidia/cuda:")
    else:
        assert re.match(r"python:3\.11[.-]", root_image(service)), root_image(service)


def test_images_hold_the_code_and_the_generated_protos():
    app = STAGES["app"]
    copied = {arguments.split()[0] for arguments in app.arguments("COPY")}
    assert {"protos", "tools", "runtime", "services"} <= copied
    assert any("tools/gen_protos.py" in run for run in app.arguments("RUN"))
    for base in ("cpu", "cuda"):
        assert "--from=app /app /app" in STAGES[base].arguments("COPY")
        assert "/app/gen" in " ".join(STAGES[base].arguments("ENV"))


def test_cpu_and_cuda_images_run_alike():
    """The two bases are written twice (different FROM): what a container sees must not drift apart."""
    for keyword in ("ENV", "WORKDIR", "USER", "ENTRYPOINT"):
        assert STAGES["cpu"].arguments(keyword) == STAGES["cuda"].arguments(keyword), keyword


def test_the_cuda_torch_wheel_matches_the_cuda_base_image():
    arguments = dict(
        a.partition("=")[::2] for w, a in dockerfile.instructions(DOCKERFILE) if w == "ARG" and "=" in a
    )
    cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)", arguments["CUDA_IMAGE"])
    assert arguments["TORCH_CUDA"] == f"cu{cuda.group(1)}{cuda.group(2)}"
    assert any("whl/${TORCH_CUDA}" in run for run in STAGES["cuda"].arguments("RUN"))
    assert any("whl/cpu" in run for run in STAGES["cpu"].arguments("RUN"))


def image_target(image: str) -> str:
    """registry.example.com/voicemesh/synth:0.1.0 -> synth."""
    return image.rsplit("/", 1)[-1].split(":")[0].split("@")[0]


def test_the_manifests_run_the_images_built_for_them(rendering):
    for service, deployment in service_deployments(rendering).items():
        target = image_target(deployment.container["image"])
        assert target in STAGES, (
            f"{rendering.overlay}: {service} runs {deployment.container['image']}, built by no target"
        )
        assert command(target)[-1] == f"services.{service}", f"{rendering.overlay}: {service} runs {target}"
    job = migration_job(rendering).container
    assert image_target(job["image"]) in STAGES
    assert (ROOT / (MIGRATION_MODULE.replace(".", "/") + ".py")).exists()


def ignored(patterns: list[str], path: str) -> bool:
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*"):
            result = not negated
    return result


def test_the_build_context_leaves_out_local_state_but_not_what_images_copy():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for path in NEVER_SENT:
        assert ignored(patterns, path), f"{path} is sent to the Docker build"
    for stage in STAGES.values():
        for arguments in stage.arguments("COPY"):
            if arguments.startswith("--from"):
                continue
            for source in arguments.split()[:-1]:
                assert not ignored(patterns, source), f"COPY {source}: left out by .dockerignore"
