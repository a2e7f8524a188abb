"""The options of the training methods that have any, as config dataclasses: each a section of
``TrainConfig`` (``--meta-*``, ``--student-*``, ``--distil-*``, ``--pkd-*``, ``--theseus-*``,
``--layerdrop-*``, ``--gaml-*``), each option documented once in its field. Plain Python: a config
imports no torch and no model."""

from __future__ import annotations

from dataclasses import dataclass

from metabert.common.options import option

INITS = ("alternate", "first", "spread")
SCHEDULES = ("constant", "linear")
STATES = ("cls", "pooled")

def _check(config, rules: dict[str, bool]) -> None:
    for name, ok in rules.items():
        if not ok:
            raise ValueError(f"invalid {type(config).__name__}.{name}: {getattr(config, name)!r}")


@dataclass(frozen=True)
class StudentConfig:
    """How a static system's student is made from the fine-tuned teacher (``--teacher``)."""

    layers: int = option(0, help="student depth (0: half the teacher's, the papers' 2x compression)")
    init: str | None = option(None, choices=INITS, help="which teacher layers the student starts from "
                              "(default: the system's own, alternate for DistilBERT, first for PKD and Theseus)")

    def __post_init__(self):
        _check(self, {"layers": self.layers >= 0, "init": self.init is None or self.init in INITS})

    def depth(self, teacher_layers: int) -> int:
        return self.layers or max(1, teacher_layers // 2)


@dataclass(frozen=True)
class DistilConfig:
    """``--method distilbert`` (Sanh et al. 2019): (1 - α) CE + α T² KL(teacher || student) + w_cos L_cos."""

    temperature: float = option(2.0, help="T of the softened predictions (DistilBERT's own 2)")
    alpha: float = option(0.5, help="weight of the distillation loss; the labels' CE weighs 1 - alpha")
    cosine: float = option(0.0, help="weight of the cosine loss between the last hidden states (0: off)")

    def __post_init__(self):
        _check(self, {"temperature": self.temperature > 0, "alpha": 0 <= self.alpha <= 1, "cosine": self.cosine >= 0})


@dataclass(frozen=True)
class PKDConfig:
    """``--method pkd`` (Sun et al. 2019, PKD-Skip): (1 - α) CE + α L_DS + β L_PT (Eq. 4)."""

    temperature: float = option(10.0, help="T of the soft targets (the paper searches 5, 10, 20)")
    alpha: float = option(0.5, help="weight of L_DS; the labels' CE weighs 1 - alpha (paper: 0.2, 0.5, 0.7)")
    beta: float = option(100.0, help="weight of the patient loss L_PT (paper: 10 to 1000)")
    state: str = option("cls", choices=STATES, help="the layer state compared: [CLS] (the paper) or the exits' pooling")

    def __post_init__(self):
        _check(self, {"temperature": self.temperature > 0, "alpha": 0 <= self.alpha <= 1, "beta": self.beta >= 0,
                      "state": self.state in STATES})


@dataclass(frozen=True)
class TheseusConfig:
    """``--method theseus`` (Xu et al. 2020): the replacement schedule (see ``ReplacementSchedule``)."""

    schedule: str = option("linear", choices=SCHEDULES, help="replacement rate: constant, or the linear curriculum")
    rate: float = option(0.3, help="constant rate p, or the curriculum's base rate b")
    until: float = option(0.5, help="fraction of training that replaces modules (constant) or at which the "
                                    "curriculum reaches 1; the rest fine-tunes the successor alone")

    def replacement(self) -> "ReplacementSchedule":
        return ReplacementSchedule(self.schedule, self.rate, self.until)

    def __post_init__(self):
        self.replacement()  # the schedule's own checks name the field


@dataclass(frozen=True)
class LayerDropConfig:
    """``--method layerdrop`` (Fan et al. 2019): drop rate in training, every-other pruning after."""

    rate: float = option(0.5, help="probability that a layer is skipped in a training step")
    prune: float = option(0.5, help="pruning rate p of the every-other rule (0.5: 6 -> 3 layers)")

    def __post_init__(self):
        _check(self, {"rate": 0 <= self.rate < 1, "prune": 0 < self.prune <= 0.5})



@dataclass(frozen=True)
class ReplacementSchedule:
    """Theseus' replacement rate r over training. ``constant``: r = ``rate`` for the first ``until``
    fraction of training (the replacing phase), then 1 (successor fine-tuning). ``linear`` (the
    paper's curriculum r_t = min(1, k t + b)): b = ``rate`` and k chosen so that r reaches 1 at the
    ``until`` fraction of training, k = (1 - b) / (until x total steps)."""

    kind: str = "linear"
    rate: float = 0.3
    until: float = 0.5

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown replacement schedule {self.kind!r}; choose one of: {', '.join(SCHEDULES)}")
        if not 0 < self.rate <= 1:
            raise ValueError(f"replacement rate must be in (0, 1], got {self.rate}")
        if not 0 < self.until <= 1:
            raise ValueError(f"the replacing phase must be a fraction in (0, 1] of training, got {self.until}")

    def rate_at(self, step: int, total_steps: int) -> float:
        """r at training step ``step`` (0-based) of ``total_steps``."""
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        progress = step / total_steps
        if self.kind == "constant":
            return self.rate if progress < self.until else 1.0
        return min(1.0, self.rate + (1 - self.rate) * progress / self.until)

    def replacing(self, step: int, total_steps: int) -> bool:
        """Whether ``step`` is in the replacing phase (r < 1), when only the successor layers train."""
        return self.rate_at(step, total_steps) < 1.0



TASKS = ("episode", "exit")
OPTIMIZERS = ("sgd", "adam")
META_SCHEDULES = ("interleaved", "warmstart")
ADAPT = ("all", "exits")
ORDERS = ("first", "second")


@dataclass(frozen=True)
class MetaConfig:
    """The options of ``--method meta`` (and of ``joint-matched``, its control), each documented
    once in its field; on the command line and in ``train_config.json`` they carry the prefix
    ``meta_`` (``--meta-inner-lr``; ``meta_lr`` keeps its name).

    ``share_gradients`` (first order, episode tasks, interleaved schedule): the gradients at θ of
    the support and query batches, which a first-order meta-update needs for its inner step and
    which are parts of the batch's joint gradient, are computed once and serve both: the inner
    step, and Algorithm 2's Adam step, which then follows the batch's gradient at θ from before the
    meta-update instead of after it (one β step stale). A meta-update then costs one more pass over
    the query rows instead of two over the task rows (``shared_step``).

    ``inner_lr=0`` is the ablation without the inner step: θ' = θ, so the meta-gradient is the
    plain gradient of the query losses, while everything else (batches drawn, dropout masks, the
    β step) stays as in a run with α > 0. What a run gains over that row is meta-learning's own.
    ``meta_lr=0`` goes further: every meta-update is computed (the same batches drawn, the same
    random numbers consumed) but moves nothing, so what ``meta`` gains over that row is its
    meta-updates' own, and what the row gains over ``joint`` comes from the random stream alone."""

    inner_lr: float = option(1e-4, help="α, inner SGD step (Eq. 2); 0: the ablation without an inner step")
    meta_lr: float = option(1e-5, help="β, meta step (Eq. 4)")
    inner_steps: int = option(1, help="inner SGD steps per task")
    support_size: int = option(16, help="K: examples per support (and query) batch")
    meta_batch: int = option(2, help="tasks per meta-update")
    order: str = option("first", choices=ORDERS,
                        help="first-order MAML (the query gradient at θ' stands in) or second order")
    adapt: str = option("all", help="what the inner loop adapts", choices=ADAPT)
    task: str = option("episode", choices=TASKS,
                       help="a task: a support and a query batch (episode), or one exit's loss (exit)")
    schedule: str = option("interleaved", choices=META_SCHEDULES,
                           help="a meta-update before every Adam step, or meta-learning epochs first (warmstart)")
    warmstart_epochs: int = option(1, help="--meta-schedule warmstart: meta-learning epochs before Adam")
    optimizer: str = option(
        "sgd", choices=OPTIMIZERS,
        help="meta step: plain SGD θ - βg (Eq. 4) or Adam with rate β (MAML's meta-optimiser)")
    diagnose_every: int = option(
        20, help="steps between checks of the meta-gradient against the plain gradient (0: never)")
    share_gradients: bool = option(
        False, help="first order: the inner step and the Adam step share the gradients at θ "
                    "(a meta-update costs one pass over the query rows, not two over the task rows)")

    @property
    def first_order(self) -> bool:
        return self.order == "first"

    def __post_init__(self):
        for name, ok in {
            "inner_lr": self.inner_lr >= 0, "meta_lr": self.meta_lr >= 0, "inner_steps": self.inner_steps >= 1,
            "support_size": self.support_size >= 1, "meta_batch": self.meta_batch >= 1, "order": self.order in ORDERS,
            "adapt": self.adapt in ADAPT, "task": self.task in TASKS, "schedule": self.schedule in META_SCHEDULES,
            "warmstart_epochs": self.warmstart_epochs >= 1, "optimizer": self.optimizer in OPTIMIZERS,
            "diagnose_every": self.diagnose_every >= 0,
        }.items():
            if not ok:
                raise ValueError(f"invalid meta option {name}: {getattr(self, name)!r}")
        if self.share_gradients:
            for name, needed in {"order": "first", "task": "episode", "schedule": "interleaved"}.items():
                if getattr(self, name) != needed:
                    raise ValueError(f"share_gradients needs {name}={needed!r} (the shared gradient is the "
                                     f"first inner step of an episode and the Adam step of the same batch), "
                                     f"got {getattr(self, name)!r}")



@dataclass(frozen=True)
class GamlConfig:
    """``--method gaml`` (Zhu et al. 2021): loss Σ CE_i + λ L_MKD, L_MKD's gradient aligned (GA)."""

    temperature: float = option(1.0, help="T of the exits' softened predictions in mutual distillation")
    kd_weight: float = option(1.0, help="λ, weight of the mutual distillation gradient")
    align: bool = option(True, help="gradient alignment (GA); off: the ablation without it")

    def __post_init__(self):
        for name, ok in {"temperature": self.temperature > 0, "kd_weight": self.kd_weight >= 0}.items():
            if not ok:
                raise ValueError(f"invalid GamlConfig.{name}: {getattr(self, name)!r}")




def check_warmstart(epochs: int, config: MetaConfig) -> None:
    """``--method meta`` with the warm-start schedule needs an epoch of Adam after its meta-learning epochs."""
    if config.schedule == "warmstart" and epochs <= config.warmstart_epochs:
        raise ValueError(f"warmstart needs more epochs ({epochs}) than meta-learning epochs "
                         f"({config.warmstart_epochs})")
