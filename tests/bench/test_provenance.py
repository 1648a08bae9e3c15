"""The provenance a results file starts with: the CPU's model and relevant flags, the commit, every field."""

from __future__ import annotations

import subprocess
from pathlib import Path

from vlbridge.bench.provenance import FIELDS, cpu, git_commit, header, provenance

CPUINFO = """processor\t: 0
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni sha_ni
processor\t: 1
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni sha_ni
"""


def test_cpu_reads_the_model_and_keeps_only_the_kernel_relevant_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    assert cpu(info) == ("AMD EPYC 9R14 96-Core Processor", ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"])


def test_git_commit_names_head_and_marks_uncommitted_changes(tmp_path: Path) -> None:
    assert git_commit(tmp_path).startswith("unknown")
    env = ["-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "a.txt").write_text("a")
    subprocess.run(["git", "add", "a.txt"], cwd=tmp_path, check=True)
    subprocess.run(["git", *env, "commit", "-qm", "a"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "a.txt").write_text("b")
    assert git_commit(tmp_path) == f"{head} (with uncommitted changes)"


def test_header_has_one_line_per_field_with_the_command_quoted(tmp_path: Path) -> None:
    fields = provenance(["python", "-m", "benchmarks.x", "--out", "a b"], tmp_path)
    assert tuple(fields) == FIELDS
    lines = header(fields).splitlines()
    assert [line.split(":")[0] for line in lines] == [f"# {name}" for name in FIELDS]
    assert lines[0] == "# command: python -m benchmarks.x --out 'a b'"
    assert header(fields, "- ").startswith("- command: ")
