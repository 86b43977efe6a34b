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
- The learning rate follows transformers' ``get_scheduler`` (linear warm-up from 0, then constant, linear or
  cosine), stepped once per optimizer step.
- torchrun: DDP (gloo on CPU, NCCL on CUDA) or, with ``strategy="fsdp"``, FSDP2 ``fully_shard`` (each decoder
  layer, then the rest); evaluation and saving all-gather the full weights once (``full_weights``).
- Checkpoints (``rdfast.train.checkpoints``) resume bitwise as if never interrupted (same data order, same
  RNG, same optimizer and scheduler state).

The pieces live apart: the module and its losses (``module``), process groups (``distributed``), checkpoint
files (``checkpoints``) and the exported model (``export``); the Trainer calls them, never the reverse.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from ..errors import InputError
from ..model import RewardModel
from ..resolve import resolve
from ..testing import tiny_checkpoint
from .batches import Collator
from .checkpoints import (
    read_checkpoint,
    read_latest,
    remove_partial,
    restore_checkpoint,
    save_checkpoint,
    write_json,
)
from .config import TrainConfig
from .data import PreferenceRecord, reject_special_tokens, usable_records
from .distributed import (
    all_reduce,
    barrier,
    full_weights,
    gradient_sync,
    init_distributed,
    wrap,
)
from .evaluate import evaluate, pair_probabilities
from .export import save_model
from .lora import lora_config
from .module import RewardTrainModule
from .plots import plot_history
from .regressive import RegressiveHead, RegressiveRewardModel, hidden_size
from .rundir import CHECKPOINTS, PLOT, check_output_dir, check_resumable, staged_directory

