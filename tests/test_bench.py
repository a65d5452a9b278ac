"""The benchmark program runs end to end at the smallest size: it checks every
implementation against the interpreter before timing, and prints every section."""
import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load(program="workload"):
    """bench/<program>.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{program}",
                                                  ROOT / "bench" / f"{program}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_prints_every_implementation_and_section(capsys):
    bench = load()
    assert bench.main(["--cells", "gru", "--sizes", "tiny", "--dtypes", "float64",
                       "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("ours (llvm)", "ours (numpy backend)", "numpy BPTT", "torch eager", "jax jit"):
        assert f"| gru | tiny | float64 | {name} |" in out
    for section in ("against the fastest reference", "compile time", "peak memory",
                    "single-step inference latency"):
        assert section in out
    assert "one kernel: True" in out


def test_flop_count_matches_a_hand_count():
    bench = load()
    # Elman, B=T=D=H=1: forward 3 products, backward 5, two flops each
    assert bench.step_flops("elman", 1, 1, 1, 1) == 2 * (3 + 5)
    B, T, D, H = 2, 3, 4, 5
    G = 4 * H
    fwd = D * G + H * G + H * D
    bwd = D * G + 2 * H * G + 2 * H * D
    assert bench.step_flops("lstm", B, T, D, H) == 2 * T * B * (fwd + bwd)


def test_bench_takes_sizes_of_your_own(capsys):
    bench = load()
    assert bench._size("3, 37,50,100") == (3, 37, 50, 100)
    for bad in ("1,2,3", "1,2,x,4", "0,2,3,4", "1,2,3,4,5"):
        with pytest.raises(SystemExit):
            bench.main(["--size", bad])
        assert f"{bad!r} is not a size: give four positive integers B,T,D,H" in \
            capsys.readouterr().err


def test_bench_rejects_bad_arguments(capsys):
    bench = load()
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "huge"])
    with pytest.raises(SystemExit):
        bench.main(["--repeat", "0"])
    assert "repeat" in capsys.readouterr().err


def test_autograph_bench_command_runs_the_program(capsys):
    from autograph.cli import main
    with pytest.raises(SystemExit) as e:
        main(["bench", "--help"])
    assert e.value.code == 0
    assert "usage: autograph bench" in capsys.readouterr().out


def test_passes_program_compares_each_pass_and_restores_the_compiler(capsys):
    passes = load("passes")
    import compiler.pipeline as pipeline
    fuse = pipeline.fuse
    passes.main(["--cells", "lstm", "--sizes", "tiny", "--dtypes", "float64",
                 "--rounds", "1"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| lstm | tiny |"))
    n = len(passes.PASSES)
    assert len(row.split("|")) == 2 + 4 + 2 * n + 1     # cells around 4 + 2·n + 1 columns
    assert pipeline.fuse is fuse
    from compiler import copies, fuse as fuse_mod
    assert copies.FOLD is True and fuse_mod.FUSE_SUMS is True      # switches restored
    with pytest.raises(ValueError, match="unknown pass"):
        passes.without("unrolling").__enter__()


def test_bench_profile_prints_each_statement_of_our_step(capsys):
    """--profile: no references timed; per case, the compiled step's statements with
    their time, the loops' bodies indented under them."""
    bench = load()
    assert bench.main(["--cells", "lstm", "--sizes", "tiny", "--dtypes", "float64",
                       "--profile"]) == 0
    out = capsys.readouterr().out
    assert "## where our step spends its time: lstm tiny float64" in out
    lines = [ln for ln in out.splitlines() if " µs " in ln]
    assert any("matmul" in ln for ln in lines) and any(" for $t0" in ln for ln in lines)
    assert any("    fused" in ln or "    matmul" in ln for ln in lines)   # a loop's body
    assert "numpy BPTT" not in out and "torch eager" not in out
