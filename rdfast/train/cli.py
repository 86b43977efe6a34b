"""``rdfast train`` and ``rdfast eval``.

    rdfast train --model BASE --train train.jsonl --val val.jsonl --output out/rm --paradigm pairwise
    rdfast train ... --num-frames 8                            # video pairs ("video1", "video2" in the JSONL)
    torchrun --nproc_per_node 4 -m rdfast.cli train ...        # DDP (gloo on CPU, NCCL on CUDA)
    rdfast eval  --model out/rm --test test.jsonl --val val.jsonl --output results.json

Bad data lines are reported with their line numbers and skipped (``--strict`` stops instead).
``register(subparsers)`` adds both commands to the ``rdfast`` parser; ``main`` runs them alone.
"""
from __future__ import annotations

import argparse
import json
import sys


def _add_train(sub):
    from .trainer import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a reward model on preference JSONL (LoRA or full, torchrun-ready)")
    p.add_argument("--model", required=True, help="base checkpoint directory")
    p.add_argument("--train", required=True, help="preference JSONL")
    p.add_argument("--val", help="held-out preference JSONL (evaluated every --eval-every steps and at the end)")
    p.add_argument("--output", required=True, help="output directory (the trained model, checkpoints, plot)")
    p.add_argument("--paradigm", default=d.paradigm, choices=("pairwise", "pointwise", "regressive", "cot"))
    p.add_argument("--finetune", default=d.finetune, choices=("lora", "full"))
    p.add_argument("--lora-r", type=int, default=d.lora_r)
    p.add_argument("--lora-alpha", type=int, default=d.lora_alpha)
    p.add_argument("--lr", type=float, default=d.learning_rate)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=("constant", "linear", "cosine"))
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="pairs per optimizer step (global)")
    p.add_argument("--micro-batch-size", type=int, default=None, help="pairs per forward per process")
    p.add_argument("--steps", type=int, default=d.max_steps)
    p.add_argument("--ties", default=d.ties, choices=("soft", "skip"))
    p.add_argument("--one-order", action="store_true", help="pairwise: do not also train the swapped order")
    p.add_argument("--ce-weight", type=float, default=d.ce_weight)
    p.add_argument("--cot-format", default=d.cot_format, choices=("decision_first", "reasons_first"))
    p.add_argument("--instruction", default=None, help="for records without one: overall, alignment, quality or text")
    p.add_argument("--normalize", default=d.normalize, choices=("vocab", "yes_no"))
    frames = p.add_mutually_exclusive_group()
    frames.add_argument("--num-frames", type=int, default=None, help="video pairs: frames sampled per clip")
    frames.add_argument("--fps", type=float, default=None, help="video pairs: sample frames at this rate")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--strategy", default=d.strategy, choices=("ddp", "fsdp"),
                   help="under torchrun: DDP (replicas) or FSDP2 fully_shard (each decoder layer sharded)")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    p.add_argument("--save-merged", action="store_true", help="LoRA: write merged weights, not the adapter")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from the latest checkpoint in --output (or from the given checkpoint folder)")
    p.add_argument("--strict", action="store_true", help="stop at bad data instead of skipping it")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)


def _add_eval(sub):
    p = sub.add_parser("eval", help="pairwise accuracy (with and without ties, by instruction) on preference JSONL")
    p.add_argument("--model", required=True, help="a directory written by rdfast train (or any checkpoint)")
    p.add_argument("--test", required=True, help="preference JSONL to report on")
    p.add_argument("--val", help="validation JSONL: the tie threshold is tuned on it")
    p.add_argument("--tie-threshold", type=float, default=None, help="fixed tie threshold when no --val")
    p.add_argument("--paradigm", default=None, choices=("pairwise", "pointwise", "regressive", "cot"),
                   help="default: as recorded in the model's rdfast_config.json")
    p.add_argument("--debias", action="store_true", help="pairwise: average both image orders")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--output", help="write the full results (probabilities included) as JSON here")
    p.add_argument("--strict", action="store_true", help="stop at bad data instead of skipping it")
    p.set_defaults(func=cmd_eval)


