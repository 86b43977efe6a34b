"""RewardModel: the RewardDance reward, P("yes") of a VLM's next token, as a drop-in scorer.

Follow a score down (the default path; every call goes downward):

1. ``RewardModel.score`` / ``compare`` / ``rank`` (this file): the public call.
2. ``Encoder.encode`` (encoding.py): validates every item, loads each distinct image once (images.py,
   videos.py), lays out the prompt (its template, templates.py), renders it (prompts.py) and lets the family
   (families/) turn pixels into the family's layout and expand each media placeholder into its media tokens.
3. ``RewardModel.item_logprobs`` (this file): one grad-or-inference decision, then
4. ``Engine.last_hidden`` (engine.py): each distinct media item through the vision tower once
   (``Family.features``), items grouped by their longest shared prefix, each prefix run once
   (``Family.language_forward`` with the family's cache), suffixes batched by equal length; returns the
   final hidden state at each item's last token [N, H].
5. ``RewardModel.answer_logprobs`` -> ``head_logprobs`` (this file) -> ``ops.token_logprobs`` (ops.py):
   the fused yes/no head (Triton on CUDA, C++ on CPU, torch otherwise) gives log P(yes), log P(no) over
   the whole vocabulary without materialising logits.
6. ``RewardModel.probabilities`` (this file): the normalisation, "vocab" or "yes_no".

Training, the regressive baseline and explain use the same steps 4-6: ``last_hidden`` (or
``hidden_states`` for every position) then ``head_logprobs``.
"""
from __future__ import annotations

import contextlib
from dataclasses import replace

import torch

from . import prompts as P
from .checklist import Checklist, ChecklistPlan
from .cpu_threads import cpu_scoring_threads
from .encoding import EncodedItem, Encoder, collate, extended, media_columns
from .engine import Engine, EngineOptions
from .errors import InputError
from .families import Family, family_for
from .generation import greedy_continuations
from .images import as_image_list
from .loading import load_checkpoint, video_settings
from .ops import finite_rewards, token_logprobs
from .ranking import RankResult, ordered_pairs, rank_from_pairs
from .reasoning import ReasoningSettings, generate_rationales, stop_token_ids
from .resolve import resolve
from .reward_config import FILE_NAME, NORMALIZATIONS, RewardConfig
from .templates import DEFAULT, Template, layout_name, load_template, recorded_template
from .testing import tiny_checkpoint
from .videos import as_video_list

COT_FORMATS = ("decision_first", "reasons_first")


