"""SC-DD end to end on the built-in Fashion-MNIST (or any dataset): squeeze → probe → recover → relabel → evaluate.

    accelerate launch examples/distill.py                                  # defaults, ~10 min on 2 CPU cores
    accelerate launch examples/distill.py --config configs/fashion_mnist.yaml --ipc 50
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 examples/distill.py --cpu

Every field of :class:`hf_scdd.pipeline.PipelineConfig` is a flag (``--help`` lists them).
"""

from hf_scdd.cli import run_command
from hf_scdd.pipeline import PipelineConfig, main

if __name__ == "__main__":
    run_command("examples/distill.py", PipelineConfig, main, None)
