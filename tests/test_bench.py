"""featmatch.evaluation.bench: `featmatch bench --quick` is plumbing-tested, not timed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from featmatch.cli import cli
from featmatch.errors import ConfigError
from featmatch.evaluation.bench import BENCHMARKS_DIR, BenchConfig, format_report, run_process
from tests.conftest import REPO


def test_bench_quick_runs_every_part_and_prints_ratios(data_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "featmatch.cli", "bench", "--quick", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["quick"] is True
    assert {"engines", "pipeline", "knn"} <= set(result)
    rows = result["pipeline"]["rows"]
    assert set(rows) == {"featmatch sift", "opencv sift (script)", "featmatch hardnet", "kornia hardnet (script)"}
    assert all(r["wall_s"] > 0 and r["peak_mb"] > 10 for r in rows.values())
    assert set(rows["featmatch sift"]["stages_ms"]) >= {"detect", "describe", "match", "geometry", "total"}
    # featmatch's HardNet engines and kornia's module give the same descriptors from the same weights
    engines = result["engines"]
    row = engines["rows"][0]["engines"]
    assert row["torch fp32"]["min_cosine_vs_kornia"] > 0.999 and row["onnx fp32"]["min_cosine_vs_kornia"] > 0.999
    assert row["onnx int8"]["mean_cosine_vs_kornia"] > 0.99 and row["onnx int8-w7"]["mean_cosine_vs_kornia"] > 0.99
    assert engines["auto_label"] in row and engines["auto"]["why"]
    assert engines["cpu"]["cores"] >= 1 and engines["isa_limits"]["fp32"]["mac_per_cycle"] >= 8
    assert result["knn"]["rows"][0]["nn_agreement_torch_vs_faiss"] > 0.99
    text = format_report(result)
    ratio_lines = [line for line in text.splitlines() if line.startswith("ratio: ")]
    assert any("describe" in line and "kornia" in line for line in ratio_lines)
    assert "auto picks" in text and "ISA limit fp32" in text
    assert sum("pipeline" in line for line in ratio_lines) == 3  # sift vs opencv, hardnet vs kornia and vs opencv
    assert any("knn" in line for line in ratio_lines)


def test_run_process_reports_the_childs_own_peak_memory():
    # This test process has torch and friends loaded; a child must not inherit that peak.
    small = run_process([sys.executable, "-c", "print('{}')"])
    big = run_process(
        [sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); print('{}')"]
    )
    assert small["peak_mb"] < 100
    assert big["peak_mb"] > 300 > small["peak_mb"]
    assert small["exit_code"] == 0 and small["output"] == {}


def test_competitor_scripts_exist():
    assert (BENCHMARKS_DIR / "opencv_sift_match.py").is_file()
    assert (BENCHMARKS_DIR / "kornia_hardnet_match.py").is_file()


def test_bench_config_and_cli_validation():
    with pytest.raises(ConfigError):
        BenchConfig(device="tpu")
    with pytest.raises(ConfigError):
        BenchConfig(knn_repeats=0)
    assert BenchConfig.quick().with_repeats(2).pipeline_runs == 2
    res = CliRunner().invoke(cli, ["bench", "--quick", "--only", "nothing"])
    assert res.exit_code == 2 and "unknown --only part" in res.output


def test_isa_limits_are_derived_per_cpu():
    from featmatch.evaluation.bench import HARDNET_MACS, isa_limits

    from .test_engines import ARM_DOT, ARM_PLAIN, AVX2_ONLY, AVX512_VNNI, NO_AVX2

    convs = [(32, 32, 32, 1, 9), (32, 32, 32, 32, 9), (16, 16, 64, 32, 9), (16, 16, 64, 64, 9), (8, 8, 128, 64, 9),
             (8, 8, 128, 128, 9), (1, 1, 128, 128, 64)]  # fmt: skip
    assert HARDNET_MACS == sum(h * w * co * ci * k for h, w, co, ci, k in convs)
    vnni = isa_limits(AVX512_VNNI)  # 2 cores at 3 GHz
    assert (vnni["fp32"]["mac_per_cycle"], vnni["int8"]["mac_per_cycle"]) == (32, 128)
    assert vnni["int8"]["patches_per_s"] == pytest.approx(128 * 2 * 3e9 / HARDNET_MACS)
    assert vnni["bf16"]["mac_per_cycle"] == 64 and "bf16" not in isa_limits(AVX2_ONLY)
    avx2 = isa_limits(AVX2_ONLY)
    assert (avx2["fp32"]["mac_per_cycle"], avx2["int8"]["mac_per_cycle"]) == (16, 32)
    assert "int8" not in isa_limits(NO_AVX2) and "int8" not in isa_limits(ARM_PLAIN)
    assert isa_limits(ARM_DOT)["int8"]["mac_per_cycle"] == 32


def test_report_names_flags_cpuid_denies_and_the_share_of_the_engine_auto_runs():
    """An emulated CPU is said so; the ISA-share ratio is the auto engine's, not the best int8 row's."""
    cpu = {"model": "AMD EPYC", "arch": "x86_64", "cores": 2, "mhz": 2596.0, "isa": ["AVX2"],
           "denied_by_cpuid": ["avx512_vnni", "avx512f"]}  # fmt: skip
    engine = {"ratio_vs_kornia": 2.0, "min_cosine_vs_kornia": 0.99, "mean_cosine_vs_kornia": 0.999}
    row = {"batch": 256, "kornia_fp32_per_s": 1000.0, "engines": {
        "onnx int8": dict(engine, per_s=3000.0, share_of_isa_limit=0.6),
        "onnx int8-w7": dict(engine, per_s=2000.0, share_of_isa_limit=0.4)}}  # fmt: skip
    limits = {"int8": {"isa": "AVX2", "derivation": "32 MAC/cycle/core", "patches_per_s": 5000.0}}
    result = {"device": "cpu", "engines": {"cpu": cpu, "auto_label": "onnx int8-w7", "auto": {"why": "AVX2"},
              "isa_limits": limits, "weights": "w", "torch_threads": 2, "rows": [row]}}  # fmt: skip
    text = format_report(result)
    assert "CPUID denies avx512_vnni, avx512f" in text
    assert "onnx int8-w7 reaches 40 % of the ISA's int8 limit" in text and "reaches 60 %" not in text
    cpu.pop("denied_by_cpuid")
    assert "CPUID denies" not in format_report(result)


def test_report_says_when_a_measured_rate_beats_the_isa_limit_at_the_reported_clock():
    """Under an AVX2 mask on a VM reporting 2,596 MHz, onnx fp32 measured 159 % and int8 145 %
    of their limits: no kernel beats its ISA, the CPU runs faster than the clock it reports, and
    the report printed those shares without a word."""
    cpu = {"model": "AMD EPYC", "arch": "x86_64", "cores": 2, "mhz": 2596.0, "isa": ["AVX2"]}
    engine = {"ratio_vs_kornia": 2.0, "min_cosine_vs_kornia": 0.99, "mean_cosine_vs_kornia": 0.999}
    limits = {"fp32": {"isa": "AVX2", "derivation": "16 MAC/cycle/core", "patches_per_s": 2125.0},
              "int8": {"isa": "AVX2", "derivation": "32 MAC/cycle/core", "patches_per_s": 4250.0}}  # fmt: skip

    def report(fp32_share, int8_share):
        row = {"batch": 256, "kornia_fp32_per_s": 1000.0, "engines": {
            "onnx fp32": dict(engine, per_s=2125.0 * fp32_share, share_of_isa_limit=fp32_share),
            "onnx int8-w7": dict(engine, per_s=4250.0 * int8_share, share_of_isa_limit=int8_share)}}  # fmt: skip
        return format_report({"device": "cpu", "engines": {
            "cpu": cpu, "auto_label": "onnx int8-w7", "auto": {"why": "AVX2"}, "isa_limits": limits, "weights": "w",
            "torch_threads": 2, "rows": [row]}})  # fmt: skip

    text = report(1.59, 1.45)
    assert "Measured above the ISA limit (fp32, int8)" in text and "2,596 MHz" in text
    assert "reaches 145 % of the ISA's int8 limit" in text and "the real share is lower" in text
    plain = report(0.7, 0.5)
    assert "above the ISA limit" not in plain and "the real share is lower" not in plain