def _default_device():
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class RewardModel:
    """A generative reward model over a transformers VLM (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL).

    The reward is P(answer = "yes") at the first answer position after the rendered prompt.
    ``normalize="vocab"`` (default) is the softmax over the whole vocabulary: exactly the distribution a
    generative reward model is trained on (cross-entropy over the vocabulary), so it is the paper's reward.
    ``normalize="yes_no"`` renormalises over the two answer tokens, sigmoid(logit_yes - logit_no): useful
    for models never tuned as judges, whose probability mass leaks to other tokens.

    ``options`` (an ``EngineOptions``) sets how calls run: feature cache, shared prefixes, batching and the
    micro-batch size; every setting gives the same scores.

    ``template`` (rdfast/templates.py) lays out every prompt and holds the answer words; ``answers`` are its
    resolved tokens. Every call takes ``template=`` (a preset name, a JSON file or a ``Template``) too.
    """

    def __init__(self, model, tokenizer, family: Family, answers: P.AnswerTokens, normalize: str = "vocab",
                 max_length: int | None = None, batch_size: int = 8, instruction: str | None = None,
                 num_frames: int | None = None, fps: float | None = None, paradigm: str | None = None,
                 template: Template = DEFAULT):
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.family = family
        self.answers = answers
        self.template = template.with_answer_words((answers.yes_word, answers.no_word))
        self._answers = {self.template: answers}  # resolved answer tokens per template
        self.normalize = normalize
        self.options = EngineOptions(batch_size=batch_size)
        self.instruction = instruction  # used when a call passes none (a trained model's own instruction)
        # video frame sampling when a call passes neither (a model trained on videos records its own)
        self.num_frames, self.fps = num_frames, fps
        # how it was trained (rdfast_config.json): "pointwise" models score alone, others against a reference
        self.paradigm = paradigm
        text_config = getattr(model.config, "text_config", model.config)
        self.max_length = max_length or getattr(text_config, "max_position_embeddings", None) or 1 << 30
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.encoder = Encoder(tokenizer, family, self.max_length)
        self.engine = Engine(model, family, self.pad_token_id)

    # ---- loading ----------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None, attn_implementation=None, normalize=None,
                        answer_words=None, trust_remote_code=False, max_length=None, batch_size=8,
                        device_map=None, allow_pickle=False, base_model=None, template=None, *, revision=None,
                        cache_dir=None, local_files_only=None) -> RewardModel:
        """Load a reward model from a local directory, ``tiny:FAMILY`` or a hub id (rdfast.resolve).

        dtype defaults to float32 on CPU and bfloat16 on CUDA (bfloat16 on CPU is supported: log P within 1e-2 of
        float32, README "CPU speed"); a CPU model gets rdfast.cpu_speed's faster forwards unless RDFAST_CPU_FAST=0;
        attn_implementation to transformers' choice
        ("sdpa"); "flash_attention_2" needs flash-attn installed. normalize defaults to "vocab" and
        answer_words to ("yes", "no"), unless the directory was written by ``rdfast.train`` (its
        ``rdfast_config.json`` then supplies them, the instruction, and the base model of a LoRA adapter).
        ``device_map`` (e.g. "auto") spreads a large reward model over several GPUs through accelerate;
        ``device`` is then ignored. ``base_model`` (a directory, ``tiny:NAME`` or a hub id) overrides the base
        model a LoRA adapter directory records. ``template`` (a preset name, a JSON file or a ``Template``;
        rdfast/templates.py) lays out the prompts; it and its answer words take precedence over the trained
        directory's, which take precedence over the default ("rewarddance"); ``answer_words`` overrides the
        template's words. ``revision``, ``cache_dir`` and ``local_files_only`` apply to a hub id as in transformers
        (``HF_HUB_OFFLINE=1`` also keeps every load to the local hub cache).

        Loading is checked (rdfast.loading): pickled weights are refused unless ``allow_pickle=True``; weights
        missing from the checkpoint (tied ones excepted) or holding NaN/inf are an ``InputError`` naming them; a
        tokenizer without a chat template is warned about once.
        """
        path = resolve(path, tiny_checkpoint, "reward model", revision=revision, cache_dir=cache_dir,
                       local_files_only=local_files_only)
        if attn_implementation == "flash_attention_2":
            try:
                import flash_attn  # noqa: F401  # optional
            except ImportError as err:
                raise ImportError("attn_implementation='flash_attention_2' needs flash-attn (pip install rdfast[gpu])") from err
        device = torch.device(device) if device is not None else _default_device()
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        trained = RewardConfig.load(path) or RewardConfig()
        model, config, tokenizer, image_processor = load_checkpoint(
            path, trained, dtype=dtype, device=device, device_map=device_map, attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, base_model=base_model)
        family = family_for(config, tokenizer, image_processor, video_settings(path))
        if template is not None:
            template = load_template(template)
        else:  # older directories record no template: the default layout with their answer words
            template = recorded_template(trained.template) or DEFAULT.with_answer_words(trained.answer_words)
        template = template.with_answer_words(answer_words or template.answer_words)
        answers = template.answer_tokens(tokenizer, family)
        if template.answer_words == trained.answer_words:
            for key, got in (("yes_token_id", answers.yes_id), ("no_token_id", answers.no_id)):
                recorded = getattr(trained, key)
                if recorded is not None and recorded != got:
                    raise ValueError(f"{path}: {FILE_NAME} records {key}={recorded} but the tokenizer gives {got}")
        return cls(model, tokenizer, family, answers, normalize=normalize or trained.normalize,
                   max_length=max_length, batch_size=batch_size, instruction=trained.instruction,
                   num_frames=trained.num_frames, fps=trained.fps, paradigm=trained.paradigm,
                   template=template)

    def answers_for(self, template) -> P.AnswerTokens:
        """The answer tokens of ``template`` (a spec as ``load_template`` takes; None: the model's), resolved once."""
        template = self.resolve_template(template)
        if template not in self._answers:
            self._answers[template] = template.answer_tokens(self.tokenizer, self.family)
        return self._answers[template]

    def resolve_template(self, template) -> Template:
        """A call's template: ``template`` (a preset name, a JSON file or a ``Template``) or the model's own."""
        return self.template if template is None else load_template(template)

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
        return self.model.get_output_embeddings().weight.dtype

    # ---- public scoring ---------------------------------------------------------------------------------
    def score(self, images=None, prompts=None, instruction=None, batch_size=None, *, videos=None,
              condition_images=None, num_frames=None, fps=None, template=None, reasoning=None, samples=1, seed=0,
              max_new_tokens=256, temperature=1.0, return_rationales=False):
        """Pointwise reward P(yes | image or video, prompt, instruction).

        Args:
            images: N PIL images, paths, float tensors [3, H, W] in [0, 1], or a tensor [N, 3, H, W].
            prompts: N non-empty strings.
            instruction: a named instruction (prompts.INSTRUCTIONS) or free text; None: the model's own.
            batch_size: sequences per forward (default: ``options.batch_size``).
            videos: instead of images, N float tensors [T, 3, H, W] in [0, 1], frame lists, video files or
                folders of frames (sampled to ``num_frames`` or at ``fps``).
            condition_images: N image-to-video conditioning images, put in each item's context.
            template: the layout and answer words for this call (a preset name, a JSON file or a ``Template``;
                None: the model's ``template``).
            reasoning: None (the decision read right after the prompt) or "reasons_first": ``samples``
                rationales are generated per item (greedy for 1, else sampled with ``seed`` at ``temperature``;
                at most ``max_new_tokens`` each) and P(yes) is read after each rationale and the template's
                ``decision_prefix``, then averaged (rdfast/reasoning.py).
            return_rationales: with reasoning, also return the rationales.
        Returns:
            float32 [N] on the model's device; differentiable with respect to tensor media that require grad.
            With ``return_rationales=True``: (scores [N], a list per item of ``samples`` dicts with "p_yes",
            "text" and "token_ids").
        """
        columns, kind = media_columns(images, None, videos, None)
        items = self.encode(prompts, columns, instruction, kind=kind, condition=condition_images,
                            num_frames=num_frames, fps=fps, template=template)
        if reasoning is not None or return_rationales or samples != 1:
            settings = ReasoningSettings(reasoning, samples, seed, max_new_tokens, temperature)
            return self._reasoned(items, settings, batch_size, return_rationales)
        return finite_rewards(self.probabilities(self.item_logprobs(items, batch_size)))

    def compare(self, images1=None, images2=None, prompts=None, instruction=None, debias=False, batch_size=None, *,
                videos1=None, videos2=None, condition_images=None, num_frames=None, fps=None,
                template=None) -> torch.Tensor:
        """Pairwise reward P(yes) for "is image 2 better than image 1?" (image 1 is the reference); the same
        for ``videos1`` / ``videos2``. Media and prompts as in ``score``.

        ``debias=True`` averages with 1 - P(yes) of the swapped order, removing position bias.
        ``template`` as in ``score``. Returns float32 [N].
        """
        columns, kind = media_columns(images1, images2, videos1, videos2, pairwise=True)
        items = self.encode(prompts, columns, instruction, kind=kind, condition=condition_images,
                            num_frames=num_frames, fps=fps, template=template)
        if not debias:
            return finite_rewards(self.probabilities(self.item_logprobs(items, batch_size)))
        both = self.probabilities(self.item_logprobs(items + [self.encoder.swapped(it) for it in items], batch_size))
        return finite_rewards(0.5 * (both[: len(items)] + 1.0 - both[len(items) :]))  # NaN of a swap stays at i

    def ask(self, images=None, questions=None, weights=None, instruction=None, batch_size=None, *,
            template=None) -> Checklist:
        """A checklist: P(yes) of each image for each of its questions, in one call (rdfast/checklist.py).

        Each (image, question) pair is the pointwise item ``score`` builds with the question as its prompt; all
        go through one engine call, so each image is encoded once and shared prefixes run once, and the result
        equals separate ``score`` calls. questions: Q questions asked of every image, or one list per image.
        weights: None (uniform), Q numbers or one list per image, non-negative. ``template`` as in ``score``.

        Returns:
            Checklist: p_yes float32 [N, Q], mask bool [N, Q], aggregate float32 [N] = sum_q w_q p_q / sum_q w_q.
        """
        plan = ChecklistPlan(images, questions, weights)
        try:
            p = self.score(images=plan.images, prompts=plan.prompts, instruction=instruction, batch_size=batch_size,
                           template=template)
        except InputError as err:
            raise plan.located(err) from err
        return plan.result(p)

    def score_matrix(self, images=None, prompts=None, instruction=None, batch_size=None, *, template=None) -> torch.Tensor:
        """P(yes) of every image with every prompt: float32 [N_images, N_prompts], in one call (as ``ask``)."""
        return self.ask(images, prompts, instruction=instruction, batch_size=batch_size, template=template).p_yes

    def rank(self, candidates=None, prompt=None, top_k=1, instruction=None, batch_size=None, *, videos=None,
             num_frames=None, fps=None, template=None) -> RankResult:
        """Best-of-N by pairwise win counts over every ordered pair (the paper's reference selection).

        candidates: N images (as for ``score``), or ``videos=``: N videos. Each unordered pair is judged in
        both orders and averaged; the candidate with P > 0.5 gets a hard win. Ties in win count are broken by
        the summed win probabilities (``ranking.rank_from_pairs``). All N(N-1) pairs go through the engine
        and the head in one call (each candidate encoded once). ``template`` as in ``score``.
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
        pairs = ordered_pairs(n)
        first, second = [cands[i] for i, _ in pairs], [cands[j] for _, j in pairs]
        media = {"videos1": first, "videos2": second} if is_video else {"images1": first, "images2": second}
        p = self.compare(**media, prompts=[prompt] * len(pairs), instruction=instruction, batch_size=batch_size,
                         num_frames=num_frames, fps=fps, template=template)
        return rank_from_pairs(p, pairs, n, top_k)

    def explain(self, prompts=None, images1=None, images2=None, instruction=None, max_new_tokens=128,
                cot_format="decision_first", batch_size=None, *, videos1=None, videos2=None, condition_images=None,
                num_frames=None, fps=None, template=None) -> list[dict]:
        """Decisions with generated reasons, for a chain-of-thought trained model (pairwise when ``images2``
        or ``videos2`` is given, else pointwise).

        decision_first (the paper's format): the reward is read at the first answer position, exactly as
        ``compare``/``score`` read it, and the reasons are generated greedily after the decision.
        reasons_first: one greedy rationale first, and P(yes) read where the decision follows, exactly as
        ``score(reasoning="reasons_first")`` reads it (rdfast/reasoning.py).

        Returns:
            One dict per item: "p_yes" (float, the reward under ``normalize``), "decision" (the answer word),
            "reason" (the generated text) and "reason_ids" (its token ids).
        """
        if cot_format not in COT_FORMATS:
            raise ValueError(f"cot_format must be one of {COT_FORMATS}, got {cot_format!r}")
        pairwise = images2 is not None or videos2 is not None
        columns, kind = media_columns(images1, images2, videos1, videos2, pairwise=pairwise)
        items = self.encode(prompts, columns, instruction, kind=kind, condition=condition_images,
                            num_frames=num_frames, fps=fps, template=template)
        size = batch_size or self.options.batch_size
        answers = self.answers_for(template)
        yes, no = answers.yes_id, answers.no_id
        results = []
        with torch.inference_mode():
            for start in range(0, len(items), size):
                chunk = items[start : start + size]
                if cot_format == "decision_first":
                    logp = self.item_logprobs(chunk, size)
                    decisions = [yes if a >= b else no for a, b in logp.tolist()]
                    reason_ids = self._greedy([extended(it, [d]) for it, d in zip(chunk, decisions)], max_new_tokens)
                else:  # the reasons-first read of score(reasoning="reasons_first"), one greedy rationale
                    features = self.engine.media_features(chunk, self.options)
                    rationales = self._rationales(chunk, ReasoningSettings(max_new_tokens=max_new_tokens), features)
                    reason_ids = [rows[0] for rows in rationales]
                    read = [self._decision_read(it, r) for it, r in zip(chunk, reason_ids)]
                    logp = self.item_logprobs(read, size, features)
                    decisions = [yes if a >= b else no for a, b in logp.tolist()]
                for p, d, ids in zip(finite_rewards(self.probabilities(logp), start).tolist(), decisions, reason_ids):
                    results.append({"p_yes": p, "decision": answers.yes_word if d == yes else answers.no_word,
                                    "reason": self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
                                    "reason_ids": ids})
        return results

    def build_inputs(self, prompts=None, images1=None, images2=None, instruction=None, padding_side="left", *,
                     videos1=None, videos2=None, condition_images=None, num_frames=None, fps=None,
                     template=None) -> dict:
        """The exact padded keyword inputs of the underlying transformers model for this batch.

        ``model(**rm.build_inputs(...))`` reproduces the scores: take the logits at the last non-padding
        position (attention_mask) and read the answer tokens (``answers_for(template)``).
        """
        pairwise = images2 is not None or videos2 is not None
        columns, kind = media_columns(images1, images2, videos1, videos2, pairwise=pairwise)
        items = self.encode(prompts, columns, instruction, kind=kind, condition=condition_images,
                            num_frames=num_frames, fps=fps, template=template)
        return self.collate(items, padding_side)

    # ---- the steps below the public calls (training and evaluation use them too) ---------------------------
    def encode(self, prompts, columns: list, instruction=None, *, kind: str = "image", condition=None,
               num_frames=None, fps=None, template=None) -> list[EncodedItem]:
        """Validated, tokenised items (``Encoder.encode``) with this model's template, default instruction (for a
        template with an ``{instruction}`` slot) and video sampling filled in."""
        template = self.resolve_template(template)
        self.answers_for(template)  # its answer words resolve on this tokenizer, before any work
        layout = layout_name(kind, len(columns) == 2, condition is not None)
        if instruction is None and template.uses_instruction(layout):
            instruction = self.instruction
        if num_frames is None and fps is None:
            num_frames, fps = self.num_frames, self.fps
        return self.encoder.encode(prompts, columns, instruction, kind=kind, condition=condition,
                                   num_frames=num_frames, fps=fps, template=template)

    def collate(self, items: list[EncodedItem], padding_side: str = "left") -> dict:
        """Padded transformers inputs for encoded items (``encoding.collate``)."""
        return collate(items, self.family, self.pad_token_id, self.dtype, self.device, padding_side)

    def last_hidden(self, items: list[EncodedItem], options: EngineOptions | None = None, features=None
                    ) -> torch.Tensor:
        """Final hidden states at each item's last token [N, H] (``Engine.last_hidden``; default options:
        ``self.options``; ``features``: the items' media features if already computed). Runs under the caller's
        grad mode."""
        return self.engine.last_hidden(items, options or self.options, features)

    def hidden_states(self, inputs: dict) -> torch.Tensor:
        """Final hidden states [B, T, H] at every position of collated inputs (``collate``)."""
        return self.engine.sequence_hidden(inputs)

    def head_logprobs(self, hidden: torch.Tensor, token_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused head: (logp [N, K] float32, lse [N]) of ``token_ids`` ([K] or [N, K]) over the whole
        vocabulary, from hidden [N, H]. The LM head is read from the model at each call (FSDP and peft swap
        its parameters); hidden is cast to the head's dtype (autocast may hand back bf16)."""
        head = self.model.get_output_embeddings()
        ids = torch.as_tensor(token_ids, device=head.weight.device)
        return token_logprobs(hidden.to(device=head.weight.device, dtype=head.weight.dtype), head.weight, ids,
                              bias=getattr(head, "bias", None))

    def answer_logprobs(self, hidden: torch.Tensor, answers: P.AnswerTokens | None = None) -> torch.Tensor:
        """log P(yes), log P(no) over the whole vocabulary: [N, 2] float32, from hidden [N, H] (``answers``:
        another template's tokens; None: the model's)."""
        answers = answers or self.answers
        return self.head_logprobs(hidden, [answers.yes_id, answers.no_id])[0]

    def probabilities(self, logp: torch.Tensor) -> torch.Tensor:
        """The reward from answer log-probs [N, 2]: P(yes) under ``normalize`` [N]."""
        if self.normalize == "vocab":
            return logp[:, 0].exp()
        return torch.sigmoid(logp[:, 0] - logp[:, 1])

    def grad_context(self, items: list[EncodedItem], extra_parameters=()):
        """inference_mode unless a gradient is wanted: grad enabled and a media tensor, a model weight or one
        of ``extra_parameters`` requires it. The one place this decision is made."""
        needs_grad = torch.is_grad_enabled() and (
            any(e.pixels.requires_grad for it in items for e in it.media)
            or any(p.requires_grad for p in self.model.parameters())
            or any(p.requires_grad for p in extra_parameters)
        )
        return contextlib.nullcontext() if needs_grad else torch.inference_mode()

    def item_logprobs(self, items: list[EncodedItem], batch_size: int | None = None, features=None) -> torch.Tensor:
        """log P(yes), log P(no) [N, 2] float32 for encoded items (of one template, whose answer words are read):
        the engine, then the fused head, under ``grad_context``."""
        options = self.options if batch_size is None else replace(self.options, batch_size=batch_size)
        templates = {it.template for it in items}
        if len(templates) > 1:
            raise ValueError(f"items of one call share a template, got {sorted(t.name for t in templates)}")
        with self.grad_context(items), cpu_scoring_threads(self.device):  # rdfast/cpu_threads.py: free cores only
            return self.answer_logprobs(self.last_hidden(items, options, features), self.answers_for(templates.pop()))

    def _reasoned(self, items: list[EncodedItem], settings: ReasoningSettings, batch_size, return_rationales):
        """Reasons-first scores of encoded items (rdfast/reasoning.py): vision features computed once, rationales
        generated, then every (item, rationale) read in one engine call, whose shared-prefix rule runs each
        prompt once."""
        with self.grad_context(items):
            features = self.engine.media_features(items, self.options)
        rationales = self._rationales(items, settings, features)
        read = [self._decision_read(it, r) for it, rows in zip(items, rationales) for r in rows]
        read_features = [f for f, rows in zip(features, rationales) for _ in rows]
        p = self.probabilities(self.item_logprobs(read, batch_size, read_features)).view(len(items), settings.samples)
        scores = finite_rewards(p.mean(dim=1))
        if not return_rationales:
            return scores
        return scores, [[{"p_yes": q, "text": self.tokenizer.decode(r), "token_ids": r} for q, r in zip(ps, rows)]
                        for ps, rows in zip(p.tolist(), rationales)]

    def _rationales(self, items: list[EncodedItem], settings: ReasoningSettings, features) -> list[list[list[int]]]:
        answers, template = self.answers_for(items[0].template), items[0].template
        stops = stop_token_ids(self.tokenizer, self.family.media_token_ids)
        filler = next(t for t in (self.pad_token_id, answers.no_id) if t not in self.family.media_token_ids)
        return generate_rationales(self.engine, items, features, self.model.get_output_embeddings(), settings,
                                   stops, filler, answers, self._token_ids(template.decision_prefix))

    def _decision_read(self, item: EncodedItem, rationale: list[int]) -> EncodedItem:
        """``item`` + rationale + its template's decision prefix: P(yes) is read at the end of it."""
        return extended(item, rationale + self._token_ids(item.template.decision_prefix))

    def _token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _greedy(self, items: list[EncodedItem], max_new_tokens: int) -> list[list[int]]:
        return greedy_continuations(self.model, self.collate(items, "left"), max_new_tokens,
                                    self.tokenizer.eos_token_id, self.pad_token_id)

