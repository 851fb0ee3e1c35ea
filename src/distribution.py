"""train.distribution: train in one process, on every local device, or on several workers.

- ``none``: no tf.distribute strategy.
- ``mirrored``: tf.distribute.MirroredStrategy over every local device (each GPU; on a
  machine without one, the CPU: a single replica).
- ``multi_worker``: tf.distribute.MultiWorkerMirroredStrategy; the cluster and this
  process' place in it come from the TF_CONFIG environment variable (see parse_tf_config).

Batch and learning rate. ``train.batch_size`` is the global batch: every step takes that
many reviews, split evenly over the replicas, so it must be a multiple of their number.
Keras divides each replica's mean loss by the number of replicas and the strategy sums
the replicas' gradients: the optimizer steps on the gradient averaged over the global
batch, the step one process takes with that batch. So ``train.learning_rate`` is not
rescaled when replicas are added: two workers, or two devices, give the weights of one
process to float rounding (tested). Only a last, partial batch that leaves some replica
short is averaged slightly differently (the mean of the replicas' means).

Data. Every worker loads the same arrays (checked: see inputs_fingerprint) and
src.training shuffles them with ``train.seed``, the same order on every worker.
tf.distribute shards that pipeline by DATA: each global batch is cut into one slice per
replica and each worker keeps its own slices, so together they see exactly the batches
of one process. Validation batches are sharded the same way and Keras sums the metrics
over every replica, so each worker's history covers the whole split.

Chief. With several workers, the chief (TF_CONFIG task ``chief``, or worker 0 when the
cluster has no chief) logs to MLflow and writes the model, the run record and the
history; the other workers train and write nothing. TensorFlow's guide has non-chief
workers save to a temporary folder because saving may run collective ops; Keras 3's
.keras files only read each worker's own copy of the variables (the chief saving alone
is tested not to block), so they do not save at all.

Determinism. ``tf.config.experimental.enable_op_determinism`` stays on and does not get
in the way of the collectives. On CPUs the all-reduce (a ring over gRPC) adds the
replicas' gradients in a fixed order: every worker ends with bit-identical weights
(tested), and two runs with the same params gave the same weights. (The embedding's
sparse gradients are all-gathered, then applied alike on every worker.) Untested on GPUs,
where the all-reduce is NCCL's and op determinism says nothing about its order.

Keras 3.15 and MultiWorkerMirroredStrategy. Model.fit does not run under this strategy in
multi-worker mode (tensorflow/tensorflow#72388): it reduces the first input batch to
learn its shape (the strategy cannot reduce a tuple) and every step's scalar logs along
axis 0. keras_fit_under gets around both; see there.
"""

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import signal
from collections.abc import Mapping

import numpy as np

from src.compat import keras_internals
from src.errors import DistributionError, ParamsError
from src.params import Params, TrainParams

log = logging.getLogger("imdb_lstm.distribution")

TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
                     '"task": {"type": "worker", "index": 0}}\'')
_TRAINING_JOBS = ("chief", "worker")
_ADDRESS = re.compile(r"^(?P<host>\S+):(?P<port>\d{1,5})$")


@dataclasses.dataclass(frozen=True)
class ClusterTask:
    """This process' place in a TF_CONFIG cluster."""

    task_type: str
    task_index: int
    cluster: dict[str, tuple[str, ...]]

    @property
    def workers(self) -> int:
        """How many processes train: the chief and the workers."""
        return sum(len(self.cluster.get(job, ())) for job in _TRAINING_JOBS)

    @property
    def is_chief(self) -> bool:
        """The chief task, or worker 0 when there is no chief."""
        if "chief" in self.cluster:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def name(self) -> str:
        return f"{self.task_type} {self.task_index}"


def _fail(problem: str) -> DistributionError:
    return DistributionError(f"TF_CONFIG: {problem}; train.distribution multi_worker needs, on every worker, "
                             f"e.g. {TF_CONFIG_EXAMPLE} (README: Training on several workers)")


