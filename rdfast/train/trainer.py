"""Trainer: fine-tune a reward model (LoRA or full) on preference data, on one device or many.

    trainer = Trainer("ckpts/base", TrainConfig(paradigm="pairwise", max_steps=500), train, eval_records=val,
                      output_dir="out/rm")
    trainer.train(resume="auto")          # out/rm loads with RewardModel.from_pretrained("out/rm")

Design, in the order a step runs:

- Data order is a pure function of (seed, step): epoch e is a seeded permutation, step s takes the next
  ``batch_size`` records of it. The global batch is cut into contiguous per-rank blocks, each into
  ``micro_batch_size`` forwards (gradient accumulation = batch_size / (world * micro_batch_size)).
- The summed loss of every micro-batch is divided by the number of loss terms in the GLOBAL batch (one
  all-reduce per step), so any split over ranks and micro-batches computes the same mean.
- torchrun: DDP (gloo on CPU, NCCL on CUDA) or, with ``strategy="fsdp"``, FSDP2 ``fully_shard`` (each decoder
  layer, then the rest); evaluation and saving all-gather the full weights once (``full_weights``).
- Checkpoints hold the trainable weights, the AdamW state and every rank's RNG state in safetensors, plus
  the step and history in JSON; they are written to a temporary folder and renamed (atomic). Resuming
  from one continues bitwise as if never interrupted (same data order, same RNG, same optimizer state).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..encoding import last_positions
from ..reward_config import RewardConfig
from .data import PARADIGMS, Collator
from .losses import IGNORE, TIES, bradley_terry_loss, cot_loss, pairwise_loss, pointwise_loss, sequence_logprobs
from .regressive import RegressiveHead, hidden_size

LANGUAGE_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHECKPOINT_PREFIX = "checkpoint-"
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
                   "chat_template.json", "chat_template.jinja")


@dataclass
class TrainConfig:
    """Everything a run depends on (saved with every checkpoint)."""

    paradigm: str = "pairwise"  # pairwise | pointwise | regressive | cot
    finetune: str = "lora"  # lora (peft, language-model projections) | full (every weight)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: tuple = LANGUAGE_PROJECTIONS  # module names inside the language model
    learning_rate: float = 1e-4
    head_learning_rate: float | None = None  # regressive head (default: learning_rate)
    weight_decay: float = 0.0
    adam_betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    lr_schedule: str = "constant"  # constant | linear | cosine (after warmup)
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    batch_size: int = 8  # preference records per optimizer step, all ranks and micro-batches together
    micro_batch_size: int | None = None  # records per forward on one rank (default: batch_size / world)
    max_steps: int = 100
    ties: str = "soft"  # soft (target 0.5) | skip (left out of training)
    both_orders: bool = True  # pairwise: also train each pair with its images swapped
    ce_weight: float = 0.1  # pointwise: weight of the yes/no cross-entropy next to Bradley-Terry
    cot_format: str = "decision_first"  # decision_first | reasons_first
    decision_weight: float = 1.0  # cot: weight of the decision token among the reason tokens
    instruction: str | None = None  # for records without one (and saved as the model's default)
    normalize: str = "vocab"  # how the trained model's P(yes) is normalised when it scores
    num_frames: int | None = None  # video records: frames sampled per clip (saved as the model's default)
    fps: float | None = None  # ... or sampled at this rate (pass one of the two)
    #: True: pairwise/pointwise/regressive rows run through the scoring engine as ``rm.options`` set it (each
    #: image encoded once, shared prefixes once, suffixes packed); False: one padded forward (as cot and FSDP2
    #: always do). "auto": the engine on CUDA; padded on CPU, where it measured as fast or faster (see README)
    packing: bool | str = "auto"
    bf16: bool = False  # bf16 autocast for the backbone (weights and optimizer stay float32)
    gradient_checkpointing: bool = False
    strategy: str = "ddp"  # ddp | fsdp (FSDP2 fully_shard: NCCL on CUDA, gloo on CPU)
    eval_every: int = 0  # steps between evaluations on eval_records (0: only at the end)
    eval_debias: bool = False
    save_every: int = 0  # steps between checkpoints (0: none during training)
    keep_checkpoints: int = 2
    save_merged: bool = False  # LoRA: write merged full weights instead of the adapter
    seed: int = 0
    strict: bool = False  # stop on the first record the model rejects instead of skipping it
    progress: bool = True

    def __post_init__(self):
        if self.paradigm not in PARADIGMS:
            raise ValueError(f"paradigm must be one of {PARADIGMS}, got {self.paradigm!r}")
        if self.finetune not in ("lora", "full"):
            raise ValueError(f"finetune must be 'lora' or 'full', got {self.finetune!r}")
        if self.ties not in TIES:
            raise ValueError(f"ties must be one of {TIES}, got {self.ties!r}")
        if self.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"strategy must be 'ddp' or 'fsdp', got {self.strategy!r}")
        if self.lr_schedule not in ("constant", "linear", "cosine"):
            raise ValueError(f"lr_schedule must be constant, linear or cosine, got {self.lr_schedule!r}")
        if self.packing not in (True, False, "auto"):
            raise ValueError(f"packing must be True, False or 'auto', got {self.packing!r}")
        if self.num_frames is not None and self.fps is not None:
            raise ValueError("pass num_frames or fps, not both")
        self.lora_targets, self.adam_betas = tuple(self.lora_targets), tuple(self.adam_betas)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------
# The module DDP/FSDP wrap: one forward = the summed loss of one micro-batch


class RewardTrainModule(nn.Module):
    """Holds the VLM (and the regressive head); ``forward(batch)`` returns (summed loss, stats [3]).

    stats = (summed loss detached, correct decisions, decisions counted) for accuracy logging.
    """

    def __init__(self, rm, config: TrainConfig, head: RegressiveHead | None = None):
        super().__init__()
        self.model = rm.model  # registered, so DDP/FSDP see every parameter
        self.head = head
        self.rm, self.config = rm, config
        self.register_buffer("answer_ids", torch.tensor([rm.yes_token_id, rm.no_token_id]), persistent=False)
        # FSDP2 all-gathers each layer at each of its forwards, so every rank must run the same forwards (the
        # engine's groups depend on the data), and a shared prefix's KV would bypass its backward hooks
        packing = config.packing if config.packing != "auto" else rm.device.type == "cuda"
        self.through_engine = packing and config.paradigm != "cot" and config.strategy != "fsdp"

    def _autocast(self):
        return torch.autocast(self.rm.device.type, dtype=torch.bfloat16, enabled=self.config.bf16)

    def forward(self, batch):
        cfg, rm = self.config, self.rm
        target = batch.target.to(rm.device)
        if self.through_engine:
            with self._autocast():
                h = rm.last_hidden(batch.items)
            return self._last_token_loss(h, target)
        with self._autocast():
            hidden = rm.hidden_states(batch.inputs)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        if cfg.paradigm != "cot":
            return self._last_token_loss(hidden[rows, last_positions(batch.inputs["attention_mask"])], target)
        decision_pos = batch.decision_pos.to(hidden.device)
        logp = rm.head_logprobs(hidden[rows, decision_pos - 1], self.answer_ids)[0]
        labels = batch.labels.to(hidden.device).clone()
        labels[rows, decision_pos] = IGNORE  # the decision is trained through logp (soft for ties)
        loss = cot_loss(logp, target, sequence_logprobs(rm, hidden, labels), cfg.decision_weight, cfg.ties, "sum")
        return loss, self._stats(loss, logp[:, 0] - logp[:, 1], target)

    def _last_token_loss(self, h, target):
        """Loss of the paradigms read at each row's last token, from those hidden states h [rows, H]."""
        cfg, rm = self.config, self.rm
        if cfg.paradigm == "regressive":
            r = self.head(h)
            loss = bradley_terry_loss(r[0::2], r[1::2], target, cfg.ties, "sum")
            return loss, self._stats(loss, r[1::2] - r[0::2], target)
        logp = rm.head_logprobs(h, self.answer_ids)[0]
        if cfg.paradigm == "pairwise":
            loss = pairwise_loss(logp, target, cfg.ties, "sum")
            return loss, self._stats(loss, logp[:, 0] - logp[:, 1], target)
        loss = pointwise_loss(logp[0::2], logp[1::2], target, cfg.ce_weight, cfg.ties, "sum")
        return loss, self._stats(loss, (logp[1::2, 0] - logp[1::2, 1]) - (logp[0::2, 0] - logp[0::2, 1]), target)

    @staticmethod
    def _stats(loss, margin, target):
        decided = target != 0.5
        correct = ((margin.detach() > 0) == (target > 0.5)) & decided
        return torch.stack([loss.detach().float(), correct.sum().float(), decided.sum().float()])


