"""Strict checkpoint restores (every variable of the objects restored must come from the file),
and which checkpoint of a directory is the latest.
"""

from __future__ import annotations

import collections
import os

import keras
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from patchvae_tf.errors import UserError

_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


class CheckpointMismatch(UserError):
    """A checkpoint that does not hold every variable of the model it is restored into."""


def _is_variable(obj) -> bool:
    return isinstance(obj, (tf.Variable, keras.Variable))


def first_unmatched(path: str, objects: dict) -> str | None:
    """The first variable of objects (by path from the checkpoint's root) that the checkpoint
    at path does not hold with the same shape, described in a few words; None when all match.

    Walks the checkpoint's object graph beside the Python one, edge name by edge name, as a
    restore does: a variable counts as matched when some path to it reaches a saved value.
    """
    reader = tf.train.load_checkpoint(path)
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(_GRAPH_KEY))
    shapes = reader.get_variable_to_shape_map()
    root = tf.train.Checkpoint(**objects)
    found, names, order = {}, {}, []
    queue, seen = collections.deque([(root, 0, ())]), set()
    while queue:
        obj, node, trail = queue.popleft()
        if (id(obj), node) in seen:
            continue
        seen.add((id(obj), node))
        if _is_variable(obj):
            if id(obj) not in names:
                names[id(obj)] = "/".join(trail)
                order.append(obj)
            if node is not None:
                keys = [a.checkpoint_key for a in graph.nodes[node].attributes]
                saved = shapes.get(keys[0]) if keys else None
                found.setdefault(id(obj), saved)
                if saved is not None and list(saved) == list(obj.shape):
                    found[id(obj)] = saved
            continue
        saved_children = graph.nodes[node].children if node is not None else ()
        edges = {c.local_name: c.node_id for c in saved_children}
        for name, child in tf.train.TrackableView.children(obj).items():
            queue.append((child, edges.get(name), (*trail, name)))
    for var in order:
        saved = found.get(id(var))
        if saved is None:
            return f"{names[id(var)]} is not in it"
        if list(saved) != list(var.shape):
            return f"{names[id(var)]} has shape {list(var.shape)} there {list(saved)}"
    return None


def restore(path: str, workdir: str, **objects) -> None:
    """Restores objects (name -> model, layer or variable, as in tf.train.Checkpoint) from
    the checkpoint prefix path, asserting that each of their variables was matched.

    Raises CheckpointMismatch naming the workdir and the first unmatched variable (another
    architecture, a renamed layer), and UserError for a file that cannot be read. Values of
    the checkpoint that objects do not ask for (the optimizer, the decoder) are ignored.
    """
    try:
        unmatched = first_unmatched(path, objects)
    except (tf.errors.OpError, ValueError) as e:
        raise UserError(f"cannot read checkpoint {path!r}: {str(e).splitlines()[0]}") from None
    if unmatched:
        raise CheckpointMismatch(
            f"checkpoint {path!r} of workdir {workdir!r} does not fit the model: {unmatched} "
            "(was it trained with another config?)"
        )
    try:
        status = tf.train.Checkpoint(**objects).restore(path)
        status.assert_existing_objects_matched()
    except AssertionError as e:  # a case the walk above missed; still one line
        first = " ".join(str(e).split())[:300]
        raise CheckpointMismatch(
            f"checkpoint {path!r} of workdir {workdir!r} does not fit the model: {first}"
        ) from None
    except (tf.errors.OpError, ValueError) as e:
        raise UserError(f"cannot restore {path!r}: {str(e).splitlines()[0]}") from None
    status.expect_partial()


def newest_readable(
    checkpoint_dir: str, workdir: str, *, resuming: bool = False, **objects
) -> str | None:
    """Restores the newest checkpoint of checkpoint_dir that reads back whole into objects;
    returns its path (None: the directory holds none).

    An unreadable checkpoint (truncated, deleted or garbage files) is passed over for the one
    before it, with a warning naming it; nothing is deleted. CheckpointMismatch (another
    model) is raised at once; every checkpoint unreadable is one UserError naming them.
    resuming (training): the state file then names the readable one as the latest, since
    TF's preemption handler restores that one.
    """
    state = (
        tf.train.get_checkpoint_state(checkpoint_dir) if tf.io.gfile.isdir(checkpoint_dir) else None
    )
    candidates = list(reversed(state.all_model_checkpoint_paths)) if state else []
    failures = []
    for path in candidates:
        try:
            restore(path, workdir, **objects)
        except CheckpointMismatch:
            raise  # another model's checkpoint: an older one of the same run will not fit either
        except Exception as e:  # noqa: BLE001  UserError, OpError, IndexError...
            reason = " ".join(str(e).split())[:200]
            print(f"warning: checkpoint {path} is unreadable ({reason}); trying an older one")
            failures.append(path)
            continue
        if failures and resuming:
            paths, stamps = _listed(state)
            keep = [i for i, p in enumerate(paths) if p not in failures]
            tf.compat.v1.train.update_checkpoint_state(
                checkpoint_dir,
                path,
                [paths[i] for i in keep],
                all_model_checkpoint_timestamps=[stamps[i] for i in keep] if stamps else None,
            )
        elif failures:
            print(f"using checkpoint {path}, the newest readable one")
        return path
    if failures:
        hint = "; move that directory away to train from scratch" if resuming else ""
        raise UserError(
            f"no readable checkpoint in {checkpoint_dir!r} (tried {', '.join(failures)}){hint}"
        )
    return None


def named(checkpoint: str, workdir: str, **objects) -> str:
    """Restores the checkpoint the user named (--checkpoint: a prefix, or a directory's
    latest) with no fallback, and returns its path; one UserError if absent or unreadable.
    ``workdir`` (named in errors) defaults to the one holding the checkpoint's directory.
    """
    path = tf.train.latest_checkpoint(checkpoint) if os.path.isdir(checkpoint) else checkpoint
    if not path:
        raise UserError(f"no checkpoint in {checkpoint!r}: train first, or pass --checkpoint")
    if not tf.io.gfile.exists(path + ".index"):
        raise UserError(f"checkpoint {path!r} does not exist (no {path}.index)")
    workdir = workdir or os.path.dirname(os.path.dirname(path))
    try:
        restore(path, workdir, **objects)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001
        reason = " ".join(str(e).split())[:200]
        raise UserError(f"checkpoint {path!r} is unreadable ({reason})") from None
    return path


def discard_latest(checkpoint_dir: str) -> str | None:
    """Deletes the latest checkpoint; the one before it (returned) becomes the latest."""
    state = tf.train.get_checkpoint_state(checkpoint_dir)
    paths, stamps = _listed(state) if state else ([], [])
    for f in tf.io.gfile.glob(paths[-1] + ".*") if paths else []:
        tf.io.gfile.remove(f)
    if len(paths) < 2:
        if state:
            tf.io.gfile.remove(os.path.join(checkpoint_dir, "checkpoint"))
        return None
    tf.compat.v1.train.update_checkpoint_state(
        checkpoint_dir, paths[-2], paths[:-1], all_model_checkpoint_timestamps=stamps[:-1] or None
    )
    return paths[-2]


def _listed(state) -> tuple[list, list]:
    """The checkpoints a state file lists and their timestamps ([] where it has none): a
    CheckpointManager keeps in its rotation only the checkpoints listed with a timestamp.
    """
    paths, stamps = (
        list(state.all_model_checkpoint_paths),
        list(state.all_model_checkpoint_timestamps),
    )
    return paths, stamps if len(stamps) == len(paths) else []
