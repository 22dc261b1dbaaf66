"""The vision-language path: frozen encoder(s) → connector → a backbone of probes.backbones.

    encoders.py    ENCODERS: SigLIP / CLIP / DINOv2 (transformers), EVA-02 (timm); patch grids
    scans.py       scan orders as index permutations: bsm, csm, cross-cat, cross-stitch
    vss.py         vision selective scan: scan → Mamba → inverse scan → merge
    connectors.py  CONNECTORS: mlp, vss-mlp, vss-l2, mamba-projector
    model.py       the VLM, its token sequence (markers, row separators, layouts), greedy decoding
    data.py        synthetic shape scenes, RefCOCO-style JSONL records
    grounding.py   box text format, strict parser, IoU, Acc@IoU≥0.5
    train.py       two-stage training and evaluation, written as a run directory (SPEC §6)
    cli.py         `probes vlm train | eval`
"""
