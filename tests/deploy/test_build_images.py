"""`make images` (deploy/docker/build-images.sh), checked without a container
engine: a dry run lists one build per Dockerfile target, named as the
overlays run them; with a stand-in engine on PATH (a script that records its
arguments) the builds and pushes run in order, a failed build stops the run,
and without any engine the script says so."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess

import pytest

from tests.deploy.manifests import ROOT
from tests.deploy.test_images import STAGES

SCRIPT = ROOT / "deploy" / "docker" / "build-images.sh"
TARGETS = ["gateway", "library", "transcode", "stt", "synth", "synth-cpu"]
ENGINES = ["docker", "podman", "buildah", "nerdctl"]


def run(env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *arguments], cwd="/", env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def bare_path(tmp_path) -> str:
    """A PATH with the shell's tools and no container engine."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("sh", "dirname", "cat", "echo", "env"):
        for where in ("/usr/bin", "/bin"):
            if os.path.exists(f"{where}/{tool}"):
                (folder / tool).symlink_to(f"{where}/{tool}")
                break
    return str(folder)


def stand_in(folder, engine: str, fail_on: str = "") -> None:
    """An engine that appends each command line to calls.log (and fails on a target, if asked)."""
    path = folder / engine
    path.write_text(
        "#!/bin/sh\n"
        f'echo "{engine} $*" >> "{folder}/calls.log"\n'
        + (f'case "$*" in *"--target {fail_on} "*) exit 3 ;; esac\n' if fail_on else "")
        + "exit 0\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def calls(folder) -> list[list[str]]:
    log = folder / "calls.log"
    return [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []


def built(commands: list[list[str]]) -> dict[str, str]:
    """target -> image, from build commands."""
    return {command[command.index("--target") + 1]: command[command.index("-t") + 1] for command in commands
            if "--target" in command}


def test_the_script_builds_every_target_of_the_dockerfile():
    assert set(TARGETS) == set(STAGES) - {"app", "cpu", "cuda"}


def test_a_dry_run_lists_every_build_and_runs_nothing(bare_path):
    result = run({"PATH": bare_path, "TAG": "dev"}, "--dry-run")
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    assert built(commands) == {target: f"voicemesh/{target}:dev" for target in TARGETS}
    for command in commands:
        assert command[:2] == ["docker", "build"]
        assert command[command.index("-f") + 1] == "deploy/docker/Dockerfile" and command[-1] == "."


def test_the_dev_overlay_runs_images_make_images_builds(rendered, bare_path):
    """`make images TAG=dev` then `kind load`: every image the dev overlay runs is among them."""
    result = run({"PATH": bare_path, "TAG": "dev"}, "--dry-run")
    images = set(built([shlex.split(line) for line in result.stdout.splitlines()]).values())
    for workload in rendered("dev").workloads():
        image = workload.container["image"]
        if image.startswith("voicemesh/"):
            assert image in images, f"the dev overlay runs {image}, which make images TAG=dev does not build"


def test_the_prod_images_are_built_and_pushed_with_registry_and_tag(rendered, tmp_path, bare_path):
    stand_in(tmp_path / "bin", "podman")
    (gateway,) = [w for w in rendered("prod").workloads() if w.name == "gateway" and w.kind == "Deployment"]
    registry, tag = gateway.container["image"].rsplit("/", 1)[0], gateway.container["image"].rsplit(":", 1)[1]
    result = run({"PATH": bare_path, "REGISTRY": registry, "TAG": tag, "PUSH": "1"})
    assert result.returncode == 0, result.stderr
    commands = calls(tmp_path / "bin")
    images = built(commands)
    for workload in rendered("prod").workloads():
        assert workload.container["image"] in images.values(), workload.container["image"]
    # Each image pushed right after its build.
    for index, target in enumerate(TARGETS):
        assert commands[2 * index][:2] == ["podman", "build"] and images[target] == f"{registry}/{target}:{tag}"
        assert commands[2 * index + 1] == ["podman", "push", images[target]]


@pytest.mark.parametrize("engine", ENGINES)
def test_whichever_engine_is_installed_builds(tmp_path, bare_path, engine):
    stand_in(tmp_path / "bin", engine)
    result = run({"PATH": bare_path, "TARGETS": "gateway"})
    assert result.returncode == 0, result.stderr
    (command,) = calls(tmp_path / "bin")
    assert command[:2] == [engine, "build"]  # buildah's `build` is its Dockerfile build too
    assert built([command]) == {"gateway": "voicemesh/gateway:latest"}


def test_a_failed_build_stops_the_run(tmp_path, bare_path):
    stand_in(tmp_path / "bin", "docker", fail_on="transcode")
    result = run({"PATH": bare_path})
    assert result.returncode != 0
    assert list(built(calls(tmp_path / "bin"))) == ["gateway", "library", "transcode"]


def test_without_an_engine_it_says_so(bare_path):
    result = run({"PATH": bare_path})
    assert result.returncode == 1
    assert "no OCI image builder found" in result.stderr


def test_an_unknown_target_is_refused_before_building(tmp_path, bare_path):
    stand_in(tmp_path / "bin", "docker")
    result = run({"PATH": bare_path, "TARGETS": "gateway gatewy"})
    assert result.returncode == 2 and "gatewy" in result.stderr
    assert calls(tmp_path / "bin") == []


def test_make_images_runs_the_script():
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", "images"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and "deploy/docker/build-images.sh" in result.stdout
