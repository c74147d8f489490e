"""Stage 3: fine-tune a trained fusion run end to end (`feat finetune`); `feat predict` is in feat/predict.py.

config.py      FinetuneConfig (the reference's end-to-end protocol by default)
saved.py       a trained run folder: head, standardisation, encoders rebuilt from the fingerprints
data.py        the run's rows with their raw inputs (checked against the cache), batches, image decoding
model.py       encoders (trainable) + the run's head; which parts train; gradient checkpointing
parity.py      before any step: the model must reproduce the run's dev predictions
device.py      device, autocast and loss scaling (one code path for CPU and CUDA)
distributed.py several processes under torchrun: batch shares, gradients summed per optimizer step
train.py       the loop: AdamW with two learning rates, warm-up, accumulation, clipping, early stopping
checkpoint.py  the last checkpoint (safetensors + JSON) for --resume
run.py         one fine-tuning (or the top K of an ablation) and its output folder
"""
