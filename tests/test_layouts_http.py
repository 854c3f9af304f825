"""Published layouts over HTTP: the real serve app (Ray Serve + FastAPI on 127.0.0.1) answers
``/v1/score`` for a Skywork-VL-Reward-layout model (with images) and an OpenRLHF-layout model with
the rewards the same checkpoints give in process. The app is one more application on the
session's shared Ray cluster and Serve instance (tests/conftest.py ``service``)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from helpers import image_part, image_uri, text_part, wait_until
from mmrm.rm.reward_model import RewardModel
from mmrm.rm.types import Sample

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def layouts_app(service: dict, published: dict) -> Iterator[str]:
    from ray import serve

    from mmrm.serve.app import build_app

    models = [{"name": name, "checkpoint": str(published[key]), "num_cpus": 0.5, "max_batch_size": 8,
               "batch_wait_timeout_s": 0.02} for name, key in (("skywork", "skywork"), ("openrlhf", "openrlhf"))]
    args = {"models": models, "limits": {"media": {"allowed_roots": [str(service["media_root"])]}},
            "ingress_num_cpus": 0.25}
    url = service["url"] + "/layouts"
    serve.run(build_app(args), name="layouts", route_prefix="/layouts", blocking=False)
    wait_until(lambda: httpx.get(url + "/healthz", timeout=10).status_code == 200, timeout=180, interval=0.5,
               message="the layouts app is not routed by the proxy")
    yield url
    serve.delete("layouts")  # frees its replicas' CPUs: later tests (Ray Train) need the room


ITEMS = [
    {"prompt": [{"role": "user", "content": [image_part(image_uri(56, 84, 1)), text_part("What digit is this?")]}],
     "response": "It is seven."},
    {"prompt": "hi", "response": "The digit is 3."},
    {"prompt": [{"role": "user", "content": [image_part(image_uri(84, 56, 2)), text_part("and this one, which is it?")]}],
     "response": "a two, because of the shape of it"},
]


@pytest.mark.parametrize("name,key,items", [("skywork", "skywork", ITEMS), ("openrlhf", "openrlhf", ITEMS[1:2])])
def test_layout_served_equals_in_process(layouts_app: str, published: dict, name: str, key: str, items: list) -> None:
    r = httpx.post(layouts_app + "/v1/score", json={"model": name, "items": items}, timeout=180)
    assert r.status_code == 200, r.text
    got = [d["value"] for d in r.json()["data"]]
    want = RewardModel.from_pretrained(published[key], device="cpu").rewards([Sample.model_validate(s) for s in items])
    assert np.max(np.abs(np.array(got) - np.array(want))) < 1e-5, (got, want)
