"""Zip the example's code for `--py-files`, so Spark's Python workers can import the predictor.

    python -m examples.churn.package --out /tmp/spark-infer-churn/churn_py.zip

The zip holds `examples/__init__.py` (empty: zip imports need a regular package) and
`examples/churn/*.py`, so `examples.churn.churn_model:load` imports the same way on every node.
"""

from __future__ import annotations

import argparse
import os
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))


def build_zip(out: str) -> str:
    """Write the zip to `out` and return its path."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("examples/__init__.py", "")
        for name in sorted(os.listdir(HERE)):
            if name.endswith(".py"):
                z.write(os.path.join(HERE, name), f"examples/churn/{name}")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/spark-infer-churn/churn_py.zip")
    print(build_zip(ap.parse_args(argv).out))


if __name__ == "__main__":
    main()
