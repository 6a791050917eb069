"""deploy/: the Kubernetes manifests that run train.py as a chief and workers."""

import copy
import json
import os
import subprocess

import pytest
from conftest import ROOT

DEPLOY = os.path.join(ROOT, "deploy")
KUBERNETES = "1.31"  # the oldest release whose Job API has everything used (podFailurePolicy GA)


def _load(name):
    import yaml

    with open(os.path.join(DEPLOY, name)) as f:
        return {doc["kind"]: doc for doc in yaml.safe_load_all(f)}


def _validate(obj):
    """Kubernetes' own schema (kubernetes-validate, strict: no unknown fields) for built-in
    kinds; for TFJob, deploy/schema/tfjob-kubeflow-v1.json, whose pod templates refer to the
    same Kubernetes definitions.
    """
    import kubernetes_validate

    if obj["kind"] != "TFJob":
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        return
    import jsonschema
    from referencing import Registry, Resource

    with open(os.path.join(DEPLOY, "schema", "tfjob-kubeflow-v1.json")) as f:
        schema = json.load(f)
    defs = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{KUBERNETES}.0-local-strict/_definitions.json", KUBERNETES
    )
    registry = Resource.from_contents(defs) @ Registry()
    jsonschema.Draft202012Validator(schema, registry=registry).validate(obj)


@pytest.mark.parametrize("name", ["tfjob.yaml", "indexed-job.yaml", "workdir-pvc.yaml"])
def test_manifests_match_their_schemas(name):
    for obj in _load(name).values():
        _validate(obj)


def test_the_schemas_refuse_what_a_cluster_would():
    import jsonschema
    import kubernetes_validate

    tfjob = _load("tfjob.yaml")["TFJob"]
    bad = copy.deepcopy(tfjob)
    bad["spec"]["tfReplicaSpecs"]["Worker"]["restartPolicy"] = "OnPreemption"
    with pytest.raises(jsonschema.ValidationError, match="OnPreemption"):
        _validate(bad)
    bad = copy.deepcopy(tfjob)  # an error inside the pod template: Kubernetes' schema
    bad["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]["ports"] = [
        {"containerPort": "2222"}
    ]
    with pytest.raises(jsonschema.ValidationError):
        _validate(bad)
    job = copy.deepcopy(_load("indexed-job.yaml")["Job"])
    job["spec"]["completionsMode"] = "Indexed"  # a misspelt field: strict schemas refuse it
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(job)


def _shared_workdir(pod_spec, container):
    """The claim behind --workdir's mount, after checking that --workdir is on it."""
    (mount,) = container["volumeMounts"]
    args = container.get("command", []) + container.get("args", [])
    workdir = next(a.split("=", 1)[1] for a in args if a.startswith("--workdir="))
    assert workdir.startswith(mount["mountPath"] + "/"), (workdir, mount)
    (volume,) = [v for v in pod_spec["volumes"] if v["name"] == mount["name"]]
    return volume["persistentVolumeClaim"]["claimName"], args[args.index("train.py") :]


def _check_cluster(configs, chief_host, worker_hosts):
    """Each task's TF_CONFIG, parsed as training parses it: one cluster, one chief."""
    from patchvae_tf.training import distribute

    parsed = [distribute.parse_tf_config(json.dumps(c)) for c in configs]
    clusters = {json.dumps(p["cluster"], sort_keys=True) for p in parsed}
    assert len(clusters) == 1
    cluster = parsed[0]["cluster"]
    assert cluster == {"chief": [chief_host], "worker": worker_hosts}
    tasks = sorted((p["task"]["type"], p["task"]["index"]) for p in parsed)
    want = [("chief", 0)] + [("worker", i) for i in range(len(worker_hosts))]
    assert tasks == want
    # --strategy=auto would pick MultiWorkerMirroredStrategy: more than one task.
    assert distribute._num_tasks(parsed[0]) == 1 + len(worker_hosts) > 1


