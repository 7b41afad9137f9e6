"""Which teacher layer each student layer learns from: ``--layer-map``, resolved once per run into the
``Context.layer_map`` every layer objective reads."""
from __future__ import annotations

from ...errors import UsageError
from ...models.inits import InitPlan


def distillation_pairs(spec: str, init: InitPlan, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Which teacher layer each student layer learns from (1-based pairs).

    ``init`` (default): the teacher layers the student was initialised from, as paper 002 does (uniform when the
    student was not copied from the teacher); ``uniform``: student layer k <- teacher layer round(k * L_t / L_s);
    ``last``: only the last student layer <- the last teacher layer; ``ted``: TED's M(k) = 2k-1 for k <= K/2, else 2k
    (paper 001 §5.3); or an explicit list of teacher layers, one per student layer ("4,8,12").
    """
    if spec == "init" and init.layers is not None:
        return list(enumerate(init.layers, start=1))
    if spec in ("init", "uniform"):
        return [(k, round(k * teacher_layers / student_layers)) for k in range(1, student_layers + 1)]
    if spec == "last":
        return [(student_layers, teacher_layers)]
    if spec == "ted":
        pairs = [(k, 2 * k - 1 if k <= student_layers // 2 else 2 * k) for k in range(1, student_layers + 1)]
        if pairs[-1][1] > teacher_layers:
            raise UsageError(f"--layer-map ted needs a teacher of at least {pairs[-1][1]} layers (M(k) = 2k-1 / 2k); it has {teacher_layers}")
        return pairs
    try:
        layers = [int(x) for x in spec.split(",")]
    except ValueError:
        raise UsageError(f"--layer-map must be init, uniform, last, ted or a list of teacher layers like 4,8,12 (got {spec!r})") from None
    if len(layers) != student_layers:
        raise UsageError(f"--layer-map {spec} names {len(layers)} teacher layers for a student of {student_layers} layers")
    bad = [t for t in layers if not 1 <= t <= teacher_layers]
    if bad:
        raise UsageError(f"--layer-map: teacher layer {bad[0]} is out of range: the teacher has layers 1..{teacher_layers}")
    return list(enumerate(layers, start=1))
