"""What every stage's claims and report section are built from: the verdict rule, intervals,
read-only access to a run's artifacts, and the few table and text helpers the sections share.

A stage module (langsae/stages/) declares its claims as `Claim`s and its report section as a
function of `Artifacts`; `langsae.report` puts them together and knows no stage's files.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from langsae.artifacts import read_json
from langsae.errors import CorruptArtifact
from langsae.stages import TIMINGS_FILE
from langsae.stats import format_interval

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_RUN = "supported", "not supported", "inconclusive", "not run"
# a categorical claim wins in at least this share of resamples: supported (at most 1 − this: not)
FREQ_SURE = 0.95
COLLAPSE_SHARE = 0.5  # a collapse loses at least this share of the baseline's margin over chance
ROBUST_SHARE = 0.1  # robust: the drop beyond random stays within this share of that margin
PERMUTATION_ALPHA = 0.05  # intra vs inter cluster: the permutation test of the cluster labels must reach this


VERDICT_RULE = f"""\
**Verdict rule.** An *interval* claim (an effect in a stated direction) is **supported** when
the effect's 95% CI excludes zero and lies beyond the control's 95% CI, both in the claimed
direction; **not supported** when the CI lies entirely on the other side of zero or of the
control's CI; **inconclusive** otherwise. A *categorical* claim (which layer peaks) is judged
by how often the claimed answer wins across the joint bootstrap resamples: supported at
≥ {FREQ_SURE:.0%}, not supported at ≤ {1 - FREQ_SURE:.0%}, inconclusive in between. A claim
about several languages combines their verdicts as it is worded: *every* language (supported
when all are, not supported when any is not), *most* languages (supported when more than half
are, not supported when at least half are not), or *some* language (supported when any is, not
supported when all are not); otherwise inconclusive. A claim about a layer or language this
run did not measure is inconclusive. Cluster claims are categorical, pair by pair: the share
of stage 3's bootstrap resamples in which the two languages share (or do not share) a cluster.
Intra- vs inter-cluster synergy leaves out the pairs that share (or nearly share) a top-1
feature and needs, besides the intervals, the permutation test of the languages' cluster labels
at p < {PERMUTATION_ALPHA} (the sentence bootstrap holds the pairs fixed).
The exclusivity claim is counted from the ν stage, without resampling: supported when every
language's top-1 feature is in no other language's top-5 at the layer of most held-out peaks, not
supported when at most half are, inconclusive in between. The code-switching claim is judged per
language at that layer (chosen without the probe items), combined as *most*; gated steering per
task, language pair and layer span, its success at the best α (chosen on one half of the items
under the collateral budget, reported on the other) against no steering and every control,
combined as *most*.
Task claims are judged per task and language on the primary metric (QA F1, sentiment and topic
accuracy): a baseline whose CI reaches chance (F1 0, accuracy 1/5 and 1/7) has nothing to lose
and is inconclusive; a **collapse** is a drop beyond the random features' whose CI lies entirely
past {COLLAPSE_SHARE:.0%} of the baseline's margin over chance (not supported when the drop is
not beyond random, or its CI lies entirely short of that); **robust** means own − random has a
CI above −{ROBUST_SHARE:.0%} of that margin (not supported when it lies entirely below zero). Both
claims are judged on the task-languages whose baseline clears chance (inconclusive when none does).
CIs are 95% percentile intervals of a bootstrap that resamples sentence ids (items) jointly
across languages (random controls: draws as well); a claim about "some" of ten languages is
not corrected for multiple comparisons."""


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def finite(self) -> bool:
        return all(math.isfinite(x) for x in (self.value, self.low, self.high))

    def __str__(self) -> str:
        return format_interval(self.value, self.low, self.high) if self.finite() else "n/a"


def interval_verdict(effect: Interval, control: Interval | None = None, direction: int = 1) -> str:
    """VERDICT_RULE for an effect claimed to be > 0 (direction +1) or < 0 (-1), and beyond `control`."""
    if not effect.finite() or (control is not None and not control.finite()):
        return INCONCLUSIVE
    lo, hi = sorted((direction * effect.low, direction * effect.high))
    c_lo, c_hi = (
        sorted((direction * control.low, direction * control.high)) if control is not None else (0.0, 0.0)
    )
    if lo > 0 and lo > c_hi:
        return SUPPORTED
    if hi < 0 or hi < c_lo:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def frequency_verdict(share: float) -> str:
    """VERDICT_RULE for a categorical claim that wins in `share` of the resamples."""
    if not math.isfinite(share):
        return INCONCLUSIVE
    return SUPPORTED if share >= FREQ_SURE else NOT_SUPPORTED if share <= 1 - FREQ_SURE else INCONCLUSIVE


def combine(verdicts: Sequence[str], how: str) -> str:
    """Several languages' verdicts as the claim is worded: 'every', 'most' or 'some'."""
    n, sup, nos = len(verdicts), verdicts.count(SUPPORTED), verdicts.count(NOT_SUPPORTED)
    if n == 0:
        return INCONCLUSIVE
    if how == "every":
        return SUPPORTED if sup == n else NOT_SUPPORTED if nos else INCONCLUSIVE
    if how == "most":
        return SUPPORTED if sup > n / 2 else NOT_SUPPORTED if nos >= n / 2 else INCONCLUSIVE
    if how == "some":
        return SUPPORTED if sup else NOT_SUPPORTED if nos == n else INCONCLUSIVE
    raise ValueError(f"unknown combination {how!r}")


