"""Several workers per GPU: a small model leaves an H100 almost idle with one trial at a time.

``oialr study run spec --gpus 0,1 --workers 8`` starts 8 workers spread round-robin over GPUs 0
and 1. Without ``--workers``, each GPU gets as many as its free memory holds for the model at
hand (at most :data:`MAX_PER_GPU`); with it, the memory is checked first and a plan that cannot
fit is refused with the numbers.
"""

from __future__ import annotations

from .errors import ConfigError

__all__ = ["MAX_PER_GPU", "trial_bytes", "plan_workers"]

MAX_PER_GPU = 8  # beyond this, small trials contend for the GPU's queues more than they gain
CONTEXT_BYTES = 600 * 2**20  # what a CUDA context and the caching allocator's slack take


def trial_bytes(parameters: int, dataset_bytes: int, batch_activations: int = 0) -> int:
    """A trial's GPU memory: its context, weights with gradients and two Adam moments (and the
    factors beside them after conversion, at most twice the weights), the dataset it holds on
    the device, and its activations."""
    return CONTEXT_BYTES + 6 * 4 * parameters + dataset_bytes + batch_activations


def plan_workers(
    gpus: list[str], workers: int | None, *, free_bytes: dict[str, int], need_bytes: int
) -> list[str]:
    """The GPU of each worker (``CUDA_VISIBLE_DEVICES``), round-robin over ``gpus``.

    Raises:
        ConfigError: a GPU id is not one of ``free_bytes``', or the plan does not fit.
    """
    unknown = [g for g in gpus if g not in free_bytes]
    if unknown:
        known = ", ".join(free_bytes) or "none"
        raise ConfigError(f"--gpus {','.join(gpus)}: no GPU {unknown[0]} here (GPUs: {known})")
    if workers is None:
        fits = min(free_bytes[g] // max(1, need_bytes) for g in gpus)
        workers = len(gpus) * max(1, min(MAX_PER_GPU, fits))
    plan = [gpus[i % len(gpus)] for i in range(workers)]
    for gpu in gpus:
        count = plan.count(gpu)
        if count * need_bytes > free_bytes[gpu]:
            most = free_bytes[gpu] // need_bytes
            raise ConfigError(
                f"{count} workers on GPU {gpu} need about {count * need_bytes / 2**30:.1f} GiB, "
                f"{free_bytes[gpu] / 2**30:.1f} GiB is free: use --workers {max(1, most) * len(gpus)}"
            )
    return plan


def free_gpu_bytes() -> dict[str, int]:
    """Free memory of each visible CUDA GPU by id (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    return {str(i): torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())}
