"""Training the toy: its tokenizer, its model and one transcoder per layer, and the quality report,
as the build process (`_build_worker`, started by `langsae.toy.reproduce`) runs them."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from langsae import downstream, tasks
from langsae.artifacts import save_json
from langsae.data import PAPER_LANGUAGES, load_ntrex, load_texts
from langsae.forward import (
    Batch,
    collect_tokens,
    make_batches,
    next_token_ce,
    predicted_tokens,
    tokenize,
)
from langsae.generate import greedy_generate, stop_token_ids
from langsae.model import HookPoint
from langsae.steer_eval import LID_MAX_NEW_TOKENS, lid_prompt, named_language
from langsae.toy.build import TOY_MODEL_NAME, write_mwhanna_release
from langsae.toy.reproduce import PINNED_ATEN, PINNED_KERNELS, build_threads
from langsae.toy.scales import ToyScale, _scale
from langsae.toy.task_text import TOPIC, TaskLine, fit_lines, task_lines
from langsae.toy_paths import TOY_RELEASE

log = logging.getLogger("langsae.toy")  # one logger for the whole toy, as before the split

PAD_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, "<|im_start|>", EOS_TOKEN]


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer like Qwen3's: no BOS, pad <|endoftext|>, eos <|im_end|>.

    Returns a `transformers.PreTrainedTokenizerFast`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN)


def _build_worker(argv: list[str]) -> None:
    """Entry point of the build process: `_build_into(work, seed, scale)` with the thread count pinned."""
    from langsae.cli import setup_logging

    setup_logging()
    work, seed, scale = Path(argv[0]), int(argv[1]), argv[2]
    hp = _scale(scale)
    if (
        os.environ.get("ATEN_CPU_CAPABILITY") == PINNED_KERNELS["ATEN_CPU_CAPABILITY"]
        and torch.backends.cpu.get_cpu_capability() != PINNED_ATEN
    ):
        log.warning(
            "this CPU has no AVX2: the build runs other kernels and will not match the committed fingerprint"
        )
    torch.set_num_threads(build_threads(hp))
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    quality, laps = _build_into(work, seed, hp)
    save_json(quality, work / "quality.json")
    timings = {"stage_seconds": laps, "build_seconds": round(time.perf_counter() - start, 1)}
    save_json(
        {
            **timings,
            "threads": torch.get_num_threads(),
            "aten_kernels": torch.backends.cpu.get_cpu_capability(),
        },
        work / "timings.json",
    )


def _build_into(out: Path, seed: int, hp: ToyScale) -> tuple[dict, dict[str, float]]:
    """Train everything and write `out/model` and `out/hub`; return the quality report and
    each stage's wall time (kept apart: the report is part of the build's fingerprint)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    clock = _StageClock()
    texts, train_texts, lines = training_text(hp, seed)
    tokenizer = train_tokenizer(train_texts + [x.text for x in lines], hp.vocab_size)
    train_ids = tokenize(tokenizer, train_texts, hp.max_tokens) + fit_lines(tokenizer, lines, hp.max_tokens)
    answers = [0] * len(train_texts) + [len(tokenizer(x.ending)["input_ids"]) for x in lines]
    n_tokens = sum(map(len, train_ids))
    log.info(
        "tokenizer: vocabulary %d; %d training texts, %d tokens", len(tokenizer), len(train_ids), n_tokens
    )
    clock.lap("tokenizer")

    torch.manual_seed(seed)
    cfg = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hp.hidden_size,
        intermediate_size=hp.intermediate_size,
        num_hidden_layers=hp.num_layers,
        num_attention_heads=hp.num_heads,
        num_key_value_heads=hp.num_kv_heads,
        head_dim=hp.head_dim,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = Qwen3ForCausalLM(cfg)
    n_params = model.num_parameters()
    log.info(
        "toy model: %.2fM parameters, %d layers, hidden %d", n_params / 1e6, hp.num_layers, hp.hidden_size
    )
    train_model(model, train_ids, tokenizer.pad_token_id, hp, seed, answers)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    clock.lap("model")

    # Transcoders learn from fresh forward passes of the trained model on a seeded sample of its training
    # text.
    g = torch.Generator().manual_seed(seed + 1)
    tc_texts = [t for lang in PAPER_LANGUAGES for t in _sample(texts[lang], hp.tc_texts_per_language, g)]
    tc_batches = make_batches(tokenize(tokenizer, tc_texts, hp.max_tokens), 32, tokenizer.pad_token_id)
    xs, ys = mlp_activations(model, tc_batches, range(hp.num_layers))
    clock.lap("activations")
    transcoders = {}
    for L in range(hp.num_layers):
        transcoders[L] = train_transcoder(
            xs[L],
            ys[L],
            hp.tc_expansion * hp.hidden_size,
            hp.tc_steps,
            hp.tc_batch_tokens,
            hp.tc_lr,
            hp.tc_l1,
            seed=seed * 1000 + L,
            desc=f"transcoder L{L}",
        )
    write_mwhanna_release(
        out / "hub", TOY_RELEASE, transcoders, model_name=TOY_MODEL_NAME, context_size=hp.max_tokens
    )
    clock.lap("transcoders")

    unigram = torch.bincount(torch.tensor([t for ids in train_ids for t in ids]), minlength=len(tokenizer))
    quality = measure_quality(model, tokenizer, transcoders, unigram, hp.eval_texts_per_language)
    if hp.task_lines:
        quality["tasks"] = measure_tasks(model, tokenizer, hp.eval_texts_per_language)
    for L in range(hp.num_layers):
        quality["transcoders"][L]["dead_fraction"] = dead_fraction(transcoders[L], xs[L])
    quality["dead_fraction_tokens"] = int(xs[0].shape[0])
    quality["model"] = {"parameters": n_params, "vocab_size": len(tokenizer), "train_tokens": n_tokens}
    clock.lap("quality")
    quality["threads"] = torch.get_num_threads()
    log_quality(quality)
    return quality, clock.laps


