"""Where training runs: TF_CONFIG, logical CPU devices, the tf.distribute strategy, the chief."""

from __future__ import annotations

import json
import os
import shutil

import keras
import tensorflow as tf

from patchvae_tf.config import DistributeConfig
from patchvae_tf.errors import UserError

_TASK_TYPES = ("chief", "worker", "evaluator", "ps")


def parse_tf_config(text: str | None = None) -> dict | None:
    """The TF_CONFIG environment variable, checked; None when it is unset or empty.

    Returns {"cluster": {job: ["host:port", ...]}, "task": {"type": str, "index": int}}.
    """
    text = os.environ.get("TF_CONFIG", "") if text is None else text
    if not text.strip():
        return None
    try:
        tf_config = json.loads(text)
    except ValueError as e:
        raise UserError(f"TF_CONFIG is not valid JSON ({e}): {text!r}") from None
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    task = tf_config.get("task") if isinstance(tf_config, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise UserError(f'TF_CONFIG needs a "cluster" mapping of jobs to addresses: {text!r}')
    for job, addresses in cluster.items():
        if job not in _TASK_TYPES:
            raise UserError(f"TF_CONFIG cluster has unknown job {job!r}; expected chief, worker")
        if (
            not isinstance(addresses, list)
            or not addresses
            or not all(isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses)
        ):
            raise UserError(
                f'TF_CONFIG cluster job {job!r} needs a list of "host:port" strings, '
                f"got {addresses!r}"
            )
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise UserError(f'TF_CONFIG needs a "task" with "type" and "index": {text!r}')
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        raise UserError(f"TF_CONFIG task type {kind!r} is not a job of the cluster {cluster!r}")
    if not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise UserError(
            f"TF_CONFIG task index {index!r} is out of range for the {len(cluster[kind])} "
            f"{kind!r} task(s)"
        )
    return {"cluster": cluster, "task": {"type": kind, "index": index}}


def configure_devices(cfg: DistributeConfig) -> None:
    """Splits the host CPU into cfg.virtual_cpu_devices logical devices (0 leaves it alone).

    Must run before TensorFlow initialises its devices, i.e. before any op or variable.
    """
    n = cfg.virtual_cpu_devices
    if n == 0:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
        )
    except RuntimeError:
        raise UserError(
            f"--virtual_cpu_devices={n} came too late: TensorFlow already initialised "
            f"{len(tf.config.list_logical_devices('CPU'))} CPU device(s) in this process"
        ) from None


def _num_tasks(tf_config: dict | None) -> int:
    if tf_config is None:
        return 1
    return sum(len(v) for k, v in tf_config["cluster"].items() if k in ("chief", "worker"))


def create_strategy(cfg: DistributeConfig) -> tf.distribute.Strategy:
    """The strategy cfg asks for; call before any variable exists (after configure_devices)."""
    tf_config = parse_tf_config()
    gpus = tf.config.list_physical_devices("GPU")
    name = cfg.strategy
    if name == "auto":
        if _num_tasks(tf_config) > 1:
            name = "multi_worker"
        elif len(gpus) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = tf.config.list_logical_devices("CPU")
        if len(cpus) < 2:
            raise UserError(
                f"--strategy=mirrored found no GPU and {len(cpus)} CPU device; "
                "give --virtual_cpu_devices=2 (or more) to mirror over CPU devices"
            )
        return tf.distribute.MirroredStrategy([d.name for d in cpus])
    if name == "multi_worker":
        if tf_config is None:
            raise UserError(
                "--strategy=multi_worker needs TF_CONFIG naming the cluster and this task; "
                "see docs/distributed.md, Two hosts"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        # Not runnable on this project's machines: the standard TPU start-up, untested
        # beyond its failure without a TPU, which is one line.
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=cfg.tpu or "")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as e:
            first = " ".join(str(e).split())[:200]
            where = f"--tpu={cfg.tpu!r}" if cfg.tpu else "this machine (no --tpu given)"
            raise UserError(f"--strategy=tpu: no TPU found at {where}: {first}") from None
        return tf.distribute.TPUStrategy(resolver)
    raise UserError(f"unknown --strategy {cfg.strategy!r}")


def use_xla(cfg: DistributeConfig, strategy: tf.distribute.Strategy) -> bool:
    """--jit_compile, or when unset: XLA on GPUs and TPUs, not on CPUs.

    On CPUs XLA was slower on every kind measured (AVX2, and AVX-512 with BF16; the
    benchmark's train section times both settings, docs/performance.md): XLA's CPU backend
    does not use oneDNN's convolution kernels. On GPUs and TPUs XLA fuses the elementwise
    ops around the convolutions (TPUs need it); that was not measured on this project's
    hosts.
    """
    if cfg.jit_compile is not None:
        return cfg.jit_compile
    accelerators = tf.config.list_logical_devices("GPU") + tf.config.list_logical_devices("TPU")
    return bool(accelerators) or isinstance(strategy, tf.distribute.TPUStrategy)


def check_global_batch(global_batch: int, strategy: tf.distribute.Strategy) -> None:
    """Every replica must get the same whole share of the global batch."""
    n = strategy.num_replicas_in_sync
    if global_batch % n:
        raise UserError(
            f"--batch_size={global_batch} (the global batch) is not divisible by the "
            f"{n} replicas in sync; use a multiple of {n}"
        )


def task(strategy: tf.distribute.Strategy) -> tuple[str | None, int]:
    """(task type, task index) of this process; (None, 0) outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().jobs:
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The chief writes summaries, config, checkpoints and exports: the "chief" task, or
    worker 0 when the cluster has no chief, or the only process.
    """
    kind, index = task(strategy)
    if kind is None or kind == "chief":
        return True
    if kind != "worker":
        return False
    jobs = strategy.cluster_resolver.cluster_spec().jobs
    return "chief" not in jobs and index == 0


def write_dir(directory: str, strategy: tf.distribute.Strategy) -> str:
    """Where this process writes what belongs in directory.

    Every worker must take part in saving (variables are synchronised by collectives), but
    only the chief's copy is kept: the others write into DIR/../workertemp_<index>/, which
    remove_worker_dir() deletes, as TF's multi-worker guide does.
    """
    if is_chief(strategy):
        return directory
    parent, base = os.path.split(os.path.normpath(directory))
    return os.path.join(parent, f"workertemp_{task(strategy)[1]}", base)


def remove_worker_dir(directory: str, strategy: tf.distribute.Strategy) -> None:
    """Deletes a non-chief's temporary copy of directory (see write_dir)."""
    if not is_chief(strategy):
        shutil.rmtree(os.path.dirname(write_dir(directory, strategy)), ignore_errors=True)


def synchronize_batch_norm(model) -> None:
    """BatchNorm statistics over the global batch (an all-reduce per layer and step), so that
    N replicas train exactly as one device would on the same global batch.
    """
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
