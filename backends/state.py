"""What one example backend holds, shared by its two faces (``/predict`` and the Open
Inference Protocol): the model, its version, the name it serves, and its injected faults.

A backend can be made faulty on purpose, for rollout demos and tests (``Faults``): each
prediction waits ``delay_ms`` longer, and a share ``fail_rate`` of the requests that would
have got a prediction get a 500 instead. The draws come from a generator seeded with
``seed``, so the n-th request fails or not the same way in every run.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass

from aiohttp import web

from backends.model import Classifier

MODEL_KEY: web.AppKey[Classifier] = web.AppKey("model")
VERSION_KEY = web.AppKey("version", str)
NAME_KEY = web.AppKey("model_name", str)
FAULTS_KEY: web.AppKey[Faults] = web.AppKey("faults")
DRAWS_KEY = web.AppKey("fault_draws", random.Random)


@dataclass(frozen=True)
class Faults:
    """Injected faults of the predictions; the default injects none."""

    fail_rate: float = 0.0  # share of would-be predictions answered with a 500, in [0, 1]
    delay_ms: float = 0.0  # extra wait before every prediction's answer, >= 0
    seed: int = 0  # of the draws that decide which requests fail

    def __post_init__(self) -> None:
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be within [0, 1], got {self.fail_rate!r}")
        if not 0.0 <= self.delay_ms < math.inf:
            raise ValueError(f"delay_ms must be a finite number >= 0, got {self.delay_ms!r}")

    def __bool__(self) -> bool:
        return self.fail_rate > 0 or self.delay_ms > 0

    def describe(self) -> str:
        """``"fails 5% of predictions with a 500, answers 200 ms late"``, or ``"no faults"``."""
        parts = []
        if self.fail_rate > 0:
            parts.append(f"fails {100 * self.fail_rate:g}% of predictions with a 500")
        if self.delay_ms > 0:
            parts.append(f"answers {self.delay_ms:g} ms late")
        return ", ".join(parts) or "no faults"


async def delay(app: web.Application) -> None:
    """Wait the backend's injected delay, if any."""
    faults = app[FAULTS_KEY]
    if faults.delay_ms > 0:
        await asyncio.sleep(faults.delay_ms / 1000)


def injected_failure(app: web.Application) -> str | None:
    """Draw for one valid prediction request: the failure's message, or None to answer.

    One draw per valid request, whatever the settings: which requests fail depends only on
    the seed and their order of arrival (over ``/predict`` and ``infer`` together).
    """
    if app[DRAWS_KEY].random() < app[FAULTS_KEY].fail_rate:
        return f"{app[VERSION_KEY]}: {app[FAULTS_KEY].describe()}"
    return None
