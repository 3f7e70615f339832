"""Distribution strategies, logical CPU devices, mixed precision, XLA and multi-worker training.

* :func:`strategy` - "auto" | "cpu" | "mirrored" | "tpu" | "multiworker".
* :func:`global_batch_size` - per-replica batch times replicas in sync.
* :func:`use_logical_cpus` - split the CPU into n logical devices (call first).
* :func:`set_mixed_precision` - None | "float16" | "bfloat16" global policy.
  Classification heads must be built with ``dtype="float32"`` so the output
  probabilities (and the loss) stay float32.
* :func:`resolve_jit_compile` - the ``jit_compile`` value for ``model.compile``.
* :func:`train_multiworker` - a custom training loop for
  MultiWorkerMirroredStrategy (Keras 3.15 ``fit`` fails with it).
* :func:`worker_share` - this process's index among the workers of a
  strategy, their number and a barrier (how the SVM mode splits feature
  extraction across machines).

Example:
    >>> s = strategy("cpu")
    >>> global_batch_size(32, s)
    32
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import numbers
import os
from collections.abc import Callable

import keras
import tensorflow as tf

from tfmed.config import FinetuneConfig, choices
from tfmed.errors import TfmedError
from tfmed.progress import log

# model.finetune.strategy's choices, plus the custom loop's multi-worker strategy (not for Keras fit)
STRATEGIES = choices(FinetuneConfig, "strategy") + ("multiworker",)
PRECISIONS = {None: "float32", "float32": "float32", "float16": "mixed_float16",
              "mixed_float16": "mixed_float16", "bfloat16": "mixed_bfloat16", "mixed_bfloat16": "mixed_bfloat16"}


class StrategyError(TfmedError):
    """A requested strategy, device layout or precision is unavailable or misconfigured."""


_MULTIWORKER: list = []  # the process's one MultiWorkerMirroredStrategy (collectives are set up once)
WORKER_TIMEOUT = "TFMED_WORKER_TIMEOUT"  # seconds a worker waits for the others of TF_CONFIG to start
DEFAULT_WORKER_TIMEOUT = 600.0


@functools.lru_cache(maxsize=1)
def _find_tpu():
    """A connected TPUClusterResolver, or None when no TPU is reachable (looked for once per process)."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return resolver
    except (ValueError, RuntimeError, tf.errors.OpError, ImportError, KeyError) as error:
        _find_tpu.last_error = error
        return None


def check_reachable(name: str, key: str) -> None:
    """Refuse now, naming the setting ``key``, a strategy this machine cannot give (``tpu`` without a reachable
    TPU), so that a run stops before its data are read rather than after its directory is made.

    Example:
        >>> check_reachable("auto", "model.svm.strategy")
    """
    if name == "tpu" and _find_tpu() is None:
        raise StrategyError(f"{key} is tpu, but no TPU is reachable ({getattr(_find_tpu, 'last_error', '')}); run "
                            "on a TPU host/runtime or use strategy auto")


