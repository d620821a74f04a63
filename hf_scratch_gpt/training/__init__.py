"""Training: `trainer.py` (HfArgumentParser + transformers' Trainer), `loop.py` (an explicit Accelerate loop),
`plots.py` (loss curves). Import the submodules directly; they pull in Trainer/Accelerate/matplotlib."""
