"""The pipeline runner on stand-in stages: order, --stages/--from, skipped and failed stages, the record."""

import dataclasses
import json

import pytest

import run_pipeline
from langsae.cli import run_main
from langsae.errors import SkippedTask, UserError
from langsae.nu import META_FILE as NU_META
from langsae.stages import Stage, work


@pytest.fixture
def stages(monkeypatch, tmp_path):
    """Four stand-in stages that record the argv they get; `behaviour` makes one skip or fail."""
    calls, behaviour = [], {}

    def make(name):
        def main(argv):
            calls.append((name, list(argv)))
            if name in behaviour:
                raise behaviour[name]
            return work(2, 1, "thing") if name != "d" else None

        return Stage(name, f"{name}.py", "(a test stage)", main)

    monkeypatch.setattr(run_pipeline, "STAGES", [make(n) for n in "abcd"])
    out = tmp_path / "run"
    return calls, behaviour, ["--model", "toy", "--out-dir", str(out), "--layers", "1"], out


def test_runs_every_stage_in_order_with_the_common_flags(stages, capsys):
    calls, _, argv, out = stages
    assert run_main(run_pipeline.main, argv) == 0
    assert [c[0] for c in calls] == list("abcd") and all(c[1] == argv for c in calls)
    rows = json.loads((out / run_pipeline.TIMINGS_FILE).read_text())["stages"]
    assert [(r["stage"], r["status"], r.get("computed"), r.get("cached")) for r in rows] == [
        ("a", "done", 2, 1),
        ("b", "done", 2, 1),
        ("c", "done", 2, 1),
        ("d", "done", None, None),
    ]
    printed = capsys.readouterr().out
    assert "stage" in printed and "REPORT.md" in printed


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--stages", "b,d"], "bd"),
        (["--from", "c"], "cd"),
        (["--stages=a,b,d", "--from=b"], "bd"),
        (["--stages", "d,a"], "ad"),
    ],
)
def test_stage_selection_and_the_flags_stages_do_not_see(stages, flags, expected):
    calls, _, argv, _ = stages
    assert run_main(run_pipeline.main, [*argv, *flags]) == 0
    assert "".join(c[0] for c in calls) == expected and all(c[1] == argv for c in calls)


@pytest.mark.parametrize("flags", [["--stages", "a,x"], ["--from", "x"], ["--stages", ","]])
def test_unknown_stage_is_one_line(stages, flags, capsys):
    calls, _, argv, _ = stages
    assert run_main(run_pipeline.main, [*argv, *flags]) == 2
    assert calls == [] and "choose from a, b, c, d" in capsys.readouterr().err


def test_skipped_stage_is_recorded_and_the_rest_run(stages):
    calls, behaviour, argv, out = stages
    behaviour["b"] = SkippedTask("Amazon reviews are not cached")
    assert run_main(run_pipeline.main, argv) == 0
    assert [c[0] for c in calls] == list("abcd")
    rows = {r["stage"]: r for r in json.loads((out / run_pipeline.TIMINGS_FILE).read_text())["stages"]}
    assert rows["b"]["status"] == "skipped" and rows["b"]["note"] == "Amazon reviews are not cached"