def strategy(name: str = "auto") -> tf.distribute.Strategy:
    """A ``tf.distribute`` strategy by name.

    * auto: TPUStrategy when a TPU is reachable, MirroredStrategy when more
      than one GPU is visible, otherwise the default strategy.
    * cpu: OneDeviceStrategy on "/cpu:0".
    * mirrored: MirroredStrategy over all GPUs, or over the logical CPU
      devices (see :func:`use_logical_cpus`) when there is no GPU.
    * tpu: TPUStrategy; StrategyError when no TPU is reachable.
    * multiworker: MultiWorkerMirroredStrategy from the ``TF_CONFIG``
      environment variable (one per process: later calls return the same
      one); train with :func:`train_multiworker`. Creating it waits until
      every worker of TF_CONFIG has started, at most ``$TFMED_WORKER_TIMEOUT``
      seconds (default 600), then raises StrategyError.

    Example:
        >>> strategy("auto").num_replicas_in_sync >= 1
        True
    """
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; allowed: {', '.join(STRATEGIES)}")
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if name in ("auto", "tpu"):
        resolver = _find_tpu() if (name == "tpu" or _tpu_hint()) else None
        if resolver is not None:
            return tf.distribute.TPUStrategy(resolver)
        check_reachable(name, "the strategy")  # tpu asked for and none found: refused
        gpus = tf.config.list_logical_devices("GPU")
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy([device.name for device in gpus])
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    config = os.environ.get("TF_CONFIG")
    if not config:
        raise StrategyError("strategy 'multiworker' needs the TF_CONFIG environment variable, e.g. "
                            '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
                            '"task": {"type": "worker", "index": 0}}')
    try:
        parsed = json.loads(config)
        workers = parsed["cluster"]["worker"]
        task = (str(parsed["task"].get("type", "worker")), int(parsed["task"]["index"]))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise StrategyError(f"TF_CONFIG is not valid for multi-worker training ({error!r}); it needs "
                            "cluster.worker (a list of host:port) and task.type/task.index") from None
    if not isinstance(workers, list) or not workers:
        raise StrategyError("TF_CONFIG cluster.worker must be a non-empty list of host:port addresses")
    others = sorted(job for job in parsed["cluster"] if job != "worker") + (
        [f"task.type {task[0]!r}"] if task[0] != "worker" else [])
    if others:
        raise StrategyError(f"TF_CONFIG for strategy 'multiworker' has {', '.join(others)}: tfmed's multi-worker "
                            "training takes workers only (worker 0 acts as the chief); list every process under "
                            "cluster.worker and give each task.type 'worker' with its own task.index")
    if not _MULTIWORKER:
        timeout = _worker_timeout()
        peers = [address for job, addresses in parsed["cluster"].items() for index, address in enumerate(addresses)
                 if (job, index) != task]
        log(f"multiworker: {task[0]} {task[1]} waits up to {timeout:g} s ({WORKER_TIMEOUT}) for the other "
            f"workers of TF_CONFIG to start: {', '.join(peers) or '(none)'}. Ctrl-C takes effect only when the "
            f"wait ends; kill -9 {os.getpid()} stops it at once")
        _limit_cluster_wait(timeout, task[0])
        try:
            _MULTIWORKER.append(tf.distribute.MultiWorkerMirroredStrategy())
        except tf.errors.DeadlineExceededError:
            raise StrategyError(f"not every worker of TF_CONFIG started within {timeout:g} s ({task[0]} {task[1]} "
                                f"waited for {', '.join(peers)}): start the same command on each of them with "
                                "its own task.index, check that their host:port can be reached from here, or set "
                                f"{WORKER_TIMEOUT} to the seconds to wait") from None
        except (RuntimeError, ValueError) as error:
            raise StrategyError(f"MultiWorkerMirroredStrategy could not start ({error}); it must be created "
                                "before TensorFlow runs anything else: start a fresh process (tfmed run does "
                                "this first)") from None
    return _MULTIWORKER[0]


def _worker_timeout() -> float:
    """Seconds to wait for the other workers: ``$TFMED_WORKER_TIMEOUT``, else :data:`DEFAULT_WORKER_TIMEOUT`."""
    value = os.environ.get(WORKER_TIMEOUT, "").strip()
    try:
        seconds = float(value) if value else DEFAULT_WORKER_TIMEOUT
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise StrategyError(f"{WORKER_TIMEOUT} is {value!r}; set it to the seconds a worker waits for the others "
                            f"of TF_CONFIG to start (e.g. {DEFAULT_WORKER_TIMEOUT:g}), or unset it for that default")
    return seconds


def _limit_cluster_wait(seconds: float, task_type: str) -> None:
    """Make MultiWorkerMirroredStrategy's start give up with DeadlineExceededError when not every worker has
    registered within ``seconds`` (TensorFlow otherwise waits without end, deaf to Ctrl-C). TensorFlow has no
    public setting for it: this sets up its coordination service as the strategy would (the strategy keeps a
    configuration made before it), with a registration barrier and its timeout."""
    if task_type not in ("chief", "worker"):
        return  # the strategy sets up no coordination service for other tasks
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    cluster = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(cluster),
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster.num_tasks(job))
                          for job in ("chief", "worker") if job in cluster.jobs],
        cluster_register_timeout_in_ms=int(seconds * 1000))
    context.context().coordination_service.cluster_register_with_barrier = True


def _tpu_hint() -> bool:
    """Cheap check whether a TPU may be present, so 'auto' does not wait on a resolver otherwise."""
    return bool(os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR")
                or os.environ.get("TPU_ACCELERATOR_TYPE") or os.path.exists("/dev/accel0")
                or os.path.exists("/dev/vfio/0"))


