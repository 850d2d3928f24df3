"""One fix to Snakemake's job preparation for jobs with very many inputs.

Before a job runs, Snakemake (9.27, ``Job.prepare``) asks for every input file
whether it is a pipe or service output of one of the job's dependencies, and
answers each question by walking all dependencies: inputs x dependencies
steps.  For the workflow's aggregating job over 10^5 outputs that is ~10^10
steps, about 20 minutes of a re-run that has nothing else to do (measured in
bench/RESULTS.md; Snakemake's plain aggregate rule pays the same).

``fast_pipe_input_lookup()`` replaces that one method with the same answer
from a set built once per job: a file is a pipe/service input when a
dependency that produces it marks it as pipe or service output.  Only jobs
with many dependencies take the new path; the answer is the same (tested
against the original in tests/test_snakemake_patches.py).
"""

from __future__ import annotations

#: below this many dependencies Snakemake's own loop is cheap: use it unchanged
MIN_DEPENDENCIES = 64

_cache: dict[int, tuple] = {}


def _pipe_or_service_inputs(deps) -> frozenset:
    found = set()
    for dep, files in deps.items():
        marked = dep.pipe_or_service_output
        if marked:
            found.update(f for f in files if f in marked)
    return frozenset(found)


def fast_pipe_input_lookup() -> bool:
    """Install the lookup (idempotent). False when Snakemake has no such method (nothing patched)."""
    try:
        from snakemake.jobs import Job
    except ImportError:
        return False
    original = getattr(Job, "is_pipe_or_service_input", None)
    if original is None:
        return False
    if getattr(original, "_nano_banana_fast", False):
        return True

    def is_pipe_or_service_input(self, path) -> bool:
        deps = self.dag.dependencies[self]
        if len(deps) < MIN_DEPENDENCIES:
            return original(self, path)
        key = (id(deps), len(deps))
        entry = _cache.get(id(self))
        if entry is None or entry[0] is not self or entry[1] != key:
            if len(_cache) > 1024:  # entries live for one prepare(); never let them pile up
                _cache.clear()
            entry = (self, key, _pipe_or_service_inputs(deps))
            _cache[id(self)] = entry
        return path in entry[2]

    is_pipe_or_service_input._nano_banana_fast = True
    is_pipe_or_service_input.__wrapped__ = original
    Job.is_pipe_or_service_input = is_pipe_or_service_input
    return True