#: transformers' scheduler name for each ``TrainConfig.lr_schedule``
SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def lr_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The run's learning-rate schedule: transformers' ``get_scheduler`` (a ``LambdaLR``).

    Step s < warmup_steps runs at base_lr * s / warmup_steps; then constant, or linear / cosine decay to 0 at
    ``max_steps``. Stepped once after every optimizer step; its state goes into every checkpoint.

    Args:
        optimizer: the run's optimizer (each group's ``lr`` is its base learning rate).
        config: ``lr_schedule``, ``warmup_steps`` and ``max_steps`` are read.
    Returns:
        The scheduler; it has already set each group's learning rate for step 0.
    """
    from transformers import get_scheduler  # heavy

    return get_scheduler(SCHEDULES[config.lr_schedule], optimizer, num_warmup_steps=config.warmup_steps,
                         num_training_steps=config.max_steps)


@dataclass
class TrainState:
    """Progress: optimizer steps done, per-step logs and held-out evaluations."""

    step: int = 0
    history: list = field(default_factory=list)  # {"step", "loss", "accuracy", "lr", "seconds"} per step
    evals: list = field(default_factory=list)  # {"step", "accuracy", ...} per evaluation


class Trainer:
    """Train a reward model on preference records and write a directory ``RewardModel`` loads.

    The Trainer owns the model it trains. Given a spec it loads the model itself (float32, on this rank's
    device). Given a loaded RewardModel it trains that object in place, never a copy: its weights are
    moved to this rank's device, LoRA adapters are injected into its ``model`` (and merged into it by
    ``finish``), and its instruction, normalisation and video sampling are set from ``config``.

    Args:
        model: a model spec (a base checkpoint directory, ``tiny:FAMILY`` or a hub id, resolved by
            ``rdfast.resolve``) or a loaded RewardModel (its ``model.name_or_path`` must be the base
            checkpoint directory).
        config: TrainConfig.
        train_records: list[PreferenceRecord] (``load_preferences``).
        eval_records: optional held-out records, evaluated every ``config.eval_every`` steps and at the end.
        output_dir: where the trained model, checkpoints (``checkpoints/``), history and plot go.
        callbacks: callables ``fn(trainer, step, logs)`` run after every optimizer step on every rank.
        log: where rank 0 reports (progress bar, skipped records, resumption).
        allow_pickle: accept a base model with pickled (.bin) weights (unpickling can run code).
    """

    def __init__(self, model: str | os.PathLike | RewardModel, config: TrainConfig,
                 train_records: list[PreferenceRecord], eval_records: list[PreferenceRecord] | None = None,
                 output_dir: str | os.PathLike = "out/train", callbacks=(), log=sys.stderr,
                 allow_pickle: bool = False):
        self.config, self.output_dir, self.log = config, os.fspath(output_dir), log
        self.allow_pickle = allow_pickle
        self.callbacks = list(callbacks)
        self.rank, self.world, self.device = init_distributed()
        micro = config.micro_batch_size or config.batch_size // self.world
        if micro < 1 or config.batch_size % (self.world * micro):
            raise InputError(f"batch_size={config.batch_size} must be a multiple of world_size ({self.world}) x "
                             f"micro_batch_size ({micro})")
        self.micro, self.accumulation = micro, config.batch_size // (self.world * micro)
        train_records = usable_records(train_records, config.ties, config.batch_size)
        self.train_records, self.eval_records = train_records, list(eval_records or [])
        torch.manual_seed(config.seed)  # the same LoRA / head initialisation on every rank
        self.rm, self.base_path = self._load(model)
        # recorded by a LoRA export as given (a hub id or tiny:NAME stays one)
        self.base_model = self.base_path if isinstance(model, RewardModel) else os.fspath(model)
        # user text holding a special token of this tokenizer: reported (strict: raised) before any step
        report = log if self.rank == 0 else None
        self.train_records = usable_records(
            reject_special_tokens(self.train_records, self.rm.tokenizer, config.strict, report),
            config.ties, config.batch_size)
        self.eval_records = reject_special_tokens(self.eval_records, self.rm.tokenizer, config.strict, report)
        if config.num_frames is not None or config.fps is not None:  # training, evaluation and export alike
            self.rm.num_frames, self.rm.fps = config.num_frames, config.fps
        self.peft_model = None
        self.head = RegressiveHead(hidden_size(self.rm)).to(self.device) if config.paradigm == "regressive" \
            else None
        self._prepare_parameters()
        if config.gradient_checkpointing:
            model = self.rm.model  # newer transformers renamed it; keep the old name for older 5.x
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.module = RewardTrainModule(self.rm, config, self.head)
        base = getattr(self.rm.model, self.rm.model.base_model_prefix)
        self.wrapped = wrap(self.module, config.strategy, self.world, self.device, list(base.language_model.layers))
        self.named_trainable = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        self.optimizer = self._optimizer()
        self.scheduler = lr_scheduler(self.optimizer, config)
        self.collator = Collator(self.rm, config.paradigm, config.both_orders, config.instruction,
                                 config.cot_format, config.strict, log=log if self.rank == 0 else None)
        self.state = TrainState()
        self.steps_per_epoch = len(self.train_records) // config.batch_size
        self._standin = None  # the last micro-batch trained, run zero-weighted when a rank has none

    # ---- setup ----------------------------------------------------------------------------------------
    def _load(self, model):
        if isinstance(model, RewardModel):
            base = getattr(model.model, "name_or_path", None)
            if not base or not os.path.isdir(base):
                raise ValueError("pass the base checkpoint directory, or a RewardModel loaded from one")
            rm = model
            rm.model.to(self.device)
        else:
            base = resolve(model, tiny_checkpoint, "reward model")
            rm = RewardModel.from_pretrained(base, device=self.device, dtype=torch.float32,
                                             allow_pickle=self.allow_pickle)
        if os.path.realpath(base) == os.path.realpath(self.output_dir):
            raise InputError(f"{self.output_dir} is the base model's folder: write the trained model elsewhere",
                             field="output_dir")
        rm.instruction = self.config.instruction
        rm.normalize = self.config.normalize
        return rm, os.path.abspath(base)

    def _prepare_parameters(self):
        config, model = self.config, self.rm.model
        model.requires_grad_(False)
        if config.finetune == "lora":
            from peft import get_peft_model  # optional

            # injects the adapters into ``model`` in place
            self.peft_model = get_peft_model(model, lora_config(model, config))
        else:
            model.requires_grad_(True)
            if config.paradigm == "regressive":  # the LM head is unused; DDP must not wait for its gradient
                model.get_output_embeddings().requires_grad_(False)
        if self.head is not None:
            self.head.requires_grad_(True)

    def _optimizer(self):
        config = self.config
        body = [p for n, p in self.named_trainable if not n.startswith("head.")]
        groups = [{"params": body, "lr": config.learning_rate}]
        if self.head is not None:
            groups.append({"params": list(self.head.parameters()),
                           "lr": config.head_learning_rate or config.learning_rate})
        return torch.optim.AdamW(groups, lr=config.learning_rate, betas=config.adam_betas, eps=config.adam_eps,
                                 weight_decay=config.weight_decay)

    # ---- data -----------------------------------------------------------------------------------------
    def step_records(self, step: int) -> list[PreferenceRecord]:
        """This rank's records for optimizer step ``step`` (0-based): a pure function of (seed, step).

        Args:
            step: the optimizer step (0-based).
        Returns:
            This rank's ``batch_size / world`` records, in micro-batch order.
        """
        config = self.config
        epoch, offset = divmod(step, self.steps_per_epoch)
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.train_records), generator=gen)
        chosen = perm[offset * config.batch_size : (offset + 1) * config.batch_size].tolist()
        share = config.batch_size // self.world
        mine = chosen[self.rank * share : (self.rank + 1) * share]
        return [self.train_records[i] for i in mine]

    # ---- training -------------------------------------------------------------------------------------
    def train(self, resume: str | os.PathLike | None = None, overwrite: bool = False) -> dict:
        """Run to ``config.max_steps``, then ``finish``.

        ``output_dir`` belongs to one run (``rdfast.train.rundir``): a fresh run refuses a folder holding
        another run's checkpoints or a trained model; ``resume`` continues that run (a config that differs
        from its saved one is an error naming the settings); ``overwrite`` starts over (the old checkpoints
        are deleted now, the old model replaced when the new one is complete).

        Args:
            resume: None (start at step 0), "auto" (continue from the newest valid checkpoint in ``output_dir``,
                if any; a damaged one is reported and the one before it used) or a checkpoint folder.
            overwrite: start over in a folder that holds another run.
        Returns:
            The final metrics {"step", "loss", "accuracy", "eval": {...} or None, "output_dir"}.
        """
        config = self.config
        ckpt_dir = os.path.join(self.output_dir, CHECKPOINTS)
        check_output_dir(self.output_dir, resume, overwrite)
        barrier()  # every rank has looked before rank 0 changes anything
        if self.rank == 0:
            if overwrite:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
            os.makedirs(ckpt_dir, exist_ok=True)
            remove_partial(ckpt_dir)  # leftovers of a run killed while writing a checkpoint
        barrier()
        if resume:
            log = self.log if self.rank == 0 else None
            found = read_latest(ckpt_dir, self.rank, self.device, log) if resume == "auto" \
                else read_checkpoint(resume, self.rank)
            if found is not None:
                self._restore(found)
            elif log is not None:
                print(f"no checkpoint in {ckpt_dir}: starting at step 0", file=log)
        bar = tqdm(total=config.max_steps, initial=self.state.step, desc=f"train {config.paradigm}", unit="step",
                   disable=not config.progress or self.rank != 0, file=self.log, dynamic_ncols=True)
        self.wrapped.train()
        started = time.perf_counter()
        while self.state.step < config.max_steps:
            logs = self.train_step()
            step = self.state.step
            logs["seconds"] = time.perf_counter() - started
            self.state.history.append(logs)
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4f}", acc=f"{logs['accuracy']:.3f}")
            if config.eval_every and self.eval_records and step % config.eval_every == 0 and step < config.max_steps:
                with full_weights(self.wrapped, config.strategy):
                    self.state.evals.append({"step": step, **self._eval_accuracy()})
                self.wrapped.train()
                self.plot()
            if config.save_every and step % config.save_every == 0:
                self.save_checkpoint()
            for cb in self.callbacks:
                cb(self, step, logs)
        bar.close()
        return self.finish()

    def train_step(self) -> dict:
        """One optimizer step (all micro-batches of this rank). Collective.

        Returns:
            {"step" (steps done), "loss" (mean over the global batch), "accuracy" (non-tie rows of the global
            batch), "lr" (the first group's learning rate this step used)}.
        """
        config = self.config
        step = self.state.step
        records = self.step_records(step)
        batches = [self.collator(records[k : k + self.micro]) for k in range(0, len(records), self.micro)]
        local = sum(b.units(config.ties) for b in batches if b is not None)
        units = all_reduce(torch.tensor([float(local)], device=self.device))[0].item()
        scale = self.world / max(units, 1.0)  # DDP averages over ranks: undo it, then divide by the global count
        stats = torch.zeros(3, device=self.device)
        for k, batch in enumerate(batches):
            weight = scale
            if batch is None:
                if self.world == 1:
                    continue
                if self._standin is None:
                    raise RuntimeError(f"step {step}: every record of a micro-batch was rejected on rank {self.rank}")
                batch, weight = self._standin, 0.0  # a zero-weighted stand-in keeps DDP's collectives in step
            with gradient_sync(self.wrapped, config.strategy, self.world, k == len(batches) - 1):
                loss, s = self.wrapped(batch)
                (loss * weight).backward()
            if weight:
                stats += s
                self._standin = batch
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for _, p in self.named_trainable], config.max_grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        all_reduce(stats)
        self.state.step = step + 1
        acc = (stats[1] / stats[2]).item() if stats[2] > 0 else float("nan")
        return {"step": step + 1, "loss": stats[0].item() / max(units, 1.0), "accuracy": acc, "lr": lr}

    # ---- evaluation -----------------------------------------------------------------------------------
    def scoring_model(self) -> RewardModel | RegressiveRewardModel:
        """The model being trained as evaluation scores it (the RewardModel, or it with the regressive head).

        Returns:
            ``self.rm``, or a ``RegressiveRewardModel`` over it and the head.
        """
        if self.head is not None:
            return RegressiveRewardModel(self.rm, self.head)
        return self.rm

    def _eval_accuracy(self) -> dict:
        """Accuracy on eval_records, each rank scoring its share (counts summed over ranks)."""
        self.wrapped.eval()
        mine = self.eval_records[self.rank :: self.world]
        with torch.no_grad():
            p, kept = pair_probabilities(self.scoring_model(), mine, self.config.paradigm, self.config.eval_debias,
                                         cot_format=self.config.cot_format, log=None)
        labels = [mine[i].label for i in kept]
        hits = sum((pi > 0.5) == (lab == 2) for pi, lab in zip(p.tolist(), labels) if lab != "tie")
        n = sum(lab != "tie" for lab in labels)
        counts = all_reduce(torch.tensor([float(hits), float(n)], device=self.device))
        return {"accuracy": (counts[0] / counts[1]).item() if counts[1] > 0 else float("nan"), "n": int(counts[1])}

    def finish(self) -> dict:
        """Write the trained model, evaluate it as saved (LoRA merged), write history, results and the plot.

        All of it goes to a hidden sibling of ``output_dir`` renamed into place when complete
        (``rdfast.train.rundir.publish``; the run's checkpoints move into it), so a failure leaves the previous
        directory as it was.

        Returns:
            {"step", "output_dir", "eval" (``evaluate``'s result on eval_records, or None), "loss",
            "accuracy" (the last step's)}.
        """
        result = {"step": self.state.step, "output_dir": self.output_dir, "eval": None}
        if self.state.history:
            last = self.state.history[-1]
            result.update(loss=last["loss"], accuracy=last["accuracy"])
        with staged_directory(self.output_dir, self.rank) as staged:
            self._export(staged)
            self._write_results(result, staged)
        return result

    def _write_results(self, result: dict, directory: str) -> None:
        """Rank 0: the final evaluation (into ``result``), eval_results.json, train_history.json and the plot."""
        if self.rank == 0:
            if self.eval_records:
                self.wrapped.eval()
                with torch.no_grad():
                    result["eval"] = evaluate(self.scoring_model(), self.eval_records, paradigm=self.config.paradigm,
                                              debias=self.config.eval_debias, cot_format=self.config.cot_format,
                                              log=self.log)
                self.state.evals.append({"step": self.state.step, "accuracy": result["eval"]["accuracy"],
                                         "n": result["eval"]["n_accuracy"], "final": True})
                write_json(result["eval"], os.path.join(directory, "eval_results.json"))
            write_json({"config": self.config.to_dict(), "history": self.state.history, "evals": self.state.evals},
                       os.path.join(directory, "train_history.json"))
            self.plot(os.path.join(directory, PLOT))

    def plot(self, path: str | os.PathLike | None = None) -> str | None:
        """Loss and accuracy curves (training, and held-out evaluations) as a PNG; rank 0 only.

        Args:
            path: the PNG to write (default: ``output_dir/training_curves.png``).
        Returns:
            The path written, or None (another rank, or no step yet).
        """
        if self.rank != 0 or not self.state.history:
            return None
        path = os.fspath(path or os.path.join(self.output_dir, "training_curves.png"))
        plot_history(self.state.history, self.state.evals, path, title=f"{self.config.paradigm} reward model")
        return path

    # ---- files ----------------------------------------------------------------------------------------
    def save_checkpoint(self) -> str:
        """Write ``checkpoints/checkpoint-<step>`` atomically (``rdfast.train.checkpoints``). Collective.

        Returns:
            The checkpoint folder's path.
        """
        progress = {"config": self.config.to_dict(), "history": self.state.history, "evals": self.state.evals}
        return save_checkpoint(os.path.join(self.output_dir, "checkpoints"), self.state.step, self.wrapped,
                               self.optimizer, self.scheduler, [n for n, _ in self.named_trainable], progress,
                               rank=self.rank, world=self.world, device=self.device,
                               keep=self.config.keep_checkpoints)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore weights, optimizer, LR schedule, RNG and progress from a checkpoint folder. Collective.

        Args:
            path: a ``checkpoint-<step>`` folder written by a run with the same config and process count.
        """
        self._restore(read_checkpoint(path, self.rank))

    def _restore(self, contents: dict) -> None:
        """Resume from ``read_checkpoint``'s result, once its saved config is this run's (else InputError)."""
        path = contents["path"]
        check_resumable(self.config, contents)
        state = restore_checkpoint(contents, self.wrapped, self.optimizer, self.scheduler,
                                   [n for n, _ in self.named_trainable], world=self.world, device=self.device)
        self.state = TrainState(state["step"], state["history"], state["evals"])
        if self.rank == 0:
            print(f"resumed from {path} at step {self.state.step}", file=self.log)

    def save_model(self, directory: str | os.PathLike) -> None:
        """Write a directory ``RewardModel.from_pretrained`` (or ``RegressiveRewardModel``) loads. Collective.

        It is written beside ``directory`` and renamed into place when complete (replacing what was there).
        A LoRA model is merged in memory afterwards (``rdfast.train.export.save_model``), so it scores as the
        saved directory does; it trains no further.

        Args:
            directory: the output folder.
        """
        with staged_directory(directory, self.rank) as staged:
            self._export(staged)

    def _export(self, directory: str) -> None:
        save_model(directory, self.rm, self.config, self.base_path, peft_model=self.peft_model, head=self.head,
                   wrapped=self.wrapped, rank=self.rank, base_model=self.base_model)
        self.peft_model = None
