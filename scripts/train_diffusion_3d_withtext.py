"""Train the TIA2V SHR network: a 3D text-conditioned video U-Net at 128 px, used by
``sample_motion_optim.py`` to refine the motion model's clips. Upstream's entry point of the same name:

    python scripts/train_diffusion_3d_withtext.py --data_path datasets/post_URMP/ --save_dir runs/shr \
      --resolution 128 --sequence_length 16 --batch_size 2 --lr 5e-5 --save_interval 5000 --gpus 1

Flags, presets and outputs: ``scripts/tia2v_cli.py`` (preset ``configs/tia2v/shr.yaml``).
"""

from __future__ import annotations

import sys

from tav_scripts.tia2v_cli import main as _main


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for bad input, 1 when the loss diverges."""
    return _main("shr", argv)


if __name__ == "__main__":
    sys.exit(main())
