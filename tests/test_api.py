"""resnetlab as a Python library: the public API's signatures, docstrings and examples, and the
keyword arguments the commands share (``device``, ``which``, ...) behaving alike across functions."""

from __future__ import annotations

import doctest
import importlib
import inspect

import numpy as np
import pytest
import torch
from _eval_runs import fresh_checkpoint_run
from PIL import Image

from resnetlab.errors import ConfigError

# every module with an __all__; `resnetlab.data` re-exports the data submodules' functions
PUBLIC_MODULES = [
    "resnetlab", "resnetlab.bench", "resnetlab.checkpoint", "resnetlab.config", "resnetlab.data",
    "resnetlab.evaluate", "resnetlab.explain", "resnetlab.export", "resnetlab.fold", "resnetlab.metrics",
    "resnetlab.models", "resnetlab.models.registry", "resnetlab.models.resnet", "resnetlab.norms",
    "resnetlab.optim", "resnetlab.predict", "resnetlab.report", "resnetlab.runtime", "resnetlab.study",
    "resnetlab.trainer", "resnetlab.transfer",
]  # fmt: skip


def public_functions():
    for mod_name in PUBLIC_MODULES:
        mod = importlib.import_module(mod_name)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)  # a name in __all__ that does not exist fails here
            if inspect.isfunction(obj):
                yield f"{mod_name}.{name}", obj


@pytest.mark.parametrize("qualname,fn", list(public_functions()), ids=lambda v: v if isinstance(v, str) else "")
def test_public_functions_are_typed_and_documented(qualname, fn):
    sig = inspect.signature(fn)
    untyped = [p.name for p in sig.parameters.values()
               if p.annotation is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]  # fmt: skip
    assert not untyped, f"{qualname}: parameters without a type hint: {untyped}"
    assert sig.return_annotation is not inspect.Signature.empty, f"{qualname}: no return type hint"
    assert (fn.__doc__ or "").strip(), f"{qualname}: no docstring"


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    run = fresh_checkpoint_run(tmp, {"name": "digits"})
    img = tmp / "digit.png"
    Image.fromarray((np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)).save(img)
    return run, img


def test_predict_and_load_checkpoint_take_device_auto_like_evaluate(digits_ckpt):
    """``device="auto"`` is what evaluate / explain / activations accept; predict and
    load_checkpoint passed it to torch.device, which raised a RuntimeError listing every device type."""
    from resnetlab.checkpoint import load_checkpoint
    from resnetlab.predict import predict

    run, img = digits_ckpt
    want = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    ckpt = load_checkpoint(run, device="auto")
    assert next(ckpt.model.parameters()).device == want
    auto = predict(run, [img], top_k=3, device="auto")
    cpu = predict(run, [img], top_k=3, device="cpu")
    assert [t["class"] for t in auto[0]["top"]] == [t["class"] for t in cpu[0]["top"]]


@pytest.mark.parametrize("device", ["gpu", "cpu:x"])
def test_predict_and_load_checkpoint_refuse_an_unknown_device_in_one_line(digits_ckpt, device):
    from resnetlab.checkpoint import load_checkpoint
    from resnetlab.predict import predict

    run, img = digits_ckpt
    for call in (lambda: load_checkpoint(run, device=device), lambda: predict(run, [img], device=device)):
        with pytest.raises(ConfigError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and repr(device) in msg and "allowed: auto, cpu, cuda, cuda:N" in msg


def library_modules() -> list[str]:
    """Every module of the package but the command line's (its examples are the README's)."""
    import pkgutil

    import resnetlab

    names = ["resnetlab"] + [m.name for m in pkgutil.walk_packages(resnetlab.__path__, "resnetlab.")]
    return sorted(n for n in names if not n.startswith("resnetlab.cli") and n != "resnetlab.__main__")


@pytest.mark.parametrize("mod_name", library_modules())
def test_docstring_examples_run(mod_name):
    """The ``>>>`` examples of every docstring (those marked +SKIP need a run folder, data or a
    network); `pytest --doctest-modules` is not part of the suite, so a wrong example fails here."""
    mod = importlib.import_module(mod_name)
    failures, _ = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert failures == 0, f"{mod_name}: {failures} docstring example(s) failed (run with -s to see them)"


def test_every_command_option_has_help_naming_its_default():
    """`resnetlab COMMAND --help` documents every option, and an option with a default says it
    (explain --batch-size and train --epochs / --batch-size / --lr / --seed had no help at all,
    augment-preview --n / --seed did not say theirs)."""
    import argparse

    from resnetlab.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    problems = []
    for command, parser in sub.choices.items():
        for a in parser._actions:
            if isinstance(a, argparse._HelpAction) or not a.option_strings:
                continue
            if not a.help:
                problems.append(f"{command} {a.option_strings[-1]}: no help")
            elif not (a.default is None or a.default is False or a.default == [] or a.default is argparse.SUPPRESS) and "default" not in a.help:
                problems.append(f"{command} {a.option_strings[-1]}: default {a.default!r} not in its help")
    assert not problems, problems


def test_submodules_are_attributes_of_a_bare_import_without_importing_torch_first():
    """`import resnetlab; resnetlab.models` was an AttributeError until something imported the
    submodule; the bare import still leaves torch unimported (the CLI sets OpenMP's environment first)."""
    import subprocess
    import sys

    code = ("import sys, resnetlab; assert 'torch' not in sys.modules; names = dir(resnetlab); "
            "assert 'create_model' in names and 'models' in names; "
            "from resnetlab.models import create_model; assert resnetlab.models.create_model is create_model; "
            "assert resnetlab.norms.BatchNorm2d.__name__ == 'BatchNorm2d'\n"
            "try:\n    resnetlab.nope\nexcept AttributeError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "module 'resnetlab' has no attribute 'nope'"
    import resnetlab

    for name in resnetlab._SUBMODULES:  # each one a real submodule
        assert getattr(resnetlab, name) is importlib.import_module(f"resnetlab.{name}")