class Artifacts:
    """Read-only access to one run's files: sae_features/<run>/ and output/<run>/ (None when absent).

    A file that cannot be read (truncated JSON, undecodable bytes) is also None, so its section takes
    the not-run path, and is noted in `corrupt` (name -> what is wrong), which that path states with
    the command that remakes it; build_report clears it before each section and claim."""

    def __init__(self, features_dir: Path, output_dir: Path):
        self.features_dir, self.output_dir = Path(features_dir), Path(output_dir)
        self.corrupt: dict[str, str] = {}

    def json(self, name: str) -> dict | None:
        path = self.features_dir / name
        if not path.exists():
            return None
        try:
            return read_json(path, "-")
        except CorruptArtifact as e:
            self.corrupt[name] = f"{path} is {e.state}"
            return None

    def csv(self, name: str) -> list[dict] | None:
        path = self.features_dir / name
        if not path.exists():
            return None
        try:
            with open(path, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f))
        except (UnicodeDecodeError, csv.Error) as e:
            self.corrupt[name] = f"{path} is corrupted ({e})"
            return None

    def damaged(self) -> str | None:
        """The unreadable files met since `corrupt` was last cleared, in words, or None."""
        return "; ".join(self.corrupt.values()) or None

    def figure(self, name: str) -> str | None:
        """A figure's link relative to REPORT.md, if it exists."""
        return name if (self.output_dir / name).exists() else None

    def stage_status(self, stage: str) -> str | None:
        timings = self.json(TIMINGS_FILE) or {"stages": []}
        return next((r["status"] for r in timings["stages"] if r["stage"] == stage), None)


@dataclass(frozen=True)
class Evidence:
    """A claim's row: the numbers with CIs, the control next to them, the figure, the verdict."""

    numbers: str
    control: str
    figure: str | None
    verdict: str


@dataclass(frozen=True)
class Claim:
    """A claim of the paper or of an earlier reproduction, owned by the stage whose artifacts answer it:
    its number in the report (stable across stages), the sentence, where it comes from, and a
    function from the run's artifacts to its Evidence (None when the stage has not run)."""

    number: int
    text: str
    source: str
    evidence: Callable[[Artifacts], Evidence | None]


def num(row: dict, key: str) -> float:
    try:
        return float(row.get(key, "nan"))
    except ValueError:
        return math.nan


def interval_of(row: dict, key: str, ci: str | None = None) -> Interval:
    ci = ci or key
    return Interval(num(row, key), num(row, f"{ci}_ci_low"), num(row, f"{ci}_ci_high"))


def short(lang: str) -> str:
    return lang.split("_")[0]


N_LISTED = 4  # a claims cell lists at most this many languages' results, else the strongest and the weakest


def listing(items: Sequence[tuple[str, float, str]], sep: str = "; ") -> str:
    """A claims cell's one-line summary of per-language results (label, strength, text): each one when
    there are few, else the strongest and the weakest (NaN: the weakest); the stage's section has them all."""
    if len(items) <= N_LISTED:
        return sep.join(f"{label} {text}" for label, _, text in items)
    ranked = sorted(items, key=lambda it: it[1] if math.isfinite(it[1]) else -math.inf)
    return f"strongest {ranked[-1][0]} {ranked[-1][2]}, weakest {ranked[0][0]} {ranked[0][2]}"


def by_lang(rows: Sequence[dict], get: Callable[[dict], Interval], direction: int = 1) -> str:
    """`listing` of one interval per Section 5 row, ranked by its value in the claimed direction."""
    return listing([(short(r["language"]), direction * get(r).value, str(get(r))) for r in rows])


def layer_span(layers: Sequence[int]) -> str:
    layers = sorted(int(L) for L in layers)
    contiguous = layers and layers == list(range(layers[0], layers[-1] + 1))
    return f"{layers[0]}-{layers[-1]}" if contiguous else ",".join(map(str, layers))


def value_ci(row: dict) -> Interval:
    """A tidy row's (or a summary entry's) value with its ci_low, ci_high."""
    return Interval(num(row, "value"), num(row, "ci_low"), num(row, "ci_high"))


def ivl(v: Sequence[float] | None) -> Interval:
    return Interval(*map(float, v)) if v else Interval(math.nan, math.nan, math.nan)


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def img(a: Artifacts, name: str, alt: str) -> list[str]:
    return [f"![{alt}]({name})", ""] if a.figure(name) else []


def not_run(title: str, a: Artifacts, stage: str | None, command: str) -> list[str]:
    """A section without results: not run, skipped or failed, or its files unreadable (named, with the
    command that remakes them)."""
    damaged = a.damaged()
    if damaged:
        return [f"## {title}", "", f"Unreadable: {damaged}; remake it with `{command}`.", ""]
    status = a.stage_status(stage) if stage else None
    why = f"Stage {status}" if status in ("skipped", "failed") else "Not run"
    return [f"## {title}", "", f"{why} (`{command}`).", ""]


def images(a: Artifacts, names: Sequence[str]) -> list[str]:
    return [line for name in names for line in img(a, name, name.removesuffix(".png"))]


def table(head: Sequence[str], rows: list[Sequence]) -> list[str]:
    return (
        [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
        + [f"| {' | '.join(cell(x) for x in r)} |" for r in rows]
        + [""]
    )
