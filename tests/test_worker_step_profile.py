"""Kernel kinds of the decode-step profile (engine/worker/step_profile.py); the profile itself needs CUDA."""
from engine.worker.step_profile import kind_of


def test_kernels_are_sorted_into_kinds_by_name():
    assert kind_of("Memcpy DtoH (Device -> Pinned)") == "copies"
    assert kind_of("flash_fwd_splitkv_kernel") == "attention"
    assert kind_of("triton_red_fused__softmax_3") == "triton softmax (reduce attention)"
    assert kind_of("triton_red_fused_mm_7") == "triton reductions (GEMVs, norms)"
    assert kind_of("triton_poi_fused_add_2") == "triton pointwise"
    assert kind_of("nvjet_tst_64x8_64x16") == "cuBLAS matmuls"
    assert kind_of("some_custom_kernel") == "other"
