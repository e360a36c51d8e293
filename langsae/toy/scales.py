"""The toy's scales: the hyper-parameters of a build, all recorded in its build.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from langsae.errors import UserError


@dataclass(frozen=True)
class ToyScale:
    """The hyper-parameters of one build; all of them are recorded in build.json."""

    texts_per_language: int  # NTREX sentences per language for the tokenizer and the model (-1: all)
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_tokens: int  # training texts are truncated to this many tokens
    lm_steps: int
    lm_batch_size: int  # texts per step
    lm_lr: float
    lm_warmup_steps: int
    lm_weight_decay: float
    tc_expansion: int  # transcoder width = tc_expansion * hidden_size
    tc_texts_per_language: int  # NTREX sentences whose activations train the transcoders
    tc_steps: int
    tc_batch_tokens: int
    tc_lr: float
    tc_l1: float  # sparsity coefficient on normalised activations, so one value fits every layer
    eval_texts_per_language: int  # FLORES evaluation texts for quality.json
    # Task lines (langsae.toy.task_text) mixed into the model's training text, per language (-1: all).
    # Off (0) in the scales the committed fingerprints are of: build.json records them only when on.
    task_lid_per_language: int = 0
    task_topic_per_language: int = 0
    task_topic_repeats: int = 1  # each topic line is this many times in the training text (seen more often)
    task_answer_weight: float = 1.0  # a task line's answer tokens count this many times in the loss

    @property
    def task_lines(self) -> bool:
        return bool(self.task_lid_per_language or self.task_topic_per_language)

    def recorded(self) -> dict:
        """The hyper-parameters as build.json records them: the task-line fields only when on, so a
        build without task lines keeps the record (and the reuse) it had before they existed."""
        out = asdict(self)
        if not self.task_lines:
            for name in [k for k in out if k.startswith("task_")]:
                del out[name]
        return out


SCALES = {
    # The toy (issue 18): next-token training on NTREX text and on task lines (langsae.toy.task_text), each
    # topic line twice and every answer token weighted 20x, so that it identifies languages and does
    # better than its majority class on topics; 600 transcoder steps for variance explained near 0.95.
    "full": ToyScale(
        texts_per_language=-1,
        vocab_size=8192,
        hidden_size=128,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        intermediate_size=384,
        max_tokens=128,
        lm_steps=800,
        lm_batch_size=32,
        lm_lr=3e-3,
        lm_warmup_steps=30,
        lm_weight_decay=0.1,
        tc_expansion=8,
        tc_texts_per_language=300,
        tc_steps=600,
        tc_batch_tokens=1024,
        tc_lr=3e-3,
        tc_l1=0.1,
        eval_texts_per_language=100,
        task_lid_per_language=300,
        task_topic_per_language=-1,
        task_topic_repeats=2,
        task_answer_weight=20.0,
    ),
    # For the tests: builds in well under a minute, has every part of the full build and still names the
    # language of most texts (texts long enough for a task line's prompt and answer after its sentence).
    "small": ToyScale(
        texts_per_language=80,
        vocab_size=600,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        intermediate_size=96,
        max_tokens=96,
        lm_steps=400,
        lm_batch_size=16,
        lm_lr=1e-2,
        lm_warmup_steps=5,
        lm_weight_decay=0.1,
        tc_expansion=8,
        tc_texts_per_language=40,
        tc_steps=300,
        tc_batch_tokens=512,
        tc_lr=3e-3,
        tc_l1=0.1,
        eval_texts_per_language=10,
        task_lid_per_language=200,
        task_topic_per_language=100,
        task_answer_weight=20.0,
    ),
}
# The toy before task lines (600 steps on NTREX text alone): it can run --split devtest, whose sets are
# the FLORES devtest sentences the topic lines are made of, but it does no task (docs/toy_model.md).
SCALES["full-plain"] = replace(
    SCALES["full"],
    lm_steps=600,
    tc_steps=400,
    task_lid_per_language=0,
    task_topic_per_language=0,
    task_topic_repeats=1,
    task_answer_weight=1.0,
)


def _scale(name: str) -> ToyScale:
    if name not in SCALES:
        raise UserError(f"unknown toy scale {name!r}; choose one of {', '.join(SCALES)}")
    return SCALES[name]
