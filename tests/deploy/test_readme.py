"""deploy/k8s/README.md's commands agree with the manifests: the kind dev loop
loads the images the dev overlay runs, into the cluster deploy/kind/cluster.yaml
makes, with the TLS Secret and host of the dev Ingress, and every namespace the
README names is an overlay's."""

from __future__ import annotations

import re

import yaml

from tests.deploy.manifests import K8S, OVERLAYS, ROOT

README = K8S / "README.md"
KIND_CLUSTER = ROOT / "deploy" / "kind" / "cluster.yaml"
# Namespaces of other software that the README's commands address.
OTHER_NAMESPACES = {"ingress-nginx", "kube-system", "$NS"}


def section(title: str) -> str:
    return README.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def code_blocks(text: str) -> str:
    return "\n".join(re.findall(r"```(?:sh|yaml)?\n(.*?)```", text, re.DOTALL))


def test_the_kind_loop_loads_what_the_dev_overlay_runs(rendered):
    commands = code_blocks(section("Development on kind"))
    cluster = yaml.safe_load(KIND_CLUSTER.read_text())
    loaded = re.search(r"for image in ([\w\- ]+); do\n\s*kind load docker-image --name (\S+) voicemesh/\$image:(\w+)", commands)
    assert loaded, "no `kind load` loop in the README"
    images, cluster_name, tag = loaded.group(1).split(), loaded.group(2), loaded.group(3)
    assert cluster_name == cluster["name"]
    built = re.search(r'make images TAG=(\w+) TARGETS="([\w\- ]+)"', commands)
    assert built and built.group(1) == tag and set(built.group(2).split()) == set(images)
    runs = {
        workload.container["image"]
        for workload in rendered("dev").workloads()
        if workload.container["image"].startswith("voicemesh/")
    }
    assert runs == {f"voicemesh/{image}:{tag}" for image in images}


def test_the_kind_cluster_forwards_https_to_the_ingress_node():
    cluster = yaml.safe_load(KIND_CLUSTER.read_text())
    (node,) = cluster["nodes"]
    assert {mapping["hostPort"] for mapping in node["extraPortMappings"]} >= {80, 443}
    assert "ingress-ready=true" in node["kubeadmConfigPatches"][0]


def test_the_kind_loop_makes_the_secret_and_calls_the_host_of_the_dev_ingress(rendered):
    commands = code_blocks(section("Development on kind"))
    dev = rendered("dev")
    (ingress,) = dev.of_kind("Ingress")
    (tls,) = ingress["spec"]["tls"]
    assert f"-n {dev.namespace} create secret tls {tls['secretName']} " in commands
    (host,) = tls["hosts"]
    assert re.search(rf"https://{re.escape(host)}/v1/voice/generations", commands)
    assert f"/CN={host}" in commands and f"DNS:{host}" in commands


def test_the_commands_leave_nothing_for_the_reader_to_fill_in():
    for title in ("Development on kind", "Images", "Upgrade", "Rollback"):
        for line in code_blocks(section(title)).splitlines():
            assert "..." not in line, f"{title}: {line}"


def test_every_namespace_the_readme_names_is_an_overlays(rendered):
    namespaces = {rendered(overlay).namespace for overlay in OVERLAYS}
    named = set(re.findall(r"(?:\s-n|--namespace)[ =]([a-zA-Z$][\w$-]*)", README.read_text()))
    assert named - OTHER_NAMESPACES <= namespaces, named - OTHER_NAMESPACES - namespaces
    assert "voicemesh-dev" in named
