"""The one patch to Snakemake's job preparation answers exactly as Snakemake does."""

from __future__ import annotations

from types import SimpleNamespace

from snakemake.jobs import Job

from nano_banana_aug import snakemake_patches


class FakeJob:
    """What Job.is_pipe_or_service_input reads: self.dag.dependencies[self] -> {dep: files}."""

    def __init__(self, deps):
        self.dag = SimpleNamespace(dependencies={self: deps})


class FakeDep:
    def __init__(self, piped):
        self.pipe_or_service_output = set(piped)


def deps_of(n, piped=()):
    deps = {}
    for i in range(n):
        files = {f"out/{i}.png", f"out/{i}.json"}
        deps[FakeDep({f"out/{i}.png"} if i in piped else ())] = files
    return deps


def test_same_answers_as_snakemake_for_many_and_few_dependencies():
    assert snakemake_patches.fast_pipe_input_lookup()
    assert snakemake_patches.fast_pipe_input_lookup()  # idempotent
    patched = Job.is_pipe_or_service_input
    original = patched.__wrapped__
    for n in (3, snakemake_patches.MIN_DEPENDENCIES + 50):
        job = FakeJob(deps_of(n, piped={1, n - 2}))
        paths = [f"out/{i}.{ext}" for i in range(n + 3) for ext in ("png", "json")]
        assert [patched(job, p) for p in paths] == [original(job, p) for p in paths]
        assert patched(job, "out/1.png") and not patched(job, "out/1.json") and not patched(job, "out/0.png")


def test_the_answer_follows_a_change_of_the_dependencies():
    snakemake_patches.fast_pipe_input_lookup()
    deps = deps_of(snakemake_patches.MIN_DEPENDENCIES + 1)
    job = FakeJob(deps)
    assert not Job.is_pipe_or_service_input(job, "x/pipe")
    deps[FakeDep({"x/pipe"})] = {"x/pipe"}
    assert Job.is_pipe_or_service_input(job, "x/pipe")
