"""``snakemake prune_answers``: reclaim the space of answer images no output is made from.

A 2K answer is 1.5-8 MB, about the size of its output, so the answers roughly
double the space of a run, and every regeneration adds one.  Pruning deletes
the image bytes of answers *older* than the one each output is made from
(its sidecar's ``answer_id``).  It never deletes the image an output is made
from (``--forcerun generate`` keeps working), nor any newer answer (one not
yet turned into its output), nor anything of a target without a sidecar.
The records stay: they say what was paid.
"""

from __future__ import annotations

from . import answers as answers_mod
from . import layout, locks, sidecar


def prune(output_dir, lock_timeout_s: float = 600.0) -> tuple[int, int]:
    """(answer images deleted, bytes freed)."""
    deleted = freed = 0
    for stem in answers_mod.stems(output_dir):
        try:
            made = int(str(sidecar.read(layout.sidecar_path(output_dir, stem)).answer_id).lstrip("v") or 0)
        except (OSError, ValueError, TypeError):
            continue
        with locks.exclusive(
            layout.answer_dir(output_dir, stem) / ".lock", timeout_s=lock_timeout_s, what=f"target {stem}"
        ):
            for version, has_image in answers_mod.versions(output_dir, stem):
                if not has_image or version >= made:
                    continue
                answer = answers_mod.try_read(output_dir, stem, version)
                if answer is not None:
                    freed += answers_mod.remove_image(output_dir, answer)
                    deleted += 1
    return deleted, freed


def main(snakemake) -> None:
    """Entry point of rule ``prune_answers`` (``script:``)."""
    from .jobs import job_main

    def work():
        out = snakemake.config["data"]["output_dir"]
        before = answers_mod.disk_usage(out)
        deleted, freed = prune(out)
        after = answers_mod.disk_usage(out)
        return (
            f"answers: {deleted} images deleted ({freed / 1e6:.1f} MB freed); {after[0]} kept "
            f"({after[1] / 1e6:.1f} MB), was {before[0]} ({before[1] / 1e6:.1f} MB)"
        )

    job_main(snakemake, work, name="prune_answers")
