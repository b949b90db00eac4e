"""vLLM plugins (entry points declared by the dist-info next to this package, found because
this directory is on PYTHONPATH): the platform (`vllm.platform_plugins`) and, for `--workers`,
the monitor's installation in the EngineCore (`vllm.general_plugins`).

0.10/0.11 pick the CPU platform only for a vLLM built for CPU (or macOS); 0.33 also on
`VLLM_TARGET_DEVICE=cpu`. A platform plugin is vLLM's own switch and works for all of them.
Kept free of vLLM imports: vLLM calls it while `vllm.platforms` is still importing.
"""


def platform() -> str:
    return "real_vllm_harness.cpu_platform.StandInCpuPlatform"


def watch_executors() -> None:
    """With `--workers`, vLLM's own MultiprocExecutor (`mp`) runs in the EngineCore: the
    ground-truth monitor goes in there once one is constructed (workers.py)."""
    import os

    if os.environ.get("REAL_VLLM_FAKE_CUDA"):
        from .workers import watch_multiproc_executor

        watch_multiproc_executor()
