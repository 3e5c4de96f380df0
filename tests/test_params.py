import pytest

from autogemm.params import InvalidParams, KernelParams, registers_needed

GOOD = dict(dtype="float32", isa="avx2", mr=6, nr=16, vw=8, ku=4, mc=96, kc=256, nc=4096)


def test_valid_params_have_a_descriptive_name():
    p = KernelParams(**GOOD)
    assert p.name == "ag_sgemm_avx2_6x16_k4_mc96_kc256_nc4096_ic_pf0"
    assert KernelParams.from_dict(p.to_dict()) == p
    assert hash(p) == hash(KernelParams(**GOOD))
    with_c = p.replace(prefetch_c=True)
    assert with_c.name == p.name + "c" and KernelParams.from_dict(with_c.to_dict()) == with_c
    streamed = p.replace(stream_b=True)
    assert streamed.name == p.name + "_sb" and KernelParams.from_dict(streamed.to_dict()) == streamed
    tight = p.replace(direct_m=48, direct_mflops=16)
    assert tight.name == p.name + "_d48m16" and KernelParams.from_dict(tight.to_dict()) == tight
    threaded = p.replace(direct_threaded=2)
    assert threaded.name == p.name + "_d128m128x2" and KernelParams.from_dict(threaded.to_dict()) == threaded
    # a tuned file written before the direct limits and stream_b were parameters reads as the kernel
    # it measured
    old = {k: v for k, v in p.to_dict().items() if not k.startswith("direct_") and k != "stream_b"}
    assert (p.direct_m, p.direct_mflops) == (128, 128)
    assert KernelParams.from_dict(old) == p.replace(direct_m=512, direct_mflops=400)
    before_threaded = {k: v for k, v in tight.to_dict().items() if k != "direct_threaded"}
    assert KernelParams.from_dict(before_threaded) == tight  # limits that did not grow with the threads


@pytest.mark.parametrize("change, message", [
    (dict(dtype="int32"), "dtype"),
    (dict(isa="sse9"), "isa"),
    (dict(parallel="kc"), "parallel"),
    (dict(mr=0), "mr"),
    (dict(mr=6.0), "int"),
    (dict(mr=True), "int"),
    (dict(mr="6"), "int"),
    (dict(kc=-1), "kc"),
    (dict(vw=16), "vector width"),
    (dict(nr=12), "multiple of the vector width"),
    (dict(mc=100), "multiple of mr"),
    (dict(nc=4004), "multiple of nr"),
    (dict(ku=3), "ku"),
    (dict(mr=8, nr=16), "registers"),
    (dict(prefetch=1000), "prefetch"),
    (dict(prefetch_c=1), "prefetch_c"),
    (dict(prefetch_c="yes"), "prefetch_c"),
    (dict(stream_b=1), "stream_b"),
    (dict(stream_b="no"), "stream_b"),
    (dict(direct_m=-1), "direct_m"),
    (dict(direct_mflops=1.5), "int"),
    (dict(direct_mflops=1 << 21), "direct_mflops"),
    (dict(direct_threaded=0), "direct_threaded"),
    (dict(dtype="float32); system(\"rm -rf /\""), "dtype"),
    (dict(isa="avx2 */ int x; /*"), "isa"),
])
def test_bad_values_are_rejected_before_rendering(change, message):
    with pytest.raises(InvalidParams, match=message):
        KernelParams(**{**GOOD, **change})


def test_unknown_keys_are_rejected():
    with pytest.raises(InvalidParams, match="unknown"):
        KernelParams.from_dict({**GOOD, "extra_c": "#include </etc/passwd>"})


def test_register_budget_counts_accumulators_b_vectors_and_broadcast():
    assert registers_needed(14, 32, 16) == 14 * 2 + 2 + 1
    KernelParams(**{**GOOD, "isa": "avx512", "vw": 16, "mr": 14, "nr": 32, "mc": 14 * 8, "nc": 4096})
    with pytest.raises(InvalidParams):
        KernelParams(**{**GOOD, "isa": "avx512", "vw": 16, "mr": 15, "nr": 32, "mc": 15 * 8, "nc": 4096})
