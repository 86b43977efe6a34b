"""RewardModel: the RewardDance reward, P("yes") of a VLM's next token, as a drop-in scorer.

Follow a score down: ``score``/``compare`` -> ``encode`` (prompts.py renders, the family adapter turns
images into pixels and image tokens) -> ``collate`` (pads a micro-batch) -> ``answer_logprobs`` (the
VLM's base model, the hidden state at the last real token) -> ``rdfast.ops.token_logprobs`` (the fused
yes/no head).
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, replace

import torch

from . import prompts as P
from .engine import Engine, EngineOptions
from .errors import InputError
from .images import as_image_list, load_image
from .resolve import resolve
from .reward_config import FILE_NAME, RewardConfig
from .testing import tiny_checkpoint
from .videos import as_video_list, load_video

NORMALIZATIONS = ("vocab", "yes_no")


@dataclass
class Encoded:
    """One sequence ready to batch: token ids and its images/videos (in sequence order) in the family's layout."""

    input_ids: list[int]
    images: list
    prompt: str
    instruction: str | None
    index: int
    n_condition: int = 0  # leading conditioning images (image-to-video) before the judged media


@dataclass
class RankResult:
    """Best-of-N by pairwise wins. ``win_prob[i, j]`` = P(candidate i beats j), both orders averaged."""

    order: list[int]
    wins: torch.Tensor
    win_prob: torch.Tensor
    top: list[int]


def rank_from_pairs(p: torch.Tensor, pairs: list[tuple[int, int]], n: int, top_k: int) -> RankResult:
    """Best-of-N from pairwise judgements: ``p[k]`` = P(candidate j better than i) for ``pairs[k] = (i, j)``,
    every ordered pair present. Both orders are averaged into P(i beats j); P > 0.5 is a hard win; ties in
    wins are broken by the summed win probabilities, then by index."""
    beats = torch.zeros(n, n, dtype=p.dtype, device=p.device)  # beats[j, i] = P(j better than i)
    beats[torch.tensor([j for _, j in pairs]), torch.tensor([i for i, _ in pairs])] = p
    win_prob = 0.5 * (beats + 1.0 - beats.T)
    win_prob.fill_diagonal_(0.0)
    wins = (win_prob > 0.5).sum(dim=1)
    total = win_prob.sum(dim=1)
    order = sorted(range(n), key=lambda k: (-int(wins[k]), -float(total[k]), k))
    return RankResult(order=order, wins=wins, win_prob=win_prob, top=order[:top_k])