@dataclasses.dataclass(frozen=True)
class WorkerShare:
    """This process's part of a job split over ``count`` worker processes: parts ``k`` with
    ``k % count == index`` are its own; ``barrier()`` returns once every worker has called it.

    Example:
        >>> share = WorkerShare(index=1, count=2)
        >>> [part for part in range(5) if share.owns(part)], share.chief
        ([1, 3], False)
    """

    index: int = 0
    count: int = 1
    barrier: Callable[[], None] = lambda: None

    @property
    def chief(self) -> bool:
        """Worker 0: the one that goes on alone once the shared work is done."""
        return self.index == 0

    def owns(self, part: int) -> bool:
        """Whether part number ``part`` is this worker's."""
        return part % self.count == self.index


def worker_share(strategy_: tf.distribute.Strategy) -> WorkerShare:
    """This process's :class:`WorkerShare` under ``strategy_``: its task index among the TF_CONFIG
    workers of a MultiWorkerMirroredStrategy, with a barrier made of one all-reduce across them;
    ``WorkerShare(0, 1)`` (all parts, no waiting) under any single-process strategy.

    Example:
        >>> share = worker_share(strategy("cpu"))
        >>> share.index, share.count, share.chief
        (0, 1, True)
    """
    if not isinstance(strategy_, tf.distribute.MultiWorkerMirroredStrategy):
        return WorkerShare()
    resolver = strategy_.cluster_resolver
    jobs = resolver.cluster_spec().as_dict()
    if set(jobs) - {"worker"} or resolver.task_type not in (None, "worker"):
        raise StrategyError(f"the cluster has jobs {sorted(jobs)} (this task: {resolver.task_type!r}); a worker "
                            "share numbers workers only: list every process under cluster.worker in TF_CONFIG")
    count = len(jobs.get("worker", []))
    expected = float(strategy_.num_replicas_in_sync)

    @tf.function
    def all_reduce():
        return strategy_.run(lambda: tf.distribute.get_replica_context().all_reduce("sum", tf.constant(1.0)))

    def barrier() -> None:
        total = float(strategy_.experimental_local_results(all_reduce())[0])
        if total != expected:  # a worker that is not running the same job
            raise StrategyError(f"the barrier counted {total:g} replicas, expected {expected:g}")

    return WorkerShare(int(resolver.task_id), max(count, 1), barrier)


def global_batch_size(per_replica: int, strategy_: tf.distribute.Strategy | None = None) -> int:
    """Batch size across all replicas: ``per_replica * strategy.num_replicas_in_sync``.

    Example:
        >>> global_batch_size(16, tf.distribute.get_strategy())
        16
    """
    if isinstance(per_replica, bool) or not isinstance(per_replica, numbers.Integral) or per_replica < 1:
        raise StrategyError(f"per-replica batch size must be an int >= 1, got {per_replica!r}")
    strategy_ = strategy_ or tf.distribute.get_strategy()
    return int(per_replica) * int(strategy_.num_replicas_in_sync)


