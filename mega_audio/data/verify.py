"""`mega-audio verify STORE [--repair]`: every shard against its index (size, checksum, the clips it really holds),
and the store against its manifest and failure logs. `--repair` moves damaged shards (and shards whose every clip
another shard also holds) into `quarantine/`, never deleting anything, so the next `tokenize` re-creates their clips."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import integrity_problem
from .manifest import read_manifest
from .store import (
    Accounting,
    ShardError,
    ShardInfo,
    TokenStore,
    account,
    all_slices_locked,
    interrupted_files,
    list_shards,
    read_shard,
    shard_indexes,
    store_lock,
    write_card,
)


@dataclass
class VerifyReport:
    store: Path
    shards: int
    manifest_clips: int
    stored: int  # clips in sound shards
    damaged: dict[str, str]  # shard file name -> what is wrong with it
    unindexed: list[str]  # shard or temporary files without an index: interrupted writes, ignored by readers
    accounting: Accounting
    quarantined: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged and self.accounting.complete and not self.accounting.extra

    def details(self) -> list[str]:
        a = self.accounting
        lines = [f"damaged: {name}: {problem}" for name, problem in self.damaged.items()]
        lines += [f"interrupted write (no index; the next tokenize of its rank removes it): {name}"
                  for name in self.unindexed]
        for what, ids in (("missing (in no shard, not in the failures)", a.missing), ("duplicated", list(a.duplicated)),
                          ("extra (not in the manifest)", a.extra)):
            if ids:
                lines.append(f"{what}: {len(ids)} clips, e.g. {', '.join(ids[:5])}")
        lines += [f"quarantined: {name}" for name in self.quarantined]
        return lines

    def summary(self) -> str:
        a = self.accounting
        if self.ok:
            verdict = "ok"
        elif self.quarantined and not self.damaged and not a.duplicated:
            verdict = f"repaired: run the same `mega-audio tokenize` again to re-create {len(a.missing)} clips"
        else:
            verdict = "NOT OK: " + ("run again with --repair" if self.damaged or a.duplicated else
                                    "run the same `mega-audio tokenize` again to finish it")
        return (f"verify {self.store}: {self.shards} shards, {self.stored} clips for {self.manifest_clips} in the "
                f"manifest, {len(a.failed)} failed (logged), {len(self.damaged)} damaged, {len(a.missing)} missing, "
                f"{len(a.duplicated)} duplicated, {len(a.extra)} extra -> {verdict}")


def shard_problem(shard: ShardInfo, index_ids: list[str]) -> str | None:
    """What is wrong with one shard (None: it matches its index byte for byte and clip for clip)."""
    if problem := integrity_problem(shard.path, shard.bytes, shard.checksum):
        return problem
    try:
        ids = [meta["id"] for _, meta in read_shard(shard)]
    except ShardError as e:
        return e.problem
    return None if ids == index_ids else f"holds {len(ids)} clips that differ from the {len(index_ids)} its index lists"


def quarantine(store: Path, shard: ShardInfo, stamp: str) -> str:
    """Move a shard and then its index (a kill in between leaves an index without a shard: still 'damaged')."""
    target = store / "quarantine" / stamp
    target.mkdir(parents=True, exist_ok=True)
    for path in (Path(shard.path), shard.index_path):
        if path.exists():
            os.replace(path, target / path.name)
    return f"{shard.name} -> {target.relative_to(store)}/"


def redundant_shards(sound: list[ShardInfo], ids_of: dict[str, list[str]], counts: Counter[str]) -> list[ShardInfo]:
    """Newest first, shards whose every clip another kept shard also holds (what two racing writers leave behind)."""
    redundant = []
    for shard in reversed(sound):
        ids = ids_of[shard.name]
        if ids and all(counts[i] > 1 for i in ids):
            counts.subtract(ids)
            redundant.append(shard)
    return redundant


def verify_store(path: str | Path, repair: bool = False) -> VerifyReport:
    """Check the store; with `repair`, quarantine what is damaged or redundant, then check again."""
    store = TokenStore(path)  # refuses a directory without a card
    root = store.path
    manifest_path = Path(store.card.get("tokenize", {}).get("manifest") or root / "manifest.jsonl")
    if not manifest_path.exists():
        raise FileNotFoundError(f"{root} has no manifest ({manifest_path}): verify needs the clips it was built from")
    manifest_ids = [c.id for c in read_manifest(manifest_path)]
    if not repair:
        with store_lock(root):
            return _check(root, manifest_ids)[0]
    with all_slices_locked(root):  # no writer may run while shards move
        report, sound, ids_of = _check(root, manifest_ids)
        redundant = redundant_shards(sound, ids_of, Counter(i for s in sound for i in ids_of[s.name]))
        to_move = [s for s in list_shards(root) if s.name in report.damaged] + redundant
        if not to_move:
            return report
        stamp = time.strftime("%Y%m%d-%H%M%S")
        with store_lock(root):
            moved = [quarantine(root, shard, stamp) for shard in to_move]
            _refresh_card(store, manifest_ids)
            report = _check(root, manifest_ids)[0]
        report.quarantined = moved
        return report


def _check(root: Path, manifest_ids: list[str]) -> tuple[VerifyReport, list[ShardInfo], dict[str, list[str]]]:
    shards = list_shards(root)
    ids_of = {index["name"]: index["ids"] for _, index in shard_indexes(root)}
    damaged = {s.name: problem for s in shards if (problem := shard_problem(s, ids_of[s.name]))}
    sound = [s for s in shards if s.name not in damaged]
    counts = Counter(i for s in sound for i in ids_of[s.name])
    report = VerifyReport(root, len(shards), len(manifest_ids), sum(counts.values()), damaged, [p.name for p in interrupted_files(root)],
                          account(root, manifest_ids, counts))
    return report, sound, ids_of


def _refresh_card(store: TokenStore, manifest_ids: list[str]) -> None:
    """Rebuild dataset.json from the shards left: split sizes and `complete` must not count quarantined clips."""
    card = store.card
    accounting = account(store.path, manifest_ids)
    keep = {k: card[k] for k in ("manifest_clips", "tokenize") if k in card}
    write_card(store.path, card["codec"], card["format"], card["dataset"],
               extra={**keep, "complete": accounting.complete, "failed": len(accounting.failed)})
