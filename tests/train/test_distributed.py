"""torchrun (2 CPU processes, gloo) equals one process; SIGKILL then resume equals an uninterrupted run.

Each run is a subprocess executing this file as a script (``python tests/train/test_distributed.py ...`` or
under ``torch.distributed.run``), on preference data written to a temporary folder.
"""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))  # the repository: the subprocesses import its rdfast


def write_data(folder, n, seed):
    """n preference lines over random images of two sizes (so batches need padding); a third are ties."""
    from rdfast.testing import random_images

    os.makedirs(folder, exist_ok=True)
    ims = random_images(2 * n, sizes=((56, 56), (84, 56), (56, 84)), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    words = ["red", "blue", "green", "small", "large", "dark", "bright"]
    lines = []
    for k in range(n):
        for j in (0, 1):
            ims[2 * k + j].save(os.path.join(folder, f"{k}_{j}.png"))
        pick = torch.randint(0, len(words), (1 + k % 3,), generator=gen).tolist()
        lines.append(json.dumps({"prompt": "a " + " ".join(words[i] for i in pick) + " car", "image1": f"{k}_0.png",
                                 "image2": f"{k}_1.png", "label": [1, 2, "tie"][k % 3]}))
    with open(os.path.join(folder, "train.jsonl"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return os.path.join(folder, "train.jsonl")


def run(args, nproc=1, check=True, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(29500 + int.from_bytes(os.urandom(2), "little") % 2000), __file__, *args]
    else:
        cmd = [sys.executable, __file__, *args]
    # its own session, so a hung run (a collective one rank never joins) is killed with all its workers
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as popen:
        try:
            stdout, stderr = popen.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            stdout, stderr = popen.communicate()
            raise AssertionError(f"{cmd} hung for 300 s:\n{stdout[-3000:]}\n{stderr[-5000:]}") from None
    proc = subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def weights(folder):
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if os.path.isfile(os.path.join(folder, "adapter_model.safetensors")) \
        else "model.safetensors"
    out = load_file(os.path.join(folder, name))
    head = os.path.join(folder, "regressive_head.safetensors")
    if os.path.isfile(head):
        out.update({f"head.{k}": v for k, v in load_file(head).items()})
    return out


@pytest.mark.parametrize("paradigm,finetune,batching", [("pairwise", "lora", "length"), ("regressive", "full", "auto")])
def test_torchrun_two_processes_equal_one(tmp_path, paradigm, finetune, batching):
    """batching="length": the rows run through the scoring engine (its grouping differs between the 1- and 2-process
    splits; DDP does not mind)."""
    seed = int.from_bytes(os.urandom(2), "little")
    data = write_data(tmp_path / "data", 12, seed)
    common = ["--data", data, "--paradigm", paradigm, "--finetune", finetune, "--steps", "3", "--batch", "4",
              "--micro", "2", "--seed", str(seed), "--batching", batching]
    run([*common, "--out", str(tmp_path / "one")])  # one process, 2 micro-batches accumulated
    run([*common, "--out", str(tmp_path / "two")], nproc=2)  # two processes, one micro-batch each
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=0, msg=key)
    if finetune == "lora":  # training moved the weights (LoRA B starts at zero)
        assert any(a[k].abs().max() > 0 for k in a if "lora_B" in k)
    hist_one = json.loads((tmp_path / "one" / "train_history.json").read_text())["history"]
    hist_two = json.loads((tmp_path / "two" / "train_history.json").read_text())["history"]
    for h1, h2 in zip(hist_one, hist_two):  # the global loss and accuracy agree too
        assert abs(h1["loss"] - h2["loss"]) < 1e-5 and h1["accuracy"] == h2["accuracy"]


@pytest.mark.parametrize("paradigm,finetune", [("pairwise", "full"), ("regressive", "lora")])
def test_fsdp2_two_processes_equal_one_and_resume(tmp_path, paradigm, finetune):
    """FSDP2 (fully_shard over gloo) computes the same steps as one process; evaluation and saving gather the
    full weights; a sharded checkpoint (AdamW moments included) resumes bitwise."""
    seed = int.from_bytes(os.urandom(2), "little")
    data = write_data(tmp_path / "data", 12, seed)
    val = write_data(tmp_path / "val", 6, seed + 1)
    common = ["--data", data, "--val", val, "--paradigm", paradigm, "--finetune", finetune, "--steps", "4",
              "--batch", "4", "--micro", "1", "--seed", str(seed)]
    # FSDP runs the stock linears (rdfast.train.distributed undoes rdfast.cpu_speed before sharding): so does the
    # reference, so that the two differ by the sharding alone (fast vs stock kernels: tests/test_cpu_speed.py)
    run([*common, "--out", str(tmp_path / "one")], env={"RDFAST_CPU_FAST": "0"})
    run([*common, "--out", str(tmp_path / "fsdp"), "--strategy", "fsdp", "--save-every", "2"], nproc=2)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "fsdp")
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=0, msg=key)
    ev1 = json.loads((tmp_path / "one" / "eval_results.json").read_text())
    ev2 = json.loads((tmp_path / "fsdp" / "eval_results.json").read_text())
    torch.testing.assert_close(torch.tensor(ev2["probabilities"]), torch.tensor(ev1["probabilities"]), atol=1e-5,
                               rtol=0)
    hist = json.loads((tmp_path / "fsdp" / "train_history.json").read_text())
    assert [e["step"] for e in hist["evals"]] == [2, 4]  # the evaluation during training ran sharded
    # resume from the sharded checkpoint of step 2 in a fresh folder
    os.makedirs(tmp_path / "resumed" / "checkpoints")
    os.rename(tmp_path / "fsdp" / "checkpoints" / "checkpoint-00000002",
              tmp_path / "resumed" / "checkpoints" / "checkpoint-00000002")
    resumed = run([*common, "--out", str(tmp_path / "resumed"), "--strategy", "fsdp", "--resume"], nproc=2)
    assert "at step 2" in resumed.stderr
    c = weights(tmp_path / "resumed")
    for key in b:
        assert torch.equal(b[key], c[key]), key