def parse_tf_config(text: str | None) -> ClusterTask:
    """Validate TF_CONFIG's JSON: a cluster of ``chief``/``worker`` host:port lists and this task in it."""
    if text is None or not text.strip():
        raise _fail("not set")
    try:
        config = json.loads(text)
    except ValueError as error:
        raise _fail(f"not valid JSON ({error})") from None
    if not (isinstance(config, dict) and isinstance(config.get("cluster"), dict) and isinstance(config.get("task"), dict)):
        raise _fail("must be a JSON object with a \"cluster\" object and a \"task\" object")
    cluster: dict[str, tuple[str, ...]] = {}
    for job, addresses in config["cluster"].items():
        if job not in _TRAINING_JOBS:
            raise _fail(f"cluster job {job!r} is not supported: "
                        "MultiWorkerMirroredStrategy trains on chief and worker tasks only")
        if not isinstance(addresses, list) or not addresses or not all(isinstance(a, str) for a in addresses):
            raise _fail(f"cluster.{job} must be a non-empty list of \"host:port\" strings, got {addresses!r}")
        for address in addresses:
            match = _ADDRESS.match(address)
            if not match or not 0 < int(match["port"]) < 65536:
                raise _fail(f"cluster.{job}: {address!r} is not host:port")
        cluster[job] = tuple(addresses)
    if "worker" not in cluster and "chief" not in cluster:
        raise _fail("cluster has no chief and no worker")
    if len(cluster.get("chief", ())) > 1:
        raise _fail(f"cluster.chief must have one address, got {len(cluster['chief'])}")
    everyone = [address for addresses in cluster.values() for address in addresses]
    duplicated = sorted({address for address in everyone if everyone.count(address) > 1})
    if duplicated:
        raise _fail(f"address {duplicated[0]} is given twice")
    task_type, task_index = config["task"].get("type"), config["task"].get("index")
    if task_type not in cluster:
        raise _fail(f"task.type must be one of the cluster's jobs ({', '.join(cluster)}), got {task_type!r}")
    if not isinstance(task_index, int) or isinstance(task_index, bool) or not 0 <= task_index < len(cluster[task_type]):
        raise _fail(f"task.index must be an integer from 0 to {len(cluster[task_type]) - 1} "
                    f"(cluster.{task_type} has {len(cluster[task_type])}), got {task_index!r}")
    return ClusterTask(task_type, task_index, cluster)


def cluster_task(train: TrainParams, environ: Mapping[str, str] = os.environ) -> ClusterTask | None:
    """This process' task for ``multi_worker`` (from TF_CONFIG), else None. Imports no TensorFlow.

    Raises DistributionError on a bad TF_CONFIG, and ParamsError when ``train.batch_size``
    does not split over the workers.
    """
    if train.distribution != "multi_worker":
        if environ.get("TF_CONFIG"):
            log.warning("TF_CONFIG is set but train.distribution is %s: training alone", train.distribution)
        return None
    task = parse_tf_config(environ.get("TF_CONFIG"))
    check_batch_split(train.batch_size, task.workers, f"{task.workers} workers")
    return task


def check_batch_split(batch_size: int, replicas: int, where: str) -> None:
    """ParamsError unless the global batch splits evenly over ``replicas`` (``where`` says whose)."""
    if batch_size % replicas:
        raise ParamsError(f"train.batch_size: {batch_size} does not split evenly over the {replicas} replicas of "
                          f"{where}; use a multiple of {replicas} (it is the global batch; the learning rate applies "
                          "to its mean gradient)")


def create_strategy(distribution: str, task: ClusterTask | None = None):
    """The tf.distribute strategy for ``train.distribution``, or None for ``none``.

    Must come before anything else uses TensorFlow: MultiWorkerMirroredStrategy configures
    the runtime, and blocks until every worker of the cluster has started. TensorFlow then
    catches SIGTERM for its own preemption handling; the handler that was installed before
    (src.cli's, which ends the MLflow run as KILLED) is put back.
    """
    if distribution == "none":
        return None
    import tensorflow as tf

    if distribution == "mirrored":
        return tf.distribute.MirroredStrategy()
    if task is None:
        raise ValueError("multi_worker needs the ClusterTask from cluster_task()")
    log.info("%s of %d: waiting for every worker of %s", task.name, task.workers,
             ", ".join(a for job in _TRAINING_JOBS for a in task.cluster.get(job, ())))
    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # not a line per collective op
    previous = signal.getsignal(signal.SIGTERM)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    return strategy