def test_failed_stage_stops_with_one_line_and_the_resume_command(stages, capsys):
    calls, behaviour, argv, out = stages
    behaviour["c"] = UserError("no nu results")
    assert run_main(run_pipeline.main, [*argv, "--stages", "a,c,d"]) == 2
    assert [c[0] for c in calls] == ["a", "c"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stage c failed: no nu results" in err
    assert f"`python run_pipeline.py --model toy --out-dir {out} --layers 1 --stages a,c,d --from c`" in err
    assert (out / "figures" / "REPORT.md").exists()  # rebuilt after the failed stage too
    rows = {
        r["stage"]: r["status"] for r in json.loads((out / run_pipeline.TIMINGS_FILE).read_text())["stages"]
    }
    assert rows == {"a": "done", "c": "failed"}


@pytest.mark.parametrize(
    "exc, note",
    [
        (RuntimeError("CUDA error"), "RuntimeError: CUDA error"),
        (SystemExit(2), "c.py rejected its arguments (exit 2)"),
    ],
)
def test_crashed_stage_also_stops_with_one_line_and_the_resume_command(stages, capsys, exc, note):
    calls, behaviour, argv, out = stages
    behaviour["c"] = exc
    assert run_main(run_pipeline.main, argv) == 2
    assert [c[0] for c in calls] == ["a", "b", "c"]
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and f"stage c failed: {note}" in err[0] and "--from c`" in err[0]
    rows = {
        r["stage"]: r["status"] for r in json.loads((out / run_pipeline.TIMINGS_FILE).read_text())["stages"]
    }
    assert rows == {"a": "done", "b": "done", "c": "failed"}


def test_abbreviated_flags_are_refused_not_passed_on(stages, capsys):
    calls, _, argv, _ = stages
    with pytest.raises(SystemExit):
        run_pipeline.main([*argv, "--stage", "a"])
    assert calls == [] and "unrecognized arguments: --stage" in capsys.readouterr().err


def test_the_real_pipeline_lists_every_stage_once():
    real = run_pipeline.STAGES
    assert [s.name for s in real][:2] == ["check-data", "nu"] and real[-1].name == "plots"
    assert len({s.name for s in real}) == len(real)


def test_a_report_that_cannot_be_built_is_a_warning_with_the_retry_command(tmp_path, caplog, monkeypatch):
    from langsae import report
    from langsae.config import build_parser, resolve
    from langsae.stages import finished

    cfg = resolve(build_parser("x").parse_args(["--model", "toy", "--out-dir", str(tmp_path / "run")]))
    cfg.features_dir.mkdir(parents=True, exist_ok=True)
    (cfg.features_dir / NU_META).write_text("{")  # an artifact the report cannot read: named in it
    assert finished(cfg, 1, 2, "thing") == work(1, 2, "thing")
    assert "meta.json is corrupted" in (cfg.output_dir / report.REPORT_NAME).read_text()

    def broken(*args, **kwargs):  # any failure of the builder itself
        raise ValueError("no report today")

    monkeypatch.setattr(report, "write_report", broken)
    assert finished(cfg, 1, 2, "thing") == work(1, 2, "thing")  # the stage still ends normally
    assert "REPORT.md not rebuilt" in caplog.text and "python -m langsae.report --model toy" in caplog.text


@pytest.mark.parametrize("layers", [["--layers", "0-27"], ["--layers=0-27"]])
def test_layers_widen_the_analysis_stages_but_not_downstream_or_steering(monkeypatch, tmp_path, layers):
    """The real stage list with stand-in mains: --layers reaches the stages that analyse layers; downstream
    and steering keep their own layer rule (the preset's layer), so they never see it from the pipeline."""
    calls = {}

    def fake(stage):
        def main(argv):
            calls[stage.name] = list(argv)

        return dataclasses.replace(stage, main=main)

    monkeypatch.setattr(run_pipeline, "STAGES", [fake(s) for s in run_pipeline.STAGES])
    common = ["--model", "toy", "--out-dir", str(tmp_path / "run")]
    assert run_main(run_pipeline.main, [*common[:2], *layers, *common[2:], "--from", "nu"]) == 0
    analysing = ("nu", "section5", "interactions", "cluster-synergy", "code-switching", "plots")
    widened = [*common[:2], *layers, *common[2:]]
    assert {name: calls[name] for name in analysing} == {name: widened for name in analysing}
    assert calls["downstream"] == [*common, "--skip-unavailable"] and calls["steering"] == common
    assert "check-data" not in calls


def test_without_flags_drops_a_flag_in_either_spelling_and_keeps_the_rest():
    argv = ["--layers", "1,2", "--model", "toy", "--layers=3", "--seed", "1", "--layers-extra", "x"]
    kept = ["--model", "toy", "--seed", "1", "--layers-extra", "x"]
    assert run_pipeline.without_flags(argv, ("--layers",)) == kept


def test_python_m_langsae_stages_runs_a_stage_by_its_name(monkeypatch, capsys):
    """`python -m langsae.stages <name> [flags]`: the name picks the stage, the flags go to its main."""
    import langsae.stages.__main__ as by_name
    from langsae import stages

    assert run_main(by_name.main, ["--help"]) == 0
    listed = capsys.readouterr().out
    assert all(s.name in listed for s in stages.registry())
    assert run_main(by_name.main, ["no-such-stage"]) == 2
    assert "unknown stage 'no-such-stage'" in capsys.readouterr().err
    seen = []
    fake = [
        dataclasses.replace(s, main=lambda argv, n=s.name: seen.append((n, argv))) for s in stages.registry()
    ]
    monkeypatch.setattr(by_name, "registry", lambda: fake)
    assert run_main(by_name.main, ["steering", "--model", "toy"]) == 0
    assert seen == [("steering", ["--model", "toy"])]
