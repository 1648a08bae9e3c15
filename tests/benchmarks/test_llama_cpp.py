"""benchmarks/_llama_cpp.py without llama.cpp itself: the package probe and the medians of llama.cpp's own timings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks._llama_cpp import available, own_figures


def _timing(prompt_ms: float, predicted_n: int, per_second: float) -> dict[str, float]:
    return {"prompt_ms": prompt_ms, "predicted_n": predicted_n, "predicted_per_second": per_second}


def test_own_figures_take_the_timed_calls_only() -> None:
    check, warm_up = _timing(9000.0, 8, 1.0), _timing(9000.0, 2, 1.0)  # other lengths: left out
    timed = [_timing(100.0, 1, 0.0), _timing(120.0, 5, 40.0), _timing(300.0, 1, 0.0), _timing(110.0, 5, 50.0)]
    timed += [_timing(90.0, 1, 0.0), _timing(130.0, 5, 20.0)]
    prefill, decode = own_figures([check, warm_up, *timed], new_tokens=4)
    assert prefill == pytest.approx(0.115)  # median of the six prompt times, in seconds
    assert decode == 40.0  # median generation rate of the 5-token calls


def test_available_follows_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xllamacpp", None)  # an import of it would fail: find_spec gives None
    assert not available()


def test_real_llm_speed_skips_llama_cpp_with_a_note(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from benchmarks import real_llm_speed

    compared = []
    monkeypatch.setattr(real_llm_speed, "llama_cpp_available", lambda: False)
    monkeypatch.setattr(real_llm_speed, "compare", lambda report, label, path, args, llama=None: compared.append(llama))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")  # a converted SmolLM2 directory, as far as the check goes
    argv = ["real_llm_speed", "--only", "smollm2", "--llama-cpp", "--cache", str(tmp_path / "hf")]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "out")])
    real_llm_speed.main()
    assert compared == [None]  # our engines still run, without llama.cpp
    assert (
        'llama.cpp skipped: --llama-cpp needs xllamacpp (pip install "vlbridge[llamacpp]")' in capsys.readouterr().out
    )
