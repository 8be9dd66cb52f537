"""Load test of u2serve's gRPC API: cutouts and masks of the authors' test photos, of mixed sizes.

Headless, against `make serve`'s server (the token comes from var/key_file.json):

    locust -f loadtests/locustfile.py --headless -u 4 -r 4 -t 20s --host 127.0.0.1:7070 --csv out

Options of this file: --model u2netp|u2net, --images DIR (default: the authors' test photos beside
the repository), --key-file PATH (default: $U2SERVE_KEY_FILE, else var/key_file.json), --protocol
torchserve|v2|triton (the SDK's; against `make triton`'s Triton: --host 127.0.0.1:8001 --protocol v2).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import ClassVar

import gevent
from grpc_user import GrpcUser, StaggeredSequence
from locust import constant, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.exception import LocustError
from locust.stats import CSV_STATS_INTERVAL_SEC

# The authors' test images in the repository (data/u2net-reference/, as tools.REFERENCE_DIR names it).
DEFAULT_IMAGES = Path(__file__).resolve().parents[1] / "data/u2net-reference/images"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
IMAGES: list[bytes] = []


@events.init_command_line_parser.add_listener
def _arguments(parser: LocustArgumentParser) -> None:
    parser.add_argument("--model", choices=["u2netp", "u2net"], default="u2netp", help="the served model")
    parser.add_argument("--images", default=str(DEFAULT_IMAGES), help="folder of the images sent, picked at random")
    parser.add_argument(
        "--key-file", default=None, help="the server's key_file.json; default $U2SERVE_KEY_FILE, else var/key_file.json"
    )
    parser.add_argument(
        "--protocol",
        choices=["torchserve", "v2", "triton"],
        default="torchserve",
        help="the SDK's protocol: v2 for Triton's segment model (or TorchServe's OIP), triton for its tensors",
    )


@events.init.add_listener
def _load_images(environment: Environment, **_: object) -> None:
    folder = Path(environment.parsed_options.images)
    paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not paths:
        raise LocustError(f"--images {folder}: no {', '.join(sorted(IMAGE_SUFFIXES))} files there")
    IMAGES[:] = [p.read_bytes() for p in paths]


@events.test_stop.add_listener
def _last_csv_sample(**_: object) -> None:
    # Locust's CSV writer samples the stats once a second, and the process exits right after the users
    # stop: wait one more sample, so that calls which finished during --stop-timeout reach the CSV too.
    gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.2)


class CutoutsAndMasks(StaggeredSequence):
    """A mask, then three cutouts (what callers mostly ask for), of random images; over and over."""

    user: U2NetUser

    @task(1)
    def mask(self) -> None:
        self.user.client.mask(random.choice(IMAGES), self.user.model)

    @task(3)
    def cutout(self) -> None:
        self.user.client.cutout(random.choice(IMAGES), self.user.model)


class U2NetUser(GrpcUser):
    """One caller with one request in flight at a time: -u N keeps N requests in flight."""

    tasks: ClassVar[list[type[StaggeredSequence]]] = [CutoutsAndMasks]
    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        options = environment.parsed_options
        self.model = options.model
        self.key_file = options.key_file
        self.protocol = options.protocol
        super().__init__(environment)
