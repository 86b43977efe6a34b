"""The checkout's top-level ``kernels/`` folder is ``rdfast.kernels``; it must never stand in for the package that
owns the top-level name ``kernels`` (Hugging Face's hub kernels, imported by transformers >= 5.25) when a
checkout's root is on sys.path, as it is for ``python -m`` and pytest run from there."""
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_in_root(code, *flags, pythonpath=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    # ``-c`` puts the working directory, the checkout's root, first on sys.path
    return subprocess.run([sys.executable, *flags, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_an_installed_kernels_package_wins_over_the_checkout_folder(tmp_path):
    other = tmp_path / "kernels"
    other.mkdir()
    (other / "__init__.py").write_text("OWNER = 'hub'\nfrom .sub import VALUE\n")
    (other / "sub.py").write_text("VALUE = 7\n")
    done = run_in_root("import kernels, kernels.sub; from kernels import OWNER, VALUE; print(OWNER, VALUE, "
                       "kernels.sub.__file__)", pythonpath=tmp_path)
    assert done.returncode == 0, done.stderr
    owner, value, sub_file = done.stdout.split()
    assert (owner, value) == ("hub", "7")
    assert pathlib.Path(sub_file).resolve() == (other / "sub.py").resolve()


def test_without_another_kernels_package_the_name_is_absent(tmp_path):
    # -S: no site-packages, so no installed ``kernels`` either; the folder must not answer in its place
    done = run_in_root("import kernels", "-S", pythonpath=tmp_path)
    assert done.returncode != 0
    assert "ModuleNotFoundError: No module named 'kernels'" in done.stderr


def test_rdfast_kernels_still_resolves_to_the_checkout_folder():
    done = run_in_root("import rdfast.kernels as k; print(k.__file__)")
    assert done.returncode == 0, done.stderr
    assert pathlib.Path(done.stdout.strip()).resolve() == (REPO / "kernels" / "__init__.py").resolve()
