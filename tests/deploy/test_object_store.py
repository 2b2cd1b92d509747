"""Where the audio lives in Kubernetes: the services that keep it get the object store's settings
from a Secret, reach it, and nothing else does; dev runs its own SeaweedFS on a volume, with the
credentials the services are given; prod points at an S3 outside the cluster."""

from __future__ import annotations

import base64
import json

from runtime import objects
from tests.deploy import code_facts
from tests.deploy.manifests import Rendering
from tests.deploy.netpol import OUTSIDE
from tests.deploy.test_agreement import service_deployments
from tests.deploy.test_network_policies import STRANGER, Cluster

SECRET = "voicemesh-objects"
HTTPS = 443
# Never in a ConfigMap: whoever reads those would read the audio.
CREDENTIALS = {objects.S3_ACCESS_KEY_ID.name, objects.S3_SECRET_ACCESS_KEY.name}


def secret_name(rendering: Rendering, reference: str) -> str:
    """The Secret a reference names, through the name suffix kustomize's generator adds."""
    names = [s["metadata"]["name"] for s in rendering.of_kind("Secret")]
    matches = [name for name in names if name == reference or name.startswith(reference + "-")]
    return matches[0] if matches else reference


def test_the_services_that_keep_audio_take_the_object_store_from_its_secret(rendering):
    users = code_facts.object_store_users()
    assert users == {"gateway", "library"}, "the reading of the code is broken"
    for name, deployment in service_deployments(rendering).items():
        environment = rendering.environment(deployment.container)
        settings = {key: value for key, value in environment.items() if key.startswith("S3_")}
        if name not in users:
            assert not settings, f"{rendering.overlay}: {name} keeps no audio but gets {sorted(settings)}"
            continue
        for setting in (objects.S3_BUCKET.name, *CREDENTIALS):
            source = (settings[setting].source or {}).get("secretKeyRef")
            assert source is not None, f"{rendering.overlay}: {name} takes {setting} from no Secret"
            assert source["name"].startswith(SECRET), source
        assert deployment.pod_labels.get("voicemesh.io/object-store-client") == "true", name


def test_the_services_that_keep_audio_reach_the_store_and_others_do_not(rendering):
    cluster = Cluster(rendering)
    deployments = service_deployments(rendering)
    seaweedfs = rendering.get("StatefulSet", "seaweedfs")
    if seaweedfs is not None:  # dev: the store is a pod of the namespace
        store = cluster.endpoint(rendering.workload("StatefulSet", "seaweedfs"))
        port = store.ports["s3"]
        for name, deployment in deployments.items():
            reaches = cluster.allows(cluster.endpoint(deployment), store, port)
            assert reaches == (name in code_facts.object_store_users()), f"{name} reaches SeaweedFS: {reaches}"
        assert not cluster.allows(STRANGER, store, port)
        assert not cluster.allows(OUTSIDE, store, port)
    else:  # prod: an S3 outside the cluster, over HTTPS
        for name in code_facts.object_store_users():
            assert cluster.allows(cluster.endpoint(deployments[name]), OUTSIDE, HTTPS), name


def test_dev_runs_seaweedfs_on_a_volume_with_the_credentials_the_services_are_given(rendered):
    dev = rendered("dev")
    seaweedfs = dev.workload("StatefulSet", "seaweedfs")
    (claim,) = seaweedfs.obj["spec"]["volumeClaimTemplates"]
    assert {m["name"]: m["mountPath"] for m in seaweedfs.container["volumeMounts"]}[claim["metadata"]["name"]] == "/data"
    assert "-dir=/data" in seaweedfs.container["args"]
    # The identities file it is given holds the key pair of the services' Secret.
    secrets = {s["metadata"]["name"]: s for s in dev.of_kind("Secret")}
    given = {k: base64.b64decode(v).decode() for k, v in secrets[secret_name(dev, SECRET)]["data"].items()}
    (config_volume,) = [v for v in seaweedfs.pod["volumes"] if "secret" in v]
    identities = json.loads(base64.b64decode(secrets[config_volume["secret"]["secretName"]]["data"]["s3.json"]))
    keys = [(c["accessKey"], c["secretKey"]) for identity in identities["identities"] for c in identity["credentials"]]
    assert (given[objects.S3_ACCESS_KEY_ID.name], given[objects.S3_SECRET_ACCESS_KEY.name]) in keys
    assert given[objects.S3_ENDPOINT_URL.name] == f"http://seaweedfs:{seaweedfs.ports()['s3']}"
    # It starts empty: the services make the bucket.
    for name in code_facts.object_store_users():
        environment = dev.environment(dev.workload("Deployment", name).container)
        assert environment[objects.S3_CREATE_BUCKET.name].value == "true", name


def test_prod_runs_no_object_store_and_brings_no_credentials(rendered):
    prod = rendered("prod")
    assert prod.get("StatefulSet", "seaweedfs") is None
    assert prod.of_kind("Secret") == []  # voicemesh-objects is made outside this repository