def use_logical_cpus(n: int) -> list[str]:
    """Split the first physical CPU into ``n`` logical devices; return their names.

    Must run before TensorFlow initialises its devices (before any tensor,
    model or strategy is created). Lets MirroredStrategy be tested or used on
    a CPU-only machine.

    Example:
        >>> use_logical_cpus(2)  # doctest: +SKIP
        ['/device:CPU:0', '/device:CPU:1']
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise StrategyError(f"the number of logical CPUs must be an int >= 1, got {n!r}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n:
        return [device.name for device in tf.config.list_logical_devices("CPU")]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(n))
    except RuntimeError as error:
        raise StrategyError(f"use_logical_cpus({n}) came too late: TensorFlow has already initialised its "
                            f"devices ({error}). Call it first thing in the program, before creating any "
                            "tensor, model or strategy (in tests, in a fresh subprocess)") from None
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def set_mixed_precision(policy: str | None) -> str:
    """Set Keras' global dtype policy; return its name.

    ``None`` / "float32" -> "float32"; "float16" -> "mixed_float16";
    "bfloat16" -> "mixed_bfloat16". Layers created afterwards compute in the
    low precision and keep float32 weights. Build output layers with
    ``dtype="float32"`` (e.g. ``Dense(1, activation="sigmoid", dtype="float32")``)
    so probabilities and the loss stay float32. On CPUs with bfloat16
    support "bfloat16" is the fast choice; "float16" is for GPUs (Keras wraps
    the optimizer in a LossScaleOptimizer at compile time).

    Example:
        >>> set_mixed_precision("bfloat16")
        'mixed_bfloat16'
        >>> set_mixed_precision(None)
        'float32'
    """
    if policy not in PRECISIONS:
        raise StrategyError(f"mixed precision {policy!r} is unknown; allowed: None, 'float16', 'bfloat16'")
    name = PRECISIONS[policy]
    keras.mixed_precision.set_global_policy(name)
    return name


@contextlib.contextmanager
def precision(policy: str | None):
    """Layers built inside the block compute in ``policy`` (as :func:`set_mixed_precision` reads it; None:
    float32); Keras' global dtype policy is restored afterwards, whatever a script had set.

    Example:
        >>> with precision("bfloat16"):
        ...     inside = keras.mixed_precision.global_policy().name
        >>> inside, keras.mixed_precision.global_policy().name
        ('mixed_bfloat16', 'float32')
    """
    previous = keras.mixed_precision.global_policy()
    try:
        set_mixed_precision(policy)
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def resolve_jit_compile(setting: bool | str = "auto", strategy_: tf.distribute.Strategy | None = None) -> bool:
    """The ``jit_compile`` value to pass to ``model.compile``.

    XLA compilation usually speeds up training on GPUs and is required on
    TPUs; on CPUs it rarely helps and adds compile time, and some ops (e.g.
    image resizing with antialiasing, ``tf.py_function``) do not compile.
    ``"auto"`` gives True on TPU or GPU and False on CPU; True/False are
    returned as given (False on TPU raises, since TPUs always compile).

    Example:
        >>> resolve_jit_compile(False)
        False
    """
    on_tpu = isinstance(strategy_, tf.distribute.TPUStrategy)
    if setting == "auto":
        return bool(on_tpu or tf.config.list_physical_devices("GPU"))
    if not isinstance(setting, bool):
        raise StrategyError(f"jit_compile must be True, False or 'auto', got {setting!r}")
    if on_tpu and not setting:
        raise StrategyError("TPUs always compile with XLA; use jit_compile=True or 'auto'")
    return setting


def _per_example_loss(loss) -> keras.losses.Loss:
    """A copy of ``loss`` that returns one value per example (reduction=None); a plain loss function
    (``"binary_crossentropy"``, a callable) is wrapped as Keras' compile does, so (B,) targets meet (B, 1)
    predictions and sample weights apply.

    Example:
        >>> import numpy as np
        >>> _per_example_loss("mse")(np.zeros(2), np.ones((2, 1))).shape
        TensorShape([2])
    """
    loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        config = loss.get_config()
        config["reduction"] = None
        return loss.__class__.from_config(config)
    if callable(loss):
        return _FunctionLoss(loss)
    raise StrategyError(f"loss {loss!r} is not a Keras loss")


class _FunctionLoss(keras.losses.Loss):
    """A plain loss function as a per-example Loss, its targets and predictions brought to one rank first as
    Keras' own wrapper of loss functions does (which Keras 3.15 does not export): (B,) meets (B, 1)."""

    def __init__(self, fn):
        super().__init__(name=getattr(fn, "__name__", "loss"), reduction=None)
        self.fn = fn

    def call(self, y_true, y_pred):
        y_true, y_pred = keras.ops.convert_to_tensor(y_true), keras.ops.convert_to_tensor(y_pred)
        if len(y_pred.shape) == len(y_true.shape) + 1 and y_pred.shape[-1] == 1:
            y_true = keras.ops.expand_dims(y_true, -1)
        elif len(y_true.shape) == len(y_pred.shape) + 1 and y_true.shape[-1] == 1:
            y_true = keras.ops.squeeze(y_true, -1)
        return self.fn(keras.ops.cast(y_true, y_pred.dtype), y_pred)


