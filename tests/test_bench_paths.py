"""The bench's other paths (benchmarks/paths.py): the option rows' server time, the web gateway and Triton against
the gRPC SDK cells of the same rounds. Checked on records: verdicts, JSON, rendering from them."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
from PIL import Image

from benchmarks import bench, options, paths, report
from benchmarks import results as R
from benchmarks import verdicts as V
from tests import servekit as sk
from tests.test_benchmarks import _cell, _run
from u2net_client.options import Options


def _sample(compose: float, encode: float, *, out: int = 1_000_000, media: str = "image/png") -> R.OptionSample:
    """A request whose decode, preprocess and inference took 100 ms in all."""
    timings = {"decode": 60.0, "preprocess": 10.0, "inference": 30.0, "postprocess": compose, "encode": encode}
    return R.OptionSample(timings, sum(timings.values()) + 20.0, out, media)


def _failed() -> R.OptionSample:
    return R.OptionSample({}, 5.0, 0, "", "INVALID_ARGUMENT: no")


def _study() -> R.OptionsStudy:
    # Today's cutout: 400 ms in round 1, 500 in round 2 (a neighbour slowed round 2 for every row alike).
    rows = [
        R.OptionRow(options.BASELINE, "(none)", False, False, [_sample(100, 200), _sample(150, 250)]),
        R.OptionRow("colour png", "background=(0, 120, 255)", True, False, [_sample(100, 180), _sample(150, 230)]),
        R.OptionRow("blur png", "effect='blur'", True, False, [_sample(200, 200), _sample(260, 250)]),
        R.OptionRow(
            "colour jpeg q90", "...", True, False, [_sample(100, 45, media="image/jpeg"), _failed()]
        ),  # round 2 failed: judged on round 1 only
        R.OptionRow("refine matting png", "refine='matting'", False, True, [_sample(2500, 200), _sample(3000, 250)]),
    ]
    return R.OptionsStudy("bike.jpg", 3000, 2000, "a gradient", options.BASELINE, options.JPEG_VS_PNG, rows)


def _triton_round(rate: float, sizes: dict[int, int]) -> R.Round:
    counters = {V.REQUESTS: 18.0, V.BATCHES: float(sum(sizes.values()))}
    counters |= {V.batches_of(s): float(sizes.get(s, 0)) for s in range(1, 9)}
    return R.Round(18 / rate, 18, [100.0] * 18, [4] * 18, [], counters)


def _paths_run() -> R.EndToEnd:
    served = [_cell("served", op, c, rate) for op, c, rate in [
        ("cutout", 1, [2.0, 2.0]), ("cutout", 4, [3.0, 2.0]), ("mask", 4, [4.0, 4.0]),
    ]]  # fmt: skip
    other = R.Paths(
        options=_study(),
        web=[_cell("web", "cutout", 4, [2.85, 1.9]), _cell("web", "mask", 4, [3.0, 3.2])],  # 0.95x; 0.75x, 0.8x
        web_endpoint="POST /api/remove on http://127.0.0.1:1",
        triton=[
            R.Cell("triton", "cutout", 4, [_triton_round(2.7, {4: 4, 2: 1}), _triton_round(1.9, {8: 2, 2: 1})]),
            R.Cell("triton", "cutout", 8, [_triton_round(3.0, {8: 2, 2: 1})] * 2),  # no TorchServe row with 8
        ],
        triton_served=R.TritonServed("2.51.0", "u2netp", "cpu", "stand-in", "w", 8, 20000, "python -m handler.triton"),
        not_measured={},
    )
    run = _run([_cell("rembg", "cutout", 1, [1.0, 1.0]), *served], [])
    return dataclasses.replace(run, paths=other)


def test_a_common_option_is_judged_by_server_time_against_today_within_each_round() -> None:
    study = _study()
    verdicts = {v.name: v for v in V.option_targets(study)}
    assert set(verdicts) == {"colour png", "blur png", "colour jpeg q90"}  # the baseline and matting are not judged
    colour, blur, jpeg = verdicts["colour png"], verdicts["blur png"], verdicts["colour jpeg q90"]
    assert colour.ratio is not None and colour.ratio.per_round == pytest.approx([380 / 400, 480 / 500])
    assert colour.met is True
    assert blur.ratio is not None and blur.ratio.per_round == pytest.approx([500 / 400, 610 / 500]) and not blur.met
    assert jpeg.ratio is not None and jpeg.ratio.per_round == pytest.approx([245 / 400]) and jpeg.met is True
    f = V.option_figures(study, study.rows[3])
    assert f.errors == ["INVALID_ARGUMENT: no"] and f.server_ms == pytest.approx(245.0)
    assert f.compose_encode_ms == pytest.approx(145.0)  # postprocess + encode
    assert f.compose_encode_vs_baseline is not None and f.compose_encode_vs_baseline.per_round == [145 / 300]


def test_jpeg_encode_and_matting_cost_come_from_the_handlers_stages() -> None:
    study = _study()
    found = V.jpeg_vs_png(study)
    assert found is not None and found.per_round == pytest.approx([45 / 180])  # encode stage only, round 1
    cost = V.matting_cost(study)
    assert cost is not None and cost.megapixels == pytest.approx(6.0)
    assert cost.ms_per_mp == pytest.approx((2800 + 3350) / 2 / 6)  # the median of 2800 and 3350 ms, per MP
    assert cost.extra_ms_per_mp == pytest.approx((2400 / 6 + 2850 / 6) / 2)


def test_web_and_triton_are_judged_against_the_grpc_sdk_row_of_the_same_call_callers_and_round() -> None:
    run = _paths_run()
    found = {(v.path, v.op, v.callers): v for v in V.path_verdicts(run)}
    web = found["web", "cutout", 4]
    assert web.ratio is not None and web.ratio.per_round == pytest.approx([0.95, 0.95]) and web.met is True
    assert found["web", "mask", 4].met is False  # 0.75x, 0.8x: the gateway costs more than 10 %
    triton = found["triton", "cutout", 4]
    assert triton.ratio is not None and triton.ratio.median == pytest.approx(0.925) and triton.met is True
    assert found["triton", "cutout", 8].ratio is None and found["triton", "cutout", 8].met is None
    assert V.formed_batch_sizes(run.paths.triton[0]) == {2: 2, 4: 4, 8: 2}
    assert V.cell_figures(run.paths.triton[0]).mean_formed_batch == pytest.approx(36 / 8)


def test_the_paths_survive_json_and_render_from_the_record(tmp_path: Path) -> None:
    run = _paths_run()
    back = R.read(R.save(run, tmp_path))
    assert back == run
    text = report.render_end_to_end(back)
    assert "(0.95 / 0.96)" in text  # colour png's rounds against today's cutout, from the record
    assert "| triton | cutout | 4 | 2.30 |" in text and "36 batches" not in text and "(2:2 4:4 8:2)" in text
    assert "0.25× PNG's time as JPEG" in text
    bare = dataclasses.replace(run, paths=R.Paths(not_measured={"triton": "left out (--no-triton)"}))
    assert "Not measured: left out (--no-triton)." in report.render_end_to_end(bare)
    assert "predates them" in report.render_end_to_end(dataclasses.replace(run, paths=None))


def test_every_option_case_is_a_valid_sdk_call_and_the_named_rows_exist() -> None:
    cases = options.cases(*options.backgrounds())
    for case in cases.values():
        Options(**case.kwargs)  # raises on a bad option
    assert next(iter(cases)) == options.BASELINE and not cases[options.BASELINE].common
    assert set(options.JPEG_VS_PNG) <= set(cases) and sum(c.matting for c in cases.values()) == 1


def test_each_round_sends_every_option_once_per_pass_in_shuffled_orders(tmp_path: Path) -> None:
    sent: list[dict[str, object]] = []

    @dataclasses.dataclass
    class Result:
        timings: dict[str, float] = dataclasses.field(default_factory=lambda: {"inference": 2.0, "encode": 4.0})
        data: bytes = b"x" * 10
        media_type: str = "image/png"

    class Client:
        def cutout(self, image: bytes, model: str, **kwargs: object) -> Result:
            sent.append(kwargs)
            return Result()

    photo = tmp_path / "p.png"
    photo.write_bytes(sk.encode(Image.new("RGB", (30, 20)), "PNG"))
    path = paths.OptionsPath(Client(), "u2netp", photo)  # type: ignore[arg-type]
    cases = list(path.cases.values())
    path.step()
    path.step()
    assert len(sent) == 2 * paths.OPTION_PASSES * len(cases)
    passes = [sent[i * len(cases) : (i + 1) * len(cases)] for i in range(2 * paths.OPTION_PASSES)]
    for sent_in_pass in passes:
        assert sorted(map(repr, sent_in_pass)) == sorted(repr(c.kwargs) for c in cases)  # every set once a pass
    assert len({tuple(map(repr, p)) for p in passes}) > 1  # not one fixed order
    study = path.record()
    assert study.passes == paths.OPTION_PASSES
    assert all(len(row.rounds) == 2 * paths.OPTION_PASSES for row in study.rows)
    back = R.read(R.save(dataclasses.replace(_paths_run(), paths=R.Paths(options=study)), tmp_path))
    assert back.paths is not None and back.paths.options == study
    text = report.render_end_to_end(back)
    assert f"{paths.OPTION_PASSES} times per round (order: shuffled per pass" in text and "× today (per pass)" in text


def test_triton_statistics_become_per_round_counters() -> None:
    class Server:
        def statistics(self, model: str) -> dict:
            assert model == "u2netp"
            return {"model_stats": [{
                "name": "u2netp", "inference_count": 11, "execution_count": 4,
                "batch_stats": [{"batch_size": 1, "compute_infer": {"count": 1, "ns": 5}},
                                {"batch_size": 2, "compute_infer": {"count": 1, "ns": 5}},
                                {"batch_size": 8, "compute_infer": {"count": 1, "ns": 5}}],
            }]}  # fmt: skip

    counters = paths.TritonStats(Server(), "u2netp", 8).counters()
    assert (counters[V.REQUESTS], counters[V.BATCHES]) == (11.0, 4.0)
    assert [counters[V.batches_of(s)] for s in range(1, 9)] == [1, 1, 0, 0, 0, 0, 0, 1]


def test_the_web_callers_get_a_grpc_row_to_be_judged_against() -> None:
    args = argparse.Namespace(no_web=False, web_callers=4)
    assert paths.concurrencies(args, [1, 2]) == [1, 2, 4]
    assert paths.concurrencies(argparse.Namespace(no_web=True, web_callers=4), [1, 2]) == [1, 2]


def test_the_other_models_record_says_why_it_has_no_other_paths() -> None:
    measured = _paths_run().paths
    assert measured is not None
    run_without_triton = dataclasses.replace(measured, not_measured={"triton": "left out (--no-triton)"})
    for_u2net = bench.elsewhere(run_without_triton, "u2netp")
    assert list(for_u2net.not_measured) == list(paths.GROUPS) and for_u2net.options is None and not for_u2net.web
    assert for_u2net.not_measured["web"].startswith("the bench measures this path with u2netp only")
    assert for_u2net.not_measured["triton"] == "left out (--no-triton)"  # left out of the run: that reason
    text = report.render_end_to_end(dataclasses.replace(_paths_run(), paths=for_u2net))
    assert text.count("Not measured: ") == len(paths.GROUPS)
