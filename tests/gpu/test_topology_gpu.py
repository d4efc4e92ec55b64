"""NVML discovery on the lent GPU agrees with torch's view of the same devices (skipped without CUDA)."""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_nvml_gpus_match_torch():
    from megatron_llm.parallel.topology import discover_node

    node = discover_node()
    assert "nvml" in node.sources
    assert len(node.gpus) == torch.cuda.device_count()
    props = torch.cuda.get_device_properties(0)
    assert node.gpus[0].name == torch.cuda.get_device_name(0)
    assert node.gpus[0].memory_gb == pytest.approx(props.total_memory / 2 ** 30, rel=0.02)
    if len(node.gpus) == 1:
        assert node.nvlink_domain_size == 1