def test_ddp_checkpoint_resumes_bitwise(tmp_path):
    """DDP (2 gloo processes): a checkpoint (full state dicts through torch.distributed.checkpoint) resumes
    bitwise in a fresh folder."""
    seed = int.from_bytes(os.urandom(2), "little")
    data = write_data(tmp_path / "data", 12, seed)
    common = ["--data", data, "--paradigm", "pairwise", "--finetune", "lora", "--steps", "4", "--batch", "4",
              "--micro", "1", "--seed", str(seed)]
    run([*common, "--out", str(tmp_path / "ddp"), "--save-every", "2"], nproc=2)
    os.makedirs(tmp_path / "resumed" / "checkpoints")
    os.rename(tmp_path / "ddp" / "checkpoints" / "checkpoint-00000002",
              tmp_path / "resumed" / "checkpoints" / "checkpoint-00000002")
    resumed = run([*common, "--out", str(tmp_path / "resumed"), "--resume"], nproc=2)
    assert "at step 2" in resumed.stderr
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    seed = int.from_bytes(os.urandom(2), "little")
    data = write_data(tmp_path / "data", 12, seed)
    common = ["--data", data, "--paradigm", "pairwise", "--finetune", "full", "--steps", "6", "--batch", "4",
              "--micro", "2", "--seed", str(seed), "--save-every", "2"]
    run([*common, "--out", str(tmp_path / "straight")])
    # killed by SIGKILL while writing checkpoint 4 (checkpoint 2 is complete, step 4 computed)
    killed = run([*common, "--out", str(tmp_path / "resumed"), "--kill-at", "4"], check=False)
    assert killed.returncode == -signal.SIGKILL
    ckpts = tmp_path / "resumed" / "checkpoints"
    assert sorted(os.listdir(ckpts)) == [".tmp-checkpoint-00000004", "checkpoint-00000002"]
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    resumed = run([*common, "--out", str(tmp_path / "resumed"), "--resume"])
    assert "resumed from" in resumed.stderr and "checkpoint-00000002 at step 2" in resumed.stderr
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the resumed run's history is the uninterrupted one's (steps 1-2 restored, 3-6 recomputed)
    h1 = json.loads((tmp_path / "straight" / "train_history.json").read_text())["history"]
    h2 = json.loads((tmp_path / "resumed" / "train_history.json").read_text())["history"]
    assert [h["loss"] for h in h1] == [h["loss"] for h in h2]
    assert sorted(os.listdir(ckpts)) == ["checkpoint-00000004", "checkpoint-00000006"]  # keep_checkpoints=2


# ----------------------------------------------------------------------------------------------------
# The driver (runs in the subprocesses)


def driver(argv):
    import argparse

    parser = argparse.ArgumentParser()
    for name in ("--data", "--val", "--out", "--paradigm", "--finetune"):
        parser.add_argument(name)
    parser.add_argument("--strategy", default="ddp")
    for name in ("--steps", "--batch", "--micro", "--seed", "--save-every", "--kill-at"):
        parser.add_argument(name, type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--batching", default="auto")
    args = parser.parse_args(argv)

    from rdfast.testing import tiny_checkpoint
    from rdfast.train import TrainConfig, Trainer, checkpoints, load_preferences

    if args.kill_at:
        real_replace = os.replace

        def replace(src, dst):  # die between writing the checkpoint and publishing it
            if os.path.basename(dst) == f"checkpoint-{args.kill_at:08d}":
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)

        checkpoints.os.replace = replace
    # AdamW moves a weight by lr * g / (|g| + eps): a rounding difference d in g (another summation order across
    # processes, another GEMM kernel) moves it by up to lr * d / eps. At the default eps 1e-8 that turns fp32
    # rounding into differences of 1e-6..1e-5 on weights whose gradient is near zero; eps 1e-6 bounds it 100x
    # lower while a wrong gradient (missing rank, double count) still moves weights by about lr.
    config = TrainConfig(paradigm=args.paradigm, finetune=args.finetune, learning_rate=2e-3, lora_r=4, adam_eps=1e-6,
                         batch_size=args.batch, micro_batch_size=args.micro, max_steps=args.steps, seed=args.seed,
                         save_every=args.save_every, progress=False, lr_schedule="cosine", warmup_steps=1,
                         strategy=args.strategy, eval_every=2 if args.val else 0,
                         batching=args.batching)
    val = load_preferences(args.val) if args.val else None
    trainer = Trainer(tiny_checkpoint("qwen2_vl"), config, load_preferences(args.data), val, output_dir=args.out)
    trainer.train(resume="auto" if args.resume else None)


if __name__ == "__main__":
    driver(sys.argv[1:])