def train_multiworker(build_model: Callable[[], keras.Model], dataset_fn: Callable, epochs: int, *,
                      steps_per_epoch: int | None = None, loss=None, optimizer=None,
                      strategy_: tf.distribute.Strategy | None = None, verbose: int = 0):
    """Train with a custom loop under MultiWorkerMirroredStrategy (or any strategy).

    ``build_model()`` is called inside the strategy scope and returns a model;
    if it is compiled, its loss and optimizer are used unless ``loss`` /
    ``optimizer`` are given. ``dataset_fn(input_context)`` returns this
    worker's dataset batched PER REPLICA (use
    ``input_context.get_per_replica_batch_size(global_batch)`` and
    ``ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)``).
    Every worker must run the same number of steps: give ``steps_per_epoch``
    with a repeated dataset, or make each shard yield the same number of
    batches. Elements are ``(x, y)`` or ``(x, y, sample_weight)``, as for ``fit``.
    Each step runs ``strategy.run`` inside a ``tf.function``; the
    per-example (weighted) loss is averaged over the global batch with
    ``tf.nn.compute_average_loss`` and gradients are all-reduced by the
    optimizer. Returns ``(model, history)`` with history ``{"loss": [...]}``.

    Example:
        >>> def build():
        ...     model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        ...     model.compile(keras.optimizers.SGD(0.1), "mse")
        ...     return model
        >>> import numpy as np
        >>> def data(context):
        ...     return tf.data.Dataset.from_tensor_slices((np.ones((8, 2)), np.ones((8, 1)))).batch(4)
        >>> model, history = train_multiworker(build, data, epochs=1, strategy_=tf.distribute.get_strategy())
        >>> len(history["loss"])
        1
    """
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise StrategyError(f"epochs must be an int >= 1, got {epochs!r}")
    if steps_per_epoch is not None and (not isinstance(steps_per_epoch, numbers.Integral) or steps_per_epoch < 1):
        raise StrategyError(f"steps_per_epoch must be an int >= 1 or None, got {steps_per_epoch!r}")
    strategy_ = strategy_ or strategy("multiworker")
    with strategy_.scope():
        model = build_model()
        if not isinstance(model, keras.Model):
            raise StrategyError(f"build_model must return a keras.Model, got {type(model).__name__}")
        loss = loss if loss is not None else getattr(model, "loss", None)
        if loss is None:
            raise StrategyError("no loss: compile the model in build_model or pass loss=...")
        optimizer = optimizer if optimizer is not None else getattr(model, "optimizer", None)
        if optimizer is None:
            raise StrategyError("no optimizer: compile the model in build_model or pass optimizer=...")
        optimizer = keras.optimizers.get(optimizer)
        per_example = _per_example_loss(loss)
        optimizer.build(model.trainable_variables)
    dataset = strategy_.distribute_datasets_from_function(dataset_fn)

    @tf.function
    def train_step(batch):
        def step_fn(x, y, sample_weight=None):
            with tf.GradientTape() as tape:
                predictions = model(x, training=True)
                losses = tf.reshape(tf.cast(per_example(y, predictions, sample_weight=sample_weight), tf.float32),
                                    [-1])
                loss_value = tf.nn.compute_average_loss(losses)
                if model.losses:
                    loss_value += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
                scaled = optimizer.scale_loss(loss_value)
            gradients = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
            return loss_value

        per_replica = strategy_.run(step_fn, args=tuple(batch))
        return strategy_.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    history = {"loss": []}
    for epoch in range(epochs):
        iterator = iter(dataset)
        total, steps = 0.0, 0
        while steps_per_epoch is None or steps < steps_per_epoch:
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                if steps_per_epoch is not None:
                    raise StrategyError(f"the dataset ran out after {steps} steps in epoch {epoch}, before "
                                        f"steps_per_epoch={steps_per_epoch}; repeat() it")
                break
            batch = batch.get_value()
            if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
                size = f" of {len(batch)}" if isinstance(batch, (tuple, list)) else ""
                raise StrategyError(f"dataset_fn must yield (x, y) or (x, y, sample_weight) batches, got "
                                    f"{type(batch).__name__}{size}")
            total += float(train_step(batch))
            steps += 1
        if steps == 0:
            raise StrategyError("dataset_fn produced no batches on this worker")
        history["loss"].append(total / steps)
        if verbose:
            log(f"epoch {epoch + 1}/{epochs}: loss {history['loss'][-1]:.4f}")
    return model, history