def start(params: Params, task: ClusterTask | None, splits: Mapping[str, Mapping[str, np.ndarray]]):
    """The strategy to train under (None for ``none``), once the batch splits over its replicas
    (every device of every worker) and, with several workers, all of them have the same
    params and ``splits`` ({"train": {"x": ..., "y": ...}, ...}). See create_strategy."""
    strategy = create_strategy(params.train.distribution, task)
    if strategy is not None:
        check_batch_split(params.train.batch_size, strategy.num_replicas_in_sync, type(strategy).__name__)
        arrays = {f"{name}.{key}": array for name, split in splits.items() for key, array in split.items()}
        check_workers_agree(strategy, inputs_fingerprint(params, arrays))
    return strategy


def replicas(strategy) -> int:
    """How many replicas share each global batch: every device of every worker."""
    return 1 if strategy is None else strategy.num_replicas_in_sync


def scope(strategy):
    """The strategy's scope (variables created in it are mirrored), or no-op without one."""
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def _is_multi_worker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def inputs_fingerprint(params: Params, arrays: Mapping[str, np.ndarray]) -> bytes:
    """sha256 of what every worker must share: the model, train and preprocess params, and the arrays."""
    digest = hashlib.sha256()
    shared = {name: dataclasses.asdict(getattr(params, name)) for name in ("model", "train", "preprocess")}
    digest.update(json.dumps(shared, sort_keys=True).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name} {array.dtype} {array.shape}".encode())
        digest.update(array.tobytes())
    return digest.digest()


@contextlib.contextmanager
def peers_failing_as_errors(strategy):
    """Under MultiWorkerMirroredStrategy, a collective op failing (another worker stopped,
    or cannot be reached) becomes a DistributionError: one line, exit code 2."""
    if strategy is None or not _is_multi_worker(strategy):
        yield
        return
    import tensorflow as tf

    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
            tf.errors.DeadlineExceededError) as error:
        skip = ("Graph execution error", "Detected at")  # and the indented traceback of the op
        lines = [line for line in str(error.message).splitlines()
                 if line.strip() and not line[0].isspace() and not line.startswith(skip)]
        detail = lines[0] if lines else type(error).__name__
        raise DistributionError(f"training stopped: another worker stopped or cannot be reached ({detail[:200]}); "
                                "see the other workers' logs") from None


def check_workers_agree(strategy, fingerprint: bytes) -> None:
    """DistributionError on every worker unless all of them have the same ``fingerprint``.

    Workers with different params or data would train a model none of them meant, or wait
    for each other forever: one all-gather of the fingerprints before training says so.
    """
    if strategy is None or not _is_multi_worker(strategy):
        return
    import tensorflow as tf

    local = tf.constant(np.frombuffer(fingerprint[:16], dtype=np.int32)[None, :])
    with peers_failing_as_errors(strategy):
        everyone = strategy.experimental_distribute_values_from_function(lambda _: local)
        gathered = strategy.gather(everyone, axis=0).numpy()
    if not (gathered == gathered[0]).all():
        raise DistributionError("the workers do not have the same params.yaml (model, train and preprocess sections) "
                                "and data/processed arrays; give every worker the same ones")


def weights_digest(weights: list[np.ndarray]) -> str:
    """A short sha256 of a model's weights, to see in the logs that every worker ended the same."""
    digest = hashlib.sha256()
    for array in weights:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def keras_fit_under(model, strategy, sample_batch):
    """Let Keras 3.15's Model.fit run ``model`` under ``strategy``; nothing to do without one.

    1. Model.fit builds the metrics and optimizer from its first batch, reduced over the
       replicas: MultiWorkerMirroredStrategy cannot reduce an (x, y) tuple, and under any
       strategy the batch drawn advances the shuffling by one epoch. Everything is built
       beforehand instead, from ``sample_batch`` (numpy (x, y)), and that step is skipped:
       a distributed run sees the batches of ``distribution: none``.
    2. Under MultiWorkerMirroredStrategy, Keras averages each step's logs over the
       workers along axis 0, which scalars do not have: the steps return them as [1]
       vectors. Epoch logs (what the history records) are read from the metrics
       themselves, summed over every replica, and stay scalars.

    Both use Keras internals: src/compat/keras_internals.py.
    """
    if strategy is None:
        yield
        return
    with keras_internals.fit_built_beforehand(model, strategy, sample_batch, logs_as_vectors=_is_multi_worker(strategy)):
        with peers_failing_as_errors(strategy):
            yield
