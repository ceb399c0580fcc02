"""CPU facts and the automatic precision choice (no TensorFlow needed)."""

import pytest

from tfmarket.hardware import choose_precision, cpu_flags, cpu_model, describe_cpu

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni

processor\t: 1
model name\t: ignored second core
"""
XEON = "model name\t: Intel(R) Xeon(R) Platinum 8488C\nflags\t: avx512f avx512_bf16 amx_bf16 " \
       "amx_tile amx_int8 avx512_vnni\n"
OLD = "model name\t: Intel(R) Xeon(R) CPU E5-2686 v4\nflags\t: avx2 fma\n"


@pytest.fixture
def cpuinfo(tmp_path):
    def write(text):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        return str(path)
    return write


def test_reads_model_and_flags_of_the_first_processor(cpuinfo):
    path = cpuinfo(EPYC)
    assert cpu_model(path) == "AMD EPYC 9R14"
    assert {"avx512_bf16", "avx512_vnni"} <= cpu_flags(path)
    assert describe_cpu(path) == "AMD EPYC 9R14 (avx512_bf16, avx512_vnni)"
    assert describe_cpu(cpuinfo(XEON)).endswith(
        "(avx512_bf16, amx_bf16, amx_tile, amx_int8, avx512_vnni)")
    assert describe_cpu(cpuinfo(OLD)).endswith("(no bf16/AMX/VNNI flags)")
    assert cpu_flags(str(cpuinfo("")) + ".missing") == frozenset()


@pytest.mark.parametrize("gpus,flags,expected", [
    ([(8, 0)], frozenset(), "mixed_float16"),                      # A100
    ([(7, 5), (8, 6)], frozenset({"avx512_bf16"}), "mixed_float16"),  # GPUs win over the CPU
    ([(6, 1)], frozenset({"avx512_bf16"}), "float32"),             # Pascal: no tensor cores
    ([], frozenset({"avx512_bf16", "avx512_vnni"}), "mixed_bfloat16"),  # EPYC Genoa
    ([], frozenset({"amx_bf16", "amx_tile"}), "mixed_bfloat16"),   # Xeon Sapphire Rapids
    ([], frozenset({"avx2", "avx512f"}), "float32"),               # bf16 would be emulated
])
def test_auto_precision(gpus, flags, expected):
    precision, reason = choose_precision("auto", gpus, flags)
    assert precision == expected and reason.startswith("auto: ")


def test_explicit_precision_is_kept_and_unknown_refused():
    assert choose_precision("float32", [(8, 0)], frozenset({"amx_bf16"})) == (
        "float32", "set in the config")
    with pytest.raises(ValueError, match="valid: auto, float32"):
        choose_precision("fp8", [], frozenset())


def test_onednn_turned_on_for_avx2_cpus_that_tensorflow_leaves_on_eigen():
    from tfmarket.hardware import choose_onednn

    value, why = choose_onednn(frozenset({"avx", "avx2", "fma"}), {})
    assert value == "1" and "turned on" in why


def test_onednn_left_to_tensorflow_where_it_is_on_by_default_or_cannot_run():
    from tfmarket.hardware import choose_onednn

    for flag in ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile"):
        value, why = choose_onednn(frozenset({"avx2", flag}), {})
        assert value is None and flag in why
    assert choose_onednn(frozenset({"sse4_2", "avx"}), {})[0] is None  # no AVX2
    assert choose_onednn(frozenset(), {})[0] is None  # not x86 (no flags read)


def test_users_onednn_setting_is_kept():
    from tfmarket.hardware import choose_onednn

    value, why = choose_onednn(frozenset({"avx2"}), {"TF_ENABLE_ONEDNN_OPTS": "0"})
    assert value is None and "TF_ENABLE_ONEDNN_OPTS=0 as set" in why
