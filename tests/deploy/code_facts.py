"""What the code declares, for the deploy tests to hold the manifests against.

* settings: the registry of runtime/config.py, each setting with the part of the
  code that declares it (the shared runtime, or one service);
* health: the service names each server publishes in its health service (the
  full names of its ServiceSpec's servicers, and "" for the whole server);
* limits: the limits each server publishes (its ServiceSpec's), each with the
  setting that holds its value;
* calls: which service calls which, from the code (service_channel("x"),
  SERVICES["x"]) and from the settings that name upstreams;
* the services that own data (open PostgreSQL), and those that keep audio
  (open the object store).

Settings and health names come from a fresh interpreter (`python -m
tests.deploy.code_facts` prints them as JSON): the registry of this test
process may already hold every service's settings, which would hide who
declared what, and reading a service's ServiceSpec means running its
``__main__`` (with runtime.server.main replaced so that nothing is served).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from runtime import config
from tests.deploy.manifests import ROOT

SHARED = "runtime"  # the owner of the settings every service reads
LAUNCHER = "tools"  # the owner of `make run`'s own settings (tools/mesh.py)

# Variables read by libraries rather than by our code, and why a manifest sets them.
THIRD_PARTY_VARIABLES = {
    "HF_HOME": "huggingface_hub's cache folder: where model weights are downloaded to",
}

# Settings whose value lists services that the owning service calls by name
# (the gateway serves the HTTP routes of each of its upstreams).
UPSTREAM_SETTINGS = {"gateway": "GATEWAY_UPSTREAMS"}

# A provider (synth) registers with the gateway's provider registry under its
# own address; the gateway then calls it there.
PROVIDER_REGISTRY = "gateway"

# service_channel("transcode"), or the address of SERVICES["gateway"] (not its ports).
_CALL = re.compile(r"""service_channel\(\s*["'](\w+)["']|SERVICES\[\s*["'](\w+)["']\s*\]\s*\.address""")
_OPENS_DATABASE = re.compile(r"\bopen_pool\(")
_OPENS_OBJECT_STORE = re.compile(r"\bObjectStore\(")


@dataclass(frozen=True)
class SettingFact:
    name: str
    owner: str  # SHARED or a service name
    default: str | None  # None: no default (must be set)


@dataclass
class CodeFacts:
    settings: dict[str, SettingFact]
    health_names: dict[str, list[str]]  # by service (those with a __main__.py)
    limits: dict[str, dict[str, str]]  # by service: limit name -> the setting holding it

    def readable_by(self, service: str | None) -> set[str]:
        """Settings a container of `service` (None: a tool such as tools.migrate) may set."""
        return {fact.name for fact in self.settings.values() if fact.owner in (SHARED, service)}

    def required_by(self, service: str) -> set[str]:
        """Settings without a default that `service` cannot run without."""
        required = {
            fact.name for fact in self.settings.values() if fact.owner == service and fact.default is None
        }
        if service in database_users():
            required.add(config.DATABASE_URL.name)
        return required


def service_sources(service: str) -> str:
    folder = ROOT / "services" / service
    return "\n".join(path.read_text() for path in sorted(folder.rglob("*.py")))


def literal_calls(service: str) -> set[str]:
    """The services that `service`'s code opens a channel to by name."""
    named = {name for match in _CALL.findall(service_sources(service)) for name in match if name}
    return named & set(config.SERVICE_PORTS)


def database_users() -> set[str]:
    """The services that own data: the mesh gives them DATABASE_URL, or their code opens a pool."""
    from tools import mesh

    opens = {name for name in config.SERVICE_PORTS if _OPENS_DATABASE.search(service_sources(name))}
    return set(mesh.NEEDS_DATABASE) | opens


def object_store_users() -> set[str]:
    """The services that keep audio: the mesh gives them the S3_* settings, or their code opens an ObjectStore."""
    from tools import mesh

    opens = {name for name in config.SERVICE_PORTS if _OPENS_OBJECT_STORE.search(service_sources(name))}
    return set(mesh.NEEDS_OBJECTS) | opens


def calls(service: str, setting_value) -> set[str]:
    """Who `service` calls, where setting_value(name) is a setting's value in its container."""
    called = literal_calls(service)
    if service in UPSTREAM_SETTINGS:
        listed = setting_value(UPSTREAM_SETTINGS[service]) or ""
        called |= {name.strip() for name in listed.split(",") if name.strip()}
    if service == PROVIDER_REGISTRY:
        called |= {name for name in config.SERVICE_PORTS if PROVIDER_REGISTRY in literal_calls(name)}
    return called


def load() -> CodeFacts:
    from tools import mesh

    env = mesh.mesh_environment(database_url=None)  # this environment, with the code importable
    result = subprocess.run(
        [sys.executable, "-m", "tests.deploy.code_facts"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"reading the code's settings and health names failed:\n{result.stderr}"
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    return CodeFacts(
        settings={item["name"]: SettingFact(**item) for item in facts["settings"]},
        health_names=facts["health_names"],
        limits=facts["limits"],
    )


# --- Run in a fresh interpreter ------------------------------------------


def _introspect() -> dict[str, Any]:
    import importlib
    import pkgutil
    import runpy

    import runtime
    from runtime import server

    owners: dict[str, str] = {}

    def declared_since(before: set[str], owner: str) -> None:
        for name in set(config.REGISTRY) - before:
            owners[name] = owner

    for module in pkgutil.iter_modules(runtime.__path__):
        importlib.import_module(f"runtime.{module.name}")
    declared_since(set(), SHARED)
    before = set(config.REGISTRY)
    from tools import mesh

    declared_since(before, LAUNCHER)

    for name in config.SERVICE_PORTS:
        before = set(config.REGISTRY)
        try:
            importlib.import_module(f"services.{name}.config")
        except ModuleNotFoundError as error:
            if error.name != f"services.{name}.config":
                raise
        declared_since(before, name)

    # Each service's ServiceSpec, as its __main__ builds it; main() only keeps it.
    specs = {}
    for name in mesh.existing_services():
        before = set(config.REGISTRY)
        server.main = lambda build, name=name: specs.__setitem__(name, build())
        runpy.run_module(f"services.{name}", run_name="__main__")
        declared_since(before, name)  # settings declared outside config.py are still the service's
        assert specs[name].name == name, f"services/{name} serves the ports of {specs[name].name}"

    settings = []
    for name, setting in config.REGISTRY.items():
        default = setting.default() if callable(setting.default) else setting.default
        settings.append(
            {"name": name, "owner": owners[name], "default": None if default is None else str(default)}
        )
    health_names = {name: [s.full_name for s in spec.servicers] for name, spec in specs.items()}
    limits = {name: {limit: setting.name for limit, setting in spec.limits.items()} for name, spec in specs.items()}
    return {"settings": settings, "health_names": health_names, "limits": limits}


if __name__ == "__main__":
    facts = _introspect()
    sys.stdout.write("\n" + json.dumps(facts) + "\n")
