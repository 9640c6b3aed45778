"""Which users a new routing table would move, per model (`check NEW --against OLD`).

With the same salt a user keeps their bucket, so the moves are exact: compare the version of
each of the 10,000 buckets under the old split and the new one. With a new salt every user is
hashed afresh, so a user of version a lands in b with probability new_share(b): the moves are
the expected ones, old_share(a) * new_share(b), and every user is reshuffled.

A ramp should only move users out of versions that shrink and into versions that grow; any
other move (a reordered split, a share taken from a version not next to the growing one, a
changed salt) is a warning.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal

from router.config.model import BUCKETS, Model, Split, Table


@dataclass(frozen=True, slots=True)
class Move:
    source: str
    target: str
    percent: Decimal  # of the model's users

    @property
    def label(self) -> str:
        return f"{self.source}->{self.target}"


@dataclass(frozen=True, slots=True)
class ModelChurn:
    model: str
    moves: tuple[Move, ...]
    reshuffled: bool  # the salt changed
    warnings: tuple[str, ...]

    @property
    def moved(self) -> Decimal:
        return sum((m.percent for m in self.moves), Decimal(0))

    def as_dict(self) -> dict[str, object]:
        """For the `config_loaded` event: `{"moves": {"v1->v2": 10.0}, ...}`."""
        return {
            "moves": {m.label: float(m.percent) for m in self.moves},
            "moved_percent": float(self.moved),
            "reshuffled": self.reshuffled,
            "warnings": list(self.warnings),
        }


def churn(old: Table, new: Table, only: Collection[str] | None = None) -> dict[str, ModelChurn]:
    """Moves for every model present in both tables (of those in `only`, if given)."""
    names = new.models.keys() if only is None else only
    return {
        name: model_churn(old.models[name], new.models[name])
        for name in names
        if name in old.models and name in new.models
    }


def model_churn(old: Model, new: Model) -> ModelChurn:
    reshuffled = old.salt != new.salt
    moves = (
        _expected_moves(old.split, new.split) if reshuffled else _exact_moves(old.split, new.split)
    )
    old_shares, new_shares = dict(old.split.shares()), dict(new.split.shares())
    warnings = []
    for move in moves:
        shrinks = new_shares.get(move.source, Decimal(0)) < old_shares.get(move.source, Decimal(0))
        grows = new_shares.get(move.target, Decimal(0)) > old_shares.get(move.target, Decimal(0))
        if not (shrinks and grows):
            warnings.append(
                f"warning: {_pct(move.percent)} of users would move from {move.source} to "
                f"{move.target}, though {_why(move, shrinks, grows)}"
            )
    if reshuffled:
        warnings.insert(
            0,
            f"warning: the salt changed ({old.salt!r} -> {new.salt!r}): "
            "every user is hashed afresh",
        )
    return ModelChurn(new.name, tuple(moves), reshuffled, tuple(warnings))


def _why(move: Move, shrinks: bool, grows: bool) -> str:
    if not shrinks and not grows:
        return f"neither {move.source} shrinks nor {move.target} grows"
    if not shrinks:
        return f"{move.source} does not shrink"
    return f"{move.target} does not grow"


def _exact_moves(old: Split, new: Split) -> list[Move]:
    """Intersect the bucket ranges of the two splits: exact over the 10,000 buckets."""
    counts: dict[tuple[str, str], int] = {}
    for source, old_range in old.ranges().items():
        for target, new_range in new.ranges().items():
            if source == target:
                continue
            overlap = min(old_range.stop, new_range.stop) - max(old_range.start, new_range.start)
            if overlap > 0:
                counts[source, target] = counts.get((source, target), 0) + overlap
    return [Move(s, t, Decimal(n) * 100 / BUCKETS) for (s, t), n in counts.items()]


def _expected_moves(old: Split, new: Split) -> list[Move]:
    moves = []
    for source, old_share in old.shares():
        for target, new_share in new.shares():
            percent = old_share * new_share / 100
            if source != target and percent > 0:
                moves.append(Move(source, target, percent.quantize(Decimal("0.01"))))
    return moves


def _pct(percent: Decimal) -> str:
    return f"{percent.normalize():f}%"


def render(changes: dict[str, ModelChurn]) -> list[str]:
    """The lines `check --against` prints: every move, then the warnings."""
    lines = []
    for name, change in changes.items():
        if not change.moves:
            lines.append(f"{name}: no user moves")
            continue
        moves = ", ".join(f"{m.source} -> {m.target} {_pct(m.percent)}" for m in change.moves)
        lines.append(f"{name}: {_pct(change.moved)} of users move: {moves}")
        lines.extend(f"{name}: {w}" for w in change.warnings)
    return lines