def register(subparsers) -> None:
    """Add the ``train`` and ``eval`` subcommands to an argparse subparsers object."""
    _add_train(subparsers)
    _add_eval(subparsers)


def cmd_train(args):
    from .data import DataError, load_preferences
    from .trainer import TrainConfig, Trainer, init_distributed

    rank = init_distributed()[0]
    log = sys.stderr if rank == 0 else None  # every rank validates; one reports
    try:
        train = load_preferences(args.train, strict=args.strict, log=log)
        val = load_preferences(args.val, strict=args.strict, log=log) if args.val else None
    except DataError as err:  # strict: every bad line was reported; stop before any training
        raise SystemExit(f"rdfast train: stopped (--strict): {err}") from err
    config = TrainConfig(
        paradigm=args.paradigm, finetune=args.finetune, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        learning_rate=args.lr, weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
        warmup_steps=args.warmup_steps, max_grad_norm=args.max_grad_norm, batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size, max_steps=args.steps, ties=args.ties, both_orders=not args.one_order,
        ce_weight=args.ce_weight, cot_format=args.cot_format, instruction=args.instruction, normalize=args.normalize,
        num_frames=args.num_frames, fps=args.fps, bf16=args.bf16, gradient_checkpointing=args.gradient_checkpointing, strategy=args.strategy,
        eval_every=args.eval_every, save_every=args.save_every, keep_checkpoints=args.keep_checkpoints,
        save_merged=args.save_merged, seed=args.seed, strict=args.strict, progress=not args.no_progress)
    result = Trainer(args.model, config, train, val, output_dir=args.output, log=sys.stderr).train(resume=args.resume)
    if rank == 0:
        summary = {k: v for k, v in result.items() if k != "eval"}
        if result.get("eval"):
            summary["eval_accuracy"] = result["eval"]["accuracy"]
        print(json.dumps(summary))


def cmd_eval(args):
    from .data import DataError, load_preferences
    from .evaluate import evaluate, load_trained

    try:
        test = load_preferences(args.test, strict=args.strict)
        val = load_preferences(args.val, strict=args.strict) if args.val else None
    except DataError as err:
        raise SystemExit(f"rdfast eval: stopped (--strict): {err}") from err
    model, paradigm = load_trained(args.model, device=args.device)
    from .regressive import read_rdfast_config

    cot_format = read_rdfast_config(args.model).get("cot_format")
    result = evaluate(model, test, val, paradigm=args.paradigm or paradigm, debias=args.debias,
                      tie_threshold=args.tie_threshold, batch_size=args.batch_size, cot_format=cot_format)
    if args.output:
        with open(args.output, "w") as fh:
            json.dump(result, fh, indent=1)
    print(format_result(result))
    return result


def format_result(result: dict) -> str:
    """A short table: overall and per instruction, accuracy without and with ties."""
    def pct(x):
        return "  n/a " if x != x else f"{100 * x:6.2f}"

    lines = [f"paradigm {result['paradigm']}; tie threshold {result['tie_threshold']:.4g} "
             f"(from {result['tie_threshold_from']})",
             f"{'instruction':<24}{'pairs':>7}{'ties':>6}{'acc':>8}{'acc+ties':>10}"]
    rows = [("all", result)] + list(result["by_instruction"].items())
    for name, m in rows:
        lines.append(f"{name[:23]:<24}{m['n_pairs']:>7}{m['n_ties']:>6}{pct(m['accuracy']):>8}"
                     f"{pct(m['accuracy_with_ties']):>10}")
    return "\n".join(lines)


def main(argv=None):
    """Run ``train`` or ``eval`` on their own (``python -m rdfast.train.cli train ...``)."""
    parser = argparse.ArgumentParser(prog="rdfast", description="train and evaluate reward models")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    main()
