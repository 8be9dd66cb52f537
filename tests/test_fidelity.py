"""Each archive, on every engine its chain can pick on this CPU, reproduces the authors' published masks.

The worker loads the archive's configured engine or, where that cannot run, the next of its chain
(handler.engine.select). Each of them is loaded here from the built archive and run through the handler's
own pipeline on the authors' 18 images: the masks must pass the serving gate against the published ones.
bf16 on a CPU without native bf16 is skipped with the reason; an engine this CPU runs but skips as slower
than the next (MNN on an AVX-512 CPU) is checked all the same, since other CPUs serve with it; a runtime
that is missing is a failure, since the archive's chain promises it.
"""

from __future__ import annotations

import dataclasses
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from handler import engine as E
from handler import precision
from handler.model import VARIANTS
from handler.pipeline import Segmenter, SegmentRequest, Task
from handler.settings import HandlerSettings

pytestmark = pytest.mark.server
CPU = torch.device("cpu")


def _configured(model_store: Path, name: str) -> str:
    with zipfile.ZipFile(model_store / f"{name}.mar") as mar:
        return HandlerSettings.from_yaml(yaml.safe_load(mar.read("model-config.yaml"))["handler"]).engine


def _cases() -> list[tuple[str, str]]:
    from handler.build import DEFAULTS  # the engine every CPU archive is configured with

    cases = []
    for name in sorted(VARIANTS):
        for each in E.chain(DEFAULTS["cpu"].engine):
            if each == E.TORCHSCRIPT_BF16 and name not in precision.PLANS:
                continue  # no validated plan: build.choose_engine never configures it for these weights
            cases.append((name, each))
    return cases


@pytest.mark.parametrize(("name", "engine_name"), _cases())
def test_every_engine_of_the_chain_reproduces_the_published_masks(
    name: str, engine_name: str, model_store: Path, unpacked_archive, reference_dir: Path, record_property
) -> None:
    configured = _configured(model_store, name)
    if engine_name not in E.chain(configured):
        pytest.fail(f"{name}.mar is configured with {configured}, whose chain lacks {engine_name}")
    kind = E.ENGINES[engine_name]
    if engine_name == E.TORCHSCRIPT_BF16 and not precision.native_bf16():  # emulated: hours, and never served
        pytest.skip(f"{engine_name}: this CPU has no native bf16 (AVX512_BF16 or AMX)")
    # Whether it runs here at all, fast or not (its hardware check only says which CPUs it serves fastest).
    why = dataclasses.replace(kind, hardware=None).unavailable(CPU)
    if why is not None:
        pytest.fail(f"{engine_name} is in {name}'s chain but cannot run here: {why}")
    file = unpacked_archive(name) / E.file_name(engine_name, name)
    assert file.is_file(), f"{name}.mar has no {file.name} for {engine_name}"
    network = E.ENGINES[engine_name].load(file, CPU, 0, 1)
    segmenter = Segmenter(network, VARIANTS[name], CPU, 25_000_000)
    paths = sorted((reference_dir / "images").iterdir())
    assert len(paths) == 18
    errors = {}
    for start in range(0, len(paths), 6):
        chunk = paths[start : start + 6]
        outcomes, _ = segmenter.run([SegmentRequest(Task.MASK, p.read_bytes()) for p in chunk])
        for path, outcome in zip(chunk, outcomes, strict=True):
            mask = np.asarray(Image.open(io.BytesIO(outcome.image)))
            published = np.asarray(Image.open(reference_dir / f"{name}_masks" / f"{path.stem}.png").convert("L"))
            assert mask.shape == published.shape, path.name
            errors[path.name] = float(np.abs(mask.astype(np.float64) - published).mean() / 255.0)
    mean, worst = sum(errors.values()) / len(errors), max(errors, key=errors.get)
    record_property(f"{name} {engine_name} MAE mean / worst", f"{mean:.5f} / {errors[worst]:.5f}")
    assert precision.passes_gate(mean, errors[worst]), f"mean {mean:.5f}, {worst} {errors[worst]:.5f}: {errors}"
