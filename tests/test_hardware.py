"""Device facts: the datasheet bandwidth table."""
from engine.hardware import datasheet_bandwidth


def test_datasheet_bandwidth_table():
    assert datasheet_bandwidth("NVIDIA H200") == 4800e9
    assert datasheet_bandwidth("NVIDIA H100 PCIe") == 2000e9
    assert datasheet_bandwidth("NVIDIA H100 80GB HBM3") == 3350e9
    assert datasheet_bandwidth("NVIDIA A100-SXM4-80GB") == 2039e9
    assert datasheet_bandwidth("NVIDIA A100-PCIE-40GB") == 1555e9
    assert datasheet_bandwidth("NVIDIA A10G") == 600e9
    assert datasheet_bandwidth("NVIDIA L4") == 300e9
    assert datasheet_bandwidth("Tesla T4") == 320e9
    assert datasheet_bandwidth("Some Future GPU") is None
