"""ONNX Runtime as the engine's runner: ``OrtMultiExit`` holds a session per graph of an exported
folder (``metabert.deploy.onnx_export``, fp32 or INT8) and steps them layer by layer for
``metabert.engine.loop.run``, as it does the eager model: after each layer the policy decides
which rows leave and only the others go on to the next graph. At batch 1 the threshold rules run in
one session call over a graph with the exit test inside (``metabert.deploy.onnx_fused``)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch

from metabert.deploy.fused_layers import SLOW_FUSIONS
from metabert.deploy.onnx_export import FORMAT, TOKENS, read_meta, runner_name
from metabert.deploy.single_file import carries

log = logging.getLogger(__name__)


_POOL: dict = {}


def _shared_thread_pool(threads: int | None) -> bool:
    """One intra-op thread pool for all our sessions (the early-exit loop hops between 8 of them;
    per-session pools that spin would fight over the cores, and pools that do not spin wake up
    slowly). It must be set before ONNX Runtime creates its environment, once per process."""
    import os

    try:
        from onnxruntime.capi import _pybind_state as capi
    except ImportError:  # pragma: no cover
        return False
    wanted = threads or os.cpu_count() or 1
    if "threads" not in _POOL:
        try:
            capi.set_global_thread_pool_sizes(wanted, 1)
        except Exception:  # the environment exists already (another ORT user in this process)
            _POOL["threads"] = None
            return False
        _POOL["threads"] = wanted
    if _POOL["threads"] not in (None, wanted):
        log.warning("ONNX Runtime's shared thread pool has %s threads already; %s asked", _POOL["threads"], wanted)
    return _POOL["threads"] is not None


def token_feeds(inputs, names) -> dict[str, np.ndarray]:
    """The int64 token arrays of a batch of torch (or numpy) inputs for a graph that takes ``names``
    (``input_ids``, ``attention_mask`` and ``token_type_ids`` among them; zero token types where the
    batch has none)."""
    out = {k: np.asarray(inputs[k], dtype=np.int64) for k in TOKENS if k in names and k in inputs}
    if "token_type_ids" in names and "token_type_ids" not in out:
        out["token_type_ids"] = np.zeros_like(out["input_ids"])
    return out


def session_options(threads: int | None = None, level=None, optimized_path: str | None = None):
    """ONNX Runtime session options for a session of this process: on the one shared thread pool
    (``_shared_thread_pool``) where it could be set up, else a pool of its own that does not spin.
    ``level``: graph optimisation (default: all); ``optimized_path``: where to write the optimised
    graph."""
    import onnxruntime as ort

    shared = _shared_thread_pool(threads)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level is None else level
    if optimized_path:
        options.optimized_model_filepath = optimized_path
        options.log_severity_level = 3  # not the "hardware-specific graph" notice: it is used here and now
    if shared:
        options.use_per_session_threads = False
    else:  # each session has its own pool: spinning pools of 8 sessions would fight over the cores
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OrtMultiExit:
    """ONNX Runtime sessions over an exported folder: a ``metabert.engine.loop.Runner`` (``engine.run``
    drives its early exit; ``engine.run_full`` its full model)."""

    backend = "onnxruntime"  # the library it computes with (bench measures each library in a phase of its own)

    def __init__(self, directory: str | Path, threads: int | None = None, fused: bool = True):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        directory = Path(directory)
        self.meta = read_meta(directory)
        if self.meta.get("format", 1) != FORMAT:
            raise ValueError(f"{directory} was exported by an older metabert (ONNX folder format "
                             f"{self.meta.get('format', 1)}, this one reads {FORMAT}); export it again with "
                             "`metabert export --checkpoint CHECKPOINT --output FOLDER` (add `--quantize int8` for INT8)")
        self.tokenizer = AutoTokenizer.from_pretrained(directory)

        make_options = functools.partial(session_options, threads)

        options = make_options()

        def session(name):
            return ort.InferenceSession(str(directory / name), options, providers=["CPUExecutionProvider"],
                                        disabled_optimizers=list(SLOW_FUSIONS))

        self.session_options, self.directory = make_options, directory
        self.fused = fused  # batch 1 through one graph per threshold policy (metabert.deploy.onnx_fused)
        self._fused_sessions: dict = {}
        self._batched_sessions: dict = {}  # rule -> (session, its settings' names): early_exit_many
        self._carried = carries(self.meta)  # whether the single file's batched graph carries this layer state

        self.embeddings = session("embeddings.onnx")
        self._token_inputs = [i.name for i in self.embeddings.get_inputs()]  # DistilBERT, ModernBERT: no token types
        self._state_names = [o.name for o in self.embeddings.get_outputs()][1:]  # after "hidden"
        self._rows = {name: self.meta["state"][name]["rows"] for name in self._state_names}
        self._sequence_axes = {name: self.meta["state"][name]["sequence_axes"] for name in self._state_names}
        self.layers = [session(f"layer_{i + 1}.onnx") for i in range(self.meta["num_layers"])]
        # what each layer graph reads (the exporter drops an unused input: "pool" under cls pooling,
        # DeBERTa's input mask after layer 1, ModernBERT's masks and rotary tables of the other attention type)
        self._layer_inputs = [{i.name for i in s.get_inputs()} for s in self.layers]
        self.full_session = session("full.onnx")
        self.num_layers = self.meta["num_layers"]
        # the runner's name says its precision: calibrated policies are stored per name
        self.name = runner_name(self.meta)
        self.host_threads = 1  # the engine's exit tests in torch leave the cores to ORT's pool (engine.host_threads)

    def feeds(self, inputs) -> dict[str, np.ndarray]:
        """The input arrays of the embeddings and full graphs for a batch of torch (or numpy) inputs."""
        return token_feeds(inputs, self._token_inputs)

    # metabert.engine.loop.Runner: the state is (hidden, {name: array}): the hidden state and the
    # embeddings graph's other outputs, the layer inputs of the family (onnx_meta.json's "state")
    def start(self, inputs):
        hidden, *tensors = self.embeddings.run(None, self.feeds(inputs))
        return hidden, dict(zip(self._state_names, tensors))

    def layer_feeds(self, index, state) -> dict[str, np.ndarray]:
        """Layer graph ``index``'s inputs from the runner's state."""
        hidden, named = state
        wanted = self._layer_inputs[index]
        return {"hidden": hidden, **{name: value for name, value in named.items() if name in wanted}}

    def step(self, index, state):
        hidden, logits = self.layers[index].run(None, self.layer_feeds(index, state))
        return (hidden, state[1]), torch.from_numpy(logits)

    def select(self, state, keep):
        """The kept rows of the per-row arrays (shared ones stay as they are), without the trailing
        positions that are padding in all of them where the folder allows it (``trim_padding``, as
        ``metabert.model.families.trim_padding`` does for the eager runner)."""
        rows = keep.numpy()
        hidden, named = state
        hidden = hidden[rows]
        named = {name: value[rows] if self._rows[name] else value for name, value in named.items()}
        if not self.meta.get("trim_padding"):
            return hidden, named
        pool = named["pool"]
        used = np.flatnonzero((pool[..., 0] != 0).any(0))
        length = int(used[-1]) + 1 if used.size else pool.shape[1]
        if length == pool.shape[1]:
            return hidden, named

        def cut(name, value):
            index = [slice(None)] * value.ndim
            for axis in self._sequence_axes[name]:
                index[axis] = slice(0, length)
            return np.ascontiguousarray(value[tuple(index)])

        return hidden[:, :length], {name: cut(name, value) for name, value in named.items()}

    def full(self, inputs) -> torch.Tensor:
        return torch.from_numpy(self.full_session.run(None, self.feeds(inputs))[0])

    def early_exit_one(self, inputs, policy):
        """The whole early exit of one sample in one session call (``metabert.deploy.onnx_fused``): the
        engine's batch-1 path for the threshold policies; None where it does not apply (another
        policy, a batch, ``fused=False``), and the engine steps layer by layer."""
        from metabert.engine.loop import ExitResult
        from metabert.deploy.onnx_fused import FUSED_POLICIES, build

        if not self.fused or policy.name not in FUSED_POLICIES or int(inputs["input_ids"].shape[0]) != 1:
            return None
        session = self._fused_sessions.get(policy.name)
        if session is None:
            session = self._fused_sessions[policy.name] = self.fused_session(policy.name, build)
        feeds = self.feeds(inputs)
        feeds["threshold"] = np.array(policy.threshold, dtype=np.float32)
        logits, layer = session.run(None, feeds)
        return ExitResult(logits=torch.from_numpy(logits), exit_layer=torch.from_numpy(layer.reshape(1)))

    def early_exit_many(self, inputs, policy):
        """The whole early exit of a batch of several rows in one session call: the single file's
        batched graph (``metabert.deploy.single_file.build`` without its batch-1 path) built from this
        folder's graphs, in which the rows that leave after a layer are cut from the batch as the
        engine cuts them (same rows, same shapes: the same logits); no Python between the layers.
        None where it does not apply (a folder whose layer state the graph does not carry, a rule
        it does not have, one row, ``fused=False``), and the engine steps layer by layer."""
        from metabert.deploy.single_file import POLICIES

        batch = int(inputs["input_ids"].shape[0])
        if not self.fused or batch < 2 or policy.name not in POLICIES or not self._carried:
            return None
        from metabert.engine.loop import ExitResult

        if policy.name not in self._batched_sessions:
            self._batched_sessions[policy.name] = self._batched_session(policy)
        session, settings = self._batched_sessions[policy.name]
        feeds = self.feeds(inputs)  # the graph's token inputs are the embeddings graph's
        if "threshold" in settings:
            feeds["threshold"] = np.array(policy.threshold, dtype=np.float32)
        if "patience" in settings:
            feeds["patience"] = np.array(policy.patience, dtype=np.int64)
        logits, layers = session.run(["logits", "exit_layer"], feeds)
        return ExitResult(logits=torch.from_numpy(logits), exit_layer=torch.from_numpy(layers.reshape(-1)))

    def _batched_session(self, policy):
        import onnx
        import onnxruntime as ort

        from metabert.deploy.single_file import build

        graphs = [onnx.load(str(self.directory / n)) for n in self.meta["graphs"][: 1 + self.num_layers]]
        graph = build(graphs, self.meta["num_labels"], policy, batch_one=False).SerializeToString()
        options = self.session_options()
        options.log_severity_level = 3  # not the notice that the rule's settings are inputs with defaults
        session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=list(SLOW_FUSIONS))
        # the rule's settings (threshold, patience): inputs with a stored default
        return session, {i.name for i in session.get_overridable_initializers()}

    def fused_session(self, policy_name: str, build):
        """A session over ``build(graphs, meta, policy_name)`` (``metabert.deploy.onnx_fused.build``, or
        its ``unrolled`` for profiling) composed from the graphs as ONNX Runtime optimised them for the
        per-layer sessions, run without optimising again: the same kernels, so the same logits as the steps
        (optimised inside ``If`` branches instead, INT8 kernels were fused differently and logits
        moved by 0.1%)."""
        import tempfile

        import onnx
        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="metabert-fused-") as tmp:
            graphs = []
            for name in self.meta["graphs"][: 1 + self.num_layers]:
                target = str(Path(tmp) / name)
                ort.InferenceSession(str(self.directory / name), self.session_options(optimized_path=target),
                                     providers=["CPUExecutionProvider"], disabled_optimizers=list(SLOW_FUSIONS))
                graphs.append(onnx.load(target))
        graph = build(graphs, self.meta, policy_name).SerializeToString()
        options = self.session_options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def all_exit_logits(self, inputs) -> torch.Tensor:
        """Every exit's logits (L, B, C), for checking the export against PyTorch."""
        from metabert.engine.loop import every_exit

        return every_exit(self, inputs)
