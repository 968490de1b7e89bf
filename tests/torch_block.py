"""Python source that makes torch unimportable and unfindable, as on a torch-free host
(``pip install mlsignal[client]``); subprocess tests run it before their own code."""

BLOCK_TORCH = r"""
import builtins, importlib.util, sys
real_import, real_find_spec = builtins.__import__, importlib.util.find_spec
def guarded(name, *args, **kwargs):
    if name == "torch" or name.startswith("torch."):
        raise ImportError("torch is blocked in this test")
    return real_import(name, *args, **kwargs)
builtins.__import__ = guarded
importlib.util.find_spec = lambda name, *a: None if name == "torch" else real_find_spec(name, *a)
"""

#: ``python -c CLI_WITHOUT_TORCH ARGS...`` runs ``mlsignal ARGS...`` with torch blocked.
CLI_WITHOUT_TORCH = (
    BLOCK_TORCH + "from mlsignal.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
)