# ----------------------------------------------------------------------------------------------------
# Distributed helpers


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device) from torchrun's environment; initialises the process group once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if cuda else "gloo")
        return dist.get_rank(), dist.get_world_size(), device
    return 0, 1, device


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    dist = _dist()
    if dist is not None:
        dist.all_reduce(t)
    return t


def _barrier():
    dist = _dist()
    if dist is not None:
        dist.barrier()


# ----------------------------------------------------------------------------------------------------
# Checkpoint files


def _fsync_dir(path):
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _save_tensors(tensors: dict, path: str, metadata: dict | None = None):
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path, metadata=metadata)
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _write_json(obj, path):
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


def _rng_state(device) -> tuple[dict, dict]:
    import numpy as np

    tensors = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["torch_cuda"] = torch.cuda.get_rng_state(device)
    np_state = np.random.get_state()
    meta = {"python": json.dumps(random.getstate()),
            "numpy": json.dumps([np_state[0], np_state[1].tolist(), *np_state[2:]])}
    return tensors, meta


def _set_rng_state(tensors, meta, device):
    import numpy as np

    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["torch_cuda"], device)
    py = json.loads(meta["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    npv = json.loads(meta["numpy"])
    np.random.set_state((npv[0], np.array(npv[1], dtype=np.uint32), *npv[2:]))


def list_checkpoints(directory) -> list[str]:
    """Complete checkpoint folders under ``directory``, oldest first (temporary folders never count)."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        if name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX):].isdigit():
            if os.path.isfile(os.path.join(directory, name, "trainer_state.json")):
                found.append((int(name[len(CHECKPOINT_PREFIX):]), os.path.join(directory, name)))
    return [path for _, path in sorted(found)]


# ----------------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    step: int = 0
    history: list = field(default_factory=list)  # {"step", "loss", "accuracy", "lr", "seconds"} per step
    evals: list = field(default_factory=list)  # {"step", "accuracy", ...} per evaluation


class Trainer:
    """Train a reward model on preference records and write a directory ``RewardModel`` loads.

    Args:
        model: a base checkpoint directory (loaded float32 on this rank's device) or a loaded RewardModel
            (its ``model.name_or_path`` must be the base checkpoint directory).
        config: TrainConfig.
        train_records: list[PreferenceRecord] (``load_preferences``).
        eval_records: optional held-out records, evaluated every ``config.eval_every`` steps and at the end.
        output_dir: where the trained model, checkpoints (``checkpoints/``), history and plot go.
        callbacks: callables ``fn(trainer, step, logs)`` run after every optimizer step on every rank.
    """

    def __init__(self, model, config: TrainConfig, train_records, eval_records=None, output_dir="out/train",
                 callbacks=(), log=sys.stderr):
        self.config, self.output_dir, self.log = config, os.fspath(output_dir), log
        self.callbacks = list(callbacks)
        self.rank, self.world, self.device = init_distributed()
        cfg = config
        micro = cfg.micro_batch_size or cfg.batch_size // self.world
        if micro < 1 or cfg.batch_size % (self.world * micro):
            raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of world_size ({self.world}) x "
                             f"micro_batch_size ({micro})")
        self.micro, self.accumulation = micro, cfg.batch_size // (self.world * micro)
        train_records = list(train_records)
        if cfg.ties == "skip":
            train_records = [r for r in train_records if not r.is_tie]
        if len(train_records) < cfg.batch_size:
            raise ValueError(f"{len(train_records)} usable training records, fewer than batch_size={cfg.batch_size}")
        self.train_records, self.eval_records = train_records, list(eval_records or [])
        torch.manual_seed(cfg.seed)  # the same LoRA / head initialisation on every rank
        self.rm, self.base_path = self._load(model)
        if cfg.num_frames is not None or cfg.fps is not None:  # training, evaluation and the saved model sample alike
            self.rm.num_frames, self.rm.fps = cfg.num_frames, cfg.fps
        self.peft_model = None
        self.head = RegressiveHead(hidden_size(self.rm)).to(self.device) if cfg.paradigm == "regressive" else None
        self._prepare_parameters()
        if cfg.gradient_checkpointing:
            self.rm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.module = RewardTrainModule(self.rm, cfg, self.head)
        self.wrapped = self._wrap(self.module)
        self.named_trainable = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        self.optimizer = self._optimizer()
        self.collator = Collator(self.rm, cfg.paradigm, cfg.both_orders, cfg.instruction, cfg.cot_format,
                                 cfg.strict, log=log if self.rank == 0 else None)
        self.state = TrainState()
        self.steps_per_epoch = len(self.train_records) // cfg.batch_size

    # ---- setup ----------------------------------------------------------------------------------------
    def _load(self, model):
        from ..model import RewardModel

        if isinstance(model, RewardModel):
            base = getattr(model.model, "name_or_path", None)
            if not base or not os.path.isdir(base):
                raise ValueError("pass the base checkpoint directory, or a RewardModel loaded from one")
            rm = model
            rm.model.to(self.device)
        else:
            base = os.fspath(model)
            rm = RewardModel.from_pretrained(base, device=self.device, dtype=torch.float32)
        rm.instruction = self.config.instruction
        rm.normalize = self.config.normalize
        return rm, os.path.abspath(base)

    def _prepare_parameters(self):
        cfg, model = self.config, self.rm.model
        model.requires_grad_(False)
        if cfg.finetune == "lora":
            from peft import LoraConfig, get_peft_model

            # only the language model's projections (the vision tower has modules with the same names)
            targets = rf".*language_model.*\.({'|'.join(cfg.lora_targets)})"
            lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=targets, bias="none")
            self.peft_model = get_peft_model(model, lora)  # injects the adapters into ``model`` in place
        else:
            model.requires_grad_(True)
            if cfg.paradigm == "regressive":  # the LM head is unused; DDP must not wait for its gradient
                model.get_output_embeddings().requires_grad_(False)
        if self.head is not None:
            self.head.requires_grad_(True)

    def _wrap(self, module):
        cfg = self.config
        if cfg.strategy == "fsdp":
            if self.world < 2:
                raise RuntimeError("strategy='fsdp' shards over processes: launch with torchrun (2 or more)")
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(self.device.type, (self.world,))
            for layer in self._decoder_layers():
                fully_shard(layer, mesh=mesh)
            return fully_shard(module, mesh=mesh)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            return DDP(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return module

    def _decoder_layers(self):
        base = getattr(self.rm.model, self.rm.model.base_model_prefix)
        return list(base.language_model.layers)

    def _optimizer(self):
        cfg = self.config
        body = [p for n, p in self.named_trainable if not n.startswith("head.")]
        groups = [{"params": body, "lr": cfg.learning_rate, "base_lr": cfg.learning_rate}]
        if self.head is not None:
            lr = cfg.head_learning_rate or cfg.learning_rate
            groups.append({"params": list(self.head.parameters()), "lr": lr, "base_lr": lr})
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                 weight_decay=cfg.weight_decay)

    def _lr_factor(self, step):
        cfg = self.config
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        frac = min(1.0, (step - cfg.warmup_steps) / span)
        return 1.0 - frac if cfg.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * frac))

    # ---- data -----------------------------------------------------------------------------------------
    def step_records(self, step: int) -> list:
        """This rank's records for optimizer step ``step`` (0-based): a pure function of (seed, step)."""
        cfg = self.config
        epoch, offset = divmod(step, self.steps_per_epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.train_records), generator=gen)
        chosen = perm[offset * cfg.batch_size : (offset + 1) * cfg.batch_size].tolist()
        share = cfg.batch_size // self.world
        mine = chosen[self.rank * share : (self.rank + 1) * share]
        return [self.train_records[i] for i in mine]

    # ---- training -------------------------------------------------------------------------------------
    def train(self, resume=None) -> dict:
        """Run to ``config.max_steps``; resume="auto" continues from the latest checkpoint, or pass a path.

        Returns the final metrics {"step", "loss", "accuracy", "eval": {...} or None, "output_dir"}.
        """
        cfg = self.config
        ckpt_dir = os.path.join(self.output_dir, "checkpoints")
        if self.rank == 0:
            os.makedirs(ckpt_dir, exist_ok=True)
            for name in os.listdir(ckpt_dir):  # leftovers of a run killed while writing a checkpoint
                if name.startswith(".tmp-"):
                    shutil.rmtree(os.path.join(ckpt_dir, name), ignore_errors=True)
        _barrier()
        if resume:
            path = resume
            if resume == "auto":
                found = list_checkpoints(ckpt_dir)
                path = found[-1] if found else None
            if path:
                self.load_checkpoint(path)
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_steps, initial=self.state.step, desc=f"train {cfg.paradigm}", unit="step",
                   disable=not cfg.progress or self.rank != 0, file=self.log, dynamic_ncols=True)
        self.wrapped.train()
        started = time.perf_counter()
        while self.state.step < cfg.max_steps:
            logs = self.train_step()
            step = self.state.step
            logs["seconds"] = time.perf_counter() - started
            self.state.history.append(logs)
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4f}", acc=f"{logs['accuracy']:.3f}")
            if cfg.eval_every and self.eval_records and step % cfg.eval_every == 0 and step < cfg.max_steps:
                with self.full_weights():
                    self.state.evals.append({"step": step, **self._eval_accuracy()})
                self.wrapped.train()
                self.plot()
            if cfg.save_every and step % cfg.save_every == 0:
                self.save_checkpoint()
            for cb in self.callbacks:
                cb(self, step, logs)
        bar.close()
        return self.finish()

    def train_step(self) -> dict:
        """One optimizer step (all micro-batches of this rank); returns {"step", "loss", "accuracy", "lr"}."""
        cfg = self.config
        step = self.state.step
        records = self.step_records(step)
        batches = [self.collator(records[k : k + self.micro]) for k in range(0, len(records), self.micro)]
        local = sum(b.units(cfg.ties) for b in batches if b is not None)
        units = _all_reduce(torch.tensor([float(local)], device=self.device))[0].item()
        scale = self.world / max(units, 1.0)  # DDP averages over ranks: undo it, then divide by the global count
        factor = self._lr_factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        stats = torch.zeros(3, device=self.device)
        for k, batch in enumerate(batches):
            weight = scale
            if batch is None:
                if self.world == 1:
                    continue
                if self._standin is None:
                    raise RuntimeError(f"step {step}: every record of a micro-batch was rejected on rank {self.rank}")
                batch, weight = self._standin, 0.0  # a zero-weighted stand-in keeps DDP's collectives in step
            with self._gradient_sync(k == len(batches) - 1):
                loss, s = self.wrapped(batch)
                (loss * weight).backward()
            if weight:
                stats += s
                self._standin = batch
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for _, p in self.named_trainable], cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _all_reduce(stats)
        self.state.step = step + 1
        acc = (stats[1] / stats[2]).item() if stats[2] > 0 else float("nan")
        return {"step": step + 1, "loss": stats[0].item() / max(units, 1.0), "accuracy": acc,
                "lr": self.optimizer.param_groups[0]["lr"]}

    _standin = None

    @contextlib.contextmanager
    def _gradient_sync(self, sync: bool):
        """Accumulating micro-batches: reduce gradients across ranks only on the last one."""
        if sync or self.world == 1:
            yield
        elif self.config.strategy == "fsdp":
            self.wrapped.set_requires_gradient_sync(False, recurse=True)
            try:
                yield
            finally:
                self.wrapped.set_requires_gradient_sync(True, recurse=True)
        else:
            with self.wrapped.no_sync():
                yield

    @contextlib.contextmanager
    def full_weights(self):
        """FSDP: every rank holds the full (unsharded) weights inside, so evaluation and saving run the model's
        plain forward with no collectives (ranks may run different numbers of forwards). Others: nothing."""
        if self.config.strategy != "fsdp":
            yield
            return
        sharded = self._unshard_all()
        try:
            yield
        finally:
            for m in sharded:
                m.reshard()
                m.set_reshard_after_forward(True, recurse=False)

    def _unshard_all(self) -> list:
        from torch.distributed.fsdp import FSDPModule

        sharded = [m for m in self.wrapped.modules() if isinstance(m, FSDPModule)]
        for m in sharded:
            m.set_reshard_after_forward(False, recurse=False)
            m.unshard()
        return sharded

    # ---- evaluation -----------------------------------------------------------------------------------
    def _eval_model(self):
        if self.head is not None:
            from .regressive import RegressiveRewardModel

            return RegressiveRewardModel(self.rm, self.head)
        return self.rm

    def _eval_accuracy(self) -> dict:
        """Accuracy on eval_records, each rank scoring its share (counts summed over ranks)."""
        from .evaluate import pair_probabilities

        self.wrapped.eval()
        mine = self.eval_records[self.rank :: self.world]
        with torch.no_grad():
            p, kept = pair_probabilities(self._eval_model(), mine, self.config.paradigm, self.config.eval_debias,
                                         cot_format=self.config.cot_format, log=None)
        labels = [mine[i].label for i in kept]
        hits = sum((pi > 0.5) == (lab == 2) for pi, lab in zip(p.tolist(), labels) if lab != "tie")
        n = sum(lab != "tie" for lab in labels)
        counts = _all_reduce(torch.tensor([float(hits), float(n)], device=self.device))
        return {"accuracy": (counts[0] / counts[1]).item() if counts[1] > 0 else float("nan"), "n": int(counts[1])}

    def finish(self) -> dict:
        """Write the trained model, evaluate it as saved (LoRA merged), write history, results and the plot."""
        from .evaluate import evaluate

        self.save_model(self.output_dir)
        result = {"step": self.state.step, "output_dir": self.output_dir, "eval": None}
        if self.state.history:
            last = self.state.history[-1]
            result.update(loss=last["loss"], accuracy=last["accuracy"])
        if self.rank == 0:
            if self.eval_records:
                self.wrapped.eval()
                with torch.no_grad():
                    result["eval"] = evaluate(self._eval_model(), self.eval_records, paradigm=self.config.paradigm,
                                              debias=self.config.eval_debias,
                                              cot_format=self.config.cot_format, log=self.log)
                self.state.evals.append({"step": self.state.step, "accuracy": result["eval"]["accuracy"],
                                         "n": result["eval"]["n_accuracy"], "final": True})
                _write_json(result["eval"], os.path.join(self.output_dir, "eval_results.json"))
            _write_json({"config": self.config.to_dict(), "history": self.state.history, "evals": self.state.evals},
                        os.path.join(self.output_dir, "train_history.json"))
            self.plot()
        _barrier()
        return result

    def plot(self, path=None) -> str | None:
        """Loss and accuracy curves (training, and held-out evaluations) as a PNG; rank 0 only."""
        if self.rank != 0 or not self.state.history:
            return None
        from .plots import plot_history

        path = path or os.path.join(self.output_dir, "training_curves.png")
        plot_history(self.state.history, self.state.evals, path, title=f"{self.config.paradigm} reward model")
        return path

    # ---- checkpoints ----------------------------------------------------------------------------------
    def _trainable_state(self) -> dict:
        out = {}
        for name, p in self.named_trainable:
            t = p.detach()
            if hasattr(t, "full_tensor"):  # FSDP2 shards parameters as DTensors
                t = t.full_tensor()
            out[name] = t
        return out

    def save_checkpoint(self) -> str:
        """Write ``checkpoints/checkpoint-<step>`` atomically; returns its path. Collective: every rank calls."""
        ckpt_dir = os.path.join(self.output_dir, "checkpoints")
        name = f"{CHECKPOINT_PREFIX}{self.state.step:08d}"
        tmp, final = os.path.join(ckpt_dir, ".tmp-" + name), os.path.join(ckpt_dir, name)
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        _barrier()
        params = self._trainable_state()
        opt = self.optimizer.state_dict()
        names = [n for n, _ in self.named_trainable]
        tensors, scalars = {}, {}
        for idx, st in opt["state"].items():
            for key, value in st.items():
                if isinstance(value, torch.Tensor):  # FSDP2: AdamW moments are sharded like their parameter
                    tensors[f"{names[idx]}::{key}"] = value.full_tensor() if hasattr(value, "full_tensor") else value
                else:
                    scalars[f"{names[idx]}::{key}"] = value
        rng, meta = _rng_state(self.device)
        _save_tensors(rng, os.path.join(tmp, f"rng-rank{self.rank}.safetensors"), meta)
        if self.rank == 0:
            _save_tensors(params, os.path.join(tmp, "trainable.safetensors"))
            _save_tensors(tensors, os.path.join(tmp, "optimizer.safetensors"))
            groups = [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]} for g in opt["param_groups"]]
            _write_json({"step": self.state.step, "world_size": self.world, "config": self.config.to_dict(),
                         "history": self.state.history, "evals": self.state.evals, "param_groups": groups,
                         "optimizer_scalars": scalars, "param_names": names},
                        os.path.join(tmp, "trainer_state.json"))
        _barrier()
        if self.rank == 0:
            _fsync_dir(tmp)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(tmp, final)  # atomic: a reader sees no checkpoint or a complete one
            _fsync_dir(ckpt_dir)
            for old in list_checkpoints(ckpt_dir)[: -self.config.keep_checkpoints or None]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final

    def load_checkpoint(self, path):
        """Restore weights, optimizer, RNG and progress from a checkpoint folder (every rank calls)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        with open(os.path.join(path, "trainer_state.json")) as fh:
            state = json.load(fh)
        if state["world_size"] != self.world:
            raise ValueError(f"{path} was written by {state['world_size']} processes, this run has {self.world}: "
                             "resuming bitwise needs the same split (same data order, same RNG streams)")
        names = [n for n, _ in self.named_trainable]
        if state["param_names"] != names:
            raise ValueError(f"{path}: its trainable parameters differ from this run's (another config?)")
        params = load_file(os.path.join(path, "trainable.safetensors"))
        with torch.no_grad():
            for name, p in self.named_trainable:
                src = params[name].to(p.device)
                if hasattr(p, "full_tensor"):  # FSDP2: copy this rank's shard
                    from torch.distributed.tensor import distribute_tensor

                    src = distribute_tensor(src, p.device_mesh, p.placements)
                p.copy_(src)
        tensors = load_file(os.path.join(path, "optimizer.safetensors"))
        opt_state = {}
        trainable = dict(self.named_trainable)
        for key, value in list(tensors.items()) + list(state["optimizer_scalars"].items()):
            pname, field_name = key.rsplit("::", 1)
            p = trainable[pname]
            if hasattr(p, "full_tensor") and isinstance(value, torch.Tensor) and value.shape == p.shape:
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value.to(p.device), p.device_mesh, p.placements)  # this rank's shard
            opt_state.setdefault(names.index(pname), {})[field_name] = value
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        rng_file = os.path.join(path, f"rng-rank{self.rank}.safetensors")
        with safe_open(rng_file, "pt") as fh:
            meta = fh.metadata()
        _set_rng_state(load_file(rng_file), meta, self.device)
        self.state = TrainState(state["step"], state["history"], state["evals"])
        if self.rank == 0:
            print(f"resumed from {path} at step {self.state.step}", file=self.log)

    # ---- the trained model ----------------------------------------------------------------------------
    def save_model(self, directory):
        """Write a directory ``RewardModel.from_pretrained`` (or ``RegressiveRewardModel``) loads.

        LoRA: the adapter (``adapter_model.safetensors``) plus ``base_model`` in rdfast_config.json, unless
        ``save_merged``; afterwards the in-memory model is merged exactly as loading merges it, so it scores
        as the saved directory does. Full: the whole model. Both: tokenizer, image-processor files, the
        regressive head if any, and rdfast_config.json. Collective: every rank calls.
        """
        cfg, rm = self.config, self.rm
        fsdp = cfg.strategy == "fsdp"
        if fsdp:  # the full weights on every rank (collective); they stay so: a merged model trains no further
            self._unshard_all()

        def parameters(module):  # FSDP2's state_dict hooks hand out shards: save the (unsharded) parameters
            return {n: p.detach() for n, p in module.named_parameters()} if fsdp else None

        if self.rank == 0:
            os.makedirs(directory, exist_ok=True)
        record = {"answer_words": [rm.answers.yes_word, rm.answers.no_word], "yes_token_id": rm.yes_token_id,
                  "no_token_id": rm.no_token_id, "normalize": cfg.normalize, "instruction": cfg.instruction,
                  "paradigm": cfg.paradigm, "cot_format": cfg.cot_format, "finetune": cfg.finetune,
                  "num_frames": rm.num_frames, "fps": rm.fps, "template": self._template()}
        write_full = True
        if self.peft_model is not None:
            if not cfg.save_merged:
                if self.rank == 0:
                    self.peft_model.save_pretrained(directory, safe_serialization=True,
                                                    state_dict=parameters(self.peft_model))
                record["base_model"] = self.base_path
                write_full = False
            # from here on the in-memory model (every rank's) is the merged one, merged exactly as loading
            # merges it, so it scores as the saved directory does
            self.peft_model.merge_and_unload()
            self.peft_model = None
        if self.rank == 0:
            if write_full:
                rm.model.save_pretrained(directory, safe_serialization=True, state_dict=parameters(rm.model))
            rm.tokenizer.save_pretrained(directory)
            for name in PROCESSOR_FILES:
                src = os.path.join(self.base_path, name)
                if os.path.isfile(src) and os.path.abspath(src) != os.path.abspath(os.path.join(directory, name)):
                    shutil.copyfile(src, os.path.join(directory, name))
            if self.head is not None:
                self.head.save(directory)
            RewardConfig(**record).save(directory)
        _barrier()

    def _template(self) -> dict:
        from .. import prompts as P

        return {"pairwise_question": P.PAIRWISE_QUESTION, "pointwise_question": P.POINTWISE_QUESTION,
                "instruction_text": P.instruction_text(self.config.instruction)}
