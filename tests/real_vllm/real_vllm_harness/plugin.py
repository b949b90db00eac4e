"""vLLM platform plugin (entry point `vllm.platform_plugins`, declared by the dist-info next to
this package, found because this directory is on PYTHONPATH).

0.10/0.11 pick the CPU platform only for a vLLM built for CPU (or macOS); 0.33 also on
`VLLM_TARGET_DEVICE=cpu`. A platform plugin is vLLM's own switch and works for all of them.
Kept free of vLLM imports: vLLM calls it while `vllm.platforms` is still importing.
"""


def platform() -> str:
    return "real_vllm_harness.cpu_platform.StandInCpuPlatform"
