"""`nas report`, `nas compare`, `nas dashboard`, and selection (--best / --knee / --where)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from itertools import combinations, pairwise
from pathlib import Path

import optuna
import pytest

from nas.cli import main
from nas.front import Front
from nas.html_browser import browser_check, find_chromium
from nas.runs import Run
from tests.conftest import experiment

OBJECTIVES = {"accuracy": "maximize", "params": "minimize", "flops": "minimize"}


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished digits run with 3 objectives, quantization knobs and infeasible trials."""
    import nas

    folder = tmp_path_factory.mktemp("report")
    exp = experiment(
        folder,
        objectives=OBJECTIVES,
        compression={"quantize": {"bits": [4, 8], "optional": True}},
        constraints={"accuracy": {"min": 0.85}},
        search__trials=10,
        search__workers=1,
    )
    out = folder / "run"
    nas.run(str(exp), out=out, progress=False)
    return out


def _report(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    to = tmp_path / "report.html"
    assert main(["report", str(run_dir), "--to", str(to)]) == 0
    assert str(to) in capsys.readouterr().out
    return to, to.read_text()


def test_report_is_valid_html_with_every_pair_and_front_trial(
    mixed_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html5lib = pytest.importorskip("html5lib")
    _path, html = _report(mixed_run, tmp_path, capsys)
    html5lib.HTMLParser(strict=True).parse(html)  # raises on any HTML5 parse error

    run = Run.open(mixed_run)
    front = run.front().front
    assert front.infeasible, "the fixture should have infeasible trials (accuracy >= 0.85)"
    titles = re.findall(r'<svg class="plot"[^>]*aria-label="([^"]+)"', html)
    titles = [t for t in titles if " vs " in t]  # the Pareto plots
    for a, b in combinations(OBJECTIVES, 2):
        assert f"{a} vs {b}" in titles or f"{b} vs {a}" in titles, titles
    trials = json.loads(re.search(r'id="trials">(.*?)</script>', html).group(1))
    for p in front.points:
        assert f'<tr data-t="{p.number}">' in html  # in the front table
        # and a marker in each Pareto plot
        assert html.count(f'class="pt" data-t="{p.number}"') >= len(titles)
        assert trials[str(p.number)]["status"].startswith("on the front")
    for p in front.infeasible:
        assert trials[str(p.number)]["status"] == "infeasible"
    sections = ("Hypervolume over trials", "Parameter importance", "Compression on the front")
    for section in (*sections, "Quantization sensitivity of the knee model"):
        assert section in html
    assert "quantize" in html and "bits:" in html  # per-technique statistics
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")  # offline
    assert "<script src" not in html and "<link" not in html


def test_hypervolume_history_ends_at_the_front_hypervolume(mixed_run: Path) -> None:
    from nas.html_report import hypervolume_history

    front = Run.open(mixed_run).front().front
    xs, ys = hypervolume_history(front)
    assert xs == sorted(xs) and len(xs) == len(front.candidates)
    assert all(b >= a for a, b in pairwise(ys))  # a front never shrinks
    assert ys[-1] == pytest.approx(front.hypervolume)


@pytest.mark.skipif(
    find_chromium() is None,
    reason="chromium is not installed (as root: apt-get install chromium; `make test` does it)",
)
def test_report_renders_in_headless_chromium(
    mixed_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, html = _report(mixed_run, tmp_path, capsys)
    n_plots = html.count('<svg class="plot"')
    seen = browser_check(path, tmp_path / "shot.png")
    # the page's script ran and found every plot drawn with markers
    assert seen["plots"] == seen["plots_drawn"] == n_plots == 4, seen
    assert seen["screenshot_width"] == 1400
    # front markers and curves, and infeasible crosses, are on screen, not only in the source
    assert seen["front_pixels"] > 200 * n_plots, seen
    assert seen["infeasible_pixels"] > 20, seen


def test_front_table_says_why_and_best_selects_under_where(
    finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    front = Run.open(finished_run).front().front
    assert main(["front", str(finished_run)]) == 0
    out = capsys.readouterr().out
    assert "why on the front" in out and "highest accuracy" in out and "lowest params" in out

    cap = sorted(p.metrics["params"] for p in front.points)[len(front.points) // 2]
    where = f"params <= {cap}"
    assert main(["front", str(finished_run), "--best", "accuracy", "--where", where]) == 0
    out = capsys.readouterr().out
    ok = [p for p in front.candidates if p.metrics["params"] <= cap]
    best = max(ok, key=lambda p: p.metrics["accuracy"])
    assert f"selected: trial {best.number}: best accuracy" in out
    assert re.search(rf"^\s*> {best.number}\b", out, re.M)

    assert main(["front", str(finished_run), "--knee", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["selected"] == front.knee().number


def test_reasons_are_true_statements() -> None:
    from nas.front import nondominated
    from nas.search._problem import Point

    dirs = {"accuracy": "maximize", "flops": "minimize"}
    pts = [
        Point(i, {}, {"accuracy": a, "flops": f})
        for i, (a, f) in enumerate([(0.9, 100.0), (0.8, 50.0), (0.7, 10.0), (0.6, 80.0)])
    ]
    front = Front(nondominated(pts, dirs), dirs, pts)
    assert [p.number for p in front.points] == [0, 1, 2]
    why = front.reasons()
    assert why[0] == "highest accuracy" and why[2] == "lowest flops"
    assert why[1] == "best accuracy at flops <= 50"
    assert front.best("accuracy").number == 0 and front.best("flops").number == 2


def test_export_best(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    best = Run.open(finished_run).front().best("accuracy")
    out = tmp_path / "out"
    assert main(["export", str(finished_run), "--best", "accuracy", "--to", str(out), "-q"]) == 0
    assert [d.name for d in out.iterdir() if d.is_dir()] == [f"trial-{best.number:05d}"]


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["front", "{run}", "--best", "acc"], ["unknown metric 'acc'", "accuracy, flops, params"]),
        (["front", "{run}", "--best", "accuracy", "--knee"], ["only one of them"]),
        (["export", "{run}", "--knee", "--select", "front"], ["pass one of them"]),
        (
            ["front", "{run}", "--where", "params <= 1e9 and accuracy > 1.5"],
            ["'accuracy > 1.5' removed the last", "that 'params <= 1e9' kept", "accuracy ranges"],
        ),
        (["report", "{run}", "--to", "/nonexistent/dir/r.html"], ["does not exist"]),
        (["compare", "{run}"], ["two or more run folders"]),
        (["compare", "{run}", "{run}", "--to", "x.txt"], [".html", ".png"]),
        (["dashboard", "{run}", "--port", "70000"], ["not a port"]),
    ],
)
def test_selection_and_report_bad_input(
    finished_run: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needles: list[str]
) -> None:
    before = sorted(p.name for p in finished_run.iterdir())
    assert main([a.replace("{run}", str(finished_run)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, err
    assert sorted(p.name for p in finished_run.iterdir()) == before


def test_report_of_a_run_without_completed_trials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nas.runs import prepare

    run = prepare(experiment(tmp_path), out=tmp_path / "empty")
    study = run.study(writable=True)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    study.ask()  # left running
    assert main(["report", str(run.dir)]) == 2
    err = capsys.readouterr().err
    assert "no completed trial (1 running, 1 failed" in err
    assert not (run.dir / "report.html").exists()


def test_compare_uses_one_reference_point(
    finished_run: Path, mixed_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    to = tmp_path / "cmp.html"
    assert main(["compare", str(finished_run), str(mixed_run), "--to", str(to)]) == 0
    out = capsys.readouterr().out
    html = to.read_text()
    # the only shared objectives are accuracy and params: one plot
    assert html.count('<svg class="plot"') == 1 and "accuracy vs params" in html
    from nas.front import default_reference, hypervolume, ideal_point

    dirs = {"accuracy": "maximize", "params": "minimize"}
    fronts = [Front.from_study(Run.open(d).study(), dirs) for d in (finished_run, mixed_run)]
    every = [p for f in fronts for p in f.candidates]
    ref = default_reference(every, dirs)
    ideal = ideal_point(every, dirs)
    for f in fronts:
        assert f"{hypervolume(f.points, dirs, ref, ideal=ideal):.4f}" in out
    png = tmp_path / "cmp.png"
    assert main(["compare", str(finished_run), str(mixed_run), "--to", str(png)]) == 0
    assert png.stat().st_size > 10_000


def test_dashboard_serves_the_study_on_loopback(finished_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)  # the dashboard names the objectives in the study
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas.cli", "dashboard", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/dashboard/", line).group(0)
        api = url.replace("/dashboard/", "/api/studies")
        for _ in range(100):
            try:
                studies = json.loads(urllib.request.urlopen(api, timeout=5).read())
                break
            except OSError:
                time.sleep(0.2)
        (summary,) = studies["study_summaries"]
        assert summary["directions"] == ["maximize", "minimize"]
        detail = json.loads(
            urllib.request.urlopen(f"{api}/{summary['study_id']}", timeout=10).read()
        )
        n_complete = sum(t["state"] == "Complete" for t in detail["trials"])
        done = Run.open(run).study().get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        assert n_complete == len(done) > 0
        assert detail["objective_names"] == ["accuracy", "params"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