def test_tfjob_runs_train_py_as_chief_and_workers_with_the_operators_tf_config():
    from patchvae_tf.training import PREEMPTED_EXIT_CODE

    tfjob = _load("tfjob.yaml")["TFJob"]
    claim = _load("workdir-pvc.yaml")["PersistentVolumeClaim"]
    specs = tfjob["spec"]["tfReplicaSpecs"]
    assert set(specs) == {"Chief", "Worker"} and specs["Chief"]["replicas"] == 1
    # OnFailure restarts a container after any non-zero exit; the operator's ExitCode policy
    # retries only codes from 128 up, and would end the job on train.py's preemption exit.
    assert 0 < PREEMPTED_EXIT_CODE < 128
    commands = set()
    for spec in specs.values():
        assert spec["restartPolicy"] == "OnFailure"
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "tensorflow"  # where the operator sets TF_CONFIG
        (port,) = container["ports"]
        assert port == {"name": "tfjob-port", "containerPort": 2222}
        name, train = _shared_workdir(pod, container)
        assert name == claim["metadata"]["name"]
        commands.add(tuple(train))
        assert pod["terminationGracePeriodSeconds"] >= 60  # time to save after SIGTERM
    assert len(commands) == 1  # every replica runs the same command

    # The TF_CONFIG the Training Operator gives each replica: cluster keys are the replica
    # types in lower case, addresses <job>-<type>-<index>.<namespace>.svc:<tfjob-port>.
    job, ns = tfjob["metadata"]["name"], "default"

    def host(kind, i):
        return f"{job}-{kind}-{i}.{ns}.svc:2222"

    cluster = {
        k.lower(): [host(k.lower(), i) for i in range(s["replicas"])] for k, s in specs.items()
    }
    configs = [
        {"cluster": cluster, "task": {"type": kind, "index": i}, "environment": "cloud"}
        for kind, hosts in cluster.items()
        for i in range(len(hosts))
    ]
    workers = specs["Worker"]["replicas"]
    _check_cluster(configs, host("chief", 0), [host("worker", i) for i in range(workers)])


def test_indexed_job_builds_the_tf_config_training_reads():
    from patchvae_tf.training import PREEMPTED_EXIT_CODE

    objs = _load("indexed-job.yaml")
    service, job = objs["Service"], objs["Job"]
    claim = _load("workdir-pvc.yaml")["PersistentVolumeClaim"]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    replicas = int(env["REPLICAS"])
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == replicas >= 2
    # Pods are named <job>-<index> and resolve under the headless Service's name.
    assert env["JOB_NAME"] == job["metadata"]["name"]
    assert env["SERVICE"] == pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": env["JOB_NAME"]}
    assert [p["port"] for p in service["spec"]["ports"]] == [int(env["PORT"])]
    assert [p["containerPort"] for p in container["ports"]] == [int(env["PORT"])]
    name, train = _shared_workdir(pod, container)
    assert name == claim["metadata"]["name"]
    assert train[:2] == ["train.py", "--flagfile=configs/cifar100.cfg"]

    # A preempted set (every worker exits 42) is replaced without using up backoffLimit,
    # each pod under its index, so with the same name and TF_CONFIG; exit 2 stops the Job.
    assert pod["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    ignored = [r["onExitCodes"] for r in rules if r["action"] == "Ignore" and "onExitCodes" in r]
    assert ignored == [
        {"containerName": "train", "operator": "In", "values": [PREEMPTED_EXIT_CODE]}
    ]
    assert any(r["action"] == "FailJob" and r["onExitCodes"]["values"] == [2] for r in rules)

    # Run the manifest's own start script for each index, with `env` standing in for train.py.
    script, argv0 = container["command"][2], container["command"][3]
    configs = []
    for index in range(replicas):
        out = subprocess.run(
            ["/bin/sh", "-c", script, argv0, "sh", "-c", 'printf %s "$TF_CONFIG"'],
            env={"PATH": os.environ["PATH"], **env, "JOB_COMPLETION_INDEX": str(index)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        configs.append(json.loads(out))
    addr = f"{env['JOB_NAME']}-{{}}.{env['SERVICE']}:{env['PORT']}"
    _check_cluster(configs, addr.format(0), [addr.format(i) for i in range(1, replicas)])
    # Index 0 is the chief, index i the worker i - 1.
    assert [c["task"] for c in configs][:2] == [
        {"type": "chief", "index": 0},
        {"type": "worker", "index": 0},
    ]
