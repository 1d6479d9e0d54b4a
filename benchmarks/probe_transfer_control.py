"""Why the transfer study's control arm (frozen *random* body + MLP head) stays at chance.

Not a speed benchmark: the analysis behind a paragraph of docs/RESULTS.md ("Transfer"). For each
seed it trains the control cell of ``recipes/study-transfer.yaml`` (``model.pretrained=null``,
``model.freeze_until=layer3``) exactly as the study does, then feeds the training images through
the final weights and prints the pooled body features and the head's hidden ReLU units.

    python benchmarks/probe_transfer_control.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from resnetlab import study as st
from resnetlab.checkpoint import load_checkpoint
from resnetlab.config import config_from_dict
from resnetlab.data import load_dataset
from resnetlab.trainer import train


def probe(study_file: str, seed: int, out: Path, epochs: int | None = None) -> str:
    spec = st.load_study(study_file)
    cell = next(c for c in st.expand_cells(spec) if c.overrides == {"model.pretrained": None, "model.freeze_until": "layer3"})
    cfg = st.cell_config(spec, cell, seed)
    cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"report": False, "tensorboard": False})})
    if epochs is not None:  # the tests' short version; the figures quoted come from the study's 40
        data = cfg.model_dump(mode="json")
        data["train"]["epochs"] = epochs
        if data["schedule"]["warmup_epochs"] >= epochs:  # a warmup as long as the run is refused
            data["schedule"]["warmup_epochs"] = 0.0
        cfg = config_from_dict(data)  # validated, as any config a user gives
    result = train(cfg, out, progress=False)
    ck = load_checkpoint(out, which="last")  # the end of training (best is epoch 1 when val never improves)
    model = ck.model.eval()
    split = load_dataset(cfg.data.name, **cfg.data.load_kwargs(cfg.seed)).train
    mean = torch.tensor(ck.meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(ck.meta["std"]).view(1, -1, 1, 1)
    x = (split.images.float() / 255 - mean) / std
    seen: dict[str, torch.Tensor] = {}
    model.avgpool.register_forward_hook(lambda m, i, o: seen.__setitem__("features", o.flatten(1)))
    model.fc[0].register_forward_hook(lambda m, i, o: seen.__setitem__("hidden", torch.relu(o)))
    with torch.no_grad():
        logits = model(x)
    f, h = seen["features"], seen["hidden"]
    return (f"seed {seed}: last train loss {result.history[-1]['train_loss']:.4f}; pooled features mean {f.mean():.2f} "
            f"std {f.std():.2f}; head hidden units active on any of {len(x)} training images: "
            f"{int((h > 0).any(0).sum())} of {h.shape[1]}; logit std across images {logits.std(0).mean():.4f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default="recipes/study-transfer.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="override the study's epochs (default: the study's)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.seeds:
            print(probe(args.study, k, Path(tmp) / f"seed{k}", args.epochs))
    extra = f" --epochs {args.epochs}" if args.epochs is not None else ""
    print(f"command: python benchmarks/probe_transfer_control.py --study {args.study} --seeds {' '.join(map(str, args.seeds))}{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
