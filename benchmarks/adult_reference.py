"""Reference models on UCI Adult: logistic regression and gradient-boosted trees on the loader's exact split.

The split and the features are those of ``multimix.data.tabular.adult``: the
validation rows (``--val-size``, drawn with ``--split-seed``) are held out of
the training file, and the imputation + standardisation + one-hot encoding is
fitted on the remaining training rows only; both models train on those rows
and are scored on the 16,281 test rows. Logistic regression
(``LogisticRegression(max_iter=1000)``) is deterministic: one value.
``HistGradientBoostingClassifier()`` (defaults; its early stopping draws an
internal validation fraction with ``random_state``) runs for seeds 0–9.
Prints test (and validation) accuracy, mean ± std and the time taken.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adult_reference.py --data-dir DIR [--val-size 5000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from multimix.data.tabular import adult_arrays


def accuracy(model, x, y) -> float:
    return 100.0 * float((model.predict(x) == y).mean()) if len(y) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder holding adult-train.csv and adult-test.csv")
    parser.add_argument("--val-size", type=int, default=5000, help="training rows held out (default 5000)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the validation draw (default 0)")
    parser.add_argument("--seeds", type=int, default=10, help="HistGradientBoosting random_state 0 … seeds-1")
    args = parser.parse_args()

    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    data = adult_arrays(args.data_dir, num_val=args.val_size, seed=args.split_seed)
    print(f"UCI Adult: {len(data.y_train)} train / {len(data.y_val)} validation / {len(data.y_test)} test rows, "
          f"{data.x_train.shape[1]} features, {100 * data.y_train.mean():.1f}% positive in train "
          f"(majority-class test accuracy {100 * max(data.y_test.mean(), 1 - data.y_test.mean()):.2f}%); "
          f"loaded in {time.perf_counter() - t0:.1f} s")

    t = time.perf_counter()
    lr = LogisticRegression(max_iter=1000).fit(data.x_train, data.y_train)
    print(f"logistic regression: test {accuracy(lr, data.x_test, data.y_test):.2f}%, "
          f"validation {accuracy(lr, data.x_val, data.y_val):.2f}%  ({time.perf_counter() - t:.1f} s)")

    test, val, times = [], [], []
    for seed in range(args.seeds):
        t = time.perf_counter()
        hgb = HistGradientBoostingClassifier(random_state=seed).fit(data.x_train, data.y_train)
        times.append(time.perf_counter() - t)
        test.append(accuracy(hgb, data.x_test, data.y_test))
        val.append(accuracy(hgb, data.x_val, data.y_val))
        print(f"HistGradientBoosting seed {seed}: test {test[-1]:.2f}%, validation {val[-1]:.2f}%  "
              f"({times[-1]:.1f} s, {hgb.n_iter_} iterations)")
    ddof = 1 if len(test) > 1 else 0
    print(f"HistGradientBoosting over {len(test)} seeds: test {np.mean(test):.2f} ± {np.std(test, ddof=ddof):.2f}%, "
          f"validation {np.mean(val):.2f} ± {np.std(val, ddof=ddof):.2f}%  ({np.mean(times):.1f} s per fit)")
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