def _default_device():
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class RewardModel:
    """A generative reward model over a transformers VLM (Qwen2-VL, Qwen2.5-VL, InternVL).

    The reward is P(answer = "yes") at the first answer position after the rendered prompt.
    ``normalize="vocab"`` (default) is the softmax over the whole vocabulary: exactly the distribution a
    generative reward model is trained on (cross-entropy over the vocabulary), so it is the paper's reward.
    ``normalize="yes_no"`` renormalises over the two answer tokens, sigmoid(logit_yes - logit_no): useful
    for models never tuned as judges, whose probability mass leaks to other tokens.
    """

    def __init__(self, model, tokenizer, adapter, answers: P.AnswerTokens, normalize="vocab", max_length=None,
                 batch_size=8, instruction=None, num_frames=None, fps=None):
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.adapter = adapter
        self.answers = answers
        self.normalize = normalize
        #: engine switches (feature cache, shared prefix, packing, micro-batch); all off = the plain padded path
        self.options = EngineOptions(batch_size=batch_size)
        self.instruction = instruction  # used when a call passes none (a trained model's own instruction)
        # video frame sampling when a call passes neither (a model trained on videos records its own)
        self.num_frames, self.fps = num_frames, fps
        self.padding_side = "left"  # scores do not depend on it; left keeps the answer position at the end
        text_config = getattr(model.config, "text_config", model.config)
        self.max_length = max_length or getattr(text_config, "max_position_embeddings", None) or 1 << 30
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._answer_ids = torch.tensor([answers.yes_id, answers.no_id], dtype=torch.long)
        self.engine = Engine(self)

    # ---- loading --------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path,
        device=None,
        dtype=None,
        attn_implementation=None,
        normalize=None,
        answer_words=None,
        trust_remote_code=False,
        max_length=None,
        batch_size=8,
        device_map=None,
    ) -> "RewardModel":
        """Load a reward model from a local checkpoint directory (no network).

        dtype defaults to float32 on CPU and bfloat16 on CUDA; attn_implementation to transformers' choice
        ("sdpa"); "flash_attention_2" needs flash-attn installed. normalize defaults to "vocab" and
        answer_words to ("yes", "no"), unless the directory was written by ``rdfast.train`` (its
        ``rdfast_config.json`` then supplies them, the instruction, and the base model of a LoRA adapter).
        ``device_map`` (e.g. "auto") spreads a large reward model over several GPUs through accelerate;
        ``device`` is then ignored.
        """
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        from .adapters import adapter_for

        path = resolve(path, tiny_checkpoint, "reward model")
        if attn_implementation == "flash_attention_2":
            try:
                import flash_attn  # noqa: F401  # optional
            except ImportError as err:
                raise ImportError("attn_implementation='flash_attention_2' needs flash-attn (pip install rdfast[gpu])") from err
        device = torch.device(device) if device is not None else _default_device()
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        trained = RewardConfig.load(path)
        # A LoRA adapter directory points at its base model; everything else loads from ``path`` itself.
        base_path = trained.base_model_path(path) if trained else path
        common = dict(local_files_only=True, trust_remote_code=trust_remote_code)
        config = AutoConfig.from_pretrained(base_path, **common)
        tokenizer = AutoTokenizer.from_pretrained(path, **common)
        image_processor = AutoImageProcessor.from_pretrained(path, **common)
        kwargs = dict(dtype=dtype, **common)
        if device_map is not None:
            kwargs["device_map"] = device_map
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        model = AutoModelForImageTextToText.from_pretrained(base_path, **kwargs)
        if base_path != path:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, path).merge_and_unload()
        model = (model if device_map is not None else model.to(device)).eval()
        model.requires_grad_(False)  # a frozen judge: no weight gradients unless the user opts in
        adapter = adapter_for(config, tokenizer, image_processor)
        trained = trained or RewardConfig()
        answers = P.resolve_answer_tokens(tokenizer, adapter.image_placeholder, answer_words or trained.answer_words)
        for key, got in (("yes_token_id", answers.yes_id), ("no_token_id", answers.no_id)):
            recorded = getattr(trained, key)
            if recorded is not None and recorded != got:
                raise ValueError(f"{path}: {FILE_NAME} records {key}={recorded} but the tokenizer gives {got}")
        return cls(model, tokenizer, adapter, answers, normalize=normalize or trained.normalize,
                   max_length=max_length, batch_size=batch_size, instruction=trained.instruction,
                   num_frames=trained.num_frames, fps=trained.fps)

    @property
    def _head_weight(self) -> torch.Tensor:
        # looked up at each use: FSDP and peft swap the module's parameters after loading
        return self.model.get_output_embeddings().weight

    @property
    def _head_bias(self):
        return getattr(self.model.get_output_embeddings(), "bias", None)

    @property
    def yes_token_id(self) -> int:
        return self.answers.yes_id

    @property
    def no_token_id(self) -> int:
        return self.answers.no_id

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embeddings' device (the first one under a device_map)."""
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._head_weight.dtype

    # ---- public scoring -------------------------------------------------------------------------------
    def score(self, images=None, prompts=None, instruction=None, batch_size=None, *, videos=None,
              condition_images=None, num_frames=None, fps=None) -> torch.Tensor:
        """Pointwise reward P(yes | image or video, prompt, instruction).

        images: N PIL images, paths, float tensors [3,H,W] in [0,1], or a tensor [N,3,H,W]. Or videos:
        N float tensors [T,3,H,W] in [0,1], frame lists, or video files (sampled to ``num_frames`` or at
        ``fps``); ``condition_images`` adds an image-to-video conditioning image to each item's context.
        prompts: N non-empty strings. Returns float32 [N] on the model's device; differentiable with
        respect to tensor images and videos that require grad.
        """
        columns, kind = self._media(images, None, videos, None)
        items = self.encode(prompts, columns, instruction, kind=kind, condition=condition_images,
                            num_frames=num_frames, fps=fps)
        return self._probabilities(self._run(items, batch_size))

    def compare(self, images1=None, images2=None, prompts=None, instruction=None, debias=False, batch_size=None, *,
                videos1=None, videos2=None, condition_images=None, num_frames=None, fps=None) -> torch.Tensor:
        """Pairwise reward P(yes) for "is image 2 better than image 1?" (image 1 is the reference);
        the same for ``videos1`` / ``videos2``.

        ``debias=True`` averages with 1 - P(yes) of the swapped order, removing position bias.
        Returns float32 [N].
        """
        columns, kind = self._media(images1, images2, videos1, videos2, pairwise=True)
        items = self.encode(prompts, columns, instruction, kind=kind, condition=condition_images,
                            num_frames=num_frames, fps=fps)
        p = self._probabilities(self._run(items, batch_size))
        if not debias:
            return p
        swapped = [self._tokenize(it.prompt, it.images[: it.n_condition] + it.images[it.n_condition :][::-1],
                                  it.instruction, it.index, it.n_condition) for it in items]
        return 0.5 * (p + 1.0 - self._probabilities(self._run(swapped, batch_size)))

    def rank(self, candidates=None, prompt=None, top_k=1, instruction=None, batch_size=None, *, videos=None,
             num_frames=None, fps=None) -> RankResult:
        """Best-of-N by pairwise win counts over every ordered pair (the paper's reference selection).

        candidates: N images (as for ``score``), or ``videos=``: N videos. Each unordered pair is judged in
        both orders and averaged; the candidate with P > 0.5 gets a hard win. Ties in win count are broken by
        the summed win probabilities. All N(N-1) pairs go through the engine and the head in one call (each
        candidate encoded once).
        """
        if (candidates is None) == (videos is None):
            raise InputError("pass candidates (images) or videos, exactly one of them")
        is_video = videos is not None
        cands = as_video_list(videos, "videos") if is_video else as_image_list(candidates, "candidates")
        n = len(cands)
        if n < 2:
            raise InputError(f"rank needs at least 2 candidates, got {n}", field="videos" if is_video else "candidates")
        if not 1 <= top_k <= n:
            raise ValueError(f"top_k must be in [1, {n}], got {top_k}")
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
        first, second = [cands[i] for i, _ in pairs], [cands[j] for _, j in pairs]
        media = {"videos1": first, "videos2": second} if is_video else {"images1": first, "images2": second}
        p = self.compare(**media, prompts=[prompt] * len(pairs), instruction=instruction, batch_size=batch_size,
                         num_frames=num_frames, fps=fps)
        return rank_from_pairs(p, pairs, n, top_k)

    def explain(self, prompts=None, images1=None, images2=None, instruction=None, max_new_tokens=128,
                cot_format="decision_first", batch_size=None, **videos) -> list[dict]:
        """Decisions with generated reasons, for a chain-of-thought trained model: one dict per item with
        ``p_yes`` (the reward, read exactly as ``compare``/``score`` read it for decision_first), ``decision``
        and ``reason``. See ``rdfast.train.explain``."""
        from .train.explain import explain

        return explain(self, prompts, images1, images2, instruction, max_new_tokens, cot_format, batch_size, **videos)

    def build_inputs(self, prompts=None, images1=None, images2=None, instruction=None, padding_side=None, *,
                     videos1=None, videos2=None, condition_images=None, num_frames=None, fps=None) -> dict:
        """The exact padded keyword inputs of the underlying transformers model for this batch.

        ``model(**rm.build_inputs(...))`` reproduces the scores: take the logits at the last non-padding
        position (attention_mask) and read the answer tokens.
        """
        columns, kind = self._media(images1, images2, videos1, videos2, pairwise=images2 is not None or videos2 is not None)
        items = self.encode(prompts, columns, instruction, kind=kind, condition=condition_images,
                            num_frames=num_frames, fps=fps)
        return self.collate(items, padding_side or self.padding_side)

    # ---- internals ------------------------------------------------------------------------------------
    @staticmethod
    def _media(first, second, video_first, video_second, pairwise=False):
        """(columns, kind) from the image or video arguments of a call; exactly one kind may be given."""
        has_images = first is not None or second is not None
        has_videos = video_first is not None or video_second is not None
        if has_images and has_videos:
            raise InputError("pass images or videos, not both (use condition_images for image-to-video context)")
        if has_videos:
            return ([video_first, video_second] if pairwise else [video_first]), "video"
        return ([first, second] if pairwise else [first]), "image"

    def encode(self, prompts, image_args: list, instruction=None, *, kind: str = "image", condition=None,
               num_frames=None, fps=None) -> list[Encoded]:
        """Validate every item up front (clear errors before any model work), then tokenise.

        image_args: [media] (pointwise) or [media1, media2] (pairwise), images or videos as ``kind`` says;
        ``condition``: optional conditioning images (image-to-video). Returns one Encoded per prompt.
        """
        instruction = instruction if instruction is not None else self.instruction
        if num_frames is None and fps is None:
            num_frames, fps = self.num_frames, self.fps
        base = f"{kind}s"
        fields = [base] if len(image_args) == 1 else [f"{base}1", f"{base}2"]
        kinds = [kind] * len(fields)
        if prompts is None or any(a is None for a in image_args):
            raise InputError(f"{', '.join(fields)} and prompts are required")
        if isinstance(prompts, str):
            raise InputError("expected a list of prompts, got a single string", field="prompts")
        prompts = list(prompts)
        columns = [as_image_list(a, f) if kind == "image" else as_video_list(a, f) for a, f in zip(image_args, fields)]
        if condition is not None:
            if kind != "video":
                raise InputError("condition_images go with videos (image-to-video)", field="condition_images")
            columns.insert(0, as_image_list(condition, "condition_images"))
            fields.insert(0, "condition_images")
            kinds.insert(0, "image")
        for f, col in zip(fields, columns):
            if len(col) != len(prompts):
                raise InputError(f"{f} has {len(col)} items but prompts has {len(prompts)}")
        if not prompts:
            raise InputError("empty batch", field="prompts")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise InputError(f"prompt must be a non-empty string, got {prompt!r}", i, "prompts")
        P.instruction_text(instruction)  # validates it before any work
        # The same image or video (object, or path) given several times is loaded and preprocessed once; the
        # engine then encodes it once too (its vision-feature cache keys on the EncodedImage).
        encoded: dict = {}
        columns_encoded = []
        for f, col, k in zip(fields, columns, kinds):
            out = []
            for i, media in enumerate(col):
                key = ("path", os.path.abspath(os.fspath(media))) if isinstance(media, (str, os.PathLike)) else ("obj", id(media))
                if (k, key) not in encoded:
                    try:
                        if k == "image":
                            encoded[k, key] = self.adapter.encode_image(load_image(media, i, f))
                        else:
                            encoded[k, key] = self.adapter.encode_video(*load_video(media, i, f, num_frames, fps))
                    except InputError as err:
                        raise InputError(str(err).split(": ", 1)[-1], i, f) from err
                out.append(encoded[k, key])
            columns_encoded.append(out)
        n_condition = 1 if condition is not None else 0
        return [
            self._tokenize(prompt, [col[i] for col in columns_encoded], instruction, i, n_condition)
            for i, prompt in enumerate(prompts)
        ]

    def _tokenize(self, prompt, media, instruction, index, n_condition=0) -> Encoded:
        messages = P.build_messages(prompt, len(media) - n_condition, instruction, kind=media[-1].kind,
                                    condition=n_condition > 0)
        text = P.render(self.tokenizer, messages, self.adapter.image_placeholder, self.adapter.video_placeholder)
        text = self.adapter.expand_placeholders(text, media, index)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_length:
            raise InputError(
                f"the item is {len(ids)} tokens long with its images, more than the model's context of "
                f"{self.max_length} tokens",
                index,
                "prompts",
            )
        return Encoded(ids, media, prompt, instruction, index, n_condition)

    def collate(self, items: list[Encoded], padding_side="left") -> dict:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        longest = max(len(it.input_ids) for it in items)
        ids = torch.full((len(items), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, it in enumerate(items):
            n = len(it.input_ids)
            cols = slice(longest - n, longest) if padding_side == "left" else slice(0, n)
            ids[row, cols] = torch.tensor(it.input_ids)
            mask[row, cols] = 1
        inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        inputs.update(self.adapter.collate_images([e for it in items for e in it.images], self.dtype, self.device))
        inputs.update(self.adapter.model_inputs(inputs["input_ids"]))
        return inputs

    def hidden_states(self, inputs: dict) -> torch.Tensor:
        """Final hidden states [B, T, H] of the VLM's base model (before the LM head) for collated inputs."""
        base = getattr(self.model, self.model.base_model_prefix)
        return base(**inputs, use_cache=False).last_hidden_state

    @staticmethod
    def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
        """Index of each row's last real token [B]; right for left and right padding alike."""
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        return (attention_mask * positions).argmax(dim=1)

    def head_logprobs(self, hidden: torch.Tensor, token_ids: torch.Tensor):
        """(logp [B, K], lse [B]) of ``token_ids`` ([K] or [B, K]) over the full vocabulary, from hidden [B, H]."""
        from .ops import token_logprobs

        w = self._head_weight
        return token_logprobs(hidden.to(w.device), w, token_ids.to(w.device), bias=self._head_bias)

    def answer_logprobs(self, inputs: dict) -> torch.Tensor:
        """log P(yes), log P(no) over the full vocabulary at each sequence's last real token: [B, 2]."""
        hidden = self.hidden_states(inputs)
        last = self.last_positions(inputs["attention_mask"])
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.head_logprobs(h, self._answer_ids)[0]

    def _run(self, items: list[Encoded], batch_size=None) -> torch.Tensor:
        """Answer log-probs [N, 2] for all items: through the engine, or the plain padded path if all is off."""
        needs_grad = torch.is_grad_enabled() and (
            any(e.pixels.requires_grad for it in items for e in it.images)
            or any(p.requires_grad for p in self.model.parameters())
        )
        options = self.options if batch_size is None else replace(self.options, batch_size=batch_size)
        with contextlib.nullcontext() if needs_grad else torch.inference_mode():
            if options.feature_cache or options.prefix_cache or options.packing:
                return self.engine.answer_logprobs(items, options)
            return self._run_padded(items, options.batch_size)

    def _run_padded(self, items: list[Encoded], batch_size: int) -> torch.Tensor:
        """The unoptimised reference path: padded micro-batches of full sequences through the model."""
        out = []
        for start in range(0, len(items), batch_size):
            out.append(self.answer_logprobs(self.collate(items[start : start + batch_size], self.padding_side)))
        return torch.cat(out)

    def _probabilities(self, logp: torch.Tensor) -> torch.Tensor:
        if self.normalize == "vocab":
            return logp[:, 0].exp()
        return torch.sigmoid(logp[:, 0] - logp[:, 1])