def training_text(hp: ToyScale, seed: int) -> tuple[dict[str, list[str]], list[str], list[TaskLine]]:
    """NTREX texts per language (the transcoders sample them), the model's plain training texts in
    language order, and the task lines mixed in after them (none unless the scale turns them on);
    the model's batches are shuffled, so where the lines go in the list does not matter."""
    texts = load_ntrex(PAPER_LANGUAGES)
    if hp.texts_per_language != -1:
        texts = {lang: t[: hp.texts_per_language] for lang, t in texts.items()}
    train_texts = [t for lang in PAPER_LANGUAGES for t in texts[lang]]
    lines: list[TaskLine] = []
    if hp.task_lines:
        by_lang = task_lines(PAPER_LANGUAGES, seed, hp.task_lid_per_language, hp.task_topic_per_language)
        lines = [x for lang in PAPER_LANGUAGES for x in by_lang[lang]]
        lines += [x for x in lines if x.kind == TOPIC] * (hp.task_topic_repeats - 1)
    return texts, train_texts, lines


class _StageClock:
    """Wall time of each build stage, logged as it ends and kept for quality.json."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = round(now - self._last, 1)
        self._last = now
        log.info("%s done in %.1f s", stage, self.laps[stage])


def _sample(items: list, n: int, g: torch.Generator) -> list:
    if n >= len(items):
        return list(items)
    return [items[i] for i in sorted(torch.randperm(len(items), generator=g)[:n].tolist())]


def train_model(
    model, token_ids: list[list[int]], pad_id: int, hp: ToyScale, seed: int, answers: list[int] | None = None
) -> None:
    """Next-token training with AdamW: linear warm-up, cosine decay to zero; padding masked out of the loss.
    answers[i]: how many final tokens of text i are a task line's answer; their loss counts
    hp.task_answer_weight times (one answer token among a line's ~60 teaches the task too slowly).

    Batches mix languages (`mixed_batches`) and the learning rate ends at zero, so the
    weights do not depend on which language the last few batches happened to hold: with
    one-language batches and a learning rate still high at the end, rounding alone moved a
    language's CE by a third of a nat between builds.
    """
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": hp.lm_weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=hp.lm_lr,
        betas=(0.9, 0.95),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: _lr_factor(step, hp.lm_warmup_steps, hp.lm_steps)
    )
    g = torch.Generator().manual_seed(seed)
    epoch: list[Batch] = []
    running = None
    model.train()
    bar = tqdm(range(hp.lm_steps), desc="toy model", unit="step")
    for _ in bar:
        if not epoch:
            epoch = mixed_batches(token_ids, hp.lm_batch_size, pad_id, g)
        batch = epoch.pop()
        weights = (
            answer_weights(batch, answers, hp.task_answer_weight) if hp.task_answer_weight != 1 else None
        )
        loss = next_token_loss(model, batch, weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        bar.set_postfix(loss=f"{running:.3f}")
    model.eval()


def next_token_loss(model, batch: Batch, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the real tokens of a right-padded batch, as the model's own
    `labels=` loss, but the LM head runs only on positions that predict a real token: with a
    vocabulary 64x the hidden size, the head on padding was a tenth of a training step.
    weights [B, T]: each predicted token's loss times its weight, still divided by the token count."""
    hidden = model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    h, targets, _ = predicted_tokens(hidden, batch.input_ids, batch.attention_mask)
    if weights is None:
        return torch.nn.functional.cross_entropy(model.lm_head(h), targets)
    per_token = torch.nn.functional.cross_entropy(model.lm_head(h), targets, reduction="none")
    return (per_token * weights[:, 1:][batch.attention_mask[:, 1:].bool()]).sum() / len(targets)


def answer_weights(batch: Batch, answers: list[int], weight: float) -> torch.Tensor:
    """[B, T]: `weight` on each row's last answers[index] real tokens (a task line's answer), else 1."""
    w = torch.ones(batch.input_ids.shape)
    ends = batch.attention_mask.sum(1).tolist()
    for row, (i, end) in enumerate(zip(batch.indices, ends)):
        w[row, end - answers[i] : end] = weight
    return w


def mixed_batches(
    token_ids: list[list[int]], batch_size: int, pad_id: int, g: torch.Generator, window: int = 16
) -> list[Batch]:
    """One epoch of batches in a seeded random order, each a random mix of texts (and so of languages).

    Texts are shuffled, then sorted by length only within windows of `window` batches, which
    keeps padding small without grouping a language's (similar-length) texts together.
    """
    order = torch.randperm(len(token_ids), generator=g).tolist()
    batches = []
    span = batch_size * window
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        for b in make_batches([token_ids[i] for i in chunk], batch_size, pad_id):
            batches.append(Batch(b.input_ids, b.attention_mask, [chunk[i] for i in b.indices]))
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def mlp_activations(
    model, batches: list[Batch], layers
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """MLP inputs and outputs of every non-padding token: ({L: [N, d_in]}, {L: [N, d_out]}).

    Position 0 is kept: transcoders must reconstruct every position an ablation may touch.
    """
    layers = list(layers)
    points = {f"in{L}": HookPoint(L, "mlp", "input") for L in layers}
    points |= {f"out{L}": HookPoint(L, "mlp", "output") for L in layers}
    acts, _ = collect_tokens(model, batches, points, lambda b: b.attention_mask.bool(), "activations")
    return {L: acts[f"in{L}"].float() for L in layers}, {L: acts[f"out{L}"].float() for L in layers}


def train_transcoder(
    x: torch.Tensor,
    y: torch.Tensor,
    d_sae: int,
    steps: int,
    batch_tokens: int,
    lr: float,
    l1: float,
    seed: int,
    desc: str = "transcoder",
) -> dict[str, torch.Tensor]:
    """A ReLU transcoder from MLP inputs x [N, d_in] to MLP outputs y [N, d_out].

    encode(x) = relu(x @ W_enc.T + b_enc), decode(a) = a @ W_dec + b_dec. The loss is the
    squared error plus `l1` times the activations weighted by their decoder norms (so the
    penalty cannot be dodged by shrinking activations and growing decoder rows). Returns the
    hub layout: W_enc [d_sae, d_in], W_dec [d_sae, d_out], b_enc [d_sae], b_dec [d_out].
    """
    g = torch.Generator().manual_seed(seed)
    d_in, d_out = x.shape[1], y.shape[1]
    # Train on unit-scale activations so that one l1 and one learning rate fit every layer;
    # the two scales are folded back into the weights at the end.
    sx = x.pow(2).mean().sqrt()
    sy = (y - y.mean(0)).pow(2).mean().sqrt()
    W_enc = (torch.randn(d_in, d_sae, generator=g) / d_in**0.5).requires_grad_()
    # Unit-norm decoder rows: with small ones the decoder-norm-weighted penalty starts near
    # zero and hundreds of weakly active features per token survive a short training.
    W_dec = torch.randn(d_sae, d_out, generator=g)
    W_dec = (W_dec / W_dec.norm(dim=1, keepdim=True)).requires_grad_()
    b_enc = torch.zeros(d_sae, requires_grad=True)
    b_dec = (y.mean(0) / sy).requires_grad_()
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=lr)
    # l1 ramps up over the first tenth (fewer features die early); lr decays to 0 over the last fifth.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (steps - s) / max(1, steps // 5)))
    bar = tqdm(range(steps), desc=desc, unit="step")
    running = None
    for step in bar:
        idx = torch.randint(0, x.shape[0], (batch_tokens,), generator=g)
        xb, yb = x[idx] / sx, y[idx] / sy
        acts = torch.relu(xb @ W_enc + b_enc)
        mse = (acts @ W_dec + b_dec - yb).pow(2).sum(-1).mean() / d_out
        sparsity = (acts * W_dec.norm(dim=1)).sum(-1).mean() / d_out**0.5
        loss = mse + l1 * min(1.0, step / max(1, steps // 10)) * sparsity
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        running = mse.item() if running is None else 0.9 * running + 0.1 * mse.item()
        bar.set_postfix(mse=f"{running:.3f}", l0=f"{(acts > 0).float().sum(-1).mean().item():.0f}")
    with torch.no_grad():
        return {
            "W_enc": (W_enc / sx).T.contiguous(),
            "W_dec": (W_dec * sy).contiguous(),
            "b_enc": b_enc.detach().clone(),
            "b_dec": (b_dec * sy).contiguous(),
        }


def encode(tc: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Feature activations [N, d_sae] of hub-layout weights on inputs x [N, d_in]."""
    return torch.relu(x @ tc["W_enc"].T + tc["b_enc"])


def fraction_of_variance_explained(y: torch.Tensor, y_hat: torch.Tensor) -> float:
    """1 - sum |y - y_hat|^2 / sum |y - mean(y)|^2 over tokens; y, y_hat [N, d]."""
    return 1.0 - ((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum()).item()


@torch.no_grad()
def dead_fraction(tc: dict[str, torch.Tensor], x: torch.Tensor, chunk: int = 8192) -> float:
    """Fraction of features never active on any of the tokens x [N, d_in]."""
    alive = torch.zeros(tc["W_enc"].shape[0], dtype=torch.bool)
    for start in range(0, x.shape[0], chunk):
        alive |= (encode(tc, x[start : start + chunk]) > 0).any(0)
    return 1.0 - alive.float().mean().item()


@torch.no_grad()
def measure_quality(
    model, tokenizer, transcoders: dict[int, dict], unigram_counts: torch.Tensor, n_texts: int
) -> dict:
    """Per-language next-token CE on unseen FLORES evaluation texts, against an add-one unigram
    of the training tokens on the same predicted tokens; per-layer transcoder FVE and L0 on those texts."""
    texts = load_texts(PAPER_LANGUAGES, "evaluation", n_texts)
    unigram_logp = torch.log(
        (unigram_counts.double() + 1) / (unigram_counts.sum() + len(unigram_counts))
    ).float()
    ce: dict[str, dict] = {}
    all_batches: list[Batch] = []
    for lang in tqdm(PAPER_LANGUAGES, desc="quality", unit="language"):
        batches = make_batches(tokenize(tokenizer, texts.by_language[lang]), 16, tokenizer.pad_token_id)
        all_batches += batches
        model_nll, unigram_nll, n = 0.0, 0.0, 0
        for batch in batches:
            final = model.model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask
            ).last_hidden_state
            mean, count = next_token_ce(model, final, batch.input_ids, batch.attention_mask)
            model_nll += (
                (mean * count).nansum().item()
            )  # a text with nothing to predict has mean NaN, count 0
            predicted = batch.attention_mask[:, 1:].bool()
            unigram_nll -= unigram_logp[batch.input_ids[:, 1:]][predicted].sum().item()
            n += int(count.sum())
        ce[lang] = {"model": model_nll / n, "unigram": unigram_nll / n, "predicted_tokens": n}
    xs, ys = mlp_activations(model, all_batches, sorted(transcoders))
    transcoder_quality = {}
    for L, tc in transcoders.items():
        acts = encode(tc, xs[L])
        y_hat = acts @ tc["W_dec"] + tc["b_dec"]
        transcoder_quality[L] = {
            "fve": fraction_of_variance_explained(ys[L], y_hat),
            "l0": (acts > 0).float().sum(-1).mean().item(),
            "d_sae": acts.shape[1],
        }
    return {
        "eval_texts": texts.source,
        "eval_texts_per_language": n_texts,
        "cross_entropy": ce,
        "transcoders": transcoder_quality,
    }


@torch.no_grad()
def measure_tasks(model, tokenizer, n_texts: int, rows_per_forward: int = 64) -> dict:
    """What the task lines teach, measured as the stages measure it, with no edit: per language,
    unsteered language identification on FLORES evaluation texts (the steering stage's prompt, greedy
    answer, first language named) and zero-shot topic accuracy on every SIB-200 dev and test item
    outside the selection set (the downstream stage's items and log-likelihood scoring), with the
    share of its most frequent class (what always answering one topic scores)."""
    pad = tokenizer.pad_token_id
    texts = load_texts(PAPER_LANGUAGES, "evaluation", n_texts)
    selection = load_texts(PAPER_LANGUAGES, "selection", -1)
    engine = downstream.EngineSettings(pad, 1, rows_per_forward, "cpu")
    out: dict[str, dict] = {"lid": {}, "topic": {}, "topic_majority": {}}
    for lang in tqdm(PAPER_LANGUAGES, desc="task quality", unit="language"):
        prompts = [tokenizer(lid_prompt(t))["input_ids"] for t in texts.by_language[lang]]
        stops = stop_token_ids(tokenizer, model)
        gens = greedy_generate(model, prompts, [None], stops, pad, LID_MAX_NEW_TOKENS, rows_per_forward)[0]
        named = [named_language(tokenizer.decode(g, skip_special_tokens=True)) for g in gens]
        out["lid"][lang] = sum(n == lang for n in named) / len(named)
        items = tasks.topic_items(lang, 0, 0, selection)
        records = downstream.compute_records(model, tokenizer, "topic", lang, items, [None], engine)[0]
        golds = [it.gold for it in items]
        out["topic"][lang] = float(np.mean([r["pred_loglik"] == r["gold"] for r in records]))
        out["topic_majority"][lang] = max(map(golds.count, set(golds))) / len(golds)
    out["lid_texts_per_language"] = n_texts
    out["topic_items_per_language"] = len(items)
    return out


def log_quality(q: dict) -> None:
    log.info(
        "next-token cross-entropy (nats) on %d unseen FLORES texts per language:",
        q["eval_texts_per_language"],
    )
    log.info("  %-10s %8s %8s", "language", "model", "unigram")
    for lang, row in q["cross_entropy"].items():
        log.info("  %-10s %8.3f %8.3f", lang, row["model"], row["unigram"])
    n = q["dead_fraction_tokens"]
    log.info("transcoders (FVE, L0 on those texts; dead: never active on %d training tokens):", n)
    log.info("  %-5s %6s %7s %6s", "layer", "FVE", "L0", "dead")
    for L, row in q["transcoders"].items():
        log.info("  %-5d %6.3f %7.1f %6.3f", L, row["fve"], row["l0"], row["dead_fraction"])
    if "tasks" in q:
        t = q["tasks"]
        log.info("tasks, no edit (LID: first language named; topic: zero-shot, and its majority class):")
        log.info("  %-10s %6s %6s %8s", "language", "LID", "topic", "majority")
        for lang in t["lid"]:
            log.info(
                "  %-10s %6.2f %6.3f %8.3f", lang, t["lid"][lang], t["topic"][lang], t["topic_majority"][lang]
            )
