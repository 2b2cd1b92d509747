"""Fixtures of the deploy tests: each overlay rendered once, and what the code declares."""

from __future__ import annotations

import functools

import pytest

from tests.deploy import code_facts
from tests.deploy.manifests import K8S, OVERLAYS, Rendering, render, render_with_components


@functools.cache
def _render_overlay(name: str) -> Rendering:
    return Rendering(name, render(K8S / "overlays" / name))


@pytest.fixture(scope="session")
def rendered():
    """rendered("prod"): one overlay of deploy/k8s/overlays, rendered with kustomize once."""
    return _render_overlay


@pytest.fixture(scope="session", params=OVERLAYS)
def rendering(request, rendered) -> Rendering:
    """Each overlay in turn: a test that takes it runs once per overlay."""
    return rendered(request.param)


@pytest.fixture(scope="session")
def code() -> code_facts.CodeFacts:
    return code_facts.load()


@pytest.fixture(scope="session")
def rendered_with(tmp_path_factory):
    """rendered_with("prod", "monitoring"): an overlay with optional components of
    deploy/k8s/components added, rendered once."""
    cache: dict[tuple[str, tuple[str, ...]], Rendering] = {}

    def render_once(overlay: str, *components: str) -> Rendering:
        key = (overlay, components)
        if key not in cache:
            workspace = tmp_path_factory.mktemp(f"{overlay}-" + "-".join(components))
            cache[key] = Rendering(overlay, render_with_components(overlay, components, workspace))
        return cache[key]

    return render_once
