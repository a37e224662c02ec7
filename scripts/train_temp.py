"""Train the TIA2V motion U-Net: the content U-Net plus temporal convolutions and dual temporal transformers
conditioned on BEATs audio tokens and the text, initialised by name from a content
checkpoint. The README seed line runs as written:

    python scripts/train_temp.py --num_workers 8 --batch_size 1 --data_path datasets/post_URMP/ \
      --model_path saved_ckpts/your_content_model.pt --save_dir saved_ckpts/your_directory_path --resolution 64 \
      --sequence_length 16 --text_stft_cond --audio_emb_model beats --diffusion_steps 4000 --noise_schedule cosine \
      --num_channels 64 --num_res_blocks 2 --class_cond False --image_size 64 --learn_sigma True --in_channels 3 \
      --lr 5e-5 --log_interval 50 --save_interval 5000 --gpus 1

``--freeze_spatial True`` trains only the new tensors (upstream's freezing had no effect: default off);
``--remap_shifted`` also transfers the 12 content tensors whose module index moved. Flags, presets and outputs:
``scripts/tia2v_cli.py``.
"""

from __future__ import annotations

import sys

from tav_scripts.tia2v_cli import main as _main


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: 0 on success, 2 for bad input, 1 when the loss diverges."""
    return _main("motion", argv)


if __name__ == "__main__":
    sys.exit(main())
