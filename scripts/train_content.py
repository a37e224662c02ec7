"""Train the TIA2V content U-Net: per-frame 2D diffusion conditioned on CLIP-L text + first-frame image.
The README seed line runs as written:

    python scripts/train_content.py --num_workers 8 --gpus 1 --batch_size 1 --data_path datasets/post_URMP/ \
      --save_dir saved_ckpts/your_directory_path --resolution 64 --sequence_length 16 --text_stft_cond \
      --diffusion_steps 4000 --noise_schedule cosine --lr 5e-5 --num_channels 64 --num_res_blocks 2 \
      --class_cond False --log_interval 50 --save_interval 10000 --image_size 64 --learn_sigma True --in_channels 3

It trains the text + image model the paper describes (upstream's README path fed text only).
Flags, presets and outputs: ``scripts/tia2v_cli.py``.
"""

from __future__ import annotations

import sys

from tav_scripts.tia2v_cli import main as _main


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for bad input, 1 when the loss diverges."""
    return _main("content", argv)


if __name__ == "__main__":
    sys.exit(main())
