"""vLLM's CPU platform, plus one switch: `REAL_VLLM_ASYNC_SCHEDULING=1` keeps async scheduling.

Async scheduling (AsyncScheduler, two batches in flight, so `EngineCore.step_with_batch_queue`)
is the GPU default from about 0.12 and opt-in before; `CpuPlatform.check_and_update_config`
turns it off in newer versions (0.33: "async scheduling is not required on CPU"). To exercise
the GPU path here we turn it back on after the CPU platform has spoken.
"""

import os

from vllm.platforms.cpu import CpuPlatform


def async_scheduling_requested() -> bool:
    return os.environ.get("REAL_VLLM_ASYNC_SCHEDULING", "0") == "1"


class StandInCpuPlatform(CpuPlatform):
    @classmethod
    def check_and_update_config(cls, vllm_config) -> None:
        parallel = vllm_config.parallel_config
        backend = parallel.distributed_executor_backend
        super().check_and_update_config(vllm_config)
        # 0.8's CPU platform replaces any executor but its own ("mp"): keep the stand-in.
        parallel.distributed_executor_backend = backend
        if async_scheduling_requested():
            vllm_config.scheduler_config.async_scheduling = True

    @classmethod
    def supports_v1(cls, model_config) -> bool:
        # 0.8/0.9 ask the platform whether V1 runs on it, and the CPU platform says no (its
        # attention kernels were V0 then). No model runs here (the stand-in executor), so
        # the V1 engine loop does; later releases no longer ask.
        return True
